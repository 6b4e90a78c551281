/*
 * percpu/rseq.h: the rseq critical sections and this_cpu_add().
 */
#ifndef PERCPU_RSEQ_H
#define PERCPU_RSEQ_H

#include "percpu/cpu.h"

/* ------------------------------------------------------------------------ */
/* The rseq per-CPU add: the user-space this_cpu_add()                       */
/*
 * librseq's shape. Before the section: this thread's id is read from its
 * rseq area (cpu_id, or mm_cid where the process chose it), compared with the
 * slot bound, and the slot's address computed. Inside the section: the id is
 * compared again with the area's current value, and the area's cpu_id with 0
 * (a thread whose registration is gone reads -1 or -2 there, and mm_cid 0
 * forever); then one plain (unlocked) add commits. If the thread is
 * preempted, migrated or signalled before the commit, the kernel moves it to
 * the abort label and nothing was written. So a slot is written only by the
 * thread that holds its id at that instant: no other thread can have touched
 * it between the add's read and write. Readers of the slot use relaxed atomic
 * loads; an aligned 8-byte store is single-copy atomic on x86-64, so a reader
 * sees the old or the new value, never a torn one.
 *
 * No section ever indexes with an id it has not checked: the id used for the
 * address is below the bound (so below nr_cpus), and the section commits only
 * if the kernel still says it is this thread's id. A thread whose
 * registration is gone fails one of the two checks on every try (cpu_id is
 * negative, so the unsigned bound check fails; with mm_cid the in-section
 * cpu_id check fails), so the slow paths ask pc_rseq_id_check() and take the
 * exact fallback (the shared slot, or the caller's shared state).
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

#define PC_RSEQ_CS_BEGIN                                                       \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                       \
    ".balign 32\n\t"                                                           \
    "333:\n\t"                                                                 \
    ".long 0, 0\n\t"                                                           \
    ".quad 111f, 222f - 111f, 444f\n\t"                                        \
    ".popsection\n\t"                                                          \
    "leaq 333b(%%rip), %%rax\n\t"                                              \
    "movq %%rax, %%fs:8(%[area])\n\t"                                          \
    "111:\n\t"

/* Inside the section: the id read before is still this thread's, and the
 * thread is registered (cpu_id >= 0; redundant when the id is cpu_id). */
#define PC_RSEQ_CS_CHECK_ID                                                    \
    "cmpl %[id], %%fs:(%[idp])\n\t"                                            \
    "jne %l[abort]\n\t"                                                        \
    "cmpl $0, %%fs:4(%[area])\n\t"                                             \
    "jl %l[abort]\n\t"

#define PC_RSEQ_CS_END                                                         \
    "222:\n\t"                                                                 \
    ".pushsection __rseq_failure, \"ax\"\n\t"                                  \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                               \
    ".long 0x53053053\n\t"                                                     \
    "444:\n\t"                                                                 \
    "jmp %l[abort]\n\t"                                                        \
    ".popsection\n\t"

/* A slot as the asm's memory operand: a type of its own, so that type-based
 * alias analysis knows the section cannot write a pointer (a counter's base
 * stays in a register across a loop of adds). */
struct pc_slot_mem { int64_t v; };

/* The section of the plain add: 0 committed, 1 not (nothing written). */
static inline int pc_rseq_add_at(int64_t area, int64_t idp, uint32_t id, int64_t *slot,
                                 int64_t v) {
    /* No "memory" clobber: a counter add orders nothing, and naming the slot
     * as the asm's in/out memory operand ("+m": it reads and writes it, so
     * no value the compiler knows of it survives the asm) lets the compiler
     * keep everything else in registers across a loop of adds. Outputs in
     * asm goto need GCC >= 11 or Clang >= 11. */
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 PC_RSEQ_CS_CHECK_ID
                 "addq %[v], %[slot]\n\t"
                 PC_RSEQ_CS_END
                 : [slot] "+m"(*(struct pc_slot_mem *)(void *)slot)
                 : [area] "r"(area), [idp] "r"(idp), [id] "r"(id), [v] "r"(v)
                 : "rax", "cc"
                 : abort);
    return 0;
