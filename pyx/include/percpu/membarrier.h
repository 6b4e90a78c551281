/*
 * percpu/membarrier.h: the membarrier system call.
 */
#ifndef PERCPU_MEMBARRIER_H
#define PERCPU_MEMBARRIER_H

#include "percpu/base.h"

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


#endif /* PERCPU_MEMBARRIER_H */
