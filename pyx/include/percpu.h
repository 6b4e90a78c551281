/*
 * percpu.h: the C core of percpu, one header per concern behind this one.
 *
 *   percpu/base.h         compiler helpers, the cache-line size, the clock
 *   percpu/atomic.h       atomics with explicit memory orders
 *   percpu/cpu.h          possible CPUs and the current cpu id
 *   percpu/rseq.h         rseq critical sections, this_cpu_add()
 *   percpu/membarrier.h   the membarrier system call
 *   percpu/registry.h     thread registry, fork tracking, grace period
 *   percpu/counters.h     the seven counter strategies' hot paths
 *   percpu/pool.h         the per-CPU allocator's bitmaps and mappings
 *
 * Not included here: percpu/registry_init.h (the registry's owner,
 * percpu._core, and the C tests), percpu/team.h and percpu/lab.h (the
 * benchmark lab's native thread team and kernels).
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

#include "percpu/base.h"
#include "percpu/atomic.h"
#include "percpu/cpu.h"
#include "percpu/rseq.h"
#include "percpu/membarrier.h"
#include "percpu/registry.h"
#include "percpu/counters.h"
#include "percpu/pool.h"

#pragma GCC diagnostic pop
#endif /* PERCPU_H */
