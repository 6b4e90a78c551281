/*
 * percpu/rseq.h: the rseq critical sections and this_cpu_add().
 */
#ifndef PERCPU_RSEQ_H
#define PERCPU_RSEQ_H

#include "percpu/cpu.h"
#include "percpu/mutant.h"

/* ------------------------------------------------------------------------ */
/* The rseq per-CPU add: the user-space this_cpu_add()                       */
/*
 * A section stores its descriptor into this thread's rseq area, reads this
 * thread's id from the area (cpu_id, or mm_cid where the process chose it),
 * compares the id with this module's copy of the slot bound, indexes the slot
 * and adds with one plain (unlocked) add, which is the commit. If the thread
 * is preempted, migrated or signalled before the commit, the kernel moves it
 * to the abort label and nothing was written, so no other thread can have
 * touched the slot in between: the slot of an id is written only by the
 * thread holding that id at that instant. Readers of the slot use relaxed
 * atomic loads; an aligned 8-byte store is single-copy atomic on x86-64, so a
 * reader sees the old or the new value, never a torn one.
 *
 * No section ever indexes with an id it has not checked: inside the section,
 * before the commit, the id is compared (unsigned) with the bound, which is
 * never above nr_cpus. A thread whose registration is gone fails that check
 * with cpu ids (cpu_id reads -1 or -2); with mm_cid it reads mm_cid 0 forever,
 * so that flavour also checks cpu_id >= 0 inside. Such a thread takes the
 * same exit as an id not yet below the bound; the slow paths then ask
 * pc_rseq_id_check(), which raises the bound or sends the thread to the
 * exact fallback (the shared slot, or the caller's shared state).
 *
 * The id is read inside the section (after the descriptor store, from the
 * same base register) rather than before it, as librseq does: on the machines
 * measured here, a load of the id through another register than the
 * descriptor store's, or before it, made the add 1.5-2x slower; read inside it
 * is stable for the whole section all the same (a change of id means
 * preemption or migration, which aborts). The bound comes in a register,
 * from the same acquire load as the area (pc_local.gate): one load of the
 * module's state per add. With the bound as a second load (a memory operand)
 * the add took 1.09-1.39x the time of librseq's bare section here (five runs
 * at 1 and 2 threads), against a median of 0.95x (1 thread) and 1.03x (2)
 * now: the add is bound by its loads and stores, not its instructions. The
 * acquire load orders the slot write after it, so a raise that another
 * thread released is seen before the slot is written, as pc_proc requires
 * of every writer's load of the bound. Sections exist only on x86-64.
 *
 * The two id sources get their own copies of each section, chosen by the low
 * bit of this module's area offset (the gate's area: rseq_offset for cpu ids,
 * rseq_offset + 1 for mm_cid, 0 for no sections), so that every access has a
 * constant displacement from that one register: struct rseq's rseq_cs at 8,
 * cpu_id at 4, mm_cid at 24 (7, 3 and 23 past the odd offset). mm_cid, the
 * source wherever the kernel has it, comes first: the flavour laid out second
 * pays two taken jumps per add (medians over ten runs at 1 thread: 1.16-1.25x
 * the bare section, against 0.97x for the first; one section for both, with
 * the id's displacement computed into an index register, cost as much in
 * arithmetic: 1.13-1.17x).
 *
 * The grace period (membarrier PRIVATE_EXPEDITED_RSEQ) aborts every section
 * in flight in the process, whichever id it indexes by.
 *
 * The descriptor goes in a writable section ("aw") so that a shared object
 * needs no text relocation; the abort handler is preceded by glibc's rseq
 * signature (0x53053053, encoded as the operand of an ud1 so that it can never
 * be executed by falling into it).
 */
#if PC_HAVE_RSEQ_ASM

#define PC_RSEQ_CS_BEGIN(CS)                                                   \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                       \
    ".balign 32\n\t"                                                           \
    "333:\n\t"                                                                 \
    ".long 0, 0\n\t"                                                           \
    ".quad 111f, 222f - 111f, 444f\n\t"                                        \
    ".popsection\n\t"                                                          \
    "leaq 333b(%%rip), %%rax\n\t"                                              \
    "movq %%rax, %%fs:" CS "(%[area])\n\t"                                     \
    "111:\n\t"

/* Inside the section: the id into %eax (zero-extended into %rax), checked
 * against the bound; the mm_cid flavour also checks the registration. */
#define PC_RSEQ_ID_CPU                                                         \
    "movl %%fs:4(%[area]), %%eax\n\t"                                          \
    "cmpl %[bound], %%eax\n\t"                                                 \
    "jae %l[abort]\n\t"
