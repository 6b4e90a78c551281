/*
 * A ThreadSanitizer stress test of percpu.h: the counters' fallback paths,
 * the thread registry and its grace period (pc_synchronize), and the native
 * thread team that drives all of it.
 *
 * Built with -DPERCPU_NO_RSEQ_ASM: the rseq critical sections are outside
 * TSan's model (their single-writer guarantee comes from the kernel aborting
 * the section, which TSan cannot see, and the commit is a plain unlocked add
 * in asm that TSan does not instrument), so they are compiled out and every
 * per-CPU add takes the atomic fallback. Everything left is C11 atomics,
 * mutexes and thread create/join, which TSan models exactly; a data race it
 * reports is a missing happens-before edge in the header.
 *
 * The per-thread counter's exactness rests on the single-writer rule of its
 * slots (relaxed load + store by the owner): TSan sees those accesses as
 * atomics and cannot prove there is one writer; the exact totals below do.
 *
 * Usage: stress [--rseq-ids] [phase...]
 *   phases: init counters approx perthread grace fork bound (default: all of
 *   them), source (only prints where cpu ids come from)
 *   --rseq-ids: take cpu ids from the rseq area glibc registered (the default
 *   in the library) instead of forcing the getcpu fallback with
 *   PERCPU_NO_RSEQ=1.
 * Exit status 0 when every total is exact; TSan reports make it exit 66
 * (TSAN_OPTIONS=exitcode, or halt_on_error=1).
 */
#include "percpu.h"
#include "percpu/registry_init.h"
#include "percpu/team.h"

#include <sys/wait.h>

#define THREADS 4
#define OPS 20000

static int failures;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static void *zalloc_aligned(size_t n) {
    void *p = NULL;
    n = pc_round_up(n, PC_CACHELINE);
    if (posix_memalign(&p, PC_CACHELINE, n)) {
        perror("posix_memalign");
        exit(2);
    }
    memset(p, 0, n);
    return p;
}

static void run_team(pc_kernel_fn fn, void *arg, int threads, int64_t ops, int pin) {
    pc_team t;
    int64_t done[64];
    int i, err;
    memset(&t, 0, sizeof t);
    t.nthreads = threads;
    t.ops = ops;
    t.fn = fn;
    t.arg = arg;
    t.done = done;
    t.pin = pin;
    err = pc_team_run(&t);
    CHECK(err == 0, "pc_team_run: %s", strerror(err));
    for (i = 0; i < threads; i++) CHECK(done[i] == ops, "thread %d did %lld of %lld ops", i, (long long)done[i], (long long)ops);
}

/* ------------------------------------------------------------------------ */
/* The registry: created by the library's own pc_registry_create(), which     */
/* also installs the fork handlers (the fork phase runs them).                */

static pc_registry *registry(void) {
    if (!pc_the_registry && pc_registry_create() != 0) {
        perror("pc_registry_create");
        exit(2);
    }
    return pc_the_registry;
}

/* ------------------------------------------------------------------------ */
/* init: every thread's first call races this module's adoption of the        */
/* process-wide choice (the registry made it, once; each module copies it)    */

static void init_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    pc_percpu_counter *c = (pc_percpu_counter *)arg;
    int64_t i, bad = 0;
    (void)tid;
    for (i = 0; i < ops; i++) {
        /* The counter's slow path adopts from c->reg; the raw calls after
         * it need the adoption to be complete in this thread. */
        pc_percpu_counter_add(c, 1);
        int s = pc_current_slot();
        int cpu = pc_current_cpu();
        if (cpu < 0 || cpu >= pc_nr_cpus()) bad++;
        if (s < 0 || s >= pc_slots_in_use(&c->reg->proc)) bad++;
    }
    *done = bad ? -bad : ops;
}

