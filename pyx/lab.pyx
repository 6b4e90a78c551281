# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._lab: native-thread kernels for the tests and the measurements.

The lab drives the library's nogil C API from a team of native threads
(pyx/include/percpu/team.h): the counters' adds (``hammer``), the allocator
under concurrent alloc/free (``_stress``, ``_percpu_add_stress``) and its
cost per alloc+free pair (``alloc_free``), references
taken, dropped and killed concurrently (``_stress_kill``, ``_stress_exact``,
``_team_refops``), the references' lifetime rules (``_tryget_live_vs_kill``,
``_misused_get_vs_tryget``, ``_release_frees_object``), a thread's registry
record after its exit (``_registry_after_exit``), and the team itself
(``team_selftest``). The library's modules never import this one.

Every helper keeps its state in the call (C structs on its stack or its own
allocations), so they may run from many Python threads at once with no GIL
(``freethreading_compatible``).
"""
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from percpu.cpercpu cimport *
from percpu._team cimport PC_TEAM_POLL, pc_kernel_fn, pc_run_team, pc_team_expired
from percpu._alloc cimport (GRANULE, NaivePool, PerCPUPool, pc_naive, pc_pool, naive_alloc, naive_free,
                            naive_ptr, pcpool_alloc, pcpool_claim, pcpool_free, pcpool_ptr,
                            pcpool_stride)
from percpu._counters cimport (
    ApproxCounter, AtomicCounter, CounterBase, LockedCounter, PerCPUCounter, PerThreadCounter,
    RacyCounter, StripedCounter, pc_cell, pc_cell_read, pc_perthread_counter,
    pc_perthread_counter_add)
from percpu._refs cimport *

# Adopts the process's cpu-id choice at import: the raw per-CPU API of the
# pool kernels below needs it.
cdef pc_registry *_registry = pc_registry_import()

cdef extern from "percpu/lab.h" nogil:
    enum:
        PC_K_ATOMIC, PC_K_LOCKED, PC_K_PERCPU, PC_K_PERTHREAD, PC_K_APPROX, PC_K_STRIPED, PC_K_RACY
    ctypedef struct pc_counter_job:
        int kind
        int mixed
        void *c
    void pc_counter_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil


cdef void _call_noexcept(object fn) noexcept:
    # An exception here has nowhere to go: it is reported through
    # sys.unraisablehook, like one from a release callback.
    fn()


cdef inline bint _time_up(int64_t i) noexcept nogil:
    # The team's deadline, polled once every PC_TEAM_POLL iterations, from
    # the end of the first round: a member that the scheduler starts after
    # the deadline (a loaded machine) still does one round.
    return i != 0 and (i & (PC_TEAM_POLL - 1)) == 0 and pc_team_expired()


# The canary of a kernel: a count of its iterations that is read when an
# iteration starts and written (plus one) when it ends, with no atomicity.
# It loses an update whenever another thread finished an iteration in
# between, so a loss proves the threads interleaved mid-operation; nothing
# lost means the run cannot have shown a race either. Relaxed loads and
# stores: racy by design, as pc_racy_counter_add, but well defined.
cdef inline int64_t _canary_begin(pc_cell *c) noexcept nogil:
    return pc_load_i64(&c.value, PC_RELAXED)


cdef inline void _canary_end(pc_cell *c, int64_t seen) noexcept nogil:
    pc_store_i64(&c.value, seen + 1, PC_RELAXED)


# ---------------------------------------------------------------------------
# Mutation testing

def _mutants() -> dict:
    """The known-bad variants of percpu/mutant.h: ``built`` (whether this
    build has them, PERCPU_MUTANTS=1), ``names``, and ``active``: the one
    PERCPU_MUTANT selects in this process, or None."""
    cdef int i
    active = None
    for i in range(1, PC_MUT_COUNT):
        if pc_mutant(i):
            active = pc_mutant_names[i].decode()
    return {
        "built": bool(PC_MUTANTS_BUILT),
        "names": [pc_mutant_names[i].decode() for i in range(1, PC_MUT_COUNT)],
        "active": active,
    }


# ---------------------------------------------------------------------------
# The team itself

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


# ---------------------------------------------------------------------------
# Counters under native threads

_KINDS = {
    AtomicCounter: PC_K_ATOMIC, LockedCounter: PC_K_LOCKED, PerCPUCounter: PC_K_PERCPU,
    PerThreadCounter: PC_K_PERTHREAD, ApproxCounter: PC_K_APPROX,
    StripedCounter: PC_K_STRIPED, RacyCounter: PC_K_RACY,
}


cdef void *_state(CounterBase counter):
    if isinstance(counter, AtomicCounter):
        return (<AtomicCounter>counter).c
    if isinstance(counter, RacyCounter):
        return (<RacyCounter>counter).c
    if isinstance(counter, LockedCounter):
        return (<LockedCounter>counter).c
    if isinstance(counter, PerCPUCounter):
        return (<PerCPUCounter>counter).c
    if isinstance(counter, PerThreadCounter):
        return (<PerThreadCounter>counter).c
    if isinstance(counter, ApproxCounter):
        return (<ApproxCounter>counter).c
    return (<StripedCounter>counter).c


cdef void _generic_counter_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    # Any counter class through its C vtable (CounterBase._add): a strategy
    # that has no specialised loop yet, or a subclass, still runs.
    cdef pc_counter_job *job = <pc_counter_job *>arg
    cdef int64_t i = 0
    while i < ops and not _time_up(i):
        (<CounterBase>job.c)._add(-1 if job.mixed and (i & 3) == 3 else 1)
        i += 1
    done[0] = i


def hammer(CounterBase counter not None, int threads, long long ops, bint mixed=False,
           bint pin=False, long long run_ns=0, long long interrupt_ns=0):
    """Run ``ops`` adds per thread on ``threads`` native threads (GIL released),
    each add inlined in a loop specialised for the counter's strategy (any
    other counter class, a subclass included, through its C vtable).

    ``run_ns`` > 0: each thread stops once that long has passed since the
    start (checked every 1024 ops), ``ops`` being the cap, so that a run
    lasts long enough for its threads to be preempted mid-add.
    ``interrupt_ns`` > 0: each thread is interrupted every ``interrupt_ns``
    by a signal whose handler yields the CPU: a preemption at a random
    point, which aborts an rseq section in flight (the retry paths run) and
    lets another thread on that CPU run in the middle of an add.

    ``mixed``: every fourth op (``i % 4 == 3``) subtracts 1 instead of adding
    it. Returns ``{"wall_ns", "ns_per_op", "done", "expected"}``: ``done`` is
    each thread's count of ops, ``expected`` the total they add up to
    (``n - 2 * (n // 4)`` for a mixed thread that did ``n``), ``ns_per_op``
    the wall time per op of the busiest thread.
    """
    kind = _KINDS.get(type(counter))
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    cdef pc_counter_job job
    cdef pc_kernel_fn fn = pc_counter_kernel
    job.mixed = mixed
    if kind is None:
        job.kind = -1
        job.c = <void *>counter  # kept alive by the caller's reference
        fn = _generic_counter_kernel
    else:
        job.kind = kind
        job.c = _state(counter)
    cdef int64_t *done = <int64_t *>calloc(threads, sizeof(int64_t))
    if done == NULL:
        raise MemoryError()
    try:
        wall_ns = pc_run_team(fn, &job, threads, ops, done, pin, run_ns, interrupt_ns)
        per_thread = [done[i] for i in range(threads)]
    finally:
        free(done)
    most = max(per_thread)
    return {
        "wall_ns": wall_ns,
        "ns_per_op": wall_ns / most if most else 0.0,
        "done": per_thread,
        "expected": sum([n - 2 * (n // 4) if mixed else n for n in per_thread]),
    }


# ---------------------------------------------------------------------------
# The allocator under native threads

cdef enum:
    RING = 8                # live objects per thread in _stress

cdef struct TeamArg:
    pc_pool *pool           # one of pool / naive is set
    pc_naive *naive
    size_t size
    int nr_cpus
    int64_t *corrupt        # per thread: copies whose pattern another object overwrote
    int64_t *nonzero        # per thread: copies not zeroed at alloc
    int64_t *failures       # per thread: allocations that failed
    char *counter_base      # _percpu_add_stress: the counters' CPU-0 copies
    size_t counter_stride
    int64_t *handles        # _free_race: the objects every thread frees
    int64_t nhandles


cdef inline int64_t _t_alloc(TeamArg *a, size_t size) noexcept nogil:
    if a.pool != NULL:
        return pcpool_alloc(a.pool, size, GRANULE, False)
    return naive_alloc(a.naive, size, GRANULE, False)


cdef inline int _t_free(TeamArg *a, int64_t h) noexcept nogil:
    if a.pool != NULL:
        return pcpool_free(a.pool, h)
    return naive_free(a.naive, h)


cdef inline char *_t_ptr(TeamArg *a, int64_t h, int cpu) noexcept nogil:
    if a.pool != NULL:
        return pcpool_ptr(a.pool, h, cpu)
    return naive_ptr(a.naive, h, cpu)


cdef inline uint64_t _tag(int tid, int64_t i, int cpu) noexcept nogil:
    # splitmix64 of (tid, i, cpu): every byte differs between two objects with
    # high probability, so a partial overlap shows too.
    cdef uint64_t z = (<uint64_t>(tid + 1) << 48) ^ (<uint64_t>i << 8) ^ <uint64_t>cpu
    z += 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline size_t _stress_size(TeamArg *a, int tid, int64_t i) noexcept nogil:
    # Varying sizes fragment the units; the largest is a.size.
    return 1 + <size_t>((<uint64_t>i * 2654435761ULL + <uint64_t>tid * 40503ULL) % a.size)


cdef int64_t _check_object(TeamArg *a, int64_t h, int tid, int64_t i) noexcept nogil:
    cdef size_t size = _stress_size(a, tid, i), j
    cdef int c
    cdef uint64_t tag
    cdef unsigned char *q
    cdef int64_t bad = 0
    for c in range(a.nr_cpus):
        tag = _tag(tid, i, c)
        q = <unsigned char *>_t_ptr(a, h, c)
        for j in range(size):
            if q[j] != <unsigned char>(tag >> (8 * (j & 7))):
                bad += 1
                break
    return bad


cdef void _pool_stress_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t ring[RING]
    cdef int64_t ring_i[RING]
    cdef int64_t i, h, corrupt = 0, nonzero = 0, failures = 0
    cdef size_t size, j
    cdef int c, k
    cdef uint64_t tag
    cdef unsigned char *q
    for k in range(RING):
        ring[k] = -1
    for i in range(ops):
        k = <int>(i % RING)
        if ring[k] >= 0:
            corrupt += _check_object(a, ring[k], tid, ring_i[k])
            _t_free(a, ring[k])
            ring[k] = -1
        size = _stress_size(a, tid, i)
        h = _t_alloc(a, size)
        if h < 0:
            failures += 1
            continue
        for c in range(a.nr_cpus):
            q = <unsigned char *>_t_ptr(a, h, c)
            for j in range(size):
                if q[j] != 0:
                    nonzero += 1
                    break
            tag = _tag(tid, i, c)
            for j in range(size):
                q[j] = <unsigned char>(tag >> (8 * (j & 7)))
        ring[k] = h
        ring_i[k] = i
    for k in range(RING):
        if ring[k] >= 0:
            corrupt += _check_object(a, ring[k], tid, ring_i[k])
            _t_free(a, ring[k])
    a.corrupt[tid] = corrupt
    a.nonzero[tid] = nonzero
    a.failures[tid] = failures
    done[0] = ops


cdef void _alloc_free_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t i, h, failures = 0
    for i in range(ops):
        h = _t_alloc(a, a.size)
        if h < 0:
            failures += 1
        else:
            _t_free(a, h)
    a.failures[tid] = failures
    done[0] = ops


cdef void _free_race_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    # Every thread frees every object, in the same order: the frees of one
    # handle run at about the same moment. corrupt counts the refusals.
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t i, freed = 0, refused = 0
    for i in range(a.nhandles):
        if _t_free(a, a.handles[i]) == 0:
            freed += 1
        else:
            refused += 1
    a.failures[tid] = refused
    done[0] = freed


cdef void _percpu_add_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t i = 0
    # Two counters packed next to each other in the same units: each CPU's
    # pair shares a line, which only that CPU writes.
    while i < ops and not _time_up(i):
        pc_percpu_add(a.counter_base, a.counter_stride, 1)
        pc_percpu_add(a.counter_base + 8, a.counter_stride, 2)
        i += 1
    done[0] = i


cdef dict _pool_team(object pool, int threads, long long ops, size_t size, pc_kernel_fn fn,
                    char *counter_base=NULL, size_t counter_stride=0, bint pin=False,
                    int64_t *handles=NULL, int64_t nhandles=0, int64_t run_ns=0,
                    int64_t interrupt_ns=0):
    if threads <= 0:
        raise ValueError(f"threads must be > 0, not {threads}")
    if ops < 0:
        raise ValueError(f"ops must be >= 0, not {ops}")
    cdef TeamArg arg
    memset(&arg, 0, sizeof(arg))
    if isinstance(pool, PerCPUPool):
        arg.pool = (<PerCPUPool>pool).c
        arg.nr_cpus = arg.pool.nr_cpus
        if fn == _pool_stress_kernel:
            # It writes every CPU's copy by index: new objects must be
            # zeroed in all of them (the fast paths stay below the bound).
            pcpool_claim(arg.pool, arg.nr_cpus)
        if size > arg.pool.unit_size:
            raise ValueError(f"size must be <= {arg.pool.unit_size}")
    elif isinstance(pool, NaivePool):
        arg.naive = (<NaivePool>pool).c
        arg.nr_cpus = arg.naive.nr_cpus
        if size > arg.naive.max_size:
            raise ValueError(f"size must be <= {arg.naive.max_size}")
    else:
        raise TypeError(f"pool must be a PerCPUPool or NaivePool, not {type(pool).__name__}")
    if size == 0:
        raise ValueError("size must be > 0")
    arg.size = size
    arg.counter_base = counter_base
    arg.counter_stride = counter_stride
    arg.handles = handles
    arg.nhandles = nhandles
    cdef int64_t *buf = <int64_t *>malloc(4 * <size_t>threads * sizeof(int64_t))
    if buf == NULL:
        raise MemoryError()
    memset(buf, 0, 4 * <size_t>threads * sizeof(int64_t))
    arg.corrupt = buf + threads
    arg.nonzero = buf + 2 * threads
    arg.failures = buf + 3 * threads
    try:
        wall_ns = pc_run_team(fn, &arg, threads, ops, buf, pin, run_ns, interrupt_ns)
        return {
            "threads": threads,
            "ops": ops,
            "wall_ns": wall_ns,
            "done": [buf[i] for i in range(threads)],
            "corrupt": sum([arg.corrupt[i] for i in range(threads)]),
            "nonzero": sum([arg.nonzero[i] for i in range(threads)]),
            "failures": sum([arg.failures[i] for i in range(threads)]),
        }
    finally:
        free(buf)


def _stress(pool, int threads, long long ops, size_t size=64) -> dict:
    """Test helper: ``threads`` native threads each allocate ``ops`` objects of
    1..size bytes (keeping 8 live), check every CPU copy is zeroed, write a
    pattern unique to (thread, object, cpu), check it before freeing. Returns
    counts of ``corrupt`` and ``nonzero`` copies and of ``failures``."""
    return _pool_team(pool, threads, ops, size, _pool_stress_kernel)


def alloc_free(pool, int threads, long long ops, size_t size=8, bint pin=False) -> dict:
    """Each of ``threads`` native threads runs ``ops`` pairs of alloc(size) and
    free through the pool's nogil C API (``pcpool_alloc``/``pcpool_free`` or
    the naive pool's). Returns ``wall_ns`` (barrier release to the last
    thread's finish), ``ns_per_pair`` (wall time / ops: what one thread sees
    per pair), ``pairs_per_sec`` (all threads) and ``failures``."""
    r = _pool_team(pool, threads, ops, size, _alloc_free_kernel, NULL, 0, pin)
    r["ns_per_pair"] = r["wall_ns"] / ops if ops else 0.0
    r["pairs_per_sec"] = threads * ops * 1e9 / r["wall_ns"] if r["wall_ns"] else 0.0
    return r


def _free_race(pool, int threads, long long objects, size_t size=8) -> dict:
    """Test helper: allocates ``objects`` objects, then ``threads`` native
    threads each free every one of them, in the same order. Exactly one free
    of each object may succeed. Returns ``done`` (frees that succeeded, per
    thread) and ``failures`` (frees refused, all threads)."""
    cdef pc_pool *p = NULL
    cdef pc_naive *n = NULL
    cdef int64_t *handles
    cdef int64_t i, j, h
    if isinstance(pool, PerCPUPool):
        p = (<PerCPUPool>pool).c
    elif isinstance(pool, NaivePool):
        n = (<NaivePool>pool).c
    else:
        raise TypeError(f"pool must be a PerCPUPool or NaivePool, not {type(pool).__name__}")
    if objects < 0:
        raise ValueError(f"objects must be >= 0, not {objects}")
    handles = <int64_t *>malloc(max(<size_t>objects, <size_t>1) * sizeof(int64_t))
    if handles == NULL:
        raise MemoryError()
    try:
        for i in range(objects):
            h = pcpool_alloc(p, size, GRANULE, False) if p != NULL else naive_alloc(n, size, GRANULE, False)
            if h < 0:
                for j in range(i):
                    if p != NULL:
                        pcpool_free(p, handles[j])
                    else:
                        naive_free(n, handles[j])
                raise MemoryError() if h == -1 else ValueError(f"bad size {size}")
            handles[i] = h
        return _pool_team(pool, threads, 0, size, _free_race_kernel, NULL, 0, False,
                          handles, objects)
    finally:
        free(handles)


def _percpu_add_stress(PerCPUPool pool, int threads, long long ops, long long run_ns=0,
                       long long interrupt_ns=0) -> dict:
    """Test helper: two int64 per-CPU counters packed in one 16-byte object,
    bumped by pc_percpu_add (rseq or its fallback) from native threads, ``ops``
    times each (or until ``run_ns``; ``interrupt_ns`` as for hammer()).
    Returns the sums of both and of the untouched neighbour object, and
    ``done``: each thread's count of op pairs."""
    cdef int64_t h = pcpool_alloc(pool.c, 16, 8, False)
    cdef int64_t neighbour = pcpool_alloc(pool.c, 8, 8, False)
    if h < 0 or neighbour < 0:
        raise MemoryError()
    cdef char *base = pcpool_ptr(pool.c, h, 0)
    cdef size_t stride = pcpool_stride(pool.c)
    try:
        r = _pool_team(pool, threads, ops, 8, _percpu_add_kernel, base, stride, False, NULL, 0,
                       run_ns, interrupt_ns)
        r["first"] = pc_percpu_sum(base, stride)
        r["second"] = pc_percpu_sum(base + 8, stride)
        r["neighbour"] = pc_percpu_sum(pcpool_ptr(pool.c, neighbour, 0), stride)
        r["rseq"] = bool(pc_rseq_live())
        # This module's copy of the process's choice (it must be core's).
        r["cpu_source"] = pc_cpu_source_name().decode()
        return r
    finally:
        pcpool_free(pool.c, h)
        pcpool_free(pool.c, neighbour)


# ---------------------------------------------------------------------------
# References under native threads

cdef list _ref_team(int threads, int64_t ops, pc_kernel_fn fn, void *arg,
                    int64_t run_ns=0, int64_t interrupt_ns=0):
    """Runs a reference kernel on the team; returns each thread's done count."""
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    cdef int64_t *done = <int64_t *>calloc(threads, sizeof(int64_t))
    if done == NULL:
        raise MemoryError()
    try:
        pc_run_team(fn, arg, threads, ops, done, False, run_ns, interrupt_ns)
        return [done[i] for i in range(threads)]
    finally:
        free(done)


cdef struct _StressArg:
    pc_ref ref
    int64_t holding     # workers between a successful tryget and its put
    int64_t releases
    int64_t bad
    int64_t got
    int64_t refused
    int64_t kill_at
    int64_t kill_rc
    int32_t killed
    void *py_cb
    pc_cell canary      # see _canary_begin


cdef void _stress_release(void *ctx) noexcept nogil:
    cdef _StressArg *a = <_StressArg *>ctx
    # Seq_cst, paired with the workers' increment of holding and their load
    # of the state: a release while someone holds is seen by one side.
    if pc_load_i64(&a.holding, PC_SEQ_CST) != 0:
        pc_fetch_add_i64(&a.bad, 1, PC_RELAXED)
    pc_fetch_add_i64(&a.releases, 1, PC_RELAXED)
    if a.py_cb != NULL:
        with gil:
            _call_noexcept(<object>a.py_cb)


cdef void _ref_stress_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _StressArg *a = <_StressArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, seen, got = 0, refused = 0, bad = 0
    cdef bint live_op = r.kind == PCREF_PERCPU
    cdef int rc
    for i in range(ops):
        seen = _canary_begin(&a.canary)
        if tid == 0 and i == a.kill_at:
            # Seq_cst, before the kill: a refusal seen by a thread that then
            # reads 0 here happened while the reference was live (a bug).
            pc_store_i32(&a.killed, 1, PC_SEQ_CST)
            a.kill_rc = ref_kill(r)
            # Sequenced after the kill in this thread: must refuse.
            if live_op and percpuref_tryget_live(r) != 0:
                bad += 1
        if live_op and (i & 1):
            rc = percpuref_tryget_live(r)
        else:
            rc = ref_tryget(r)
        if rc == 1:
            pc_fetch_add_i64(&a.holding, 1, PC_SEQ_CST)
            if pc_load_i32(&r.state, PC_SEQ_CST) & PCREF_RELEASED:
                bad += 1
            # Holding a reference makes get legal in every mode; the nested
            # put cannot release while ours is held.
            if ref_get(r) != 0:
                bad += 1
            if ref_put(r) != 0:
                bad += 1
            pc_fetch_add_i64(&a.holding, -1, PC_SEQ_CST)
            if ref_put(r) < 0:
                bad += 1
            got += 1
        else:
            refused += 1
            if not pc_load_i32(&a.killed, PC_SEQ_CST):
                # Refused before the kill began: the initial reference was held.
                bad += 1
        _canary_end(&a.canary, seen)
    pc_fetch_add_i64(&a.got, got, PC_RELAXED)
    pc_fetch_add_i64(&a.refused, refused, PC_RELAXED)
    pc_fetch_add_i64(&a.bad, bad, PC_RELAXED)
    done[0] = ops


def _stress_kill(str kind, int threads, long long ops, long long kill_at, py_callback=None,
                 long long interrupt_ns=0) -> dict:
    """N native threads tryget/get/put/put in a loop; thread 0 kills the
    reference at iteration kill_at (the controller kills it afterwards when
    kill_at >= ops). Returns the counts the test checks: releases (must be 1),
    bad (premature release, refused tryget while live, failed get/put: 0),
    got and refused (trygets), and canary_lost: how many of the iterations
    the kernel's racy count of them lost (> 0 proves that the threads
    interleaved mid-iteration; see _canary_begin)."""
    cdef _StressArg *a = <_StressArg *>calloc(1, sizeof(_StressArg))
    cdef int k = ref_kind_of(kind)
    cdef int rc
    if a == NULL:
        raise MemoryError()
    try:
        if py_callback is not None and not callable(py_callback):
            raise TypeError("py_callback must be callable")
        rc = ref_init(&a.ref, k, NULL, False, _stress_release, <void *>a)
        if rc != 0:
            raise MemoryError(f"ref_init failed ({rc})")
        a.kill_at = kill_at
        a.kill_rc = -100
        a.py_cb = <void *>py_callback if py_callback is not None else NULL
        try:
            done = _ref_team(threads, ops, _ref_stress_kernel, a, 0, interrupt_ns)
            if kill_at >= ops or kill_at < 0:
                with nogil:
                    a.kill_rc = ref_kill(&a.ref)
            return {
                "releases": a.releases,
                "bad": a.bad,
                "got": a.got,
                "refused": a.refused,
                "kill_rc": a.kill_rc,
                "released": bool(ref_released(&a.ref)),
                "value": ref_value(&a.ref),
                "is_zero": bool(ref_is_zero(&a.ref)),
                "canary_lost": sum(done) - pc_cell_read(&a.canary),
            }
        finally:
            ref_destroy(&a.ref)
    finally:
        free(a)


cdef struct _ExactArg:
    pc_ref ref
    int64_t keep
    int64_t keep_at
    int64_t kept
    int64_t flip_every
    int64_t hold_ns     # thread 0 stays in shared mode this long before it looks for strays
    int64_t bad
    int64_t flips
    int64_t strays      # slots found non-zero outside per-CPU mode
    int64_t releases
    pc_cell canary      # as in _StressArg


cdef void _count_release(void *ctx) noexcept nogil:
    pc_fetch_add_i64(<int64_t *>ctx, 1, PC_RELAXED)


cdef inline int64_t _stray_adds(pc_ref *r, int64_t hold_ns) noexcept nogil:
    # After hold_ns (the others keep running), 1 if a slot is non-zero.
    cdef int64_t until = pc_now_ns() + hold_ns
    while hold_ns > 0 and pc_now_ns() < until:
        pc_cpu_relax()
    return pc_percpu_sum(r.base, r.stride) != 0


cdef void _exact_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _ExactArg *a = <_ExactArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i = 0, j, seen, bad = 0, flips = 0, strays = 0
    cdef int step
    while i < ops and not _time_up(i):
        seen = _canary_begin(&a.canary)
        if tid == 0 and a.flip_every > 0 and i % a.flip_every == 0 and r.kind == PCREF_PERCPU:
            step = <int>((i // a.flip_every) % 3)
            flips += 1
            if step == 0:
                if ref_switch_to_atomic(r) != 0:
                    bad += 1
                # The fold emptied the slots, and the grace period before it
                # let no add in flight land after it: they stay empty while
                # shared. An add that lands later is not lost (the next fold
                # takes it), but the count lacked it meanwhile; give such an
                # add (one paused mid-section) time to land, then look.
                strays += _stray_adds(r, a.hold_ns)
            elif step == 1:
                strays += _stray_adds(r, 0)
                if ref_switch_to_percpu(r) != 0:
                    bad += 1
            else:
                # Our own extra reference keeps it from release while killed.
                if ref_get(r) != 0:
                    bad += 1
                if ref_kill(r) != 0:
                    bad += 1
                strays += _stray_adds(r, a.hold_ns)  # as at step 0, for the kill's fold
                if percpuref_tryget_live(r) != 0:
                    bad += 1
                if ref_resurrect(r) != 0:
                    bad += 1
                if ref_put(r) != 0:
                    bad += 1
        if ref_get(r) != 0:
            bad += 1
        if ref_tryget(r) != 1:
            bad += 1
        if ref_put(r) != 0:
            bad += 1
        if ref_put(r) != 0:
            bad += 1
        if i == a.keep_at:
            for j in range(a.keep):
                if ref_get(r) != 0:
                    bad += 1
            pc_fetch_add_i64(&a.kept, a.keep, PC_RELAXED)
        _canary_end(&a.canary, seen)
        i += 1
    pc_fetch_add_i64(&a.bad, bad, PC_RELAXED)
    pc_fetch_add_i64(&a.flips, flips, PC_RELAXED)
    pc_fetch_add_i64(&a.strays, strays, PC_RELAXED)
    done[0] = i


def _stress_exact(str kind, int threads, long long ops, long long keep, long long flip_every=0,
                  long long run_ns=0, long long interrupt_ns=0, long long hold_ns=0) -> dict:
    """Balanced get/tryget/put/put loops on N native threads, each keeping
    `keep` extra references from the middle of its run; thread 0 of a
    PercpuRef cycles switch_to_atomic / switch_to_percpu / kill+resurrect every
    `flip_every` ops. Then value(), kill, and putting the kept references back
    one by one: the counts must be exact and the last put must release.

    ``run_ns`` > 0: the threads stop that long after the start (``ops`` is
    the cap) and take their kept references after 1024 iterations;
    ``interrupt_ns`` as for hammer(). Returns, besides the checks, ``done``
    (each thread's iterations), ``kept`` (extra references the threads
    took), ``strays`` (thread 0 found a slot non-zero outside per-CPU mode,
    ``hold_ns`` after leaving it: an add landed after a fold) and
    ``canary_lost`` (see _stress_kill)."""
    cdef _ExactArg *a = <_ExactArg *>calloc(1, sizeof(_ExactArg))
    cdef int k = ref_kind_of(kind)
    cdef int64_t i, kept, value_before, value_killed
    cdef int rc, kill_rc, last_rc = -100, early = 0, errors = 0
    if a == NULL:
        raise MemoryError()
    try:
        if keep < 0 or flip_every < 0 or hold_ns < 0:
            raise ValueError("keep, flip_every and hold_ns must be >= 0")
        rc = ref_init(&a.ref, k, NULL, False, _count_release, &a.releases)
        if rc != 0:
            raise MemoryError(f"ref_init failed ({rc})")
        a.keep = keep
        a.keep_at = PC_TEAM_POLL if run_ns > 0 else ops // 2
        a.flip_every = flip_every
        a.hold_ns = hold_ns
        try:
            done = _ref_team(threads, ops, _exact_kernel, a, run_ns, interrupt_ns)
            value_before = ref_value(&a.ref)
            kept = a.kept
            with nogil:
                kill_rc = ref_kill(&a.ref)
            value_killed = ref_value(&a.ref)
            for i in range(kept):
                rc = ref_put(&a.ref)
                if rc < 0:
                    errors += 1
                elif rc == 1:
                    if i != kept - 1:
                        early += 1
                    last_rc = rc
            return {
                "bad": a.bad,
                "flips": a.flips,
                "strays": a.strays,
                "done": done,
                "kept": kept,
                "value_before": value_before,
                "value_killed": value_killed,
                "kill_rc": kill_rc,
                "last_put_rc": last_rc,
                "early_releases": early,
                "put_errors": errors,
                "releases": a.releases,
                "released": bool(ref_released(&a.ref)),
                "canary_lost": sum(done) - pc_cell_read(&a.canary),
            }
        finally:
            ref_destroy(&a.ref)
    finally:
        free(a)


cdef struct _TeamArg:
    pc_ref *ref
    int64_t gets
    int64_t puts
    int64_t released
    int64_t errors
    pc_cell canary      # as in _StressArg


cdef void _team_refops_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _TeamArg *a = <_TeamArg *>arg
    cdef int64_t i = 0, j, seen, released = 0, errors = 0
    cdef int rc
    while i < ops and not _time_up(i):
        seen = _canary_begin(&a.canary)
        for j in range(a.gets):
            if ref_get(a.ref) != 0:
                errors += 1
        for j in range(a.puts):
            rc = ref_put(a.ref)
            if rc < 0:
                errors += 1
            elif rc == 1:
                released += 1
        _canary_end(&a.canary, seen)
        i += 1
    pc_fetch_add_i64(&a.released, released, PC_RELAXED)
    pc_fetch_add_i64(&a.errors, errors, PC_RELAXED)
    done[0] = i


def _team_refops(_Ref ref, int threads, long long ops, long long gets=1, long long puts=1,
                 long long run_ns=0, long long interrupt_ns=0) -> dict:
    """Each of N native threads does `ops` times (or until ``run_ns``;
    ``interrupt_ns`` as for hammer()): `gets` get(), then `puts` put() on ref
    (its Python release callback then runs on a native thread). Returns how
    many puts released it, how many calls failed, ``done`` (each thread's
    rounds) and ``canary_lost`` (see _stress_kill)."""
    cdef _TeamArg a
    memset(&a, 0, sizeof(a))
    a.ref = &ref.c
    a.gets = gets
    a.puts = puts
    done = _ref_team(threads, ops, _team_refops_kernel, &a, run_ns, interrupt_ns)
    return {"released": a.released, "errors": a.errors, "done": done,
            "canary_lost": sum(done) - pc_cell_read(&a.canary)}


# ---------------------------------------------------------------------------
# Reference lifetimes: kill against tryget_live, misused gets, callbacks that
# free the object, and a thread that uses the registry after its record went.


cdef struct _LiveArg:
    pc_ref ref
    int64_t delay       # killer's spins before the kill
    int64_t got         # successful tryget_live, all threads
    int64_t after       # successes that began after the kill had returned
    int64_t counted     # value() right after the kill (or inside confirm), less the initial
    int32_t killed      # the kill has returned
    int32_t confirm     # kill_and_confirm instead of kill
    int32_t kill_rc
    int32_t taking      # a taker has taken a reference this round


cdef void _live_confirm(void *ctx) noexcept nogil:
    cdef _LiveArg *a = <_LiveArg *>ctx
    # confirm runs before the initial reference is dropped: value() holds it.
    a.counted = ref_value(&a.ref) - 1


cdef void _live_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _LiveArg *a = <_LiveArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, got = 0, after = 0
    cdef int64_t until
    if tid == 0:
        # The race needs takers in their loop when the kill comes: on a
        # loaded machine the killer could otherwise run its whole round
        # before any taker is scheduled. Wait for one (at most a second,
        # so that a taker that never succeeds fails the test, not hangs it),
        # then the round's random delay.
        until = pc_now_ns() + 1000000000
        while not pc_load_i32(&a.taking, PC_RELAXED) and pc_now_ns() < until:
            pc_cpu_relax()
        for i in range(a.delay):
            pc_cpu_relax()
        if a.confirm:
            a.kill_rc = ref_kill_and_confirm(r, _live_confirm, a)
        else:
            a.kill_rc = ref_kill(r)
            a.counted = ref_value(r)
        # Seq_cst: a worker that sees the flag starts its next call after
        # the kill returned.
        pc_store_i32(&a.killed, 1, PC_SEQ_CST)
    else:
        while not pc_load_i32(&a.killed, PC_SEQ_CST):
            # Keep what we get: every success is a reference the kill must
            # have counted.
            if percpuref_tryget_live(r) == 1:
                got += 1
                # Relaxed: only a go-ahead for the killer, it orders nothing.
                pc_store_i32(&a.taking, 1, PC_RELAXED)
        for i in range(ops):
            if percpuref_tryget_live(r) == 1:
                got += 1
                after += 1
    pc_fetch_add_i64(&a.got, got, PC_RELAXED)
    pc_fetch_add_i64(&a.after, after, PC_RELAXED)
    done[0] = ops


def _tryget_live_vs_kill(int threads, int rounds, bint shared, bint confirm, long long max_delay=20000,
                         unsigned int seed=1) -> dict:
    """Test helper: per round, a new PercpuRef (switched to atomic when
    ``shared``); threads 1.. take tryget_live in a loop and keep every
    reference, thread 0 kills it (kill_and_confirm when ``confirm``) after a
    random delay and reads value(). A tryget_live that succeeds after the
    kill's mode switch is a reference value() did not count: ``uncounted``
    sums them over the rounds (must be 0), ``after`` counts successes that
    began after the kill had returned (must be 0)."""
    cdef _LiveArg *a = <_LiveArg *>calloc(1, sizeof(_LiveArg))
    cdef int64_t i, uncounted = 0, after = 0, got = 0, bad = 0, bad_rounds = 0
    cdef uint64_t rng = seed * 2654435761u + 1
    cdef int rc
    if a == NULL:
        raise MemoryError()
    if threads < 2:
        free(a)
        raise ValueError("threads must be >= 2")
    try:
        for _ in range(rounds):
            memset(a, 0, sizeof(_LiveArg))
            rc = ref_init(&a.ref, PCREF_PERCPU, NULL, False, NULL, NULL)
            if rc != 0:
                raise MemoryError(f"ref_init failed ({rc})")
            try:
                if shared and ref_switch_to_atomic(&a.ref) != 0:
                    bad += 1
                rng = rng * 6364136223846793005u + 1442695040888963407u
                a.delay = <int64_t>((rng >> 33) % <uint64_t>(max_delay + 1))
                a.confirm = confirm
                _ref_team(threads, 100, _live_kernel, a)
                # 1: nobody had taken one yet, the kill released it.
                if a.kill_rc != (1 if a.got == 0 else 0):
                    bad += 1
                got += a.got
                after += a.after
                if a.got > a.counted:
                    uncounted += a.got - a.counted
                    bad_rounds += 1
                # Every reference taken is put back: the last one releases.
                for i in range(a.got):
                    rc = ref_put(&a.ref)
                    if rc < 0 or (rc == 1) != (i == a.got - 1):
                        bad += 1
                if a.got == 0 and not ref_released(&a.ref):
                    bad += 1
            finally:
                ref_destroy(&a.ref)
        return {"got": got, "uncounted": uncounted, "bad_rounds": bad_rounds, "after": after,
                "bad": bad}
    finally:
        free(a)


cdef struct _MisuseArg:
    pc_ref ref
    int64_t get_ok      # misused gets that succeeded (must be 0)
    int64_t tryget_ok   # trygets that succeeded (must be 0)
    int32_t live_op


cdef void _misuse_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _MisuseArg *a = <_MisuseArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, n = 0
    if tid & 1:
        for i in range(ops):
            if (i & 1) and a.live_op:
                n += percpuref_tryget_live(r) == 1
            else:
                n += ref_tryget(r) == 1
        pc_fetch_add_i64(&a.tryget_ok, n, PC_RELAXED)
    else:
        for i in range(ops):
            n += ref_get(r) == 0
        pc_fetch_add_i64(&a.get_ok, n, PC_RELAXED)
    done[0] = ops


def _misused_get_vs_tryget(str kind, int threads, long long ops) -> dict:
    """Test helper: a released reference; even threads call get() on it (a
    misuse: each must fail), odd threads tryget() (and tryget_live()) it,
    which must never succeed. Returns the successes and the final value()."""
    cdef _MisuseArg *a = <_MisuseArg *>calloc(1, sizeof(_MisuseArg))
    cdef int k = ref_kind_of(kind)
    cdef int rc
    if a == NULL:
        raise MemoryError()
    try:
        rc = ref_init(&a.ref, k, NULL, False, NULL, NULL)
        if rc != 0:
            raise MemoryError(f"ref_init failed ({rc})")
        try:
            if ref_kill(&a.ref) != 1:
                raise RuntimeError("the kill did not release the reference")
            a.live_op = k == PCREF_PERCPU
            _ref_team(threads, ops, _misuse_kernel, a)
            return {"get_ok": a.get_ok, "tryget_ok": a.tryget_ok, "value": ref_value(&a.ref),
                    "released": bool(ref_released(&a.ref))}
        finally:
            ref_destroy(&a.ref)
    finally:
        free(a)


cdef struct _Boxed:
    pc_ref ref
    char tail[64]


# The callbacks' counts, one per call of _release_frees_object (on its
# stack, not module globals: calls from several threads must not mix), and
# the box they release; outside the box, which the release poisons or frees.
cdef struct _BoxedCalls:
    _Boxed *box
    int64_t calls
    int64_t confirms


cdef void _poison_release(void *ctx) noexcept nogil:
    # The kernel's pattern: the release frees the object around the count
    # (here: overwrites every byte, so that a later write shows).
    cdef _BoxedCalls *c = <_BoxedCalls *>ctx
    pc_fetch_add_i64(&c.calls, 1, PC_RELAXED)
    ref_destroy(&c.box.ref)
    memset(c.box, 0x5A, sizeof(_Boxed))


cdef void _free_release(void *ctx) noexcept nogil:
    # The same, really freed: under AddressSanitizer a later access is a
    # heap-use-after-free report.
    cdef _BoxedCalls *c = <_BoxedCalls *>ctx
    pc_fetch_add_i64(&c.calls, 1, PC_RELAXED)
    ref_destroy(&c.box.ref)
    free(c.box)


cdef void _boxed_confirm(void *ctx) noexcept nogil:
    pc_fetch_add_i64(&(<_BoxedCalls *>ctx).confirms, 1, PC_RELAXED)


def _release_frees_object(str kind, str how, bint really_free=False) -> dict:
    """Test helper: a reference inside a malloc'ed struct whose release
    callback destroys the reference and poisons the struct (or, with
    ``really_free``, frees it). ``how`` releases it: ``put`` (the last put
    after a kill), ``kill``, ``confirm`` (kill_and_confirm), ``underflow``
    (an extra put in per-CPU mode, then kill: the fold releases),
    ``underflow_switch`` (the same through switch_to_atomic, PercpuRef),
    ``shared_put`` (PercpuRef switched to atomic: the slow path's put).
    Returns the return code of the releasing call, the number of callbacks
    and confirms, and whether the poison is intact."""
    cdef int k = ref_kind_of(kind)
    cdef _BoxedCalls counts
    cdef _Boxed *b = <_Boxed *>malloc(sizeof(_Boxed))
    cdef unsigned char *bytes_ = <unsigned char *>b
    cdef int rc
    cdef size_t i
    cdef bint intact = True
    cdef int step
    if b == NULL:
        raise MemoryError()
    ways = ("put", "kill", "confirm", "underflow", "underflow_switch", "shared_put")
    if how not in ways:
        free(b)
        raise ValueError(f"unknown way to release: {how!r}")
    step = ways.index(how)
    if how in ("underflow_switch", "shared_put", "confirm") and k != PCREF_PERCPU:
        free(b)
        raise ValueError(f"{how} needs a PercpuRef")
    if how == "underflow" and k == PCREF_ATOMIC:
        free(b)
        raise ValueError("an AtomicRef has no fold")
    counts.box = b
    counts.calls = 0
    counts.confirms = 0
    rc = ref_init(&b.ref, k, NULL, False, _free_release if really_free else _poison_release,
                  &counts)
    if rc != 0:
        free(b)
        raise MemoryError(f"ref_init failed ({rc})")
    with nogil:
        if step == 0:
            ref_get(&b.ref)
            ref_kill(&b.ref)
            rc = ref_put(&b.ref)
        elif step == 1:
            rc = ref_kill(&b.ref)
        elif step == 2:
            rc = ref_kill_and_confirm(&b.ref, _boxed_confirm, &counts)
        elif step == 3:
            ref_put(&b.ref)
            rc = ref_kill(&b.ref)
        elif step == 4:
            ref_put(&b.ref)
            rc = ref_switch_to_atomic(&b.ref)
        else:
            ref_switch_to_atomic(&b.ref)
            ref_get(&b.ref)
            ref_kill(&b.ref)
            rc = ref_put(&b.ref)
    if not really_free:
        for i in range(sizeof(_Boxed)):
            if bytes_[i] != 0x5A:
                intact = False
        free(b)
    return {"rc": rc, "calls": counts.calls, "confirms": counts.confirms, "intact": intact}


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    ctypedef unsigned long pthread_t
    int pthread_key_create(pthread_key_t *key, void (*destructor)(void *) noexcept nogil)
    int pthread_key_delete(pthread_key_t key)
    int pthread_setspecific(pthread_key_t key, const void *value)
    int pthread_create(pthread_t *th, const void *attr, void *(*fn)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t th, void **ret)


cdef struct _ExitProbe:
    pc_registry *reg
    pthread_key_t key
    pc_ref *ref             # a per-CPU reference: its fallback path uses a record
    pc_perthread_counter *counter
    int32_t rounds
    pc_thread_rec *rec      # the thread's record while it ran
    uint64_t seq_before     # rec's sequence when the destructor began using percpu
    uint64_t seq_after
    int32_t later_same      # pc_thread_record() in the destructor returned rec
    int32_t later_foreign   # ... or another record this thread does not own (not in use)
    int32_t later_null
    int32_t ref_errors


cdef void _probe_destructor(void *p) noexcept nogil:
    cdef _ExitProbe *a = <_ExitProbe *>p
    cdef pc_thread_rec *rec
    a.rounds += 1
    if a.rounds == 1:
        # Come back next round: by then the registry's own key destructor has
        # handed the record back, whatever order the keys run in.
        pthread_setspecific(a.key, a)
        return
    # Relaxed: only this (exiting) thread writes its record's seq, if anyone.
    a.seq_before = pc_load_u64(&a.rec.seq, PC_RELAXED)
    rec = pc_thread_record(a.reg)
    if rec == NULL:
        a.later_null = 1
    elif rec == a.rec:
        a.later_same = 1
    elif not rec.in_use:
        a.later_foreign = 1
    # A per-thread counter and a reference's fallback path (percpu._refs has
    # its own cache of the record): both must work, on the shared paths.
    pc_perthread_counter_add(a.counter, 1)
    if ref_get(a.ref) != 0:
        a.ref_errors += 1
    if ref_put(a.ref) != 0:
        a.ref_errors += 1
    a.seq_after = pc_load_u64(&a.rec.seq, PC_RELAXED)


cdef void *_probe_thread(void *p) noexcept nogil:
    cdef _ExitProbe *a = <_ExitProbe *>p
    a.rec = pc_thread_record(a.reg)
    pc_perthread_counter_add(a.counter, 1)
    if ref_get(a.ref) != 0:
        a.ref_errors += 1
    if ref_put(a.ref) != 0:
        a.ref_errors += 1
    pthread_setspecific(a.key, a)
    return NULL


def _registry_after_exit(PerThreadCounter counter, PercpuRef ref) -> dict:
    """Test helper: a native thread uses the registry (its own record, a
    PerThreadCounter add, a get/put on ``ref``) and exits; a pthread key
    destructor that runs after the registry's has handed the record back
    uses them again. Returns what that destructor saw: the record it was
    given (``later_same``: the handed-back one; ``later_null``: none, the
    shared paths) and the record's sequence before and after its reference
    operations (a change means it entered a section on a record it no longer
    owns)."""
    cdef _ExitProbe a
    cdef pthread_t th
    cdef int err
    memset(&a, 0, sizeof(a))
    a.reg = _registry
    a.ref = &ref.c
    a.counter = counter.c
    if pthread_key_create(&a.key, _probe_destructor) != 0:
        raise OSError("pthread_key_create failed")
    try:
        with nogil:
            err = pthread_create(&th, NULL, _probe_thread, &a)
            if err == 0:
                pthread_join(th, NULL)
        if err != 0:
            raise OSError(err, "pthread_create failed")
    finally:
        pthread_key_delete(a.key)
    return {
        "rounds": a.rounds,
        "had_record": a.rec != NULL,
        "later_same": bool(a.later_same),
        "later_foreign": bool(a.later_foreign),
        "later_null": bool(a.later_null),
        "seq_before": a.seq_before,
        "seq_after": a.seq_after,
        "ref_errors": a.ref_errors,
    }


# Measurements: one kernel per strategy with the fast path inlined.