#define PC_RSEQ_ID_MM_CID                                                      \
    "movl %%fs:23(%[area]), %%eax\n\t"                                         \
    "cmpl %[bound], %%eax\n\t"                                                 \
    "jae %l[abort]\n\t"                                                        \
    "cmpl $0, %%fs:3(%[area])\n\t"                                             \
    "jl %l[abort]\n\t"

#define PC_RSEQ_CS_END                                                         \
    "222:\n\t"                                                                 \
    ".pushsection __rseq_failure, \"ax\"\n\t"                                  \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                               \
    ".long 0x53053053\n\t"                                                     \
    "444:\n\t"                                                                 \
    "jmp %l[abort]\n\t"                                                        \
    ".popsection\n\t"

/* The slots as the asm's memory operand: a type of their own, so that type-
 * based alias analysis knows the section cannot write a pointer (a counter's
 * base stays in a register across a loop of adds). */
struct pc_slot_mem { int64_t v; };

/* The plain add. No "memory" clobber: a counter add orders nothing, and
 * naming the slots as the asm's in/out memory operand ("+m": it reads and
 * writes them, so no value the compiler knows of a slot survives the asm)
 * lets the compiler keep the rest in registers. Outputs in asm goto need
 * GCC >= 11 or Clang >= 11. */
#define PC_RSEQ_SECTION_ADD(CS, ID)                                            \
    __asm__ goto(PC_RSEQ_CS_BEGIN(CS) ID                                       \
                 "imulq %[stride], %%rax\n\t"                                  \
                 "addq %[v], (%[base], %%rax)\n\t"                             \
                 PC_RSEQ_CS_END                                                \
                 : "+m"(*(struct pc_slot_mem(*)[])(void *)base)                \
                 : [area] "r"(a), [bound] "r"(bnd), [stride] "r"(stride), \
                   [base] "r"(base), [v] "er"(v)                                \
                 : "rax", "cc"                                                 \
                 : abort)
#endif

/* The gate as a section needs it: the area (the return value) and the
 * bound (*bound), from one load. Acquire: the bound is what this thread's
 * slot write is based on (see pc_proc); the area is constant once set. */
static inline int64_t pc_gate_load(uint32_t *bound) {
    int64_t g = pc_load_i64(&pc_mod.gate, PC_ACQUIRE);
    *bound = pc_gate_bound(g);
    return pc_gate_area(g);
}

/* One try at adding v to this thread's slot at base + id * stride in a
 * section: 0 committed, 1 not (the module has not adopted, sections are off,
 * the id is not below the bound or there is none, or the section aborted;
 * nothing written). */
static inline int pc_rseq_add_i64(char *base, size_t stride, int64_t v) {
#if PC_HAVE_RSEQ_ASM
    uint32_t bnd;
    int64_t a = pc_gate_load(&bnd);
    if (PC_LIKELY(a & 1)) {
        PC_RSEQ_SECTION_ADD("7", PC_RSEQ_ID_MM_CID);
        return 0;
    }
    if (PC_LIKELY(a != 0)) {
        PC_RSEQ_SECTION_ADD("8", PC_RSEQ_ID_CPU);
        return 0;
    }
abort:
#else
    (void)base; (void)stride; (void)v;
#endif
    return 1;
}

enum { PC_ID_OK = 0, PC_ID_SHARED = 1 };

/* After a section did not commit: PC_ID_OK when this thread holds an id
 * below the bound (raising the bound when it was not), so another try can
 * commit; PC_ID_SHARED when it holds none (its rseq registration is gone, or
 * an id outside the slots), so no section of it can ever commit and the
 * caller takes its exact fallback. Registration changes only by this
 * thread's own rseq(2) calls, so once PC_ID_OK, the retries end when the
 * thread stops being preempted inside the section. */
static PC_COLD int pc_rseq_id_check(pc_proc *p) {
    int32_t cpu = pc_tp_load_i32(p->rseq_offset + PC_RSEQ_CPU_ID);
    uint32_t id = (uint32_t)pc_tp_load_i32(p->rseq_offset + p->id_field);
    if (cpu < 0 || id >= (uint32_t)p->nr_cpus) return PC_ID_SHARED;
    if (id >= pc_gate_bound(pc_load_i64(&pc_mod.gate, PC_ACQUIRE))) pc_slot_raise(p, id);
    return PC_ID_OK;
}

/* The rest of this_cpu_add() when the section did not commit; p is the
 * process's choice as this module adopted it. */
