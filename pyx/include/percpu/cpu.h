/*
 * percpu/cpu.h: the CPUs (possible, online, allowed), the one process-wide
 * choice of where slot ids come from, the slot bound, and the current id.
 */
#ifndef PERCPU_CPU_H
#define PERCPU_CPU_H

#include "percpu/atomic.h"

#if defined(__linux__)
#include <sys/auxv.h>
#endif

/* ------------------------------------------------------------------------ */
/* CPU lists                                                                 */

/* Parses a kernel cpu list ("0-3,8-11"); returns its highest id + 1 and,
 * when count is not NULL, stores how many ids it names. */
static int pc_parse_cpulist(const char *s, int *count) {
    int best = -1, n = 0;
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
        if (b >= a) n += (int)(b - a + 1);
        if (b > best) best = (int)b;
        s = end;
        if (*s == ',') s++; else break;
    }
    if (count) *count = n;
    return best + 1;
}

/* Kept under its old name: the highest id + 1 of a cpu list. */
static int pc_parse_cpulist_max(const char *s) { return pc_parse_cpulist(s, NULL); }

/* Reads a sysfs cpu list; returns its highest id + 1 (0 when unreadable). */
static int pc_read_cpulist(const char *path, int *count) {
    char buf[4096];
    int n = 0;
    FILE *f = fopen(path, "r");
    if (count) *count = 0;
    if (f) {
        if (fgets(buf, sizeof buf, f)) n = pc_parse_cpulist(buf, count);
        fclose(f);
    }
    return n;
}

/* The number of per-CPU slots an object has for CPUs: every possible CPU, so
 * that any id the kernel can ever hand out (after hotplug too) indexes
 * inside. Memory for a slot that is never written is never touched (see the
 * slot bound below), so a large possible count costs address space only. */
static int pc_possible_cpus_read(void) {
    int n = pc_read_cpulist("/sys/devices/system/cpu/possible", NULL);
    long conf = sysconf(_SC_NPROCESSORS_CONF);
    if (conf > n) n = (int)conf;
    return n > 0 ? n : 1;
}

/* CPUs online now (a count, not an id bound). */
static int pc_online_cpus(void) {
    int count = 0;
    long onln;
    (void)pc_read_cpulist("/sys/devices/system/cpu/online", &count);
    if (count > 0) return count;
    onln = sysconf(_SC_NPROCESSORS_ONLN);
    return onln > 0 ? (int)onln : 1;
}

/* Whether this build has the rseq critical sections (x86-64 inline asm). */
#if defined(__x86_64__) && !defined(PERCPU_NO_RSEQ_ASM)
#define PC_HAVE_RSEQ_ASM 1
#else
#define PC_HAVE_RSEQ_ASM 0
#endif

/* ------------------------------------------------------------------------ */
/* Where slot ids come from                                                  */

enum {
    PC_CPU_UNINIT = 0,    /* this module has not adopted the process's choice */
    PC_CPU_RSEQ = 1,      /* glibc registered rseq; cpu_id read from its area */
    PC_CPU_GETCPU = 2,    /* sched_getcpu() (vDSO) */
    PC_CPU_THREAD = 3,    /* neither: a per-thread index, modulo nr_cpus */
    PC_CPU_MM_CID = 4     /* rseq, indexed by mm_cid (Linux 6.3+): dense ids */
};

/* The kernel's struct rseq, as far as we use it. */
struct pc_rseq_abi {
    uint32_t cpu_id_start;
    int32_t cpu_id;       /* -1 never registered, -2 registration failed */
    uint64_t rseq_cs;
    uint32_t flags;
    uint32_t node_id;
    uint32_t mm_cid;      /* Linux 6.3+: the per-process concurrency id */
};
#define PC_RSEQ_CPU_ID 4  /* offsetof(struct pc_rseq_abi, cpu_id) */
#define PC_RSEQ_MM_CID 24 /* offsetof(struct pc_rseq_abi, mm_cid) */
#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif

/*
 * The process-wide choice (one per process, inside the registry that
 * percpu._core creates at import; pc_proc_decide() fills it in before the
 * registry is published, and the choice is constant afterwards).
 *
 * Why one choice: an rseq add is a plain (unlocked) read-modify-write, safe
 * because only the thread that owns the slot's id at that instant can commit
 * it. An atomic add from a thread that chose its slot another way (another
 * module reading PERCPU_NO_RSEQ later, another id source) can land between
 * the rseq add's read and write and be overwritten. So every module takes
 * the source and the fast paths from here, and the environment
 * (PERCPU_NO_RSEQ, PERCPU_NO_MM_CID) is read once, when the choice is made.
 *
 * The slot bound. Slots are indexed by id in [0, nr_cpus), but a process on
 * a 2-CPU share of a 256-CPU host uses few of them. `bound` says which slots
 * may ever have been written: every write to slot k of any object happens
 * after its writer saw bound > k, and bound never shrinks. So:
 *   - readers (sums, folds) read [0, bound) only;
 *   - the allocator zeroes only [0, bound) of a new object: a slot at or
 *     beyond it was never written by anyone since its memory was mapped
 *     (zero-filled), whatever object held it before;
 *   - untouched slots cost no memory (anonymous pages are populated on first
 *     write).
 * An id at or beyond the bound takes a cold path that raises the bound (a CAS
 * that only ever increases it) and retries. With mm_cid the ids stay below
 * the number of threads and allowed CPUs the process really uses; with cpu
 * ids the bound is the highest cpu id seen + 1.
 *
 * Memory orders of the bound: a raise is a release (CAS); every load that a
 * writer bases a slot write on, and every load of a reader or the allocator,
 * is an acquire (a section's is the acquire load of the module's gate,
 * before the section: see percpu/rseq.h). A writer's raise (or the raise it
 * read) therefore happens before its slot write, and a reader or allocator
 * that the write happens before reads that bound or a later, larger one
 * (coherence), so it covers the slot. A module's copy of the bound is raised
 * with release after an acquire load (or a raise) of the process's, so the
 * chain holds through it.
 *
 * The shared slot. Each object has one more slot, at index nr_cpus, that no
 * rseq section ever writes: a thread that has no id (its rseq registration is
 * gone: unregistered, or it failed under a seccomp filter) adds to it
 * atomically. It cannot add atomically to an id's slot instead: that slot's
 * owner commits plain read-modify-writes that would overwrite the add.
 * `shared_used` says a shared slot may have been written (set, with release,
 * before the first such add; read with acquire like the bound), so readers
 * and the allocator touch the shared slots only in processes that used one.
 */
typedef struct {
    /* Constant once the registry is published. */
    int64_t rseq_offset;    /* glibc's __rseq_offset (RSEQ, MM_CID modes) */
    int32_t mode;           /* PC_CPU_* */
    int32_t id_field;       /* PC_RSEQ_CPU_ID or PC_RSEQ_MM_CID: which field is the id */
    int32_t nr_cpus;        /* slots per object for ids, the shared slot not counted */
    int32_t sections;       /* the per-CPU fast paths run rseq critical sections */
    int32_t refs_sections;  /* references' fast paths too (needs membarrier's RSEQ flavour) */
    int32_t mm_cid_seen;    /* the kernel maintains mm_cid (reported even when unused) */
    /* Changing. */
    int32_t bound;          /* slots [0, bound) may have been written; never shrinks */
    int32_t shared_used;    /* a shared slot may have been written */
    int32_t next_thread;    /* PC_CPU_THREAD's per-thread indexes */
    int32_t pad_;
} PC_CACHELINE_ALIGNED pc_proc;

/*
 * This module's copy of the choice (each extension module, and each user
 * module that cimports the .pxd files, has its own). It starts empty; a
 * module adopts the process's choice at import (pc_registry_import() in
 * cpercpu.pxd) or, for code that only holds objects, on the first slow path
 * of an object that carries the registry. A copy is only ever the process's
 * values, so racing adopters store the same thing; until a module has
 * adopted, its fast paths fail over to the slow path, which adopts.
 */
