/*
 * percpu.h: the one C header of percpu.
 *
 * Atomics with explicit memory orders, the current CPU id (rseq area, then
 * sched_getcpu(), then a per-thread index), membarrier, the cache-line size,
 * the thread registry used by the fallback grace period and by per-thread
 * slots, the rseq per-CPU add, and the native thread team.
 *
 * Everything is `static` so that each extension module (and each user module
 * that cimports a percpu .pxd) carries its own copy; state that must be one per
 * process (the thread registry) lives in percpu._core and is reached through a
 * pointer that every object carries.
 */
#ifndef PERCPU_H
#define PERCPU_H

/* Every module includes all of it and uses a part. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Compiler helpers                                                          */

#define PC_LIKELY(x) __builtin_expect(!!(x), 1)
#define PC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PC_COLD __attribute__((cold, noinline))
#define PC_MAYBE_UNUSED __attribute__((unused))
/* Thread-locals of a dlopen()ed module default to the general-dynamic model:
 * a __tls_get_addr() call per access (3 ns on a 0.3 ns path). Initial-exec
 * reads them at a fixed offset from the thread pointer; glibc reserves static
 * TLS space for the few bytes that late-loaded modules ask for. */
#define PC_TLS __thread __attribute__((tls_model("initial-exec")))

/* The cache-line size that separates two slots that must not false-share.
 * x86-64 lines are 64 bytes; arm64 (Apple, Neoverse) and POWER move 128 bytes
 * at a time, so padding to 64 there still shares. */
#if defined(__x86_64__) || defined(__i386__)
#define PC_CACHELINE 64
#else
#define PC_CACHELINE 128
#endif
#define PC_CACHELINE_ALIGNED __attribute__((aligned(PC_CACHELINE)))

static inline size_t pc_round_up(size_t n, size_t align) {
    return (n + align - 1) & ~(align - 1);
}

static inline void pc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* ------------------------------------------------------------------------ */
/* Atomics. Every call site passes the order as a literal and says why it is  */
/* enough; these wrappers exist so that every access to shared memory goes    */
/* through one visible place.                                                 */

#define PC_RELAXED __ATOMIC_RELAXED
#define PC_ACQUIRE __ATOMIC_ACQUIRE
#define PC_RELEASE __ATOMIC_RELEASE
#define PC_ACQ_REL __ATOMIC_ACQ_REL
#define PC_SEQ_CST __ATOMIC_SEQ_CST

#define PC_DEFINE_ATOMICS(T, S)                                                 \
    static inline T pc_load_##S(const T *p, int mo) {                          \
        return __atomic_load_n(p, mo);                                          \
    }                                                                           \
    static inline void pc_store_##S(T *p, T v, int mo) {                       \
        __atomic_store_n(p, v, mo);                                             \
    }                                                                           \
    static inline T pc_exchange_##S(T *p, T v, int mo) {                       \
        return __atomic_exchange_n(p, v, mo);                                   \
    }                                                                           \
    /* On failure *expected receives the current value. */                     \
    static inline int pc_cas_##S(T *p, T *expected, T desired, int mo_ok,      \
                                 int mo_fail) {                                 \
        return __atomic_compare_exchange_n(p, expected, desired, 0, mo_ok,     \
                                           mo_fail);                            \
    }

#define PC_DEFINE_ARITH(T, S)                                                   \
    static inline T pc_fetch_add_##S(T *p, T v, int mo) {                      \
        return __atomic_fetch_add(p, v, mo);                                    \
    }                                                                           \
    static inline T pc_add_fetch_##S(T *p, T v, int mo) {                      \
        return __atomic_add_fetch(p, v, mo);                                    \
    }

PC_DEFINE_ATOMICS(int32_t, i32)
PC_DEFINE_ATOMICS(int64_t, i64)
PC_DEFINE_ATOMICS(uint64_t, u64)
typedef void *pc_voidp;
PC_DEFINE_ATOMICS(pc_voidp, ptr)
PC_DEFINE_ARITH(int32_t, i32)
PC_DEFINE_ARITH(int64_t, i64)
PC_DEFINE_ARITH(uint64_t, u64)

static inline void pc_fence(int mo) { __atomic_thread_fence(mo); }
/* Orders the compiler only: the other side pays for the hardware fence. */
static inline void pc_compiler_barrier(void) { __atomic_signal_fence(PC_SEQ_CST); }

/* ------------------------------------------------------------------------ */
/* Time                                                                      */

static inline int64_t pc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Possible CPUs                                                             */

/* Parses a kernel cpu list ("0-3,8-11") and returns its highest id + 1. */
static int pc_parse_cpulist_max(const char *s) {
    int best = -1;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b;
        if (end == s) break;
        b = a;
        if (*end == '-') {
            s = end + 1;
            b = strtol(s, &end, 10);
            if (end == s) break;
        }
        if (b > best) best = (int)b;
        s = end;
        if (*s == ',') s++; else break;
    }
    return best + 1;
}

static int pc_nr_cpus_cached;

/* The number of per-CPU slots: every possible CPU, so that any id the kernel
 * can ever hand out (after hotplug too) indexes inside the array. */
static inline int pc_nr_cpus(void) {
    int n = pc_load_i32(&pc_nr_cpus_cached, PC_RELAXED);
    if (PC_LIKELY(n > 0)) return n;
    {
        char buf[256];
        FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
        n = 0;
        if (f) {
            if (fgets(buf, sizeof buf, f)) n = pc_parse_cpulist_max(buf);
            fclose(f);
        }
        {
            long conf = sysconf(_SC_NPROCESSORS_CONF);
            if (conf > n) n = (int)conf;
        }
        if (n <= 0) n = 1;
    }
    /* Racing initialisers compute the same value: relaxed is enough. */
    pc_store_i32(&pc_nr_cpus_cached, n, PC_RELAXED);
    return n;
}