static PC_COLD void pc_percpu_add_slow(pc_proc *p, char *base, size_t stride, int64_t v) {
    int64_t *slot;
    if (p->sections) {
        /* An abort means preemption, migration or a signal: retry. Never
         * an atomic add on an id's slot here: its owner's unlocked add
         * would overwrite it. */
        if (pc_mutant(PC_MUT_RSEQ_ABORT_DROPS)) return;
        while (pc_rseq_id_check(p) == PC_ID_OK)
            if (pc_rseq_add_i64(base, stride, v) == 0) return;
        pc_shared_add(p, base, stride, v);
        return;
    }
    /* No section writes these slots, and other threads may run on "our" id
     * meanwhile: the add must be atomic. Relaxed: a counter's value is only
     * read as a sum, no data is published through it. */
    slot = (int64_t *)(void *)(base + (size_t)pc_current_slot_of(p) * stride);
    if (pc_mutant(PC_MUT_FALLBACK_ADD_PLAIN)) {
        pc_store_i64(slot, pc_load_i64(slot, PC_RELAXED) + v, PC_RELAXED);
        return;
    }
    pc_fetch_add_i64(slot, v, PC_RELAXED);
}

static PC_COLD void pc_percpu_add_slow_mod(char *base, size_t stride, int64_t v) {
    pc_percpu_add_slow(pc_mod_proc(), base, stride, v);
}

/* this_cpu_add(): adds v to this thread's int64 slot at base + id * stride.
 * The slots come from a PerCPUPool (nr_cpus + 1 of them: the last is the
 * shared slot). Needs a module that adopted the process's choice
 * (pc_registry_import()); objects that carry the registry (counters,
 * references) adopt by themselves. */
static inline void pc_percpu_add(char *base, size_t stride, int64_t v) {
    if (PC_LIKELY(pc_rseq_add_i64(base, stride, v) == 0)) return;
    pc_percpu_add_slow_mod(base, stride, v);
}

/* Sum of an object's int64 slots (see pc_slots_sum). */
static inline int64_t pc_percpu_sum(const char *base, size_t stride) {
    return pc_slots_sum(pc_mod_proc(), base, stride);
}

/* Whether the per-CPU fast paths run as rseq critical sections. */
static inline int pc_rseq_live(void) { return pc_mod_proc()->sections; }

/* ------------------------------------------------------------------------ */
/* Sections of the references and of ApproxCounter                           */
/*
 * Each try returns 0 committed, 1 not (aborted, or no id below the bound:
 * nothing written), or 2 for its own condition. Same shape as the add, with a
 * "memory" clobber: their callers order other accesses around them.
 */
#if PC_HAVE_RSEQ_ASM
/* Adds v only while *mode == 0 (a reference's per-CPU mode); 2 when it is
 * not. The mode is read inside the section, so a thread that saw 0 and was
 * then overtaken by a mode switch followed by membarrier
 * (PRIVATE_EXPEDITED_RSEQ) is aborted before it commits: that is the grace
 * period. */
#define PC_RSEQ_SECTION_ADD_IF(CS, ID)                                         \
    __asm__ goto(PC_RSEQ_CS_BEGIN(CS)                                          \
                 "cmpl $0, (%[mode])\n\t"                                      \
                 "jne %l[not_fast]\n\t"                                        \
                 ID                                                            \
                 "imulq %[stride], %%rax\n\t"                                  \
                 "addq %[v], (%[base], %%rax)\n\t"                             \
                 PC_RSEQ_CS_END                                                \
                 : /* no outputs */                                            \
                 : [area] "r"(a), [bound] "r"(bnd), [stride] "r"(stride), \
                   [base] "r"(base), [v] "er"(v), [mode] "r"(mode)             \
                 : "rax", "memory", "cc"                                       \
                 : abort, not_fast)

static inline int pc_rseq_try_add_if(const int32_t *mode, char *base, size_t stride, int64_t v) {
    uint32_t bnd;
    int64_t a = pc_gate_load(&bnd);
    if (PC_LIKELY(a & 1)) {
        PC_RSEQ_SECTION_ADD_IF("7", PC_RSEQ_ID_MM_CID);
        return 0;
    }
    if (PC_LIKELY(a != 0)) {
        PC_RSEQ_SECTION_ADD_IF("8", PC_RSEQ_ID_CPU);
        return 0;
    }
abort:
    return 1;
not_fast:
    return 2;
}

/* Adds v only if the slot stays within (-limit, limit); 2 when it would not
 * (nothing written). The store is the commit. */