typedef struct {
    int64_t gate;      /* what a fast path needs, in one load (pc_gate_area,
                        * pc_gate_bound):
                        * bits 0-31, the area: where the sections run,
                        * rseq_offset with cpu ids, rseq_offset + 1 with mm_cid
                        * (the area is 32-byte aligned, so the low bit is
                        * free); 0: no sections here;
                        * bits 32-63, a copy of proc->bound, never above it
                        * (stale is safe).
                        * 0 until this module adopted a choice with sections
                        * and saw a bound above 0, so until then every fast
                        * path fails over to its slow path. */
    int64_t rseq;      /* rseq_offset in the rseq modes, else 0 */
    int32_t mode;      /* proc->mode once adopted, PC_CPU_UNINIT before */
    int32_t refs;      /* 1: reference sections, 2: registry sections, 0: not adopted */
    int32_t nr_cpus;
    pc_proc *proc;
} pc_local;

static pc_local pc_mod;
static PC_TLS int pc_tls_thread_index = -1;

/* The halves of pc_mod.gate. The area is sign-extended (rseq_offset is a
 * small negative offset from the thread pointer; pc_proc_decide() runs no
 * sections where it does not fit in 32 bits). */
static inline int64_t pc_gate_area(int64_t gate) { return (int64_t)(int32_t)(uint32_t)gate; }
static inline uint32_t pc_gate_bound(int64_t gate) { return (uint32_t)((uint64_t)gate >> 32); }

/* Raises this module's copy of the bound to at least b, setting the area
 * with it; only where sections run (elsewhere the gate stays 0 and keeps
 * the fast paths off). */
static PC_COLD void pc_bound_cache_raise(pc_proc *p, int32_t b) {
    int64_t old, area = p->rseq_offset + (p->mode == PC_CPU_MM_CID);
    if (!p->sections || b <= 0) return;
    old = pc_load_i64(&pc_mod.gate, PC_RELAXED);
    /* Release: the fast paths load the gate with acquire and write a slot
     * below its bound; the value came from an acquire load of proc->bound
     * (or a raise of it), so the raise that produced it happens before their
     * write. It also publishes pc_adopt()'s fields to them. */
    while (pc_gate_bound(old) < (uint32_t)b &&
           !pc_cas_i64(&pc_mod.gate, &old,
                       (int64_t)(((uint64_t)(uint32_t)b << 32) | (uint32_t)area), PC_RELEASE,
                       PC_RELAXED)) {
    }
}

/* Copies the process's choice into this module. Relaxed stores of the
 * fields, then release stores of what readers test first (the bound copy,
 * refs, mode: each read with acquire), so a reader that sees one of them set
 * sees the fields it guards. */
static PC_COLD pc_proc *pc_adopt(pc_proc *proc) {
    pc_store_ptr((void **)&pc_mod.proc, proc, PC_RELAXED);
    pc_store_i32(&pc_mod.nr_cpus, proc->nr_cpus, PC_RELAXED);
    pc_store_i64(&pc_mod.rseq, proc->rseq_offset, PC_RELAXED);
    pc_store_i32(&pc_mod.refs, proc->refs_sections ? 1 : 2, PC_RELEASE);
    pc_bound_cache_raise(proc, pc_load_i32(&proc->bound, PC_ACQUIRE));
    pc_store_i32(&pc_mod.mode, proc->mode, PC_RELEASE);
    return proc;
}

/* The process's choice as adopted by this module, adopting it from proc
 * (the registry's) when this module has not yet. */
static inline pc_proc *pc_adopted(pc_proc *proc) {
    if (PC_LIKELY(pc_load_i32(&pc_mod.mode, PC_ACQUIRE) != PC_CPU_UNINIT))
        return (pc_proc *)pc_load_ptr((void **)&pc_mod.proc, PC_RELAXED);
    return pc_adopt(proc);
}

