/*
 * percpu/mutant.h: known-bad variants of the core, for mutation testing.
 *
 * A test suite that passes proves little unless it is known to fail on the
 * bugs it exists to catch (the kernel's rcutorture ships a deliberately
 * broken RCU for the same reason). Each variant below is one such bug, kept
 * beside the correct code at the place where it would be made. A build with
 * PERCPU_MUTANTS defined (setup.py: PERCPU_MUTANTS=1 in the environment)
 * compiles them all in, and PERCPU_MUTANT=<name> at run time picks one,
 * read once per module; tools/mutants.py builds that and requires the
 * tests it names for each mutant to fail on it. In every other build
 * pc_mutant() is the constant 0 and the compiler removes the variants.
 */
#ifndef PERCPU_MUTANT_H
#define PERCPU_MUTANT_H

#include "percpu/atomic.h"

enum {
    PC_MUT_NONE = 0,
    PC_MUT_FALLBACK_ADD_PLAIN,     /* rseq.h: the no-rseq per-CPU add as a load and a store */
    PC_MUT_RSEQ_ABORT_DROPS,       /* rseq.h: an aborted rseq add is dropped, not retried */
    PC_MUT_NO_GRACE_PERIOD,        /* refs: a mode switch folds without a grace period */
    PC_MUT_SECTION_SKIPPED,        /* refs: the no-rseq slot add outside a read-side section */
    PC_MUT_APPROX_FOLD_UNLOCKED,   /* counters.h: ApproxCounter folds without its lock */
    PC_MUT_RELEASE_KEEPS_COUNT,    /* refs: the last put releases but leaves the count at 0 */
    PC_MUT_PERTHREAD_SHARED_SLOT,  /* counters.h: per-thread slots indexed by CPU (two writers) */
    PC_MUT_TRYGET_LIVE_AFTER_KILL, /* refs: the shared tryget_live ignores the kill */
    PC_MUT_COUNT
};

static const char *const pc_mutant_names[PC_MUT_COUNT] PC_MAYBE_UNUSED = {
    "", "fallback_add_plain", "rseq_abort_drops", "no_grace_period", "section_skipped",
    "approx_fold_unlocked", "release_keeps_count", "perthread_shared_slot", "tryget_live_after_kill",
};

#ifdef PERCPU_MUTANTS
#define PC_MUTANTS_BUILT 1
static int32_t pc_mutant_selected = -1; /* per module: -1 not read yet */

static PC_COLD int32_t pc_mutant_init(void) {
    const char *e = getenv("PERCPU_MUTANT");
    int32_t m = PC_MUT_NONE, i;
    if (e && *e) {
        for (i = 1; i < PC_MUT_COUNT; i++)
            if (strcmp(e, pc_mutant_names[i]) == 0) m = i;
        if (m == PC_MUT_NONE) {
            /* A typo must not pass for a mutant the suite "killed". */
            fprintf(stderr, "percpu: unknown PERCPU_MUTANT=%s\n", e);
            abort();
        }
    }
    /* Racing initialisers store the same value: relaxed is enough. */
    pc_store_i32(&pc_mutant_selected, m, PC_RELAXED);
    return m;
}

/* Whether the known-bad variant m is the one this process runs. */
static inline int pc_mutant(int32_t m) {
    int32_t s = pc_load_i32(&pc_mutant_selected, PC_RELAXED);
    if (PC_UNLIKELY(s < 0)) s = pc_mutant_init();
    return s == m;
}
#else
#define PC_MUTANTS_BUILT 0
static inline int pc_mutant(int32_t m) {
    (void)m;
    return 0;
}
#endif

#endif /* PERCPU_MUTANT_H */