#define PC_RSEQ_SECTION_ADD_BOUNDED(CS, ID)                                    \
    __asm__ goto(PC_RSEQ_CS_BEGIN(CS) ID                                       \
                 "imulq %[stride], %%rax\n\t"                                  \
                 "addq %[base], %%rax\n\t"                                     \
                 "movq (%%rax), %%rcx\n\t"                                     \
                 "addq %[v], %%rcx\n\t"                                        \
                 "movq %%rcx, %%rdx\n\t"                                       \
                 "negq %%rdx\n\t"                                              \
                 "cmovsq %%rcx, %%rdx\n\t"                                     \
                 "cmpq %[limit], %%rdx\n\t"                                    \
                 "jge %l[out_of_limit]\n\t"                                    \
                 "movq %%rcx, (%%rax)\n\t"                                     \
                 PC_RSEQ_CS_END                                                \
                 : /* no outputs */                                            \
                 : [area] "r"(a), [bound] "r"(bnd), [stride] "r"(stride), \
                   [base] "r"(base), [v] "er"(v), [limit] "r"(limit)           \
                 : "rax", "rcx", "rdx", "memory", "cc"                         \
                 : abort, out_of_limit)

static inline int pc_rseq_try_add_bounded(char *base, size_t stride, int64_t v, int64_t limit) {
    uint32_t bnd;
    int64_t a = pc_gate_load(&bnd);
    if (PC_LIKELY(a & 1)) {
        PC_RSEQ_SECTION_ADD_BOUNDED("7", PC_RSEQ_ID_MM_CID);
        return 0;
    }
    if (PC_LIKELY(a != 0)) {
        PC_RSEQ_SECTION_ADD_BOUNDED("8", PC_RSEQ_ID_CPU);
        return 0;
    }
abort:
    return 1;
out_of_limit:
    return 2;
}

/* Empties this thread's slot: *out = slot + v, slot = 0 (the commit). On 1,
 * *out may have been written and is stale. */
#define PC_RSEQ_SECTION_TAKE(CS, ID)                                           \
    __asm__ goto(PC_RSEQ_CS_BEGIN(CS) ID                                       \
                 "imulq %[stride], %%rax\n\t"                                  \
                 "addq %[base], %%rax\n\t"                                     \
                 "movq (%%rax), %%rcx\n\t"                                     \
                 "addq %[v], %%rcx\n\t"                                        \
                 "movq %%rcx, (%[out])\n\t"                                    \
                 "movq $0, (%%rax)\n\t"                                        \
                 PC_RSEQ_CS_END                                                \
                 : /* no outputs */                                            \
                 : [area] "r"(a), [bound] "r"(bnd), [stride] "r"(stride), \
                   [base] "r"(base), [v] "er"(v), [out] "r"(out)               \
                 : "rax", "rcx", "memory", "cc"                                \
                 : abort)

static inline int pc_rseq_try_take(char *base, size_t stride, int64_t v, int64_t *out) {
    uint32_t bnd;
    int64_t a = pc_gate_load(&bnd);
    if (PC_LIKELY(a & 1)) {
        PC_RSEQ_SECTION_TAKE("7", PC_RSEQ_ID_MM_CID);
        return 0;
    }
    if (PC_LIKELY(a != 0)) {
        PC_RSEQ_SECTION_TAKE("8", PC_RSEQ_ID_CPU);
        return 0;
    }
abort:
    return 1;
}
#else
static inline int pc_rseq_try_add_if(const int32_t *mode, char *base, size_t stride, int64_t v) {
    (void)mode; (void)base; (void)stride; (void)v;
    return 1;
}
static inline int pc_rseq_try_add_bounded(char *base, size_t stride, int64_t v, int64_t limit) {
    (void)base; (void)stride; (void)v; (void)limit;
    return 1;
}
static inline int pc_rseq_try_take(char *base, size_t stride, int64_t v, int64_t *out) {
    (void)base; (void)stride; (void)v; (void)out;
    return 1;
}
#endif

static PC_COLD int pc_rseq_add_if_slow(const int32_t *mode, char *base, size_t stride, int64_t v,
                                       int rc) {
    pc_proc *p;
    if (rc == 2) return 2;
    /* Not adopted or no sections: the caller's shared path is always right
     * (it is for references, the only users). */
    if (pc_load_i32(&pc_mod.mode, PC_ACQUIRE) == PC_CPU_UNINIT) return 2;
    p = (pc_proc *)pc_load_ptr((void **)&pc_mod.proc, PC_RELAXED);
    if (!p->sections || pc_rseq_id_check(p) == PC_ID_SHARED) return 2;
    /* Aborted, or the bound was just raised: one more try. */
    return pc_rseq_try_add_if(mode, base, stride, v);
}

/* The references' per-CPU add: 0 committed; 1 aborted (nothing written;
 * retry); 2 nothing written and no per-CPU add is possible now: *mode != 0,
 * or this thread has no id (take the shared path). */
static inline int pc_rseq_add_if_i64(const int32_t *mode, char *base, size_t stride,
                                     int64_t v) {
    int rc = pc_rseq_try_add_if(mode, base, stride, v);
    if (PC_LIKELY(rc == 0)) return 0;
    return pc_rseq_add_if_slow(mode, base, stride, v, rc);
}

#endif /* PERCPU_RSEQ_H */
