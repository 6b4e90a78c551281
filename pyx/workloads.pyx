# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""percpu._workloads: the nogil kernels of the four workloads.

``run_<name>(strategy, threads, ops, params) -> dict``; ``ops`` is per thread.
Every kernel is specialised per strategy at compile time: the strategy is a
fused "tag" type, and ``if Kind is Tag`` branches are resolved by Cython when
it writes each specialisation, so the strategy's inline fast path is compiled
into the loop and the choice costs nothing per op. The team gets one plain C
function per specialisation, picked once per run. Slow paths (reads, churn,
unregister) live in separate functions the loops call rarely.
"""
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from percpu.cpercpu cimport *
from percpu._alloc cimport PerCPUPool
from percpu._counters cimport (
    ApproxCounter, AtomicCounter, LockedCounter, PerCPUCounter, PerThreadCounter,
    RacyCounter, StripedCounter, pc_approx_counter, pc_cell, pc_locked_counter,
    pc_percpu_counter, pc_perthread_counter, pc_striped_counter,
    pc_atomic_counter_add, pc_racy_counter_add, pc_cell_read, pc_locked_counter_add,
    pc_locked_counter_read, pc_percpu_counter_add, pc_percpu_counter_read,
    pc_perthread_counter_add, pc_perthread_counter_read, pc_approx_counter_add,
    pc_approx_counter_read, pc_striped_counter_add, pc_striped_counter_read)

cdef extern from *:
    """
    /* The per-packet "other work" of the packet workload: a multiply-add
     * chain whose value goes through an empty asm each round, so the compiler
     * can neither fold the loop nor drop it. */
    static inline uint64_t pc_wl_work(uint64_t x, int64_t units) {
        int64_t i;
        for (i = 0; i < units; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            __asm__ __volatile__("" : "+r"(x));
        }
        return x;
    }
    """
    uint64_t pc_wl_work(uint64_t x, int64_t units) nogil


# ---------------------------------------------------------------------------
# Shared helpers

cdef inline uint64_t _xorshift(uint64_t *s) noexcept nogil:
    # Thread-local pseudo-random stream (xorshift64): no shared state, so the
    # choice of counter or flow adds no traffic of its own.
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef inline uint64_t _seed(int tid) noexcept nogil:
    # Distinct, non-zero seeds per thread (splitmix64 of the thread id).
    cdef uint64_t z = <uint64_t>(tid + 1) * 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    z ^= z >> 31
    return z if z != 0 else 1


cdef inline uint32_t _pick(uint64_t r, uint32_t n) noexcept nogil:
    # Lemire's multiply-shift: a uniform index in [0, n) without a division.
    return <uint32_t>(((r >> 32) * <uint64_t>n) >> 32)


cdef int _as_threads(threads) except -1:
    if not isinstance(threads, int) or isinstance(threads, bool):
        raise TypeError(f"threads must be an int, not {type(threads).__name__}")
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    return threads


cdef int64_t _as_ops(ops) except -1:
    if not isinstance(ops, int) or isinstance(ops, bool):
        raise TypeError(f"ops must be an int, not {type(ops).__name__}")
    if ops < 0 or ops > (1 << 40):
        raise ValueError(f"ops must be in 0..2**40, not {ops}")
    return ops


cdef dict _params(params, dict defaults, dict minimums):
    """Defaults filled in; unknown keys and bad values refused."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, not {type(params).__name__}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(str, unknown))}; "
                         f"valid: {', '.join(defaults)}")
    out = dict(defaults)
    for k, v in params.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"parameter {k} must be an int, not {type(v).__name__}")
        if v < minimums.get(k, 1) or v > (1 << 40):
            raise ValueError(f"parameter {k} must be in {minimums.get(k, 1)}..2**40, not {v}")
        out[k] = v
    return out


cdef int64_t _run_team(pc_kernel_fn fn, void *arg, int threads, int64_t ops,
                       int64_t *done) except -1:
    """Runs the team without the GIL; returns its wall time in ns."""
    cdef pc_team team
    cdef int err
    memset(&team, 0, sizeof(team))
    team.nthreads = threads
    team.ops = ops
    team.fn = fn
    team.arg = arg
    team.done = done
    with nogil:
        err = pc_team_run(&team)
    if err:
        raise OSError(err, "percpu: cannot start the thread team")
    return team.wall_ns


cdef dict _result(int64_t wall_ns, int64_t total, int threads):
    seconds = wall_ns / 1e9
    return {
        "seconds": seconds,
        "wall_ns": wall_ns,
        "ops": total,
        "ops_per_sec": total / seconds if wall_ns > 0 else 0.0,
        "threads": threads,
        "kernel": "native",
    }


# ---------------------------------------------------------------------------
# stat: SNMP/MIB-style statistics