/* Whether this build has the rseq critical sections (x86-64 inline asm). */
#if defined(__x86_64__) && !defined(PERCPU_NO_RSEQ_ASM)
#define PC_HAVE_RSEQ_ASM 1
#else
#define PC_HAVE_RSEQ_ASM 0
#endif

/* ------------------------------------------------------------------------ */
/* Current CPU: rseq area, sched_getcpu(), or a per-thread index             */

enum {
    PC_CPU_UNINIT = 0,
    PC_CPU_INITIALISING = -1, /* one thread is deciding; the others wait */
    PC_CPU_RSEQ = 1,      /* glibc registered rseq; cpu_id read from its area */
    PC_CPU_GETCPU = 2,    /* sched_getcpu() (vDSO) */
    PC_CPU_THREAD = 3     /* neither: a per-thread index, modulo nr_cpus */
};

/* The kernel's struct rseq, as far as we use it. */
struct pc_rseq_abi {
    uint32_t cpu_id_start;
    int32_t cpu_id;
    uint64_t rseq_cs;
    uint32_t flags;
};

static int pc_cpu_mode;          /* one of PC_CPU_*, per module */
static ptrdiff_t pc_rseq_offset; /* glibc's __rseq_offset from the thread pointer */
/* The same offset where the counter fast path may run rseq sections, else 0
 * (the rseq area never sits at the thread pointer itself). The value is its
 * own payload, so the fast path reads it relaxed: one load, no ordering. */
static int64_t pc_rseq_fast_offset;
static int pc_next_thread_slot;
static PC_TLS int pc_tls_thread_slot = -1;

static inline struct pc_rseq_abi *pc_rseq_area(void) {
    return (struct pc_rseq_abi *)((char *)__builtin_thread_pointer() + pc_rseq_offset);
}

static int pc_env_no_rseq(void) {
    const char *e = getenv("PERCPU_NO_RSEQ");
    return e && *e && strcmp(e, "0") != 0;
}

/* Decides once per module where cpu ids come from. Looking the glibc symbols
 * up with dlsym (instead of linking them) keeps the module loadable on glibc
 * older than 2.35, where it simply uses the fallback.
 *
 * One thread wins the CAS from UNINIT, writes pc_rseq_offset and publishes
 * the mode with a release store; every reader of the mode uses acquire, so a
 * thread that sees PC_CPU_RSEQ also sees the offset (plain loads on x86). */
static PC_COLD int pc_cpu_init(void) {
    int mode = PC_CPU_UNINIT, spins = 0;
    if (!pc_cas_i32(&pc_cpu_mode, &mode, PC_CPU_INITIALISING, PC_ACQUIRE, PC_ACQUIRE)) {
        while ((mode = pc_load_i32(&pc_cpu_mode, PC_ACQUIRE)) == PC_CPU_INITIALISING) {
            if (++spins < 100) pc_cpu_relax();
            else sched_yield();
        }
        return mode;
    }
    mode = PC_CPU_THREAD;
    if (!pc_env_no_rseq()) {
#if defined(__x86_64__)
        const ptrdiff_t *off = (const ptrdiff_t *)dlsym(RTLD_DEFAULT, "__rseq_offset");
        const unsigned int *size = (const unsigned int *)dlsym(RTLD_DEFAULT, "__rseq_size");
        /* Size 0 means glibc did not register (glibc.pthread.rseq=0 or a
         * kernel without rseq); then cpu_id also reads -2 (unregistered). */
        if (off && size && *size >= 20) {
            pc_rseq_offset = *off;
            if (pc_load_i32(&pc_rseq_area()->cpu_id, PC_RELAXED) >= 0) mode = PC_CPU_RSEQ;
        }
#endif
    }
    if (mode != PC_CPU_RSEQ && sched_getcpu() >= 0) mode = PC_CPU_GETCPU;
    (void)pc_nr_cpus();
    if (PC_HAVE_RSEQ_ASM && mode == PC_CPU_RSEQ)
        pc_store_i64(&pc_rseq_fast_offset, (int64_t)pc_rseq_offset, PC_RELAXED);
    pc_store_i32(&pc_cpu_mode, mode, PC_RELEASE);
    return mode;
}

static inline int pc_cpu_source(void) {
    int mode = pc_load_i32(&pc_cpu_mode, PC_ACQUIRE);
    return PC_LIKELY(mode > PC_CPU_UNINIT) ? mode : pc_cpu_init();
}

static PC_COLD int pc_thread_slot_assign(void) {
    /* Only distinctness matters; relaxed is enough. */
    int s = pc_fetch_add_i32(&pc_next_thread_slot, 1, PC_RELAXED);
    pc_tls_thread_slot = s;
    return s;
}

static PC_COLD int pc_current_cpu_slow(int mode) {
    int n = pc_nr_cpus(), cpu = -1;
    if (mode == PC_CPU_RSEQ) cpu = pc_load_i32(&pc_rseq_area()->cpu_id, PC_RELAXED);
    else if (mode == PC_CPU_GETCPU) cpu = sched_getcpu();
    if (cpu < 0 || cpu >= n) {
        int s = pc_tls_thread_slot;
        if (s < 0) s = pc_thread_slot_assign();
        cpu = s % n;
    }
    return cpu;
}

