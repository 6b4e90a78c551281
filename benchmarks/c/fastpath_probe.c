/*
 * fastpath_probe: the per-op cost of each way to count, in C, on the native
 * thread team, ns per op per thread. The bare rseq critical section is the
 * bar that PerCPUCounter's inline add (pc_percpu_counter_add) is held to.
 *
 *   gcc -O2 -I pyx/include benchmarks/c/fastpath_probe.c -o /tmp/probe -ldl -lpthread
 *   /tmp/probe [ops_per_thread] [max_threads]
 *
 * The bare section is librseq's percpu add, written here on its own: the id
 * read from the rseq area before the section, the slot address computed
 * outside, and inside the section the id compared with the area's current
 * value (librseq's cpu_id_start/cpu_id pair, or mm_cid/mm_cid), then one
 * plain add as the commit. It has no slot bound, no registration check and no
 * fallback: an unregistered thread would spin on it. Both flavours are
 * measured; the ratio line compares pc_percpu_counter_add with the flavour
 * the library chose (features()'s cpu_source).
 *
 * Machine noise moves the times; instruction counts do not. Under valgrind
 * (which has no rseq: glibc's registration fails there) the probe fakes a
 * registered area (id 0, nothing ever aborts) and the library's choice, and
 * runs each loop once in the main thread:
 *
 *   valgrind --tool=callgrind --callgrind-out-file=/tmp/probe.cg /tmp/probe callgrind 1000000
 *   callgrind_annotate --inclusive=yes /tmp/probe.cg | grep loop_
 *
 * Each loop_<kind> function's inclusive count divided by the ops is the
 * instructions per op. `callgrind cpu_id` fakes the cpu_id flavour instead of
 * mm_cid. Builds against the headers before the slot bound too (the probe's
 * own code does not depend on it), to measure before and after.
 */
#include "percpu.h"
#include "percpu/registry_init.h"
#include "percpu/team.h"

#define MAX_THREADS 64
#define NSLOTS 512
static pc_cell own[MAX_THREADS];       /* one padded slot per thread */
static pc_cell shared;
static pc_cell slots[NSLOTS + 1];      /* per-CPU slots, one line apart, and the shared one */
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static int64_t mutexed;
static pc_percpu_counter counter;
static ptrdiff_t rseq_off;             /* glibc's __rseq_offset */

/* ------------------------------------------------------------------------ */
/* The bare librseq-style section                                            */

#define BARE_CS_BEGIN                                                          \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                       \
    ".balign 32\n\t"                                                           \
    "333:\n\t"                                                                 \
    ".long 0, 0\n\t"                                                           \
    ".quad 111f, 222f - 111f, 444f\n\t"                                        \
    ".popsection\n\t"                                                          \
    "leaq 333b(%%rip), %%rax\n\t"                                              \
    "movq %%rax, 8(%[abi])\n\t"                                                \
    "111:\n\t"
#define BARE_CS_END                                                            \
    "222:\n\t"                                                                 \
    ".pushsection __rseq_failure, \"ax\"\n\t"                                  \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                               \
    ".long 0x53053053\n\t"                                                     \
    "444:\n\t"                                                                 \
    "jmp %l[abort]\n\t"                                                        \
    ".popsection\n\t"

/* librseq's percpu add (rseq_cpu_start() + rseq_load_add_store__ptr()):
 * cpu = READ_ONCE(rseq_get_abi()->start), the address outside, and inside:
 * the field `check` compared with cpu, then the add. `start`/`check` are the
 * field offsets: 0/4 (cpu_id_start, cpu_id) or 24/24 (mm_cid). As shipped
 * (`clobber`), the asm clobbers "memory", so the offset and the counter's
 * base and stride are loaded again for every add; the minimal variant keeps
 * them in registers. */