# Strategy tags: empty-ish structs whose only use is to name a specialisation.
cdef struct _CAtomic:
    char unused
cdef struct _CLocked:
    char unused
cdef struct _CPercpu:
    char unused
cdef struct _CPerthread:
    char unused
cdef struct _CApprox:
    char unused
cdef struct _CStriped:
    char unused
cdef struct _CRacy:
    char unused

ctypedef fused CounterKind:
    _CAtomic
    _CLocked
    _CPercpu
    _CPerthread
    _CApprox
    _CStriped
    _CRacy


cdef struct StatJob:
    void **counters       # the counters' C structs, all of one strategy
    uint32_t n
    int64_t read_every    # 0: never read
    int64_t *reads        # per thread
    uint64_t *sinks       # per thread: read results, kept so reads are not dropped


cdef inline void _counter_add(CounterKind *tag, void *c) noexcept nogil:
    if CounterKind is _CAtomic:
        pc_atomic_counter_add(<pc_cell *>c, 1)
    elif CounterKind is _CLocked:
        pc_locked_counter_add(<pc_locked_counter *>c, 1)
    elif CounterKind is _CPercpu:
        pc_percpu_counter_add(<pc_percpu_counter *>c, 1)
    elif CounterKind is _CPerthread:
        pc_perthread_counter_add(<pc_perthread_counter *>c, 1)
    elif CounterKind is _CApprox:
        pc_approx_counter_add(<pc_approx_counter *>c, 1)
    elif CounterKind is _CStriped:
        pc_striped_counter_add(<pc_striped_counter *>c, 1)
    else:
        pc_racy_counter_add(<pc_cell *>c, 1)


cdef int64_t _counter_read_atomic(void *c) noexcept nogil:
    return pc_cell_read(<pc_cell *>c)
cdef int64_t _counter_read_locked(void *c) noexcept nogil:
    return pc_locked_counter_read(<pc_locked_counter *>c)
cdef int64_t _counter_read_percpu(void *c) noexcept nogil:
    return pc_percpu_counter_read(<pc_percpu_counter *>c)
cdef int64_t _counter_read_perthread(void *c) noexcept nogil:
    return pc_perthread_counter_read(<pc_perthread_counter *>c)
cdef int64_t _counter_read_approx(void *c) noexcept nogil:
    return pc_approx_counter_read(<pc_approx_counter *>c)
cdef int64_t _counter_read_striped(void *c) noexcept nogil:
    return pc_striped_counter_read(<pc_striped_counter *>c)


cdef int64_t _counter_read(CounterKind *tag, void *c) noexcept nogil:
    # Out of line: a read is the rare path, and keeping it out of the loop
    # keeps the loop's registers for the add.
    if CounterKind is _CAtomic or CounterKind is _CRacy:
        return _counter_read_atomic(c)
    elif CounterKind is _CLocked:
        return _counter_read_locked(c)
    elif CounterKind is _CPercpu:
        return _counter_read_percpu(c)
    elif CounterKind is _CPerthread:
        return _counter_read_perthread(c)
    elif CounterKind is _CApprox:
        return _counter_read_approx(c)
    else:
        return _counter_read_striped(c)


cdef inline void _stat_loop(CounterKind *tag, StatJob *job, int tid, int64_t ops,
                            int64_t *done) noexcept nogil:
    cdef uint64_t rng = _seed(tid)
    cdef void **cs = job.counters
    cdef uint32_t n = job.n
    cdef int64_t every = job.read_every
    cdef int64_t next_read = every if every > 0 else ops + 1
    cdef int64_t reads = 0, i
    cdef uint64_t sink = 0
    for i in range(ops):
        _counter_add(tag, cs[_pick(_xorshift(&rng), n)])
        if i + 1 == next_read:
            sink += <uint64_t>_counter_read(tag, cs[_pick(_xorshift(&rng), n)])
            reads += 1
            next_read += every
    job.reads[tid] = reads
    job.sinks[tid] = sink
    done[0] = ops


cdef void _stat_atomic(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CAtomic *>NULL, <StatJob *>a, tid, ops, done)
cdef void _stat_locked(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CLocked *>NULL, <StatJob *>a, tid, ops, done)
cdef void _stat_percpu(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CPercpu *>NULL, <StatJob *>a, tid, ops, done)
cdef void _stat_perthread(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CPerthread *>NULL, <StatJob *>a, tid, ops, done)
cdef void _stat_approx(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CApprox *>NULL, <StatJob *>a, tid, ops, done)
cdef void _stat_striped(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CStriped *>NULL, <StatJob *>a, tid, ops, done)
cdef void _stat_racy(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CRacy *>NULL, <StatJob *>a, tid, ops, done)