/* The CPU this thread ran on a moment ago: always in [0, nr_cpus). A hint
 * only (the thread may migrate right after); callers that need exclusivity
 * use an rseq critical section or an atomic on the slot. */
static inline int pc_current_cpu(void) {
    int mode = pc_cpu_source();
    if (PC_LIKELY(mode == PC_CPU_RSEQ)) {
        /* The kernel writes cpu_id on every return to user space of this
         * thread; a relaxed load sees a value that was true recently. */
        int cpu = pc_load_i32(&pc_rseq_area()->cpu_id, PC_RELAXED);
        if (PC_LIKELY((unsigned)cpu < (unsigned)pc_load_i32(&pc_nr_cpus_cached, PC_RELAXED)))
            return cpu;
    }
    return pc_current_cpu_slow(mode);
}

static inline const char *pc_cpu_source_name(void) {
    switch (pc_cpu_source()) {
    case PC_CPU_RSEQ: return "rseq";
    case PC_CPU_GETCPU: return "getcpu";
    default: return "thread";
    }
}

/* ------------------------------------------------------------------------ */
/* The rseq per-CPU add: the user-space this_cpu_add()                       */
/*
 * The critical section loads this thread's cpu_id from its rseq area, indexes
 * the slot and adds with one plain (unlocked) add, which is the commit. If the
 * thread is preempted, migrated or signalled before the commit, the kernel
 * moves it to the abort label instead and nothing was written, so no other
 * thread can have touched the slot in between: the slot of a CPU is written
 * only by the thread running on that CPU. Readers of the slot use relaxed
 * atomic loads; an aligned 8-byte store is single-copy atomic on x86-64, so a
 * reader sees the old or the new value, never a torn one.
 *
 * The descriptor goes in a writable section ("aw") so that a shared object
 * needs no text relocation; the abort handler is preceded by glibc's rseq
 * signature (0x53053053, encoded as the operand of an ud1 so that it can never
 * be executed by falling into it).
 */
#if PC_HAVE_RSEQ_ASM

#define PC_RSEQ_CS_BEGIN                                                       \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                       \
    ".balign 32\n\t"                                                           \
    "333:\n\t"                                                                 \
    ".long 0, 0\n\t"                                                           \
    ".quad 111f, 222f - 111f, 444f\n\t"                                        \
    ".popsection\n\t"                                                          \
    "leaq 333b(%%rip), %%rax\n\t"                                              \
    "movq %%rax, %%fs:8(%[off])\n\t"                                           \
    "111:\n\t"

#define PC_RSEQ_CS_END                                                         \
    "222:\n\t"                                                                 \
    ".pushsection __rseq_failure, \"ax\"\n\t"                                  \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                               \
    ".long 0x53053053\n\t"                                                     \
    "444:\n\t"                                                                 \
    "jmp %l[abort]\n\t"                                                        \
    ".popsection\n\t"

/* The slots as the asm's memory operand: a type of their own, so that type-
 * based alias analysis knows the section cannot write a size_t or a pointer
 * (a counter's stride and base stay in registers across a loop of adds). */
struct pc_slot_mem { int64_t v; };

/* Adds v to the current CPU's slot base + cpu * stride, given the rseq area's
 * offset. Returns 0 when done, 1 when the section was aborted (nothing
 * written; the caller retries). */
static inline int pc_rseq_add_i64_at(ptrdiff_t off, char *base, size_t stride, int64_t v) {
    /* No "memory" clobber: a counter add orders nothing, and naming the
     * slots as the asm's in/out memory operand ("+m": it reads and writes
     * them, so no value the compiler knows of a slot survives the asm) lets
     * the compiler keep base, stride and the rseq offset in registers across
     * a loop of adds. Outputs in asm goto need GCC >= 11 or Clang >= 11. */
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 "movslq %%fs:4(%[off]), %%rax\n\t"
                 "imulq %[stride], %%rax\n\t"
                 "addq %[v], (%[base], %%rax)\n\t"
                 PC_RSEQ_CS_END
                 : "+m"(*(struct pc_slot_mem(*)[])(void *)base)
                 : [off] "r"(off), [stride] "r"(stride), [base] "r"(base), [v] "r"(v)
                 : "rax", "cc"
                 : abort);
    return 0;
abort:
    return 1;
}

static inline int pc_rseq_add_i64(char *base, size_t stride, int64_t v) {
    return pc_rseq_add_i64_at(pc_rseq_offset, base, stride, v);
}

/* The same, but only while *mode == 0 (the per-CPU mode of a reference);
 * returns 2 without writing when *mode != 0. The mode is read inside the
 * section, so a thread that saw 0 and was then overtaken by a mode switch
 * followed by membarrier(PRIVATE_EXPEDITED_RSEQ) is aborted before it commits:
 * that is the grace period. */
static inline int pc_rseq_add_if_i64(const int32_t *mode, char *base, size_t stride,
                                     int64_t v) {
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 "cmpl $0, (%[mode])\n\t"
                 "jne %l[not_fast]\n\t"
                 "movslq %%fs:4(%[off]), %%rax\n\t"
                 "imulq %[stride], %%rax\n\t"
                 "addq %[v], (%[base], %%rax)\n\t"
                 PC_RSEQ_CS_END
                 : /* no outputs */
                 : [off] "r"(pc_rseq_offset), [stride] "r"(stride), [base] "r"(base),
                   [v] "r"(v), [mode] "r"(mode)
                 : "rax", "memory", "cc"
                 : abort, not_fast);
    return 0;
abort:
    return 1;
