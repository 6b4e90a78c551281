# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._workloads: the nogil kernels of the four workloads.

``run_<name>(strategy, threads, ops, params, duration_ns=0) -> dict``; ``ops``
is per thread. With ``duration_ns`` > 0 every thread stops at its first check
of the clock (every PC_TEAM_POLL ops) after that long, ``ops`` is a cap, and
``thread_ops`` says how far each thread got.
Callers go through ``percpu.workloads.run``, which validates the request once
(strategy, thread count, every parameter present and in range, from the
workload's registry entry); these kernels trust what they are given.
Every kernel is specialised per strategy at compile time: the strategy is a
fused "tag" type, and ``if Kind is Tag`` branches are resolved by Cython when
it writes each specialisation, so the strategy's inline fast path is compiled
into the loop and the choice costs nothing per op. The team gets one plain C
function per specialisation, picked once per run. Slow paths (reads, churn,
unregister) live in separate functions the loops call rarely.

Every run builds its own objects and C state, so runs may start from many
Python threads at once with no GIL (``freethreading_compatible``).
"""
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset


from percpu.cpercpu cimport *
from percpu._team cimport pc_kernel_fn, pc_run_team, pc_team_expired, pc_team_round_end
from percpu._alloc cimport PerCPUPool
from percpu._counters cimport (
    ApproxCounter, AtomicCounter, CounterBase, LockedCounter, PerCPUCounter, PerThreadCounter,
    RacyCounter, StripedCounter, pc_approx_counter, pc_cell, pc_locked_counter,
    pc_percpu_counter, pc_perthread_counter, pc_striped_counter,
    pc_atomic_counter_add, pc_racy_counter_add, pc_cell_read, pc_locked_counter_add,
    pc_locked_counter_read, pc_percpu_counter_add, pc_percpu_counter_read,
    pc_perthread_counter_add, pc_perthread_counter_read, pc_approx_counter_add,
    pc_approx_counter_read, pc_striped_counter_add, pc_striped_counter_read)

cdef extern from "percpu/lab.h" nogil:
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


cdef bint _pinned():
    # PERCPU_PIN=1: thread i runs on the i-th CPU the process may use. On a
    # machine other work shares, the scheduler may stack a fresh team on one
    # CPU for a whole short run, and then nothing contends; pinning spreads
    # it. Read per run, so the harness passes it on to pyperf's workers.
    from os import environ
    return environ.get("PERCPU_PIN", "") not in ("", "0")


cdef int64_t _run_team(pc_kernel_fn fn, void *arg, int threads, int64_t ops,
                       int64_t *done, int64_t duration_ns) except -1:
    """Runs the team without the GIL; returns its wall time in ns."""
    return pc_run_team(fn, arg, threads, ops, done, _pinned(), duration_ns)


cdef dict _result(int64_t wall_ns, int64_t total, int threads, int64_t *done):
    seconds = wall_ns / 1e9
    return {
        "seconds": seconds,
        "wall_ns": wall_ns,
        "ops": total,
        "ops_per_sec": total / seconds if wall_ns > 0 else 0.0,
        "threads": threads,
        "thread_ops": [done[k] for k in range(threads)],
        "kernel": "native",
        "pinned": int(_pinned()),
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
cdef struct _CGeneric:  # any other counter class, through its C vtable
    char unused

ctypedef fused CounterKind:
    _CAtomic
    _CLocked
    _CPercpu
    _CPerthread
    _CApprox
    _CStriped
    _CRacy
    _CGeneric


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
    elif CounterKind is _CRacy:
        pc_racy_counter_add(<pc_cell *>c, 1)
    else:
        (<CounterBase>c)._add(1)


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
    elif CounterKind is _CStriped:
        return _counter_read_striped(c)
    else:
        return (<CounterBase>c)._read()


cdef inline void _stat_loop(CounterKind *tag, StatJob *job, int tid, int64_t ops,
                            int64_t *done) noexcept nogil:
    cdef uint64_t rng = _seed(tid)
    cdef void **cs = job.counters
    cdef uint32_t n = job.n
    cdef int64_t every = job.read_every
    cdef int64_t next_read = every if every > 0 else ops + 1
    cdef int64_t reads = 0, i = 0, end
    cdef uint64_t sink = 0
    while i < ops:
        end = pc_team_round_end(i, ops)
        while i < end:
            _counter_add(tag, cs[_pick(_xorshift(&rng), n)])
            i += 1
            if i == next_read:
                sink += <uint64_t>_counter_read(tag, cs[_pick(_xorshift(&rng), n)])
                reads += 1
                next_read += every
        if pc_team_expired():
            break
    job.reads[tid] = reads
    job.sinks[tid] = sink
    done[0] = i


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
cdef void _stat_generic(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _stat_loop(<_CGeneric *>NULL, <StatJob *>a, tid, ops, done)


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
    elif strategy == "striped":
        p = (<StripedCounter?>c).c
        sizes.append(sizeof(pc_striped_counter)
                     + ((<StripedCounter>c).c.mask + 1) * sizeof(pc_cell))
    else:
        # A strategy without a specialised loop: the object itself, driven
        # through CounterBase's vtable; the objs list keeps it alive. What C
        # state it holds is its own business: its size is unknown (-1), not
        # the Python object's, which would understate it.
        p = <void *><CounterBase?>c
        sizes.append(-1)
    return p


def run_stat(str strategy, int threads, int64_t ops, dict params, int64_t duration_ns=0):
    """SNMP/MIB-style statistics: ``counters`` counters of one strategy; each
    op increments one chosen by a thread-local xorshift; every ``read_every``
    ops (0: never) a thread reads one with the strategy's exact read.

    Checks that the counters add up to the ops done and raises RuntimeError
    otherwise, except for ``racy``, which reports ``lost_updates`` and
    ``exact`` instead. ``bytes_per_object`` is one counter's memory: its
    struct, its own slots, and for pool-backed ones the pool bytes in use per
    counter; None for a strategy without a specialised loop, whose C state
    this module does not know.
    """
    from percpu.counters import COUNTERS
    cdef int nthreads = threads
    cdef int64_t nops = ops
    p = params
    cls = COUNTERS[strategy]
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
    elif strategy == "racy":
        fn = _stat_racy
    else:
        fn = _stat_generic

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
        wall = _run_team(fn, &job, nthreads, nops, done, duration_ns)
        for k in range(<uint32_t>nthreads):
            total += done[k]
            reads += job.reads[k]
        res = _result(wall, total, nthreads, done)
    finally:
        free(job.counters)
        free(job.reads)
        free(job.sinks)
        free(done)

    observed = sum(c.value() for c in objs)
    bytes_per_object = None if min(sizes) < 0 else sum(sizes) / n
    if pool is not None and bytes_per_object is not None:
        st = pool.stats()
        bytes_per_object += st["bytes_used"] / n
    res.update(
        counters=n, read_every=p["read_every"], reads=reads,
        expected=total, observed=observed,
        lost_updates=total - observed, exact=int(observed == total),
        bytes_per_object=bytes_per_object,
    )
    if strategy != "racy" and observed != total:
        raise RuntimeError(f"stat/{strategy}: counters sum to {observed}, expected {total}")
    return res


# ---------------------------------------------------------------------------
# The reference workloads: netdev, dst, packet
#
# Object lifetime. Workers reach a device through `cur` and a route through
# `table[i]`, pointers that unregister and churn replace, so a worker may load
# a pointer just before it is replaced. Three things keep that safe:
#
# 1. tryget, not get, on a pointer loaded from `cur` or `table`: the loaded
#    object may already be killed and released, and tryget refuses a count of
#    zero (kernel: dst_hold_safe, dev_get_by_index's refcount_inc_not_zero).
#    PercpuRef uses tryget_live, which also refuses a killed object, so a
#    worker never starts holding something that is going away.
# 2. The replacing thread swaps the pointer before it kills the old object,
#    so a worker whose tryget failed finds the new one on reloading.
# 3. Memory is freed only after a grace period of our own, quiescent-state
#    based (QSBR): each worker stores an increasing count into its own cache
#    line after every op, a point where it holds no raw pointer, only
#    references. The freeing thread waits until the release callback has
#    returned (_done: the callback's own count in the object), issues
#    membarrier(PRIVATE_EXPEDITED) so that every worker's later loads see the
#    swapped pointer, then waits for each running worker's count to move. Why not the registry's pc_section_enter/exit
#    around the load and tryget: the references' own non-rseq slow path opens
#    a section on the same per-thread record, and sections do not nest (the
#    inner enter would make the sequence even and hide the outer section).
#    QSBR costs one store per op to a line the worker owns, no fence.

cdef extern from "<sched.h>" nogil:
    int sched_yield()

from percpu._alloc cimport pc_pool, pcpool_refill
from percpu._refs cimport (
    pc_ref, PCREF_ATOMIC, PCREF_BIGREF, PCREF_PERCPU, PCREF_ERR_NOMEM,
    ref_init, ref_destroy, ref_kill, atomicref_get, atomicref_put, atomicref_tryget,
    bigref_get, bigref_put, bigref_tryget, percpuref_get, percpuref_put,
    percpuref_tryget_live, ref_kind_of)

cdef pc_registry *_registry = pc_registry_import()

cdef extern from *:
    # A worker that has finished: the grace period no longer waits for it.
    uint64_t _QS_OFFLINE "((uint64_t)-1)"


# The read-mostly fields of a device or a route that every use of it reads
# (a route lookup compares the key and the generation, then calls dst->output
# on dst->dev; a device's flags and mtu). Where they sit is the false-sharing
# control: `alone` is a line of their own, which no count shares (the padded
# layout the library's strategies use, and the kernel's since 2023); `beside`
# is on the shared count's line (the 2005 layout, `atomic-sharedline`), where
# every write of the count takes them from every other CPU's cache.
cdef enum:
    FIELDS = 3

cdef struct Obj:                # a device or a route-cache entry; PC_CACHELINE-aligned
    # 128 bytes: a line of its own with 64- and with 128-byte lines, and not
    # the buddy of the count's line for an adjacent-line prefetcher.
    uint64_t alone[16]
    uint64_t beside[FIELDS]     # then the count, on the same line (obj_layout() checks)
    pc_ref ref
    int64_t id
    int32_t releases            # release callbacks run on it; must end at exactly 1
    void *job                   # its RefJob, for the release callback


cdef struct RefJob:
    int dev_kind                # PCREF_* of the device (netdev, packet)
    int dst_kind                # PCREF_* of the entries (dst, packet)
    pc_pool *pool               # private per run: its stats are this run's alone
    int nthreads
    bint fence_qs               # no membarrier: workers fence after each quiescent state
    char *qs                    # per-thread uint64 quiescent-state counts, PC_CACHELINE apart
    size_t dev_fields           # byte offset in Obj of the fields a device's users read
    size_t dst_fields           # the same for a route (alone or beside the count)
    int64_t work                # packet: units of other work per packet
    int64_t dev_holds           # packet: device gets (and puts) per packet
    int64_t dst_holds           # packet: route holds (and puts) per packet: a lookup, then clones
    uint64_t *sinks             # per thread: the work's results, kept so it is not dropped
    # netdev (written by thread 0 only, read after the team)
    Obj *cur                    # the registered device
    int64_t unregister_interval # thread 0's ops between unregisters; 0: never
    int64_t unregisters
    int64_t unregister_failures # the new device could not be created: the old one stays
    int64_t unreg_ns_total
    int64_t unreg_ns_max
    # dst (thread 0 only)
    Obj **table
    uint32_t entries
    int64_t churn_interval
    int64_t churns
    int64_t churn_failures
    int64_t refills
    uint32_t churn_next
    Obj **retired               # killed entries awaiting release and a grace period
    int64_t nretired
    int64_t cap_retired
    # accounting
    int64_t creations           # thread 0 during the run, the caller outside it
    int64_t releases            # release callbacks, any thread
    int64_t frees
    int64_t bad                 # failed ref operations (a get on a released object, ...)
    int64_t bad_releases        # objects freed with a release count other than 1
    int64_t init_error          # the last ref_init error seen


# Strategy tags of the references.
cdef struct _RAtomic:
    char unused
cdef struct _RBig:
    char unused
cdef struct _RPercpu:
    char unused

ctypedef fused DevKind:
    _RAtomic
    _RBig
    _RPercpu

ctypedef fused DstKind:
    _RAtomic
    _RBig
    _RPercpu


# One definition per operation: a kernel's DevKind or DstKind tag is a
# concrete type inside each specialisation, which picks the matching one here.
ctypedef fused RefKind:
    _RAtomic
    _RBig
    _RPercpu


cdef inline int _ref_get(RefKind *t, pc_ref *r) noexcept nogil:
    if RefKind is _RAtomic:
        return atomicref_get(r)
    elif RefKind is _RBig:
        return bigref_get(r)
    else:
        return percpuref_get(r)

cdef inline int _ref_put(RefKind *t, pc_ref *r) noexcept nogil:
    if RefKind is _RAtomic:
        return atomicref_put(r)
    elif RefKind is _RBig:
        return bigref_put(r)
    else:
        return percpuref_put(r)

cdef inline int _ref_tryget(RefKind *t, pc_ref *r) noexcept nogil:
    # percpu_ref users take tryget_live: a dying object is refused at once.
    if RefKind is _RAtomic:
        return atomicref_tryget(r)
    elif RefKind is _RBig:
        return bigref_tryget(r)
    else:
        return percpuref_tryget_live(r)


# Life cycle (cold)

cdef void _obj_release(void *ctx) noexcept nogil:
    cdef Obj *o = <Obj *>ctx
    # Relaxed: the job's count is read after the team has joined.
    pc_fetch_add_i64(&(<RefJob *>o.job).releases, 1, PC_RELAXED)
    # The last access to the object (the library does not touch it after this
    # callback): once the count is seen (_done), the object may be freed.
    # Release: pairs with _done's acquire.
    pc_fetch_add_i32(&o.releases, 1, PC_RELEASE)


cdef Obj *_obj_new(RefJob *job, int kind, bint atomic) noexcept nogil:
    cdef Obj *o = <Obj *>pc_aligned_zalloc(sizeof(Obj))
    cdef int rc
    if o == NULL:
        job.init_error = PCREF_ERR_NOMEM
        return NULL
    o.job = job
    cdef int f
    for f in range(FIELDS):
        # Any values: users read them, nobody writes them again.
        o.alone[f] = o.beside[f] = (<uint64_t>job.creations + 1) * 0x9E3779B97F4A7C15ULL + <uint64_t>f
    rc = ref_init(&o.ref, kind, job.pool, atomic, _obj_release, o)
    if rc != 0:
        job.init_error = rc
        free(o)
        return NULL
    o.id = job.creations
    job.creations += 1
    return o


cdef void _obj_free(RefJob *job, Obj *o) noexcept nogil:
    # Acquire: pairs with the release callback's count (_done saw it too).
    if pc_load_i32(&o.releases, PC_ACQUIRE) != 1:
        job.bad_releases += 1
    if ref_destroy(&o.ref) != 0:
        job.bad += 1
    free(o)
    job.frees += 1


cdef inline uint64_t _use(Obj *o, size_t fields) noexcept nogil:
    """What a user of the object reads of it: its read-mostly fields, at the
    run's layout (``fields`` is the offset of `alone` or of `beside`)."""
    cdef uint64_t *f = <uint64_t *>(<char *>o + fields)
    cdef uint64_t x = 0
    cdef int k
    for k in range(FIELDS):
        # Relaxed: read-mostly data; an atomic load also keeps the compiler
        # from hoisting the reads out of the loop, which the cost model needs.
        x += pc_load_u64(&f[k], PC_RELAXED)
    return x


cdef inline bint _done(Obj *o) noexcept nogil:
    # Acquire: pairs with the release callback's count, the releasing
    # thread's last access to the object.
    return pc_load_i32(&o.releases, PC_ACQUIRE) != 0


cdef inline void _backoff(int *spins) noexcept nogil:
    spins[0] += 1
    if spins[0] < 64:
        pc_cpu_relax()
    else:
        # More threads than CPUs: the one we wait for needs this CPU.
        sched_yield()


cdef inline void _quiescent(RefJob *job, uint64_t *qs, uint64_t *seq) noexcept nogil:
    seq[0] += 1
    # Release: this op's loads of table/cur pointers and uses of the objects
    # they led to happen before the count moves, which the grace period
    # acquires. (Only this thread writes the slot.)
    pc_store_u64(qs, seq[0], PC_RELEASE)
    if PC_UNLIKELY(job.fence_qs):
        # Without membarrier the reader pays the store-load fence itself.
        pc_fence(PC_SEQ_CST)


cdef void _grace(RefJob *job, int self_tid) noexcept nogil:
    """Returns once every worker has passed a quiescent state after this call
    began: no worker still uses a pointer it loaded before."""
    cdef int t, spins
    cdef uint64_t c0
    cdef uint64_t *slot
    if job.fence_qs or pc_membarrier(PC_MB_PRIVATE_EXPEDITED, 0) != 0:
        pc_fence(PC_SEQ_CST)
    # membarrier: every running worker executed a full fence after our swap
    # and before this point, so a count read below that has not yet moved
    # moves next at a store made after that fence, after which the worker's
    # loads see the swapped pointer.
    for t in range(job.nthreads):
        if t == self_tid:
            continue
        slot = <uint64_t *>(job.qs + <size_t>t * PC_CACHELINE)
        c0 = pc_load_u64(slot, PC_ACQUIRE)
        if c0 == _QS_OFFLINE:
            continue
        spins = 0
        while pc_load_u64(slot, PC_ACQUIRE) == c0:
            _backoff(&spins)


cdef Obj *_dev_switch(DevKind *t, RefJob *job, Obj *held) noexcept nogil:
    """The device was unregistered: drop our reference on it (a put that may
    release it) and take one on the current device."""
    cdef Obj *d
    if held != NULL and _ref_put(t, &held.ref) < 0:
        job.bad += 1
    while True:
        # Acquire: pairs with the release store of a new device, so its
        # ref_init is visible before we touch it.
        d = <Obj *>pc_load_ptr(<void **>&job.cur, PC_ACQUIRE)
        if _ref_tryget(t, &d.ref):
            # Still registered? Otherwise let it go (atomic and bigref
            # tryget succeed on a killed device that still has holders).
            if <Obj *>pc_load_ptr(<void **>&job.cur, PC_ACQUIRE) == d:
                return d
            if _ref_put(t, &d.ref) < 0:
                job.bad += 1
        pc_cpu_relax()


cdef Obj *_unregister(DevKind *t, RefJob *job, Obj *held) noexcept nogil:
    """unregister_netdevice + netdev_wait_allrefs + register of a new device
    (thread 0). Returns thread 0's new held device."""
    cdef Obj *new = _obj_new(job, job.dev_kind, False)
    cdef Obj *old = job.cur
    cdef int64_t t0, dt
    cdef int spins = 0
    if new == NULL:
        job.unregister_failures += 1
        return held
    t0 = pc_now_ns()
    # Release: publishes the new device's ref_init to the workers' acquire.
    pc_store_ptr(<void **>&job.cur, new, PC_RELEASE)
    # Our own reference moves first, or the drain would wait for us.
    held = _dev_switch(t, job, held)
    if ref_kill(&old.ref) < 0:
        job.bad += 1
    while not _done(old):
        _backoff(&spins)
    dt = pc_now_ns() - t0
    job.unregisters += 1
    job.unreg_ns_total += dt
    if dt > job.unreg_ns_max:
        job.unreg_ns_max = dt
    _grace(job, 0)
    _obj_free(job, old)
    return held


cdef inline Obj *_dst_hold(DstKind *t, RefJob *job, uint64_t flow, uint64_t *x) noexcept nogil:
    """Route lookup: the entry flow hashes to, its key compared (a use of its
    fields, into *x), held."""
    cdef Obj **slot = &job.table[_pick(flow * 0x9E3779B97F4A7C15ULL, job.entries)]
    cdef Obj *e
    while True:
        # Acquire: pairs with churn's exchange, which publishes the entry.
        e = <Obj *>pc_load_ptr(<void **>slot, PC_ACQUIRE)
        x[0] += _use(e, job.dst_fields)
        if PC_LIKELY(_ref_tryget(t, &e.ref)):
            return e
        # Killed under us: churn has already put its replacement there.


cdef void _reclaim(RefJob *job, int self_tid) noexcept nogil:
    """Frees the retired entries whose release is done, after a grace period.

    Every retired entry was swapped out of the table before it was retired,
    so one grace period started now covers every worker that could still use
    a pointer to any of them; of those, the ones whose release has returned
    (_done: the callback's count, the releasing thread's last access) can go."""
    cdef int64_t i, j, ready = 0
    for i in range(job.nretired):
        ready += _done(job.retired[i])
    if ready == 0:
        return
    _grace(job, self_tid)
    j = 0
    for i in range(job.nretired):
        if _done(job.retired[i]):
            _obj_free(job, job.retired[i])
        else:
            job.retired[j] = job.retired[i]
            j += 1
    job.nretired = j


cdef void _churn(DstKind *t, RefJob *job, int self_tid) noexcept nogil:
    """Replace one route-cache entry (thread 0)."""
    cdef uint32_t idx = job.churn_next
    cdef Obj *new
    cdef Obj *old
    cdef int spins = 0
    job.churn_next = idx + 1 if idx + 1 < job.entries else 0
    # GFP_ATOMIC: never grow the pool or block here.
    new = _obj_new(job, job.dst_kind, True)
    if new == NULL:
        job.churn_failures += 1
        # Outside the "atomic context", as the kernel's allocator refills its
        # reserve from a worker.
        if pcpool_refill(job.pool) == 0:
            job.refills += 1
        return
    # Acq_rel: release publishes the new entry; acquire gives us the old one
    # as its last publisher left it.
    old = <Obj *>pc_exchange_ptr(<void **>&job.table[idx], new, PC_ACQ_REL)
    if ref_kill(&old.ref) < 0:
        job.bad += 1
    while job.nretired == job.cap_retired:
        _reclaim(job, self_tid)
        if job.nretired == job.cap_retired:
            _backoff(&spins)
    job.retired[job.nretired] = old
    job.nretired += 1
    job.churns += 1
    _reclaim(job, self_tid)


# The loops. Thread 0 also runs the slow paths at its intervals; every thread
# drops its device reference and goes offline for the grace period at the end.

cdef inline void _netdev_loop(DevKind *t, RefJob *job, int tid, int64_t ops,
                              int64_t *done) noexcept nogil:
    cdef uint64_t *qs = <uint64_t *>(job.qs + <size_t>tid * PC_CACHELINE)
    cdef uint64_t seq = 0, x = 0
    cdef int64_t i = 0, end, bad = 0
    cdef int64_t every = job.unregister_interval if tid == 0 else 0
    cdef int64_t next_unreg = every if every > 0 else -1
    cdef size_t fields = job.dev_fields
    cdef Obj *held = _dev_switch(t, job, NULL)
    while i < ops:
        end = pc_team_round_end(i, ops)
        while i < end:
            # Relaxed: only says when to switch; _dev_switch re-reads with acquire.
            if PC_UNLIKELY(<Obj *>pc_load_ptr(<void **>&job.cur, PC_RELAXED) != held):
                held = _dev_switch(t, job, held)
            # dev_hold/dev_put around a use of the device; we hold a
            # reference, so neither may fail or release.
            x += _use(held, fields)
            bad += _ref_get(t, &held.ref) != 0
            x += _use(held, fields)
            bad += _ref_put(t, &held.ref) != 0
            _quiescent(job, qs, &seq)
            i += 1
            if PC_UNLIKELY(i == next_unreg):
                held = _unregister(t, job, held)
                next_unreg += every
        if pc_team_expired():
            break
    if _ref_put(t, &held.ref) < 0:
        bad += 1
    # Release: everything this thread did comes before the grace period's
    # acquire skips it.
    pc_store_u64(qs, _QS_OFFLINE, PC_RELEASE)
    job.sinks[tid] = x
    if bad:
        pc_fetch_add_i64(&job.bad, bad, PC_RELAXED)
    done[0] = i


cdef inline void _dst_loop(DstKind *t, RefJob *job, int tid, int64_t ops,
                           int64_t *done) noexcept nogil:
    cdef uint64_t *qs = <uint64_t *>(job.qs + <size_t>tid * PC_CACHELINE)
    cdef uint64_t seq = 0, rng = _seed(tid), x = 0
    cdef int64_t i = 0, end, bad = 0
    cdef int64_t every = job.churn_interval if tid == 0 else 0
    cdef int64_t next_churn = every if every > 0 else -1
    cdef size_t fields = job.dst_fields
    cdef Obj *e
    while i < ops:
        end = pc_team_round_end(i, ops)
        while i < end:
            e = _dst_hold(t, job, _xorshift(&rng), &x)
            x += _use(e, fields)
            # May release (a churned entry we held last): that is fine, < 0 is not.
            bad += _ref_put(t, &e.ref) < 0
            _quiescent(job, qs, &seq)
            i += 1
            if PC_UNLIKELY(i == next_churn):
                _churn(t, job, tid)
                next_churn += every
        if pc_team_expired():
            break
    pc_store_u64(qs, _QS_OFFLINE, PC_RELEASE)
    job.sinks[tid] = x
    if bad:
        pc_fetch_add_i64(&job.bad, bad, PC_RELAXED)
    done[0] = i


cdef inline void _packet_loop(DevKind *dt, DstKind *st, RefJob *job, int tid, int64_t ops,
                              int64_t *done) noexcept nogil:
    """One op is one packet (README, "The packet model"): the device taken
    `dev_holds` times, the route looked up and held, cloned `dst_holds - 1`
    times, every hold preceded by a use of the object's fields, and an equal
    share of `work` after every get and every put: the rest of the stack runs
    between the reference operations, as in the kernel."""
    cdef uint64_t *qs = <uint64_t *>(job.qs + <size_t>tid * PC_CACHELINE)
    cdef uint64_t seq = 0, rng = _seed(tid), x = rng, flow
    cdef int64_t i = 0, end, j, bad = 0
    cdef int64_t dev_holds = job.dev_holds, dst_holds = job.dst_holds
    cdef int64_t gaps = 2 * (dev_holds + dst_holds)
    cdef int64_t share = job.work // gaps if gaps > 0 else 0
    cdef int64_t rest = job.work - share * gaps
    cdef size_t dev_fields = job.dev_fields, dst_fields = job.dst_fields
    cdef int64_t ue = job.unregister_interval if tid == 0 else 0
    cdef int64_t ce = job.churn_interval if tid == 0 else 0
    cdef int64_t next_unreg = ue if ue > 0 else -1
    cdef int64_t next_churn = ce if ce > 0 else -1
    cdef Obj *held = _dev_switch(dt, job, NULL)
    cdef Obj *e
    while i < ops:
        end = pc_team_round_end(i, ops)
        while i < end:
            if PC_UNLIKELY(<Obj *>pc_load_ptr(<void **>&job.cur, PC_RELAXED) != held):
                held = _dev_switch(dt, job, held)
            for j in range(dev_holds):              # the skb takes the device
                x += _use(held, dev_fields)
                bad += _ref_get(dt, &held.ref) != 0
                x = pc_wl_work(x, share)
            if dst_holds > 0:
                flow = _xorshift(&rng)
                e = _dst_hold(st, job, flow, &x)    # route lookup, dst_hold
                x = pc_wl_work(x, share)
                for j in range(dst_holds - 1):      # dst_clone ... dst_release
                    x += _use(e, dst_fields)
                    bad += _ref_get(st, &e.ref) != 0
                    x = pc_wl_work(x, share)
                    x += _use(e, dst_fields)
                    bad += _ref_put(st, &e.ref) != 0
                    x = pc_wl_work(x, share)
                x += _use(e, dst_fields)
                bad += _ref_put(st, &e.ref) < 0     # may release a churned entry
                x = pc_wl_work(x, share)
            for j in range(dev_holds):
                x += _use(held, dev_fields)
                bad += _ref_put(dt, &held.ref) != 0
                x = pc_wl_work(x, share)
            x = pc_wl_work(x, rest)
            _quiescent(job, qs, &seq)
            i += 1
            if PC_UNLIKELY(i == next_unreg):
                held = _unregister(dt, job, held)
                next_unreg += ue
            if PC_UNLIKELY(i == next_churn):
                _churn(st, job, tid)
                next_churn += ce
        if pc_team_expired():
            break
    if _ref_put(dt, &held.ref) < 0:
        bad += 1
    pc_store_u64(qs, _QS_OFFLINE, PC_RELEASE)
    job.sinks[tid] = x
    if bad:
        pc_fetch_add_i64(&job.bad, bad, PC_RELAXED)
    done[0] = i


# One plain kernel per specialisation, for the team.

cdef void _netdev_atomic(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _netdev_loop(<_RAtomic *>NULL, <RefJob *>a, tid, ops, done)
cdef void _netdev_bigref(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _netdev_loop(<_RBig *>NULL, <RefJob *>a, tid, ops, done)
cdef void _netdev_percpu(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _netdev_loop(<_RPercpu *>NULL, <RefJob *>a, tid, ops, done)

cdef void _dst_atomic(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _dst_loop(<_RAtomic *>NULL, <RefJob *>a, tid, ops, done)
cdef void _dst_bigref(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _dst_loop(<_RBig *>NULL, <RefJob *>a, tid, ops, done)
cdef void _dst_percpu(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _dst_loop(<_RPercpu *>NULL, <RefJob *>a, tid, ops, done)

cdef void _packet_aa(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RAtomic *>NULL, <_RAtomic *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_ab(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RAtomic *>NULL, <_RBig *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_ap(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RAtomic *>NULL, <_RPercpu *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_ba(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RBig *>NULL, <_RAtomic *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_bb(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RBig *>NULL, <_RBig *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_bp(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RBig *>NULL, <_RPercpu *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_pa(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RPercpu *>NULL, <_RAtomic *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_pb(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RPercpu *>NULL, <_RBig *>NULL, <RefJob *>a, tid, ops, done)
cdef void _packet_pp(void *a, int tid, int64_t ops, int64_t *done) noexcept nogil:
    _packet_loop(<_RPercpu *>NULL, <_RPercpu *>NULL, <RefJob *>a, tid, ops, done)


cdef pc_kernel_fn _pick_kernel(str workload, int dev, int dst):
    cdef pc_kernel_fn k3[3]
    cdef pc_kernel_fn k9[9]
    if workload == "netdev":
        k3[0] = _netdev_atomic; k3[1] = _netdev_bigref; k3[2] = _netdev_percpu
        return k3[dev]
    if workload == "dst":
        k3[0] = _dst_atomic; k3[1] = _dst_bigref; k3[2] = _dst_percpu
        return k3[dst]
    k9[0] = _packet_aa; k9[1] = _packet_ab; k9[2] = _packet_ap
    k9[3] = _packet_ba; k9[4] = _packet_bb; k9[5] = _packet_bp
    k9[6] = _packet_pa; k9[7] = _packet_pb; k9[8] = _packet_pp
    return k9[dev * 3 + dst]


cdef int64_t _interval(int64_t every, int threads):
    # `every` counts the team's ops; thread 0 acts for the whole team.
    if every <= 0:
        return 0
    return max(1, every // threads)


cdef size_t _fields_offset(bint beside):
    cdef Obj o
    if beside:
        return <size_t>(<char *>&o.beside[0] - <char *>&o)
    return <size_t>(<char *>&o.alone[0] - <char *>&o)


def obj_layout():
    """Where the lab's device and route objects keep their parts, in bytes
    from the object's start (the object starts a cache line): ``alone`` and
    ``beside`` (the read-mostly fields in the padded and in the 2005 layout),
    ``count`` (the shared count), ``fields`` (how many 8-byte fields a use
    reads), ``size`` and ``cacheline``. Tests check which share a line."""
    cdef Obj o
    return {
        "alone": _fields_offset(False),
        "beside": _fields_offset(True),
        "count": <size_t>(<char *>&o.ref.count - <char *>&o),
        "fields": FIELDS,
        "size": sizeof(Obj),
        "cacheline": PC_CACHELINE,
    }


cdef tuple _ref_choice(str name):
    """(PCREF_* kind, whether the count shares the fields' line) of a reference
    strategy: a percpu.REFS name, or a layout control of one."""
    from percpu.workloads import REF_LAYOUTS
    if name in REF_LAYOUTS:
        return ref_kind_of(REF_LAYOUTS[name]), True
    return ref_kind_of(name), False


cdef dict _run_refs(str workload, str dev_name, str dst_name, int nthreads, int64_t nops,
                    dict p, int64_t duration_ns):
    """Set up a RefJob, run the team, tear down and check; returns the figures."""
    cdef PerCPUPool pool = PerCPUPool()
    cdef RefJob job
    cdef int64_t *done = NULL
    cdef int64_t wall = 0, total = 0
    cdef uint32_t k
    cdef int i
    cdef bint uses_dev = workload != "dst"
    cdef bint uses_dst = workload != "netdev"
    cdef bint teardown_ok = True
    dev, dev_beside = _ref_choice(dev_name) if uses_dev else (PCREF_ATOMIC, False)
    dst, dst_beside = _ref_choice(dst_name) if uses_dst else (PCREF_ATOMIC, False)
    memset(&job, 0, sizeof(job))
    job.dev_kind = dev
    job.dst_kind = dst
    job.dev_fields = _fields_offset(dev_beside)
    job.dst_fields = _fields_offset(dst_beside)
    job.pool = pool.c
    job.nthreads = nthreads
    job.fence_qs = _registry.membarrier == PC_MB_NONE
    job.work = p.get("work", 0)
    job.dev_holds = p.get("dev_holds", 0)
    job.dst_holds = p.get("dst_holds", 0)
    job.unregister_interval = _interval(p.get("unregister_every", 0), nthreads) if uses_dev else 0
    job.churn_interval = _interval(p.get("churn_every", 0), nthreads) if uses_dst else 0
    # packet calls its route cache's size `routes`: the hot routes.
    job.entries = p.get("entries", p.get("routes", 0)) if uses_dst else 0
    bytes_per_entry = None
    try:
        job.qs = <char *>pc_aligned_zalloc(<size_t>nthreads * PC_CACHELINE)
        job.sinks = <uint64_t *>calloc(nthreads, sizeof(uint64_t))
        done = <int64_t *>calloc(nthreads, sizeof(int64_t))
        if job.qs == NULL or job.sinks == NULL or done == NULL:
            raise MemoryError()
        if uses_dev:
            job.cur = _obj_new(&job, dev, False)
            if job.cur == NULL:
                raise MemoryError("percpu: cannot create the device reference")
        if uses_dst:
            job.cap_retired = 256
            job.retired = <Obj **>calloc(job.cap_retired, sizeof(Obj *))
            job.table = <Obj **>calloc(job.entries, sizeof(Obj *))
            if job.retired == NULL or job.table == NULL:
                raise MemoryError()
            for k in range(job.entries):
                job.table[k] = _obj_new(&job, dst, False)
                if job.table[k] == NULL:
                    raise MemoryError("percpu: cannot create the route cache")
        wall = _run_team(_pick_kernel(workload, dev, dst), &job, nthreads, nops, done,
                         duration_ns)
        for i in range(nthreads):
            total += done[i]
        res = _result(wall, total, nthreads, done)
        if workload == "dst":
            st = pool.stats()
            # The entry from its fields on: the line that keeps a copy of
            # the fields alone is the lab's control, not the strategy's cost.
            entry_bytes = pc_round_up(sizeof(Obj) - _fields_offset(True), PC_CACHELINE)
            pool_bytes = st["bytes_reserved"] if dst != PCREF_ATOMIC else 0
            bytes_per_entry = entry_bytes + pool_bytes / job.entries
    finally:
        # Teardown: no worker runs any more, so killing must release at once
        # (a holder left behind is a leak), and no grace period is needed.
        with nogil:
            if job.cur != NULL:
                ref_kill(&job.cur.ref)
                if _done(job.cur):
                    _obj_free(&job, job.cur)
                else:
                    teardown_ok = False     # leaked rather than freed under a holder
            if job.table != NULL:
                for k in range(job.entries):
                    if job.table[k] != NULL:
                        ref_kill(&job.table[k].ref)
                        if _done(job.table[k]):
                            _obj_free(&job, job.table[k])
                        else:
                            teardown_ok = False
            for i in range(job.nretired):
                if _done(job.retired[i]):
                    _obj_free(&job, job.retired[i])
                else:
                    teardown_ok = False
        free(job.table)
        free(job.retired)
        free(job.qs)
        free(job.sinks)
        free(done)

    name = f"{workload}/{p.get('strategy')}"
    left = pool.stats()["objects"]
    problems = []
    if job.bad:
        problems.append(f"{job.bad} failed reference operations")
    if not teardown_ok:
        problems.append("a reference was still held at teardown")
    if job.releases != job.creations:
        problems.append(f"{job.releases} releases for {job.creations} objects created")
    if job.frees != job.creations:
        problems.append(f"{job.frees} objects freed of {job.creations} created")
    if job.bad_releases:
        problems.append(f"{job.bad_releases} objects released other than exactly once")
    if left:
        problems.append(f"the pool still holds {left} objects after teardown")
    if problems:
        raise RuntimeError(f"{name}: " + "; ".join(problems))

    res.update(created=job.creations, released=job.releases)
    if uses_dev:
        res.update(
            unregisters=job.unregisters,
            unregister_failures=job.unregister_failures,
            unregister_latency_mean_us=(job.unreg_ns_total / job.unregisters / 1e3
                                        if job.unregisters else 0.0),
            unregister_latency_max_us=job.unreg_ns_max / 1e3,
        )
    if uses_dst:
        res.update(
            entries=job.entries, churns=job.churns, churn_failures=job.churn_failures,
            refills=job.refills,
        )
    if bytes_per_entry is not None:
        res["bytes_per_entry"] = bytes_per_entry
    return res


def run_netdev(str strategy, int threads, int64_t ops, dict params, int64_t duration_ns=0):
    """dev_hold/dev_put on one device per op, each after a use of the
    device's fields; every ``unregister_every`` team ops (thread 0 acting)
    the device is unregistered: replaced by a new one, killed, and waited on
    until every holder has dropped it. Reports ``unregisters`` and
    ``unregister_latency_mean_us``/``_max_us`` (swap to release). Raises
    RuntimeError if any reference operation failed or any device was not
    released and freed exactly once."""
    p = dict(params, strategy=strategy)
    return _run_refs("netdev", strategy, "", threads, ops, p, duration_ns)


def run_dst(str strategy, int threads, int64_t ops, dict params, int64_t duration_ns=0):
    """A route cache of ``entries`` reference-counted entries; an op hashes a
    flow to an entry, compares its key (a use of its fields), holds it, uses
    it again and drops it; every ``churn_every`` team ops (thread 0 acting)
    an entry is replaced (allocated with atomic=True; on failure the old one
    stays and ``churn_failures`` counts it). Reports ``churns``,
    ``churn_failures`` and ``bytes_per_entry`` (the entry struct plus the
    private pool's reserved bytes per entry)."""
    p = dict(params, strategy=strategy)
    return _run_refs("dst", "", strategy, threads, ops, p, duration_ns)


def run_packet(str strategy, int threads, int64_t ops, dict params, int64_t duration_ns=0):
    """The packet model of tbench on loopback: per op (one packet)
    ``dev_holds`` device gets and puts, a lookup and hold of one of
    ``routes`` routes, ``dst_holds - 1`` clones of it (get and put), the last
    put, and ``work`` units of other work shared out after every get and
    every put; every hold and put follows a use of the object's fields.
    ``strategy`` is ``NETDEV+DST`` (e.g. ``bigref+percpu``). Reports the
    netdev and dst figures together and the model's parameters."""
    dev_name, dst_name = strategy.split("+")
    p = dict(params, strategy=strategy)
    res = _run_refs("packet", dev_name, dst_name, threads, ops, p, duration_ns)
    res.update(work=p["work"], dev_holds=p["dev_holds"], dst_holds=p["dst_holds"],
               routes=p["routes"])
    return res