abort:
    return 1;
}
#endif

/* The fast paths' prelude: this thread's id, read before the section, checked
 * against this module's copy of the bound (0 until the module adopted a
 * choice with sections, so then every id fails: an unadopted module's id
 * offset is 0, and %fs:0 is the thread pointer's own slot, always readable).
 * 0: a section may run with *area, *idp, *id; 1: not. The acquire load of
 * the copy comes first: see pc_adopt() and pc_proc for what it orders. */
static inline int pc_rseq_prelude(int64_t *area, int64_t *idp, uint32_t *id) {
    uint32_t bound = (uint32_t)pc_load_i32(&pc_mod.bound, PC_ACQUIRE);
    *idp = pc_load_i64(&pc_mod.id, PC_RELAXED);
    *id = (uint32_t)pc_tp_load_i32(*idp);
    *area = pc_load_i64(&pc_mod.area, PC_RELAXED);
    return *id >= bound;
}

/* One try at adding v to this thread's slot at base + id * stride in a
 * section: 0 committed, 1 not (the module has not adopted, sections are off,
 * the id is not below the bound, or the section aborted; nothing written). */
static inline int pc_rseq_add_i64(char *base, size_t stride, int64_t v) {
#if PC_HAVE_RSEQ_ASM
    int64_t area, idp;
    uint32_t id;
    if (PC_LIKELY(!pc_rseq_prelude(&area, &idp, &id)))
        return pc_rseq_add_at(area, idp, id, (int64_t *)(void *)(base + (size_t)id * stride), v);
    return 1;
#else
    (void)base; (void)stride; (void)v;
    return 1;
#endif
}

enum { PC_ID_OK = 0, PC_ID_SHARED = 1 };

/* After a section did not commit: PC_ID_OK when this thread holds an id
 * below the bound (raising the bound when it was not), so another try can
 * commit; PC_ID_SHARED when it holds none (its rseq registration is gone, or
 * an id outside the slots), so no section of it can ever commit and the
 * caller takes its exact fallback. Registration changes only by this
 * thread's own rseq(2) calls, so once PC_ID_OK, the retries end when the
 * thread stops being preempted between the id load and the commit. */
static PC_COLD int pc_rseq_id_check(pc_proc *p) {
    int32_t cpu = pc_tp_load_i32(p->rseq_offset + PC_RSEQ_CPU_ID);
    uint32_t id = (uint32_t)pc_tp_load_i32(p->rseq_offset + p->id_field);
    if (cpu < 0 || id >= (uint32_t)p->nr_cpus) return PC_ID_SHARED;
    if (id >= (uint32_t)pc_load_i32(&pc_mod.bound, PC_ACQUIRE)) pc_slot_raise(p, id);
    return PC_ID_OK;
}

/* The rest of this_cpu_add() when the section did not commit; p is the
 * process's choice as this module adopted it. */
static PC_COLD void pc_percpu_add_slow(pc_proc *p, char *base, size_t stride, int64_t v) {
    if (p->sections) {
        /* An abort means preemption, migration or a signal: retry. Never
         * an atomic add on an id's slot here: its owner's unlocked add
         * would overwrite it. */
        while (pc_rseq_id_check(p) == PC_ID_OK)
            if (pc_rseq_add_i64(base, stride, v) == 0) return;
        pc_shared_add(p, base, stride, v);
        return;
    }
    /* No section writes these slots, and other threads may run on "our" id
     * meanwhile: the add must be atomic. Relaxed: a counter's value is only
     * read as a sum, no data is published through it. */
    pc_fetch_add_i64((int64_t *)(void *)(base + (size_t)pc_current_slot_of(p) * stride), v,
                     PC_RELAXED);
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
 * Each try returns 0 committed, 1 aborted, 3 no id below the bound (nothing
 * written in both), or 2 for its own condition.
 */
#if PC_HAVE_RSEQ_ASM
/* Adds v only while *mode == 0 (a reference's per-CPU mode); 2 when it is
 * not. The mode is read inside the section, so a thread that saw 0 and was
 * then overtaken by a mode switch followed by membarrier
 * (PRIVATE_EXPEDITED_RSEQ) is aborted before it commits: that is the grace
 * period. */
static inline int pc_rseq_try_add_if(const int32_t *mode, char *base, size_t stride, int64_t v) {
    int64_t area, idp;
    uint32_t id;
    if (pc_rseq_prelude(&area, &idp, &id)) return 3;
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 "cmpl $0, (%[mode])\n\t"
                 "jne %l[not_fast]\n\t"
                 PC_RSEQ_CS_CHECK_ID
                 "addq %[v], (%[slot])\n\t"
                 PC_RSEQ_CS_END
                 : /* no outputs */
                 : [area] "r"(area), [idp] "r"(idp), [id] "r"(id), [v] "r"(v),
                   [mode] "r"(mode), [slot] "r"(base + (size_t)id * stride)
                 : "rax", "memory", "cc"
                 : abort, not_fast);
    return 0;
abort:
    return 1;
not_fast:
    return 2;
}

