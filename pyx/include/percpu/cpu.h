/*
 * percpu/cpu.h: the possible CPUs and the current cpu id (rseq area, sched_getcpu(),
 * or a per-thread index).
 */
#ifndef PERCPU_CPU_H
#define PERCPU_CPU_H

#include "percpu/atomic.h"

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

#endif /* PERCPU_CPU_H */