/* The raw C API (pc_percpu_add, pc_percpu_sum, pc_rseq_live, ...) reaches
 * the choice through this module's copy only: a module that uses it must
 * have adopted (pc_registry_import() at module init). Guessing instead
 * could pick the other protocol and lose updates, so this stops. */
static PC_COLD void pc_unadopted(void) {
    fprintf(stderr, "percpu: the per-CPU C API was used by a module that has not adopted the "
                    "process-wide cpu-id choice: call pc_registry_import() (percpu.cpercpu) at "
                    "module init\n");
    abort();
}

static inline pc_proc *pc_mod_proc(void) {
    if (PC_UNLIKELY(pc_load_i32(&pc_mod.mode, PC_ACQUIRE) == PC_CPU_UNINIT)) pc_unadopted();
    return (pc_proc *)pc_load_ptr((void **)&pc_mod.proc, PC_RELAXED);
}

/* Loads the int32 at `off` from the thread pointer: a field of this thread's
 * rseq area, which the kernel rewrites whenever the thread returns to user
 * space. Volatile asm: read again at every use (one instruction, no load of
 * the thread pointer itself). */
static inline int32_t pc_tp_load_i32(int64_t off) {
#if PC_HAVE_RSEQ_ASM
    int32_t v;
    __asm__ __volatile__("movl %%fs:(%1), %0" : "=r"(v) : "r"(off));
    return v;
#else
    /* Relaxed: a recent value is all any caller needs. */
    return pc_load_i32((const int32_t *)((char *)__builtin_thread_pointer() + off), PC_RELAXED);
#endif
}

static int pc_env_flag(const char *name) {
    const char *e = getenv(name);
    return e && *e && strcmp(e, "0") != 0;
}

/* Makes the process-wide choice; called once, by pc_registry_create(), before
 * the registry is published (percpu._core's import, under the GIL). Looking
 * the glibc symbols up with dlsym (instead of linking them) keeps the module
 * loadable on glibc older than 2.35, where it simply uses the fallback. */
static PC_COLD void pc_proc_decide(pc_proc *p) {
    int mode = PC_CPU_THREAD;
    memset(p, 0, sizeof *p);
    p->nr_cpus = pc_possible_cpus_read();
    p->id_field = PC_RSEQ_CPU_ID;
#if defined(__x86_64__)
    if (!pc_env_flag("PERCPU_NO_RSEQ")) {
        const ptrdiff_t *off = (const ptrdiff_t *)dlsym(RTLD_DEFAULT, "__rseq_offset");
        const unsigned int *size = (const unsigned int *)dlsym(RTLD_DEFAULT, "__rseq_size");
        /* Size 0 means glibc did not register (glibc.pthread.rseq=0 or a
         * kernel without rseq); then cpu_id also reads -2 (unregistered). */
        if (off && size && *size >= 20) {
            p->rseq_offset = *off;
            if (pc_tp_load_i32(*off + PC_RSEQ_CPU_ID) >= 0) mode = PC_CPU_RSEQ;
        }
    }
#endif
    if (mode == PC_CPU_RSEQ) {
        /* mm_cid: the kernel writes it into every registered area (glibc
         * registers 32 bytes, which hold it) once it reports a feature size
         * that covers it (Linux 6.3+). An older kernel leaves it 0 in every
         * thread, which would put every thread on one slot: so the auxiliary
         * vector, not the field, decides. */
        unsigned long features = 0;
#if defined(__linux__)
        features = getauxval(AT_RSEQ_FEATURE_SIZE);
#endif
        if (features >= PC_RSEQ_MM_CID + 4 &&
            (uint32_t)pc_tp_load_i32(p->rseq_offset + PC_RSEQ_MM_CID) < (uint32_t)p->nr_cpus) {
            p->mm_cid_seen = 1;
            if (!pc_env_flag("PERCPU_NO_MM_CID")) {
                mode = PC_CPU_MM_CID;
                p->id_field = PC_RSEQ_MM_CID;
            }
        }
    }
    if (mode == PC_CPU_THREAD && sched_getcpu() >= 0) mode = PC_CPU_GETCPU;
    if (mode != PC_CPU_RSEQ && mode != PC_CPU_MM_CID) p->rseq_offset = 0;
    p->mode = mode;
    /* The sections find the area's fields at constant displacements from
     * rseq_offset and tell the id source by its low bit: the area is 32-byte
     * aligned (the kernel requires it), the thread pointer at least that. */
    p->sections = PC_HAVE_RSEQ_ASM && p->rseq_offset != 0 && (p->rseq_offset & 31) == 0 &&
                  p->rseq_offset == (int64_t)(int32_t)p->rseq_offset;
}