static void phase_init(void) {
    pc_registry *reg = registry();
    pc_percpu_counter c;
    size_t n = (size_t)reg->proc.nr_cpus + 1;
    /* Forget this module's copy: the barrier releases every thread at once
     * into the adoption. */
    memset(&pc_mod, 0, sizeof pc_mod);
    c.base = (char *)zalloc_aligned(n * PC_CACHELINE);
    c.stride = PC_CACHELINE;
    c.reg = reg;
    run_team(init_kernel, &c, THREADS, 64, 0);
    CHECK(pc_percpu_counter_read(&c) == THREADS * 64, "init: counter %lld, expected %d",
          (long long)pc_percpu_counter_read(&c), THREADS * 64);
    free(c.base);
}

/* ------------------------------------------------------------------------ */
/* counters: every exact strategy, adds and reads from every thread           */

enum { K_ATOMIC, K_LOCKED, K_PERCPU, K_PERTHREAD, K_APPROX, K_STRIPED, K_COUNT };
static const char *const kind_names[K_COUNT] = {"atomic", "locked", "percpu", "perthread",
                                                "approx", "striped"};

typedef struct {
    int kind;
    void *c;
    int64_t sink; /* reads go here so that they are not optimised out */
} counter_job;

/* Deltas from -2 to 4, so that adds and subtracts cross the approx batch
 * both ways. */
static int64_t delta(int64_t i) { return (int64_t)(i % 7) - 2; }

static int64_t expected_total(int threads, int64_t ops) {
    int64_t s = 0, i;
    for (i = 0; i < ops; i++) s += delta(i);
    return s * threads;
}

static void counter_add(counter_job *j, int64_t v) {
    switch (j->kind) {
    case K_ATOMIC: pc_atomic_counter_add((pc_cell *)j->c, v); break;
    case K_LOCKED: pc_locked_counter_add((pc_locked_counter *)j->c, v); break;
    case K_PERCPU: pc_percpu_counter_add((pc_percpu_counter *)j->c, v); break;
    case K_PERTHREAD: pc_perthread_counter_add((pc_perthread_counter *)j->c, v); break;
    case K_APPROX: pc_approx_counter_add((pc_approx_counter *)j->c, v); break;
    case K_STRIPED: pc_striped_counter_add((pc_striped_counter *)j->c, v); break;
    }
}

static int64_t counter_read(counter_job *j) {
    switch (j->kind) {
    case K_ATOMIC: return pc_cell_read((pc_cell *)j->c);
    case K_LOCKED: return pc_locked_counter_read((pc_locked_counter *)j->c);
    case K_PERCPU: return pc_percpu_counter_read((pc_percpu_counter *)j->c);
    case K_PERTHREAD: return pc_perthread_counter_read((pc_perthread_counter *)j->c);
    case K_APPROX:
        return pc_approx_counter_read((pc_approx_counter *)j->c) +
               pc_approx_counter_approx((pc_approx_counter *)j->c);
    case K_STRIPED: return pc_striped_counter_read((pc_striped_counter *)j->c);
    }
    return 0;
}

static void counter_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    counter_job *j = (counter_job *)arg;
    int64_t i, sink = 0;
    (void)tid;
    for (i = 0; i < ops; i++) {
        counter_add(j, delta(i));
        if ((i & 255) == 0) sink += counter_read(j);
    }
    /* Relaxed: the sink only keeps the reads alive. */
    pc_fetch_add_i64(&j->sink, sink, PC_RELAXED);
    *done = ops;
}