static inline int bare_add(char *base, size_t stride, int64_t v, int start, int check,
                           int clobber) {
    char *abi = (char *)__builtin_thread_pointer() + rseq_off;
    uint32_t cpu = __atomic_load_n((uint32_t *)(void *)(abi + start), __ATOMIC_RELAXED);
    int64_t *slot = (int64_t *)(void *)(base + (size_t)cpu * stride);
    if (clobber) {
        __asm__ goto(BARE_CS_BEGIN
                     "cmpl %[cpu], (%[chk])\n\t"
                     "jnz %l[abort]\n\t"
                     "addq %[v], %[slot]\n\t"
                     BARE_CS_END
                     : /* asm goto: outputs only from GCC 11 */
                     : [slot] "m"(*slot), [abi] "r"(abi), [chk] "r"(abi + check), [cpu] "r"(cpu),
                       [v] "r"(v)
                     : "memory", "rax", "cc"
                     : abort);
    } else {
        __asm__ goto(BARE_CS_BEGIN
                     "cmpl %[cpu], (%[chk])\n\t"
                     "jnz %l[abort]\n\t"
                     "addq %[v], %[slot]\n\t"
                     BARE_CS_END
                     : [slot] "+m"(*slot)
                     : [abi] "r"(abi), [chk] "r"(abi + check), [cpu] "r"(cpu), [v] "r"(v)
                     : "rax", "cc"
                     : abort);
    }
    return 0;
abort:
    return 1;
}

/* ------------------------------------------------------------------------ */
/* The loops, one function each (callgrind counts them by name)             */

#define NOINLINE __attribute__((noinline, noipa))

static NOINLINE void loop_plain(int tid, int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++)
        pc_store_i64(&own[tid].value, pc_load_i64(&own[tid].value, PC_RELAXED) + 1, PC_RELAXED);
}
/* The counter arrives by pointer in each, as in a loop over counters. */
static NOINLINE void loop_bare_cpu_id(pc_percpu_counter *c, int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++)
        while (bare_add(c->base, c->stride, 1, 0, 4, 1)) {
        }
}
static NOINLINE void loop_bare_mm_cid(pc_percpu_counter *c, int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++)
        while (bare_add(c->base, c->stride, 1, 24, 24, 1)) {
        }
}
static NOINLINE void loop_bare_minimal(pc_percpu_counter *c, int64_t ops) {
    int64_t i;
    char *base = c->base;
    size_t stride = c->stride;
    for (i = 0; i < ops; i++)
        while (bare_add(base, stride, 1, 0, 4, 0)) {
        }
}
static NOINLINE void loop_percpu_add(pc_percpu_counter *c, int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++) pc_percpu_counter_add(c, 1);
}
static NOINLINE void loop_percpu_atomic(int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++) pc_fetch_add_i64(&slots[pc_current_cpu()].value, 1, PC_RELAXED);
}
static NOINLINE void loop_atomic(int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++) pc_fetch_add_i64(&shared.value, 1, PC_RELAXED);
}
static NOINLINE void loop_mutex(int64_t ops) {
    int64_t i;
    for (i = 0; i < ops; i++) {
        pthread_mutex_lock(&mutex);
        mutexed++;
        pthread_mutex_unlock(&mutex);
    }
}

enum { K_PLAIN, K_BARE_MIN, K_BARE_CPU, K_BARE_CID, K_PERCPU_ADD, K_PERCPU_ATOMIC, K_ATOMIC,
       K_MUTEX, K_N };
static const char *names[K_N] = {"plain add, own padded slot",
                                 "rseq section, bare minimal (cpu_id)",
                                 "rseq section, librseq (cpu_id)",
                                 "rseq section, librseq (mm_cid)",
                                 "pc_percpu_counter_add (PerCPUCounter)",
                                 "cpu id + locked add on per-CPU slot",
                                 "one shared atomic",
                                 "mutex"};

static void run_kind(int kind, int tid, int64_t ops) {
    switch (kind) {
    case K_PLAIN: loop_plain(tid, ops); break;
    case K_BARE_MIN: loop_bare_minimal(&counter, ops); break;
    case K_BARE_CPU: loop_bare_cpu_id(&counter, ops); break;
    case K_BARE_CID: loop_bare_mm_cid(&counter, ops); break;
    case K_PERCPU_ADD: loop_percpu_add(&counter, ops); break;
    case K_PERCPU_ATOMIC: loop_percpu_atomic(ops); break;
    case K_ATOMIC: loop_atomic(ops); break;
    case K_MUTEX: loop_mutex(ops); break;
    }
}

static void kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    run_kind(*(int *)arg, tid, ops);
    *done = ops;
}

#ifdef PC_RSEQ_MM_CID
#define SOURCE_IS_MM_CID() (pc_the_registry->proc.mode == PC_CPU_MM_CID)
#else
#define SOURCE_IS_MM_CID() 0
#endif

/* Under valgrind: a registered-looking area with id 0, and the library
 * told that sections run there. */