/* ------------------------------------------------------------------------ */
/* The slot bound                                                            */

/* Makes slot `id` (< nr_cpus) usable: bound > id afterwards. */
static PC_COLD int32_t pc_slot_raise(pc_proc *p, uint32_t id) {
    int32_t b = pc_load_i32(&p->bound, PC_ACQUIRE);
    /* Acq_rel: release for the writers and readers that load the new value
     * (see above); acquire so that a raise seen on failure is a raise we may
     * build on like any other load of the bound. */
    while (b <= (int32_t)id && !pc_cas_i32(&p->bound, &b, (int32_t)id + 1, PC_ACQ_REL, PC_ACQUIRE)) {
    }
    if (b <= (int32_t)id) b = (int32_t)id + 1;
    if (p == pc_load_ptr((void **)&pc_mod.proc, PC_RELAXED)) pc_bound_cache_raise(p, b);
    return b;
}

/* How many slots may have been written: readers sum [0, this). */
static inline int32_t pc_slots_in_use(pc_proc *p) {
    return pc_load_i32(&p->bound, PC_ACQUIRE);
}

/* The shared slot of an object: index nr_cpus. */
static inline int64_t *pc_shared_slot(pc_proc *p, char *base, size_t stride) {
    return (int64_t *)(base + (size_t)p->nr_cpus * stride);
}

/* Adds v to the shared slot (for a thread without an id while sections
 * write the others). The flag goes up first, with release, and stays up. */
static PC_COLD void pc_shared_add(pc_proc *p, char *base, size_t stride, int64_t v) {
    if (!pc_load_i32(&p->shared_used, PC_ACQUIRE)) pc_store_i32(&p->shared_used, 1, PC_RELEASE);
    /* Atomic: every thread without an id shares it; relaxed as for every
     * counter update (nothing is published through a count). */
    pc_fetch_add_i64(pc_shared_slot(p, base, stride), v, PC_RELAXED);
}

/* Sum of an object's int64 slots: [0, bound), and the shared slot where one
 * may have been written. Relaxed slot loads: each slot is read once and the
 * caller only needs a value that each held at some moment. */
static inline int64_t pc_slots_sum(pc_proc *p, const char *base, size_t stride) {
    int32_t c, n = pc_slots_in_use(p);
    int64_t s = 0;
    for (c = 0; c < n; c++) s += pc_load_i64((const int64_t *)(base + (size_t)c * stride), PC_RELAXED);
    if (PC_UNLIKELY(pc_load_i32(&p->shared_used, PC_ACQUIRE)))
        s += pc_load_i64(pc_shared_slot(p, (char *)base, stride), PC_RELAXED);
    return s;
}

/* ------------------------------------------------------------------------ */
/* The current id                                                            */

static int pc_unadopted_thread_index;

static PC_COLD int pc_thread_index_assign(pc_proc *p) {
    /* Only distinctness matters; relaxed is enough. */
    int s = pc_fetch_add_i32(p ? &p->next_thread : &pc_unadopted_thread_index, 1, PC_RELAXED);
    if (s < 0) s = -(s + 1);
    pc_tls_thread_index = s;
    return s;
}

static inline int pc_thread_index(pc_proc *p) {
    int s = pc_tls_thread_index;
    return PC_LIKELY(s >= 0) ? s : pc_thread_index_assign(p);
}

