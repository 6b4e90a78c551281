/*
 * percpu/rseq.h: the rseq critical sections and this_cpu_add().
 */
#ifndef PERCPU_RSEQ_H
#define PERCPU_RSEQ_H

#include "percpu/cpu.h"

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

#endif /* PERCPU_RSEQ_H */