not_fast:
    return 2;
}
/* Adds v to the current CPU's slot only if the result stays within
 * (-bound, bound); returns 0 done, 1 aborted, 2 out of bound (nothing written).
 * The store is the commit, so only the owner CPU's thread writes the slot. */
static inline int pc_rseq_add_bounded_i64(char *base, size_t stride, int64_t v, int64_t bound) {
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 "movslq %%fs:4(%[off]), %%rax\n\t"
                 "imulq %[stride], %%rax\n\t"
                 "addq %[base], %%rax\n\t"
                 "movq (%%rax), %%rcx\n\t"
                 "addq %[v], %%rcx\n\t"
                 "movq %%rcx, %%rdx\n\t"
                 "negq %%rdx\n\t"
                 "cmovsq %%rcx, %%rdx\n\t"
                 "cmpq %[bound], %%rdx\n\t"
                 "jge %l[out_of_bound]\n\t"
                 "movq %%rcx, (%%rax)\n\t"
                 PC_RSEQ_CS_END
                 : /* no outputs */
                 : [off] "r"(pc_rseq_offset), [stride] "r"(stride), [base] "r"(base),
                   [v] "r"(v), [bound] "r"(bound)
                 : "rax", "rcx", "rdx", "memory", "cc"
                 : abort, out_of_bound);
    return 0;
abort:
    return 1;
out_of_bound:
    return 2;
}

/* Empties the current CPU's slot: *out = slot + v, slot = 0 (the commit).
 * Returns 0 done, 1 aborted (nothing written but *out, which is then stale). */
static inline int pc_rseq_take_i64(char *base, size_t stride, int64_t v, int64_t *out) {
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 "movslq %%fs:4(%[off]), %%rax\n\t"
                 "imulq %[stride], %%rax\n\t"
                 "addq %[base], %%rax\n\t"
                 "movq (%%rax), %%rcx\n\t"
                 "addq %[v], %%rcx\n\t"
                 "movq %%rcx, (%[out])\n\t"
                 "movq $0, (%%rax)\n\t"
                 PC_RSEQ_CS_END
                 : /* no outputs */
                 : [off] "r"(pc_rseq_offset), [stride] "r"(stride), [base] "r"(base),
                   [v] "r"(v), [out] "r"(out)
                 : "rax", "rcx", "memory", "cc"
                 : abort);
    return 0;
abort:
    return 1;
}
#else
static inline int pc_rseq_add_bounded_i64(char *base, size_t stride, int64_t v, int64_t bound) {
    (void)base; (void)stride; (void)v; (void)bound;
    return 1;
}
static inline int pc_rseq_take_i64(char *base, size_t stride, int64_t v, int64_t *out) {
    (void)base; (void)stride; (void)v; (void)out;
    return 1;
}
static inline int pc_rseq_add_i64_at(ptrdiff_t off, char *base, size_t stride, int64_t v) {
    (void)off; (void)base; (void)stride; (void)v;
    return 1;
}
static inline int pc_rseq_add_i64(char *base, size_t stride, int64_t v) {
    (void)base; (void)stride; (void)v;
    return 1;
}
static inline int pc_rseq_add_if_i64(const int32_t *mode, char *base, size_t stride,
                                     int64_t v) {
    (void)mode; (void)base; (void)stride; (void)v;
    return 1;
}
#endif

/* Whether the per-CPU fast paths run as rseq critical sections. */
static inline int pc_rseq_live(void) {
    return PC_HAVE_RSEQ_ASM && pc_cpu_source() == PC_CPU_RSEQ;
}

static PC_COLD void pc_percpu_add_slow(char *base, size_t stride, int64_t v) {
    if (pc_rseq_live()) {
        /* An abort means preemption, migration or a signal: retry. Never
         * fall back to a locked add here: a locked add from another CPU
         * interleaves with the owner's unlocked add and loses one of them. */
        while (pc_rseq_add_i64(base, stride, v) != 0) {
        }
        return;
    }
    /* Other threads may run on "our" CPU meanwhile: the add must be atomic.
     * Relaxed: a counter's value is only read as a sum, no data is
     * published through it. */
    pc_fetch_add_i64((int64_t *)(base + (size_t)pc_current_cpu() * stride), v, PC_RELAXED);
}

/* this_cpu_add(): adds v to the current CPU's int64 slot at base + cpu*stride. */
static inline void pc_percpu_add(char *base, size_t stride, int64_t v) {
    ptrdiff_t off = (ptrdiff_t)pc_load_i64(&pc_rseq_fast_offset, PC_RELAXED);
    if (PC_LIKELY(off != 0) && PC_LIKELY(pc_rseq_add_i64_at(off, base, stride, v) == 0))
        return;
    /* Not decided yet in this module, no rseq, or aborted. */
    pc_percpu_add_slow(base, stride, v);
}

/* Sum of the int64 slots of every CPU. Relaxed: each slot is read once and
 * the caller only needs a value that each slot held at some moment. */
static inline int64_t pc_percpu_sum(const char *base, size_t stride) {
    int64_t s = 0;
    int c, n = pc_nr_cpus();
    for (c = 0; c < n; c++) s += pc_load_i64((const int64_t *)(base + (size_t)c * stride), PC_RELAXED);
    return s;
}

/* ------------------------------------------------------------------------ */
/* membarrier                                                                */

#define PC_MB_QUERY 0
#define PC_MB_PRIVATE_EXPEDITED (1 << 3)
#define PC_MB_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#define PC_MB_PRIVATE_EXPEDITED_RSEQ (1 << 7)
#define PC_MB_REGISTER_PRIVATE_EXPEDITED_RSEQ (1 << 8)