static void fake_rseq(int mm_cid) {
    int32_t *abi = (int32_t *)(void *)((char *)__builtin_thread_pointer() + rseq_off);
    abi[0] = 0;  /* cpu_id_start */
    abi[1] = 0;  /* cpu_id */
    abi[5] = 0;  /* node_id */
    abi[6] = 0;  /* mm_cid */
#ifdef PC_RSEQ_MM_CID
    {
        pc_proc *p = &pc_the_registry->proc;
        p->rseq_offset = rseq_off;
        p->mode = mm_cid ? PC_CPU_MM_CID : PC_CPU_RSEQ;
        p->id_field = mm_cid ? PC_RSEQ_MM_CID : PC_RSEQ_CPU_ID;
        p->sections = 1;
        memset(&pc_mod, 0, sizeof pc_mod);
        pc_adopt(p);
    }
#else
    (void)mm_cid;
    pc_cpu_mode = PC_CPU_RSEQ;
    pc_rseq_offset = rseq_off;
    pc_rseq_fast_offset = (int64_t)rseq_off;
#endif
}

int main(int argc, char **argv) {
    int callgrind = argc > 1 && !strcmp(argv[1], "callgrind");
    int cpu_id = callgrind && argc > 2 && !strcmp(argv[2], "cpu_id");
    int first = 1 + callgrind + cpu_id;
    int64_t ops = argc > first ? atoll(argv[first]) : (callgrind ? 1000000 : 20000000);
    int max_threads = argc > first + 1 ? atoi(argv[first + 1]) : 2;
    int64_t done[MAX_THREADS];
    double ns[K_N][8];
    int kind, t, rep, col;
    const ptrdiff_t *off = (const ptrdiff_t *)dlsym(RTLD_DEFAULT, "__rseq_offset");
    if (!off) {
        fprintf(stderr, "no __rseq_offset: glibc older than 2.35\n");
        return 2;
    }
    rseq_off = *off;
    if (pc_registry_create() != 0) return 2;
    counter.base = (char *)slots;
    counter.stride = sizeof(pc_cell);
#ifdef PC_RSEQ_MM_CID
    counter.reg = pc_the_registry;
#endif
    if (max_threads > MAX_THREADS || pc_nr_cpus() > NSLOTS) return 2;
    if (callgrind) {
        fake_rseq(!cpu_id);
        for (kind = 0; kind < K_N; kind++)
            if (kind != K_PERCPU_ATOMIC) run_kind(kind, 0, kind == K_MUTEX ? ops / 4 : ops);
        printf("callgrind: %lld ops per loop (mutex: a quarter), sections %s, counter %lld\n",
               (long long)ops, pc_rseq_live() ? "on" : "off",
               (long long)pc_percpu_counter_read(&counter));
        return 0;
    }
    printf("rseq live: %d, nr_cpus: %d, cpu source: %s\n", pc_rseq_live(), pc_nr_cpus(),
           pc_cpu_source_name());
    printf("%-40s", "ns per op per thread (best of 5)");
    for (t = 1; t <= max_threads; t *= 2) printf("  %6dT", t);
    printf("\n");
    for (kind = 0; kind < K_N; kind++) {
        printf("%-40s", names[kind]);
        for (t = 1, col = 0; t <= max_threads && col < 8; t *= 2, col++) {
            double best = 1e30;
            for (rep = 0; rep < 5; rep++) {
                pc_team team;
                memset(&team, 0, sizeof team);
                team.nthreads = t;
                team.ops = kind == K_MUTEX ? ops / 4 : ops;
                team.fn = kernel;
                team.arg = &kind;
                team.done = done;
                if (pc_team_run(&team)) return 1;
                if ((double)team.wall_ns / team.ops < best) best = (double)team.wall_ns / team.ops;
            }
            ns[kind][col] = best;
            printf("  %7.2f", best);
        }
        printf("\n");
    }
    {
        int bare = SOURCE_IS_MM_CID() ? K_BARE_CID : K_BARE_CPU;
        printf("%-40s", SOURCE_IS_MM_CID() ? "ratio add / librseq (mm_cid)"
                                           : "ratio add / librseq (cpu_id)");
        for (t = 1, col = 0; t <= max_threads && col < 8; t *= 2, col++)
            printf("  %7.2f", ns[K_PERCPU_ADD][col] / ns[bare][col]);
        printf("\n%-40s", "ratio add / bare minimal");
        for (t = 1, col = 0; t <= max_threads && col < 8; t *= 2, col++)
            printf("  %7.2f", ns[K_PERCPU_ADD][col] / ns[K_BARE_MIN][col]);
        printf("\n");
    }
    return 0;
}