static int pc_nr_cpus_cached;

/* The number of per-CPU slots of an object (the shared slot not counted):
 * every possible CPU. Works before the module adopted the process's choice
 * (same file, same answer). */
static inline int pc_nr_cpus(void) {
    int n = pc_load_i32(&pc_mod.nr_cpus, PC_RELAXED);
    if (PC_LIKELY(n > 0)) return n;
    n = pc_load_i32(&pc_nr_cpus_cached, PC_RELAXED);
    if (n > 0) return n;
    n = pc_possible_cpus_read();
    /* Racing initialisers compute the same value: relaxed is enough. */
    pc_store_i32(&pc_nr_cpus_cached, n, PC_RELAXED);
    return n;
}

/* CPUs this thread may run on (its affinity mask), the CPUs that can run
 * what the process does: what default batch and stripe counts follow. */
static int pc_allowed_cpus(void) {
    int n = pc_nr_cpus(), count = 0;
    size_t size;
    cpu_set_t *set;
    if (n < 1024) n = 1024;
    set = CPU_ALLOC((size_t)n);
    if (set) {
        size = CPU_ALLOC_SIZE((size_t)n);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) count = CPU_COUNT_S(size, set);
        CPU_FREE(set);
    }
    return count > 0 ? count : pc_online_cpus();
}

/* The CPU this thread ran on a moment ago: always in [0, nr_cpus). A hint
 * only (the thread may migrate right after); not an index for writes: see
 * pc_current_slot(). */
static inline int pc_current_cpu(void) {
    int mode = pc_load_i32(&pc_mod.mode, PC_ACQUIRE), n = pc_nr_cpus(), cpu = -1;
    if (mode == PC_CPU_RSEQ || mode == PC_CPU_MM_CID)
        /* The kernel writes cpu_id on every return to user space of this
         * thread; the value was true recently. */
        cpu = pc_tp_load_i32(pc_load_i64(&pc_mod.rseq, PC_RELAXED) + PC_RSEQ_CPU_ID);
    if (PC_LIKELY((unsigned)cpu < (unsigned)n)) return cpu;
    if (mode != PC_CPU_THREAD) cpu = sched_getcpu();
    if ((unsigned)cpu < (unsigned)n) return cpu;
    return pc_thread_index(mode ? (pc_proc *)pc_load_ptr((void **)&pc_mod.proc, PC_RELAXED) : NULL) % n;
}

/* A slot index below the bound for an atomic add, on objects whose slots no
 * rseq section writes (every object when sections are off; references in
 * registry-section mode). Any index would be exact there; the id keeps
 * threads on different CPUs on different lines. */
static inline int pc_current_slot_of(pc_proc *p) {
    uint32_t id = (uint32_t)-1, n = (uint32_t)p->nr_cpus;
    if (p->mode == PC_CPU_RSEQ || p->mode == PC_CPU_MM_CID)
        id = (uint32_t)pc_tp_load_i32(p->rseq_offset + p->id_field);
    else if (p->mode == PC_CPU_GETCPU)
        id = (uint32_t)sched_getcpu();
    if (PC_UNLIKELY(id >= n)) id = (uint32_t)pc_thread_index(p) % n;
    if (PC_UNLIKELY(id >= (uint32_t)pc_load_i32(&p->bound, PC_ACQUIRE))) pc_slot_raise(p, id);
    return (int)id;
}

static inline int pc_current_slot(void) { return pc_current_slot_of(pc_mod_proc()); }

/* Where ids come from in this process (PC_CPU_*). */
static inline int pc_cpu_source(void) { return pc_mod_proc()->mode; }

static inline const char *pc_cpu_source_name(void) {
    switch (pc_cpu_source()) {
    case PC_CPU_MM_CID: return "mm_cid";
    case PC_CPU_RSEQ: return "rseq";
    case PC_CPU_GETCPU: return "getcpu";
    default: return "thread";
    }
}

#endif /* PERCPU_CPU_H */