/* Adds v only if the slot stays within (-bound, bound); 2 when it would not
 * (nothing written). The store is the commit. */
static inline int pc_rseq_try_add_bounded(char *base, size_t stride, int64_t v, int64_t bound) {
    int64_t area, idp;
    uint32_t id;
    if (pc_rseq_prelude(&area, &idp, &id)) return 3;
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 PC_RSEQ_CS_CHECK_ID
                 "movq (%[slot]), %%rcx\n\t"
                 "addq %[v], %%rcx\n\t"
                 "movq %%rcx, %%rdx\n\t"
                 "negq %%rdx\n\t"
                 "cmovsq %%rcx, %%rdx\n\t"
                 "cmpq %[bound], %%rdx\n\t"
                 "jge %l[out_of_bound]\n\t"
                 "movq %%rcx, (%[slot])\n\t"
                 PC_RSEQ_CS_END
                 : /* no outputs */
                 : [area] "r"(area), [idp] "r"(idp), [id] "r"(id), [v] "r"(v),
                   [bound] "r"(bound), [slot] "r"(base + (size_t)id * stride)
                 : "rax", "rcx", "rdx", "memory", "cc"
                 : abort, out_of_bound);
    return 0;
abort:
    return 1;
out_of_bound:
    return 2;
}

/* Empties this thread's slot: *out = slot + v, slot = 0 (the commit). On 1,
 * *out may have been written and is stale. */
static inline int pc_rseq_try_take(char *base, size_t stride, int64_t v, int64_t *out) {
    int64_t area, idp;
    uint32_t id;
    if (pc_rseq_prelude(&area, &idp, &id)) return 3;
    __asm__ goto(PC_RSEQ_CS_BEGIN
                 PC_RSEQ_CS_CHECK_ID
                 "movq (%[slot]), %%rcx\n\t"
                 "addq %[v], %%rcx\n\t"
                 "movq %%rcx, (%[out])\n\t"
                 "movq $0, (%[slot])\n\t"
                 PC_RSEQ_CS_END
                 : /* no outputs */
                 : [area] "r"(area), [idp] "r"(idp), [id] "r"(id), [v] "r"(v),
                   [out] "r"(out), [slot] "r"(base + (size_t)id * stride)
                 : "rax", "rcx", "memory", "cc"
                 : abort);
    return 0;
abort:
    return 1;
}
#else
static inline int pc_rseq_try_add_if(const int32_t *mode, char *base, size_t stride, int64_t v) {
    (void)mode; (void)base; (void)stride; (void)v;
    return 3;
}
static inline int pc_rseq_try_add_bounded(char *base, size_t stride, int64_t v, int64_t bound) {
    (void)base; (void)stride; (void)v; (void)bound;
    return 3;
}
static inline int pc_rseq_try_take(char *base, size_t stride, int64_t v, int64_t *out) {
    (void)base; (void)stride; (void)v; (void)out;
    return 3;
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
    if (!p->sections) return 2;
    if (pc_rseq_id_check(p) == PC_ID_SHARED) return 2;
    if (rc == 3) {
        rc = pc_rseq_try_add_if(mode, base, stride, v);
        if (rc == 3) rc = 1;
    }
    return rc;
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