static void *counter_new(int kind, size_t *stride_out) {
    size_t stride = PC_CACHELINE, n = (size_t)pc_nr_cpus();
    *stride_out = stride;
    switch (kind) {
    case K_ATOMIC: return zalloc_aligned(sizeof(pc_cell));
    case K_LOCKED: {
        pc_locked_counter *c = (pc_locked_counter *)zalloc_aligned(sizeof *c);
        if (pc_locked_counter_init(c, registry())) exit(2);
        return c;
    }
    case K_PERCPU: {
        pc_percpu_counter *c = (pc_percpu_counter *)zalloc_aligned(sizeof *c);
        /* A slot per possible CPU and the shared one, as a pool gives. */
        c->base = (char *)zalloc_aligned((n + 1) * stride);
        c->stride = stride;
        c->reg = registry();
        return c;
    }
    case K_PERTHREAD: {
        pc_perthread_counter *c = (pc_perthread_counter *)zalloc_aligned(sizeof *c);
        /* Fewer slots than threads: some threads take the overflow cell. */
        c->capacity = 2;
        c->slots = (char *)zalloc_aligned((size_t)c->capacity * PC_CACHELINE);
        c->reg = registry();
        return c;
    }
    case K_APPROX: {
        pc_approx_counter *c = (pc_approx_counter *)zalloc_aligned(sizeof *c);
        if (pc_approx_counter_init(c, registry())) exit(2);
        c->base = (char *)zalloc_aligned((n + 1) * stride);
        c->stride = stride;
        c->batch = 4; /* small: most adds fold */
        return c;
    }
    case K_STRIPED: {
        pc_striped_counter *c = (pc_striped_counter *)zalloc_aligned(sizeof *c);
        c->mask = 1; /* two cells for four threads: CAS failures move threads */
        c->cells = (pc_cell *)zalloc_aligned(2 * sizeof(pc_cell));
        return c;
    }
    }
    return NULL;
}

static void counter_free(int kind, void *p) {
    switch (kind) {
    case K_LOCKED: pc_locked_counter_fini((pc_locked_counter *)p, registry()); break;
    case K_PERCPU: free(((pc_percpu_counter *)p)->base); break;
    case K_PERTHREAD: free(((pc_perthread_counter *)p)->slots); break;
    case K_APPROX:
        pc_approx_counter_fini((pc_approx_counter *)p, registry());
        free(((pc_approx_counter *)p)->base);
        break;
    case K_STRIPED: free(((pc_striped_counter *)p)->cells); break;
    }
    free(p);
}

static void phase_counter(int kind) {
    counter_job j;
    size_t stride;
    int64_t got, want;
    int round;
    j.kind = kind;
    j.sink = 0;
    j.c = counter_new(kind, &stride);
    /* Two rounds: the second round's threads are new threads, which take
     * over the registry records (and per-thread slots) the first round's
     * threads gave back when they exited. */
    for (round = 0; round < 2; round++) run_team(counter_kernel, &j, THREADS, OPS, round);
    want = expected_total(THREADS, OPS) * 2;
    if (kind == K_APPROX) {
        pc_approx_counter *c = (pc_approx_counter *)j.c;
        int64_t approx = pc_approx_counter_approx(c);
        got = pc_approx_counter_read(c);
        CHECK(llabs(got - approx) < c->batch * pc_nr_cpus(),
              "approx %lld too far from value %lld", (long long)approx, (long long)got);
    } else {
        got = counter_read(&j);
    }
    CHECK(got == want, "%s counter: %lld, expected %lld", kind_names[kind], (long long)got,
          (long long)want);
    fprintf(stderr, "%s counter: %lld after %d threads x %d ops x 2 rounds\n", kind_names[kind],
            (long long)got, THREADS, OPS);
    counter_free(kind, j.c);
}

static void phase_counters(void) {
    int k;
    for (k = 0; k < K_COUNT; k++)
        if (k != K_PERTHREAD && k != K_APPROX) phase_counter(k);
}

static void phase_approx(void) { phase_counter(K_APPROX); }

static void phase_perthread(void) { phase_counter(K_PERTHREAD); }

/* ------------------------------------------------------------------------ */
/* grace: readers in fallback sections against a writer that retires objects */
/*
 * The writer publishes a new object, runs a grace period, then poisons the
 * old one with a plain store and frees it. A reader that could still hold
 * the old object after pc_synchronize() returned is a use after free: TSan
 * reports it as a race with the poisoning store or with free(), and the
 * reader also counts the poison it saw.
 */

#define LIVE 0x4C495645LL
#define DEAD 0x44454144LL

typedef struct {
    int64_t magic;
    int64_t generation;
} grace_obj;

typedef struct {
    grace_obj *current;
    int32_t stop;
    int64_t swaps;
    int64_t bad;       /* readers that saw a dead object */
    int64_t sections;  /* sections run by all readers */
    int64_t progress[THREADS]; /* sections run by each reader */
} grace_job;