static inline long pc_membarrier(int cmd, unsigned flags) {
#ifdef __NR_membarrier
    return syscall(__NR_membarrier, cmd, flags, 0);
#else
    (void)cmd; (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}

/* ------------------------------------------------------------------------ */
/* Thread registry                                                           */
/*
 * One per process (owned by percpu._core). Each thread that uses a fallback
 * fast path or a per-thread slot gets a record: a small index, unique among
 * live threads and reused after exit, and a sequence number that is odd while
 * the thread is inside a fallback read-side section.
 */
#define PC_MAX_THREADS 1024

typedef struct {
    uint64_t seq;      /* odd: inside a fallback section */
    int32_t index;     /* position in the registry, stable for the record */
    int32_t in_use;    /* owned by a live thread */
    char pad[PC_CACHELINE - 16];
} PC_CACHELINE_ALIGNED pc_thread_rec;

enum { PC_MB_NONE = 0, PC_MB_EXPEDITED = 1, PC_MB_EXPEDITED_RSEQ = 2 };

/* Fork safety. fork() copies only the calling thread: a lock that another
 * thread held at that moment stays held in the child forever. Every lock of a
 * live pool, counter or reference is listed here; around fork() the forking
 * thread takes them all (percpu._core's pthread_atfork handlers), so the child
 * starts with each one free and the parent's state consistent. Nothing holds
 * one of these locks while taking another, or while taking the list's lock,
 * so taking them all in list order cannot deadlock. */
typedef struct pc_fork_node {
    struct pc_fork_node *prev, *next;
    pthread_mutex_t *mutex;   /* a mutex to take around fork, or NULL */
    int32_t *spin;            /* or a 0/1 spinlock */
} pc_fork_node;

typedef struct {
    pthread_mutex_t lock;
    pthread_key_t key;
    int32_t high_water;  /* records [0, high_water) have been handed out */
    int32_t live;        /* records in use */
    int32_t membarrier;  /* which PC_MB_* registrations succeeded */
    int32_t grace_periods;
    pthread_mutex_t fork_lock;  /* guards fork_head's list */
    pc_fork_node fork_head;     /* circular; initialised by percpu._core */
    pc_thread_rec recs[PC_MAX_THREADS];
} pc_registry;

static void pc_fork_track(pc_registry *reg, pc_fork_node *n, pthread_mutex_t *mutex,
                          int32_t *spin) {
    n->mutex = mutex;
    n->spin = spin;
    pthread_mutex_lock(&reg->fork_lock);
    n->next = reg->fork_head.next;
    n->prev = &reg->fork_head;
    n->next->prev = n;
    reg->fork_head.next = n;
    pthread_mutex_unlock(&reg->fork_lock);
}

static void pc_fork_untrack(pc_registry *reg, pc_fork_node *n) {
    if (!n->next) return; /* never tracked */
    pthread_mutex_lock(&reg->fork_lock);
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = NULL;
    pthread_mutex_unlock(&reg->fork_lock);
}

static PC_TLS pc_thread_rec *pc_tls_rec;

/* Gives the record of an exiting thread back. Its seq is even (a thread
 * cannot exit inside a section). The mutex hands the record, and the slots it
 * indexes, over to the next owner with a happens-before edge. */
static void pc_registry_leave(pc_registry *reg, pc_thread_rec *rec) {
    pthread_mutex_lock(&reg->lock);
    if (rec->in_use) {
        rec->in_use = 0;
        reg->live--;
    }
    pthread_mutex_unlock(&reg->lock);
}

/* Returns this thread's record, registering it on first use; NULL when the
 * registry is full (callers then take a shared slow path). */
static PC_COLD pc_thread_rec *pc_registry_join(pc_registry *reg) {
    pc_thread_rec *rec = (pc_thread_rec *)pthread_getspecific(reg->key);
    int i;
    if (rec) {
        pc_tls_rec = rec;
        return rec;
    }
    pthread_mutex_lock(&reg->lock);
    for (i = 0; i < PC_MAX_THREADS; i++) {
        if (!reg->recs[i].in_use) {
            rec = &reg->recs[i];
            rec->in_use = 1;
            reg->live++;
            /* Writers of high_water hold the lock; the grace period reads it
             * with acquire to see the records' initial state. */
            if (i >= reg->high_water) pc_store_i32(&reg->high_water, i + 1, PC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&reg->lock);
    if (rec) {
        pthread_setspecific(reg->key, rec);
        pc_tls_rec = rec;
    }
    return rec;
}

static inline pc_thread_rec *pc_thread_record(pc_registry *reg) {
    pc_thread_rec *rec = pc_tls_rec;
    return PC_LIKELY(rec != NULL) ? rec : pc_registry_join(reg);
}

/* Enter/leave a fallback read-side section. With membarrier the reader only
 * needs a compiler barrier between its seq store and its later loads: the
 * writer's membarrier() acts as a full fence on every running thread.
 * Without membarrier both sides fence (Dekker). */
static inline void pc_section_enter(pc_registry *reg, pc_thread_rec *rec) {
    /* Only this thread writes its seq; the writer reads it. */
    pc_store_u64(&rec->seq, rec->seq + 1, PC_RELAXED);
    if (pc_load_i32(&reg->membarrier, PC_RELAXED) != PC_MB_NONE) pc_compiler_barrier();
    else pc_fence(PC_SEQ_CST);
}

static inline void pc_section_exit(pc_thread_rec *rec) {
    /* Release: the section's writes are visible to a grace period that
     * sees the even value. */
    pc_store_u64(&rec->seq, rec->seq + 1, PC_RELEASE);
}

/* Waits until every thread is known to have left the fast paths that could
 * have read state written before this call (a mode switch): the user-space
 * synchronize_sched(). Never call it from inside a section. */
/* Runs a registered membarrier command. Readers rely on it once it is
 * registered (their sections use only a compiler barrier, their rseq sections
 * expect to be aborted), so a failure cannot be replaced by a local fence:
 * retry the transient ones (EINTR, ENOMEM from the cpumask allocation) and
 * stop the process on anything else rather than break the guarantee. */
static void pc_membarrier_or_die(int cmd) {
    int tries;
    for (tries = 0; tries < 1000; tries++) {
        if (pc_membarrier(cmd, 0) == 0) return;
        if (errno != EINTR && errno != ENOMEM && errno != EAGAIN) break;
        sched_yield();
    }
    fprintf(stderr, "percpu: membarrier(%d) failed after registration: %s\n", cmd, strerror(errno));
    abort();
}

/* Whether reference fast paths may run as rseq critical sections in this
 * module: only where the grace period can abort them, i.e. with
 * MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ registered (kernels 4.18-5.9 have
 * rseq but not that command; plain PRIVATE_EXPEDITED only fences, and a
 * section that read the old mode would then commit after the fold).
 * Otherwise they use the registry's read-side sections. Counters need no
 * such care: they never switch modes. */
static int pc_refs_rseq_mode; /* per module: 0 undecided, 1 rseq, 2 sections */

static PC_COLD int pc_refs_rseq_init(const pc_registry *reg) {
    int m = (pc_rseq_live() &&
             pc_load_i32(&reg->membarrier, PC_RELAXED) == PC_MB_EXPEDITED_RSEQ) ? 1 : 2;
    /* Racing initialisers store the same value. */
    pc_store_i32(&pc_refs_rseq_mode, m, PC_RELAXED);
    return m;
}

static inline int pc_refs_rseq(const pc_registry *reg) {
    int m = pc_load_i32(&pc_refs_rseq_mode, PC_RELAXED);
    if (PC_UNLIKELY(m == 0)) m = pc_refs_rseq_init(reg);
    return m == 1;
}

static void pc_synchronize(pc_registry *reg) {
    int i, hw, spins;
    int mb = pc_load_i32(&reg->membarrier, PC_RELAXED);
    pc_fetch_add_i32(&reg->grace_periods, 1, PC_RELAXED);
    if (mb == PC_MB_EXPEDITED_RSEQ) {
        /* Aborts every rseq critical section running in this process and
         * fences every running thread (the IPI runs smp_mb() before
         * rseq_preempt()); preempted ones abort on resume. Used whenever it
         * is registered, whatever this module decided about rseq: the
         * fence also serves the read-side sections below. */
        pc_membarrier_or_die(PC_MB_PRIVATE_EXPEDITED_RSEQ);
    } else if (mb != PC_MB_NONE) {
        pc_membarrier_or_die(PC_MB_PRIVATE_EXPEDITED);
    } else {
        pc_fence(PC_SEQ_CST);
    }
    /* Fallback sections (no rseq, or a thread on a slow path): wait for any
     * section that was open when the mode changed. A section that opens
     * later sees the new mode, by the fence pairing above. */
    hw = pc_load_i32(&reg->high_water, PC_ACQUIRE);
    for (i = 0; i < hw; i++) {
        pc_thread_rec *rec = &reg->recs[i];
        uint64_t s = pc_load_u64(&rec->seq, PC_ACQUIRE);
        if (!(s & 1)) continue;
        for (spins = 0; pc_load_u64(&rec->seq, PC_ACQUIRE) == s; spins++) {
            if (spins < 64) pc_cpu_relax();
            else sched_yield();
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Counters: the hot paths of the seven strategies                           */
/*
 * Every counter is exact except the racy one: no update is lost. Relaxed
 * order is enough for every counter update, because a counter publishes no
 * other data: readers only need each slot's own latest value, which atomicity
 * (or the single-writer rule) gives.
 */

/* One int64 alone on its cache line. */
typedef struct {
    int64_t value;
    char pad[PC_CACHELINE - sizeof(int64_t)];
} PC_CACHELINE_ALIGNED pc_cell;

/* atomic: one shared atomic; every add is a locked RMW on one line. */
static inline void pc_atomic_counter_add(pc_cell *c, int64_t v) {
    pc_fetch_add_i64(&c->value, v, PC_RELAXED);
}

static inline int64_t pc_cell_read(const pc_cell *c) {
    return pc_load_i64(&c->value, PC_RELAXED);
}

/* racy: a plain load and store; concurrent adds lose updates (reference
 * point only). Relaxed atomics rather than plain C accesses keep the race
 * well defined for the compiler: it is the algorithm that loses, not UB. */
static inline void pc_racy_counter_add(pc_cell *c, int64_t v) {
    pc_store_i64(&c->value, pc_load_i64(&c->value, PC_RELAXED) + v, PC_RELAXED);
}

/* locked: a mutex around a shared integer. */
typedef struct {
    pthread_mutex_t lock;
    int64_t value;
    pc_fork_node fork;
} PC_CACHELINE_ALIGNED pc_locked_counter;

static inline void pc_locked_counter_add(pc_locked_counter *c, int64_t v) {
    pthread_mutex_lock(&c->lock);
    c->value += v;
    pthread_mutex_unlock(&c->lock);
}

static inline int64_t pc_locked_counter_read(pc_locked_counter *c) {
    int64_t v;
    pthread_mutex_lock(&c->lock);
    v = c->value;
    pthread_mutex_unlock(&c->lock);
    return v;
}

/* percpu: one int64 per CPU (from a PerCPUPool); this_cpu_add(). */
typedef struct {
    char *base;      /* CPU 0's slot; CPU c's is base + c * stride */
    size_t stride;
} pc_percpu_counter;

static inline void pc_percpu_counter_add(pc_percpu_counter *c, int64_t v) {
    pc_percpu_add(c->base, c->stride, v);
}

static inline int64_t pc_percpu_counter_read(pc_percpu_counter *c) {
    return pc_percpu_sum(c->base, c->stride);
}

/* perthread: one padded slot per registered thread, written only by its
 * owner with a plain add. The registry hands a slot index to one live
 * thread at a time; an exiting thread's slot keeps its value and passes,
 * through the registry mutex (a happens-before edge), to the next thread
 * that gets the index, so nothing is lost when threads exit. Threads beyond
 * the capacity (or a full registry) add atomically to a shared overflow
 * cell. */
typedef struct {
    char *slots;          /* capacity slots, PC_CACHELINE apart */
    int32_t capacity;
    pc_registry *reg;
    pc_cell overflow;
} pc_perthread_counter;

static inline void pc_perthread_counter_add(pc_perthread_counter *c, int64_t v) {
    pc_thread_rec *rec = pc_thread_record(c->reg);
    if (PC_LIKELY(rec != NULL && rec->index < c->capacity)) {
        int64_t *slot = (int64_t *)(c->slots + (size_t)rec->index * PC_CACHELINE);
        /* Single writer: load + store is an exact add; the relaxed store
         * keeps concurrent readers from seeing a torn value. */
        pc_store_i64(slot, pc_load_i64(slot, PC_RELAXED) + v, PC_RELAXED);
    } else {
        pc_fetch_add_i64(&c->overflow.value, v, PC_RELAXED);
    }
}

static inline int64_t pc_perthread_counter_read(pc_perthread_counter *c) {
    int64_t s = pc_cell_read(&c->overflow);
    int32_t i;
    for (i = 0; i < c->capacity; i++)
        s += pc_load_i64((const int64_t *)(c->slots + (size_t)i * PC_CACHELINE), PC_RELAXED);
    return s;
}

/* approx: Linux percpu_counter. Per-CPU deltas stay within (-batch, batch);
 * an add that would leave that range moves the CPU's delta into the shared
 * count under the lock. approx() reads the shared count alone; value() sums
 * everything under the lock, so it never misses a delta in transit. */
typedef struct {
    pthread_mutex_t lock;
    int64_t count;        /* written under lock, read lock-free by approx() */
    char *base;           /* per-CPU deltas, as in pc_percpu_counter */
    size_t stride;
    int64_t batch;
    pc_fork_node fork;
} PC_CACHELINE_ALIGNED pc_approx_counter;

static PC_COLD void pc_approx_counter_fold(pc_approx_counter *c, int64_t v) {
    int64_t moved;
    pthread_mutex_lock(&c->lock);
    if (pc_rseq_live()) {
        /* Empty our CPU's delta inside a critical section: the slot keeps
         * a single writer (the thread running on its CPU). */
        while (pc_rseq_take_i64(c->base, c->stride, v, &moved) != 0) {
        }
    } else {
        int64_t *slot = (int64_t *)(c->base + (size_t)pc_current_cpu() * c->stride);
        /* Other threads may add to this slot concurrently: take it
         * atomically. */
        moved = pc_exchange_i64(slot, 0, PC_RELAXED) + v;
    }
    /* Relaxed: the lock orders this against value(); approx() only needs
     * an untorn value. */
    pc_store_i64(&c->count, pc_load_i64(&c->count, PC_RELAXED) + moved, PC_RELAXED);
    pthread_mutex_unlock(&c->lock);
}

static inline void pc_approx_counter_add(pc_approx_counter *c, int64_t v) {
    /* A delta of a batch or more goes straight to the shared count. This also
     * keeps slot + v far from overflow below (|slot| < batch <= 2^40), where
     * |INT64_MIN| would otherwise pass the bound check. */
    if (PC_UNLIKELY(v >= c->batch || v <= -c->batch)) {
        pc_approx_counter_fold(c, v);
        return;
    }
    if (PC_LIKELY(pc_rseq_live())) {
        int r;
        while ((r = pc_rseq_add_bounded_i64(c->base, c->stride, v, c->batch)) == 1) {
        }
        if (PC_LIKELY(r == 0)) return;
    } else {
        int64_t *slot = (int64_t *)(c->base + (size_t)pc_current_cpu() * c->stride);
        int64_t old = pc_load_i64(slot, PC_RELAXED);
        /* CAS keeps the delta within the batch even with several threads
         * sharing the slot; relaxed as for every counter update. */
        while (old + v < c->batch && old + v > -c->batch) {
            if (pc_cas_i64(slot, &old, old + v, PC_RELAXED, PC_RELAXED)) return;
        }
    }
    pc_approx_counter_fold(c, v);
}

static inline int64_t pc_approx_counter_approx(pc_approx_counter *c) {
    return pc_load_i64(&c->count, PC_RELAXED);
}

static inline int64_t pc_approx_counter_read(pc_approx_counter *c) {
    int64_t s;
    pthread_mutex_lock(&c->lock);
    s = pc_load_i64(&c->count, PC_RELAXED) + pc_percpu_sum(c->base, c->stride);
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* striped: Java's LongAdder. Threads hash onto padded atomic cells; a
 * failed CAS means another thread shares the cell, so this thread moves to
 * another one (and completes its add there with fetch_add). */
typedef struct {
    pc_cell *cells;
    uint32_t mask;        /* stripes - 1, stripes a power of two */
} pc_striped_counter;

static PC_TLS uint32_t pc_tls_probe;

static PC_COLD uint32_t pc_probe_init(void) {
    /* Distinct odd seeds per thread; relaxed: only distinctness matters. */
    static uint32_t seed = 0x9E3779B9u;
    uint32_t p = __atomic_add_fetch(&seed, 0x9E3779B9u, PC_RELAXED) | 1u;
    pc_tls_probe = p;
    return p;
}

static inline void pc_striped_counter_add(pc_striped_counter *c, int64_t v) {
    uint32_t probe = pc_tls_probe;
    pc_cell *cell;
    int64_t old;
    if (PC_UNLIKELY(probe == 0)) probe = pc_probe_init();
    cell = &c->cells[probe & c->mask];
    old = pc_load_i64(&cell->value, PC_RELAXED);
    if (PC_LIKELY(pc_cas_i64(&cell->value, &old, old + v, PC_RELAXED, PC_RELAXED))) return;
    /* Contention: xorshift to another cell for next time. */
    probe ^= probe << 13;
    probe ^= probe >> 17;
    probe ^= probe << 5;
    pc_tls_probe = probe;
    pc_fetch_add_i64(&c->cells[probe & c->mask].value, v, PC_RELAXED);
}

static inline int64_t pc_striped_counter_read(pc_striped_counter *c) {
    int64_t s = 0;
    uint32_t i;
    for (i = 0; i <= c->mask; i++) s += pc_cell_read(&c->cells[i]);
    return s;
}

/* ------------------------------------------------------------------------ */
/* The native thread team                                                    */

typedef void (*pc_kernel_fn)(void *arg, int tid, int64_t ops, int64_t *done);

typedef struct {
    int nthreads;
    int pin;               /* pin thread i to the i-th allowed CPU, round-robin */
    int64_t ops;           /* operations per thread */
    pc_kernel_fn fn;
    void *arg;
    /* results */
    int64_t wall_ns;       /* barrier release to last finish */
    int64_t *done;         /* per-thread completed ops (nthreads entries) */
    int64_t *thread_ns;    /* per-thread busy time (nthreads entries) */
    /* internal */
    int32_t ready;
    int32_t go;
    int64_t t0;
} pc_team;

typedef struct {
    pc_team *team;
    int tid;
    int cpu;               /* -1: not pinned */
    int64_t end_ns;
} pc_team_member;

static void *pc_team_main(void *p) {
    pc_team_member *m = (pc_team_member *)p;
    pc_team *t = m->team;
    int spins = 0;
    int64_t start;
    if (m->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(m->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    /* Release/acquire on ready/go: the controller sees every member started,
     * and members see the controller's t0 and the setup before it. */
    pc_fetch_add_i32(&t->ready, 1, PC_RELEASE);
    while (!pc_load_i32(&t->go, PC_ACQUIRE)) {
        /* More threads than CPUs: spinning would starve the others. */
        if (++spins < 1000) pc_cpu_relax();
        else sched_yield();
    }
    start = pc_now_ns();
    t->fn(t->arg, m->tid, t->ops, &t->done[m->tid]);
    m->end_ns = pc_now_ns();
    if (t->thread_ns) t->thread_ns[m->tid] = m->end_ns - start;
    return NULL;
}

/* Runs fn on nthreads native threads, released together. Returns 0 or an
 * errno value; on error no kernel has run. Call without the GIL. */
static int pc_team_run(pc_team *t) {
    pthread_t *th;
    pc_team_member *mem;
    int i, err = 0, started = 0, spins = 0;
    int64_t last = 0;
    int allowed[1024], nallowed = 0;
    if (t->nthreads <= 0 || t->ops < 0 || !t->fn || !t->done) return EINVAL;
    th = (pthread_t *)calloc((size_t)t->nthreads, sizeof *th);
    mem = (pc_team_member *)calloc((size_t)t->nthreads, sizeof *mem);
    if (!th || !mem) {
        free(th);
        free(mem);
        return ENOMEM;
    }
    if (t->pin) {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0)
            for (i = 0; i < CPU_SETSIZE && nallowed < 1024; i++)
                if (CPU_ISSET(i, &set)) allowed[nallowed++] = i;
    }
    pc_store_i32(&t->ready, 0, PC_RELAXED);
    pc_store_i32(&t->go, 0, PC_RELAXED);
    for (i = 0; i < t->nthreads; i++) {
        t->done[i] = 0;
        mem[i].team = t;
        mem[i].tid = i;
        mem[i].cpu = nallowed ? allowed[i % nallowed] : -1;
        err = pthread_create(&th[i], NULL, pc_team_main, &mem[i]);
        if (err) break;
        started++;
    }
    if (err) {
        /* Release the ones that started with nothing to do. */
        t->ops = 0;
    }
    while (pc_load_i32(&t->ready, PC_ACQUIRE) < started) {
        if (++spins < 1000) pc_cpu_relax();
        else sched_yield();
    }
    t->t0 = pc_now_ns();
    pc_store_i32(&t->go, 1, PC_RELEASE);
    for (i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        if (mem[i].end_ns > last) last = mem[i].end_ns;
    }
    t->wall_ns = err ? 0 : last - t->t0;
    free(th);
    free(mem);
    return err;
}

#pragma GCC diagnostic pop
#endif /* PERCPU_H */
