# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._core: CPU ids, machine features, the thread registry and the team.

The registry is made at import and guarded by its own mutex; readers of its
figures take it too, so nothing here relies on a GIL
(``freethreading_compatible``).
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from percpu.cpercpu cimport *

cdef extern from *:
    """
    static pc_registry *pc_the_registry;

    static void pc_registry_thread_exit(void *p) {
        if (p && pc_the_registry) pc_registry_leave(pc_the_registry, (pc_thread_rec *)p);
    }

    /* Around fork(): take the registry lock and every tracked lock (see
     * pc_fork_node), in the forking thread, so that none is held by a thread
     * that will not exist in the child. */
    static void pc_fork_prepare(void) {
        pc_registry *reg = pc_the_registry;
        pc_fork_node *n;
        int32_t free_;
        pthread_mutex_lock(&reg->fork_lock);
        pthread_mutex_lock(&reg->lock);
        for (n = reg->fork_head.next; n != &reg->fork_head; n = n->next) {
            if (n->mutex) pthread_mutex_lock(n->mutex);
            else if (n->spin) {
                /* Acquire, as any taker of the spinlock. */
                for (free_ = 0; !pc_cas_i32(n->spin, &free_, 1, PC_ACQUIRE, PC_RELAXED); free_ = 0)
                    sched_yield();
            }
        }
    }

    static void pc_fork_release(void) {
        pc_registry *reg = pc_the_registry;
        pc_fork_node *n;
        for (n = reg->fork_head.prev; n != &reg->fork_head; n = n->prev) {
            if (n->mutex) pthread_mutex_unlock(n->mutex);
            else if (n->spin) pc_store_i32(n->spin, 0, PC_RELEASE);
        }
        pthread_mutex_unlock(&reg->lock);
        pthread_mutex_unlock(&reg->fork_lock);
    }

    /* In the child only the forking thread exists: records of the parent's
     * other threads would never be given back. */
    static void pc_fork_child(void) {
        pc_registry *reg = pc_the_registry;
        pc_thread_rec *mine = (pc_thread_rec *)pthread_getspecific(reg->key);
        int i;
        reg->live = 0;
        for (i = 0; i < PC_MAX_THREADS; i++) {
            pc_thread_rec *r = &reg->recs[i];
            if (r == mine) { r->seq &= ~(uint64_t)1; reg->live++; }
            else if (r->in_use) { r->in_use = 0; r->seq = 0; }
        }
        pc_fork_release();
    }

    static int pc_registry_create(void) {
        pc_registry *reg;
        int i;
        if (pc_the_registry) return 0;
        /* The records are cache-line aligned; so must the block be. */
        if (posix_memalign((void **)&reg, PC_CACHELINE, sizeof *reg)) return -1;
        memset(reg, 0, sizeof *reg);
        pthread_mutex_init(&reg->lock, NULL);
        pthread_mutex_init(&reg->fork_lock, NULL);
        reg->fork_head.next = reg->fork_head.prev = &reg->fork_head;
        if (pthread_key_create(&reg->key, pc_registry_thread_exit)) return -1;
        for (i = 0; i < PC_MAX_THREADS; i++) reg->recs[i].index = i;
        /* Register both expedited flavours; each may be missing (old kernel,
         * seccomp). The RSEQ one is useful only where rseq is live. */
        if (pc_membarrier(PC_MB_REGISTER_PRIVATE_EXPEDITED, 0) == 0) {
            reg->membarrier = PC_MB_EXPEDITED;
            if (pc_rseq_live() &&
                pc_membarrier(PC_MB_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0) == 0)
                reg->membarrier = PC_MB_EXPEDITED_RSEQ;
        }
        pc_the_registry = reg;
        pthread_atfork(pc_fork_prepare, pc_fork_release, pc_fork_child);
        return 0;
    }
    """
    pc_registry *pc_the_registry
    int pc_registry_create() nogil

# The registry as seen with its lock, for the readers below (the shared
# declaration in percpu.cpercpu leaves the lock out).
cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "percpu.h" nogil:
    ctypedef struct _locked_registry "pc_registry":
        pthread_mutex_t lock
        int32_t live
        int32_t high_water

if pc_registry_create() != 0:
    raise MemoryError("percpu: cannot create the thread registry")

_registry = PyCapsule_New(<void *>pc_the_registry, b"percpu._core._registry", NULL)


def nr_cpus() -> int:
    """Number of per-CPU slots: every possible CPU (not only the online ones)."""
    return pc_nr_cpus()


def current_cpu() -> int:
    """The CPU this thread is running on (a hint: it may migrate right after)."""
    return pc_current_cpu()


def features() -> dict:
    """What the fast paths use on this machine.

    ``rseq``: per-CPU adds run as rseq critical sections; ``membarrier``: the
    expedited membarrier flavour registered (``"rseq"``, ``"expedited"`` or
    ``None``); ``cacheline``: padding unit in bytes; ``nr_cpus``: slot count;
    ``cpu_source``: where cpu ids come from (``rseq``, ``getcpu``, ``thread``).
    """
    cdef int mb = pc_the_registry.membarrier
    return {
        "rseq": bool(pc_rseq_live()),
        "membarrier": {PC_MB_EXPEDITED_RSEQ: "rseq", PC_MB_EXPEDITED: "expedited"}.get(mb),
        "cacheline": PC_CACHELINE,
        "nr_cpus": pc_nr_cpus(),
        "cpu_source": pc_cpu_source_name().decode(),
    }


def registry_stats() -> dict:
    """Thread registry figures: live threads, records handed out, grace periods run."""
    cdef _locked_registry *reg = <_locked_registry *>pc_the_registry
    cdef int32_t live, high_water
    # Threads join and leave under the registry lock, with no GIL to keep
    # them still on a free-threaded build: read the pair under it too.
    with nogil:
        pthread_mutex_lock(&reg.lock)
        live = reg.live
        high_water = reg.high_water
        pthread_mutex_unlock(&reg.lock)
    return {
        "live": live,
        "high_water": high_water,
        # Counted with an atomic add, outside any lock.
        "grace_periods": pc_load_i32(&pc_the_registry.grace_periods, PC_RELAXED),
        "capacity": PC_MAX_THREADS,
    }


def synchronize() -> None:
    """Run one grace period: every per-CPU fast path open now has finished."""
    with nogil:
        pc_synchronize(pc_the_registry)


cdef struct SelfTestArg:
    int64_t *cells  # one padded cell per thread


cdef void _selftest_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef SelfTestArg *a = <SelfTestArg *>arg
    cdef int64_t *cell = a.cells + tid * (PC_CACHELINE // 8)
    cdef int64_t i
    for i in range(ops):
        cell[0] += 1
    done[0] = ops


def team_selftest(int threads, long long ops, bint pin=False) -> dict:
    """Run the native team with a trivial kernel (each thread counts to ``ops`` in
    its own padded cell). Returns ``wall_ns``, ``done`` (per thread) and ``cells``."""
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    cdef SelfTestArg arg
    cdef int stride = PC_CACHELINE // 8
    cdef int64_t *done = <int64_t *>calloc(threads, sizeof(int64_t))
    arg.cells = <int64_t *>calloc(threads * stride, sizeof(int64_t))
    try:
        if done == NULL or arg.cells == NULL:
            raise MemoryError()
        wall_ns = pc_run_team(_selftest_kernel, &arg, threads, ops, done, pin)
        return {
            "wall_ns": wall_ns,
            "done": [done[i] for i in range(threads)],
            "cells": [arg.cells[i * stride] for i in range(threads)],
        }
    finally:
        free(done)
        free(arg.cells)