static void grace_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    grace_job *g = (grace_job *)arg;
    pc_registry *reg = pc_the_registry;
    if (tid == 0) {
        int64_t i;
        for (i = 0; i < g->swaps; i++) {
            /* With 2 CPUs and 4 threads the writer could finish before a
             * reader runs: let every reader run a section per swap. */
            int r;
            for (r = 1; r < THREADS; r++) {
                int64_t seen = pc_load_i64(&g->progress[r], PC_RELAXED);
                while (pc_load_i64(&g->progress[r], PC_RELAXED) == seen) sched_yield();
            }
            grace_obj *fresh = (grace_obj *)malloc(sizeof *fresh), *old;
            fresh->magic = LIVE;
            fresh->generation = i + 1;
            /* Release: a reader that loads the pointer sees the object's
             * initialisation. */
            old = (grace_obj *)pc_exchange_ptr((void **)&g->current, fresh, PC_RELEASE);
#ifndef STRESS_BREAK_GRACE
            pc_synchronize(reg);
#endif
            old->magic = DEAD;
            free(old);
        }
        /* Relaxed: the readers only need to stop eventually; the join
         * orders everything else. */
        pc_store_i32(&g->stop, 1, PC_RELAXED);
        *done = ops;
        return;
    }
    {
        pc_thread_rec *rec = pc_thread_record(reg);
        int64_t n = 0, bad = 0;
        if (!rec) {
            fprintf(stderr, "registry full\n");
            exit(2);
        }
        while (!pc_load_i32(&g->stop, PC_RELAXED)) {
            grace_obj *p;
            pc_section_enter(reg, rec);
            /* Acquire: pairs with the writer's release exchange. */
            p = (grace_obj *)pc_load_ptr((void **)&g->current, PC_ACQUIRE);
            if (p->magic != LIVE) bad++;
            pc_section_exit(rec);
            n++;
            /* Relaxed: progress for the writer's pacing only. */
            pc_store_i64(&g->progress[tid], n, PC_RELAXED);
            /* Two CPUs, four threads: leave room for the writer. */
            if ((n & 15) == 0) sched_yield();
        }
        pc_fetch_add_i64(&g->bad, bad, PC_RELAXED);
        pc_fetch_add_i64(&g->sections, n, PC_RELAXED);
        *done = ops;
    }
}

static void grace_run(const char *what) {
    grace_job g;
    memset(&g, 0, sizeof g);
    g.current = (grace_obj *)malloc(sizeof *g.current);
    g.current->magic = LIVE;
    g.swaps = 2000;
    run_team(grace_kernel, &g, THREADS, 1, 0);
    CHECK(g.bad == 0, "grace (%s): readers saw %lld dead objects", what, (long long)g.bad);
    CHECK(g.current->generation == g.swaps, "grace (%s): generation %lld", what,
          (long long)g.current->generation);
    free(g.current);
    fprintf(stderr, "grace (%s): %lld swaps, %lld reader sections\n", what, (long long)g.swaps,
            (long long)g.sections);
}

static void phase_grace(void) {
    pc_registry *reg = registry();
    int32_t registered = reg->membarrier;
    reg->membarrier = PC_MB_NONE;
    grace_run("fences");
    /* The expedited flavour: readers only order their seq store with a
     * compiler barrier, the writer's membarrier() fences them. */
    if (registered != PC_MB_NONE) {
        reg->membarrier = PC_MB_EXPEDITED;
        grace_run("membarrier");
    } else {
        fprintf(stderr, "grace (membarrier): not registered here, not run\n");
    }
    reg->membarrier = registered;
}

/* ------------------------------------------------------------------------ */
/* fork: the library's atfork handlers while other threads hold and release  */
/* tracked locks; each child must find every lock free and the counts whole.  */

typedef struct {
    pc_locked_counter *locked;
    pc_approx_counter *approx;
    int32_t stop;
    int64_t children;
    int64_t bad;
} fork_job;