cdef void *_counter_state(object c, str strategy, list sizes) except NULL:
    """The counter's C struct; appends its bytes (struct plus own storage)."""
    cdef void *p
    if strategy == "atomic":
        p = (<AtomicCounter?>c).c
        sizes.append(sizeof(pc_cell))
    elif strategy == "racy":
        p = (<RacyCounter?>c).c
        sizes.append(sizeof(pc_cell))
    elif strategy == "locked":
        p = (<LockedCounter?>c).c
        sizes.append(pc_round_up(sizeof(pc_locked_counter), PC_CACHELINE))
    elif strategy == "percpu":
        p = (<PerCPUCounter?>c).c
        sizes.append(sizeof(pc_percpu_counter))  # plus its pool slots, added later
    elif strategy == "approx":
        p = (<ApproxCounter?>c).c
        sizes.append(pc_round_up(sizeof(pc_approx_counter), PC_CACHELINE))
    elif strategy == "perthread":
        p = (<PerThreadCounter?>c).c
        sizes.append(pc_round_up(sizeof(pc_perthread_counter), PC_CACHELINE)
                     + (<PerThreadCounter>c).c.capacity * PC_CACHELINE)
    else:
        p = (<StripedCounter?>c).c
        sizes.append(sizeof(pc_striped_counter)
                     + ((<StripedCounter>c).c.mask + 1) * sizeof(pc_cell))
    return p


_STAT_DEFAULTS = {"counters": 64, "read_every": 1000}
_STAT_MINIMUMS = {"counters": 1, "read_every": 0}


def run_stat(strategy, threads, ops, params=None):
    """SNMP/MIB-style statistics: ``counters`` counters of one strategy; each
    op increments one chosen by a thread-local xorshift; every ``read_every``
    ops (0: never) a thread reads one with the strategy's exact read.

    Checks that the counters add up to the ops done and raises RuntimeError
    otherwise, except for ``racy``, which reports ``lost_updates`` and
    ``exact`` instead. ``bytes_per_object`` is one counter's memory: its
    struct, its own slots, and for pool-backed ones the pool bytes in use per
    counter.
    """
    from percpu.counters import COUNTERS
    cdef int nthreads = _as_threads(threads)
    cdef int64_t nops = _as_ops(ops)
    p = _params(params, _STAT_DEFAULTS, _STAT_MINIMUMS)
    if p["counters"] > (1 << 20):
        raise ValueError(f"parameter counters must be at most 2**20, not {p['counters']}")
    cls = COUNTERS.get(strategy) if isinstance(strategy, str) else None
    if cls is None:
        raise ValueError(f"unknown counter strategy {strategy!r}; valid: {', '.join(COUNTERS)}")
    cdef pc_kernel_fn fn
    if strategy == "atomic":
        fn = _stat_atomic
    elif strategy == "locked":
        fn = _stat_locked
    elif strategy == "percpu":
        fn = _stat_percpu
    elif strategy == "perthread":
        fn = _stat_perthread
    elif strategy == "approx":
        fn = _stat_approx
    elif strategy == "striped":
        fn = _stat_striped
    else:
        fn = _stat_racy

    cdef uint32_t n = p["counters"]
    pool = PerCPUPool() if strategy in ("percpu", "approx") else None
    objs = [cls(pool=pool) if pool is not None else cls() for _ in range(n)]
    sizes = []
    cdef StatJob job
    memset(&job, 0, sizeof(job))
    job.counters = <void **>calloc(n, sizeof(void *))
    job.reads = <int64_t *>calloc(nthreads, sizeof(int64_t))
    job.sinks = <uint64_t *>calloc(nthreads, sizeof(uint64_t))
    cdef int64_t *done = <int64_t *>calloc(nthreads, sizeof(int64_t))
    cdef uint32_t k
    cdef int64_t wall, total = 0, reads = 0
    try:
        if job.counters == NULL or job.reads == NULL or job.sinks == NULL or done == NULL:
            raise MemoryError()
        for k in range(n):
            job.counters[k] = _counter_state(objs[k], strategy, sizes)
        job.n = n
        job.read_every = p["read_every"]
        wall = _run_team(fn, &job, nthreads, nops, done)
        for k in range(<uint32_t>nthreads):
            total += done[k]
            reads += job.reads[k]
    finally:
        free(job.counters)
        free(job.reads)
        free(job.sinks)
        free(done)

    observed = sum(c.value() for c in objs)
    bytes_per_object = sum(sizes) / n
    if pool is not None:
        st = pool.stats()
        bytes_per_object += st["bytes_used"] / n
    res = _result(wall, total, nthreads)
    res.update(
        counters=n, read_every=p["read_every"], reads=reads,
        expected=total, observed=observed,
        lost_updates=total - observed, exact=int(observed == total),
        bytes_per_object=bytes_per_object,
    )
    if strategy != "racy" and observed != total:
        raise RuntimeError(f"stat/{strategy}: counters sum to {observed}, expected {total}")
    return res