static void fork_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    fork_job *f = (fork_job *)arg;
    int64_t i = 0;
    (void)ops;
    if (tid == 0) {
        for (i = 0; i < 20; i++) {
            pid_t pid = fork();
            int status = 0;
            if (pid == 0) {
                /* Only this thread exists here: a lock another thread held
                 * at fork would block forever. */
                pc_locked_counter_add(f->locked, 1);
                pc_approx_counter_add(f->approx, 1);
                (void)pc_approx_counter_read(f->approx);
                _exit(0);
            }
            if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
                WEXITSTATUS(status) != 0)
                f->bad++;
            f->children++;
        }
        /* Release: the workers see the stop flag and stop. */
        pc_store_i32(&f->stop, 1, PC_RELEASE);
        *done = ops;
        return;
    }
    while (!pc_load_i32(&f->stop, PC_ACQUIRE)) {
        pc_locked_counter_add(f->locked, 1);
        pc_approx_counter_add(f->approx, 1);
        i++;
    }
    *done = ops;
    (void)i;
}

static void phase_fork(void) {
    size_t stride;
    fork_job f;
    memset(&f, 0, sizeof f);
    f.locked = (pc_locked_counter *)counter_new(K_LOCKED, &stride);
    f.approx = (pc_approx_counter *)counter_new(K_APPROX, &stride);
    run_team(fork_kernel, &f, THREADS, 1, 0);
    CHECK(f.bad == 0, "fork: %lld of %lld children failed or hung", (long long)f.bad,
          (long long)f.children);
    CHECK(pc_locked_counter_read(f.locked) == pc_approx_counter_read(f.approx),
          "fork: locked %lld != approx %lld", (long long)pc_locked_counter_read(f.locked),
          (long long)pc_approx_counter_read(f.approx));
    fprintf(stderr, "fork: %lld children, %lld adds beside them\n", (long long)f.children,
            (long long)pc_locked_counter_read(f.locked));
    counter_free(K_LOCKED, f.locked);
    counter_free(K_APPROX, f.approx);
}

/* ------------------------------------------------------------------------ */
/* bound: the slot bound's ordering argument (percpu/cpu.h, pc_proc), tried.  */
/*
 * A private pc_proc pretends to have BOUND_IDS possible CPUs and starts with
 * bound 0. Each writer owns one object (an array of slots) and adds 1 to
 * slots picked all over [0, BOUND_IDS), raising the bound first, exactly as
 * the library's slow paths do; every so often it publishes how many adds it
 * made (release). The reader thread checks, for each writer, that the sum
 * over [0, bound) (pc_slots_sum: an acquire load of the bound) counts at
 * least the adds published: an add whose raise the sum's bound load missed
 * would be missing. At the end, as an allocator reusing the objects would,
 * it zeroes [0, bound) of each object with plain stores and then checks
 * every slot is zero: a write beyond the bound it loaded would show, and a
 * write not ordered before its zeroing would be a race for TSan.
 */
#define BOUND_IDS 64
#define BOUND_WRITERS (THREADS - 1)

typedef struct {
    pc_proc proc;
    int64_t *objs[BOUND_WRITERS];  /* BOUND_IDS + 1 slots each, a line apart */
    int64_t published[BOUND_WRITERS];
    int64_t short_sums;  /* reader saw fewer adds than published */
    int64_t checks;
    int32_t writers_done;
} bound_job;

#define BOUND_STRIDE (PC_CACHELINE / sizeof(int64_t))

static void bound_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    bound_job *b = (bound_job *)arg;
    if (tid > 0) {
        int w = tid - 1;
        int64_t *obj = b->objs[w];
        int64_t i;
        for (i = 0; i < ops; i++) {
            /* The ids spread over a range that grows through the run, so
             * raises keep coming while the reader reads. */
            int64_t range = 1 + i * BOUND_IDS / ops;
            uint32_t id = (uint32_t)((i * 7 + w * 13) % range);
            if ((int32_t)id >= pc_load_i32(&b->proc.bound, PC_ACQUIRE)) pc_slot_raise(&b->proc, id);
            /* One writer per object, as a slot has in a section: relaxed
             * load and store (readers run concurrently). */
            pc_store_i64(&obj[id * BOUND_STRIDE],
                         pc_load_i64(&obj[id * BOUND_STRIDE], PC_RELAXED) + 1, PC_RELAXED);
            /* Release: a reader that sees the count sees the adds. */
            if ((i & 63) == 63) {
                pc_store_i64(&b->published[w], i + 1, PC_RELEASE);
                /* Two CPUs, four threads: let the reader in. */
                if ((i & 1023) == 1023) sched_yield();
            }
        }
        pc_store_i64(&b->published[w], ops, PC_RELEASE);
        pc_fetch_add_i32(&b->writers_done, 1, PC_RELEASE);
        *done = ops;
        return;
    }
    {
        int w, finished;
        do {
            finished = pc_load_i32(&b->writers_done, PC_ACQUIRE) == BOUND_WRITERS;
            for (w = 0; w < BOUND_WRITERS; w++) {
                int64_t seen = pc_load_i64(&b->published[w], PC_ACQUIRE);
                int64_t sum = pc_slots_sum(&b->proc, (const char *)b->objs[w],
                                           BOUND_STRIDE * sizeof(int64_t));
                if (sum < seen) b->short_sums++;
                b->checks++;
            }
            sched_yield();
        } while (!finished);
        /* The allocator's zeroing: [0, bound) only, then every slot. */
        for (w = 0; w < BOUND_WRITERS; w++) {
            int32_t c, n = pc_slots_in_use(&b->proc);
            for (c = 0; c < n; c++) b->objs[w][c * BOUND_STRIDE] = 0;
            for (c = 0; c <= BOUND_IDS; c++)
                if (b->objs[w][c * BOUND_STRIDE] != 0) b->short_sums += 1000000;
        }
        *done = ops;
    }
}

static void phase_bound(void) {
    bound_job *b = (bound_job *)zalloc_aligned(sizeof *b);
    int w;
    b->proc.nr_cpus = BOUND_IDS;
    b->proc.mode = PC_CPU_GETCPU;
    for (w = 0; w < BOUND_WRITERS; w++)
        b->objs[w] = (int64_t *)zalloc_aligned((BOUND_IDS + 1) * PC_CACHELINE);
    run_team(bound_kernel, b, THREADS, OPS, 0);
    CHECK(b->short_sums == 0, "bound: %lld sums missed published adds or slots stayed dirty",
          (long long)b->short_sums);
    CHECK(b->proc.bound == BOUND_IDS, "bound: %d, expected %d", b->proc.bound, BOUND_IDS);
    fprintf(stderr, "bound: raised to %d by %d writers, %lld reader checks\n", b->proc.bound,
            BOUND_WRITERS, (long long)b->checks);
    for (w = 0; w < BOUND_WRITERS; w++) free(b->objs[w]);
    free(b);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    int i, rseq_ids = 0, any = 0;
    for (i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--rseq-ids")) rseq_ids = 1;
    if (!rseq_ids) setenv("PERCPU_NO_RSEQ", "1", 1);
    /* The process-wide choice is made here, before any thread exists, as it
     * is at import in the library (pc_registry_create); the init phase
     * races this module's adoption of it on purpose. */
    (void)registry();
    for (i = 1; i < argc; i++) {
        const char *p = argv[i];
        if (!strcmp(p, "--rseq-ids")) continue;
        any = 1;
        if (!strcmp(p, "init")) phase_init();
        else if (!strcmp(p, "counters")) phase_counters();
        else if (!strcmp(p, "perthread")) phase_perthread();
        else if (!strcmp(p, "approx")) phase_approx();
        else if (!strcmp(p, "source")) (void)pc_cpu_source();
        else if (!strcmp(p, "grace")) phase_grace();
        else if (!strcmp(p, "fork")) phase_fork();
        else if (!strcmp(p, "bound")) phase_bound();
        else {
            fprintf(stderr, "unknown phase %s\n", p);
            return 2;
        }
    }
    if (!any) {
        phase_init();
        phase_counters();
        phase_approx();
        phase_perthread();
        phase_grace();
        phase_fork();
        phase_bound();
    }
    fprintf(stderr, "cpu source %s, nr_cpus %d, rseq fast paths %s: %s\n", pc_cpu_source_name(),
            pc_nr_cpus(), pc_rseq_live() ? "on" : "off", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
