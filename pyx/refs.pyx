# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._refs: reference counts (AtomicRef, BigRef, PercpuRef).

The struct, the inline fast paths and the documented nogil C API are in
src/percpu/_refs.pxd; this module holds the out-of-line paths (slow and cold:
the mode switches, the grace period, the fold, the release), the Python
classes. The native-thread kernels that drive it live in the lab (pyx/lab.pyx).

Without a GIL (``freethreading_compatible``) nothing changes for them: the
fast paths were written for nogil threads already, every switch runs under
the reference's own lock, and the release callback runs once, in the thread
whose put won the release bit.
"""
cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from posix.time cimport clock_gettime, nanosleep, timespec

from percpu.cpercpu cimport *
from percpu._alloc cimport (PerCPUPool, default_pool, pc_pool, pcpool_alloc, pcpool_free,
                            pcpool_ptr, pcpool_stride)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef pc_registry *_registry = pc_registry_import()

cdef enum:
    # An abort means this thread was preempted, migrated or signalled inside
    # the section; one more try nearly always commits. A thread that keeps
    # failing goes to the shared count rather than spin.
    _RSEQ_RETRIES = 4


# The pool that references without a pool of their own allocate from; kept
# here so that nogil callers of ref_init need not touch a Python object.
cdef PerCPUPool _the_default_pool = default_pool()


# State word and switch lock

cdef inline int32_t _state_or(pc_ref *r, int32_t bits, int mo) noexcept nogil:
    cdef int32_t s = pc_load_i32(&r.state, PC_RELAXED)
    while not pc_cas_i32(&r.state, &s, s | bits, mo, PC_RELAXED):
        pass
    return s


cdef inline void _state_clear(pc_ref *r, int32_t bits) noexcept nogil:
    cdef int32_t s = pc_load_i32(&r.state, PC_RELAXED)
    # Relaxed: only called under the switch lock, whose release publishes it.
    while not pc_cas_i32(&r.state, &s, s & ~bits, PC_RELAXED, PC_RELAXED):
        pass


cdef void _lock(pc_ref *r) noexcept nogil:
    cdef int32_t free_
    cdef int spins = 0
    # Through the fork gate: fork() waits until no switch lock is held
    # (registry.h), so a child never inherits one held by a thread it lacks.
    pc_fork_gate_enter(r.reg)
    while True:
        free_ = 0
        # Acquire: the new holder sees the mode, count and slots as the
        # previous holder left them.
        if pc_cas_i32(&r.lock, &free_, 1, PC_ACQUIRE, PC_RELAXED):
            return
        spins += 1
        if spins < 100:
            pc_cpu_relax()
        else:
            # The holder may be in a grace period, or descheduled on a
            # crowded machine: let it run.
            sched_yield()


cdef inline void _unlock(pc_ref *r) noexcept nogil:
    # Release: pairs with the next _lock's acquire.
    pc_store_i32(&r.lock, 0, PC_RELEASE)
    pc_fork_gate_leave(r.reg)


# ---------------------------------------------------------------------------
# The release and the shared count

cdef int _release(pc_ref *r) noexcept nogil:
    # Called by the one thread that moved the count to PCREF_DEAD; the state
    # bit stays a second guard, so that even a misused count cannot release
    # twice. Seq_cst: a holder that announces itself and then checks
    # `released` (as the stress test does) must see one or be seen.
    #
    # The callback may free the struct that holds r (or reinit r): r is read
    # before it and never touched after it. Without a callback the release is
    # complete at once, so DONE goes in with RELEASED (one store: a thread
    # that frees r on seeing either bit cannot race a second one).
    cdef pc_ref_release_fn fn = r.release
    cdef void *ctx = r.ctx
    cdef int32_t old = _state_or(r, PCREF_RELEASED if fn != NULL else PCREF_RELEASED | PCREF_DONE,
                                 PC_SEQ_CST)
    if old & PCREF_RELEASED:
        return 0
    if fn != NULL:
        fn(ctx)
    return 1


cdef int _decide_release(pc_ref *r, int64_t c) noexcept nogil:
    # The count was seen at c <= 0 with nobody holding a reference: release,
    # if this thread moves it to PCREF_DEAD first. From there a get (misused:
    # it needs a reference) lands deep below zero and fails, and tryget
    # refuses: no increment can make a released count positive again.
    # A count that went back above zero was taken by a get (without a
    # reference of its own, so misused, but nobody else holds one): that
    # holder's put releases it later. Returns 1 released, 0 revived,
    # PCREF_ERR_STATE already released (only a misused put gets there).
    while True:
        if c > 0:
            return 0
        if c <= PCREF_DEAD_ZONE:
            return PCREF_ERR_STATE
        # Acquire: the count's history of release-ordered puts (a release
        # sequence that this CAS reads from) comes before the callback.
        if pc_cas_i64(&r.count, &c, PCREF_DEAD, PC_ACQUIRE, PC_RELAXED):
            return 1 if _release(r) else PCREF_ERR_STATE


cdef int pcref_put_last(pc_ref *r, int64_t old) noexcept nogil:
    if old == 1:
        # Ours was the last reference; the release is decided on the count
        # (_decide_release), not by the decrement alone, so that a misused
        # get in between cannot hand a tryget a reference to a released
        # object.
        return _decide_release(r, 0)
    # The count was already zero (released) or below: put it back, so that
    # tryget keeps refusing and the caller learns of the extra put.
    pc_fetch_add_i64(&r.count, 1, PC_RELAXED)
    return PCREF_ERR_STATE


cdef int pcref_shared_put(pc_ref *r) noexcept nogil:
    # Release: see atomicref_put.
    cdef int64_t old = pc_fetch_add_i64(&r.count, -1, PC_RELEASE)
    if PC_LIKELY(old > 1):
        return 0
    return pcref_put_last(r, old)


cdef int pcref_undo_get(pc_ref *r) noexcept nogil:
    # Relaxed: taking back our own increment publishes nothing.
    pc_fetch_add_i64(&r.count, -1, PC_RELAXED)
    return PCREF_ERR_STATE


cdef inline int _shared_tryget(pc_ref *r) noexcept nogil:
    # Relaxed as in atomicref_tryget.
    cdef int64_t c = pc_load_i64(&r.count, PC_RELAXED)
    while c > 0:
        if pc_cas_i64(&r.count, &c, c + 1, PC_RELAXED, PC_RELAXED):
            return 1
    return 0


cdef int _shared_tryget_live(pc_ref *r) noexcept nogil:
    # Any thread may come here at any time: shared mode, a registry that is
    # full, rseq sections aborted time after time. No grace period waits for
    # it, so kill() may run entirely between a mode check and the increment.
    # Hence check, increment, and check again: kill stores PCREF_MODE_DEAD
    # (seq_cst) and then fences (seq_cst) before its first access to the count.
    # If the second check (seq_cst) does not see DEAD, it precedes that store
    # in the single total order, so does our increment (seq_cst CAS), and the
    # kill's fold, its put and every value() after it count our reference. If
    # it does see DEAD, our reference came too late: give it back.
    cdef int64_t c
    # Relaxed: a cheap early refusal; the check that decides is below.
    if pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_DEAD:
        return 0
    c = pc_load_i64(&r.count, PC_RELAXED)
    while True:
        if c <= 0:
            return 0
        if pc_cas_i64(&r.count, &c, c + 1, PC_SEQ_CST, PC_RELAXED):
            break
    if pc_load_i32(&r.mode, PC_SEQ_CST) != PCREF_MODE_DEAD:
        return 1
    # This put may be the last one (everybody else let go meanwhile) and run
    # the release callback, which may free r: nothing touches r after it.
    pcref_shared_put(r)
    return 0


cdef int _shared_op(pc_ref *r, int op) noexcept nogil:
    # Always right, in any mode: in per-CPU mode the bias keeps the count
    # far from zero and the fold adds the slots to it.
    if op == PCREF_OP_GET:
        # Relaxed: see atomicref_get (which explains ">= 0").
        if PC_LIKELY(pc_fetch_add_i64(&r.count, 1, PC_RELAXED) >= 0):
            return 0
        return pcref_undo_get(r)
    if op == PCREF_OP_PUT:
        return pcref_shared_put(r)
    if op == PCREF_OP_TRYGET_LIVE:
        return _shared_tryget_live(r)
    return _shared_tryget(r)


cdef int pcref_slow(pc_ref *r, int op) noexcept nogil:
    cdef int64_t v = -1 if op == PCREF_OP_PUT else 1
    cdef int committed = 1 if op >= PCREF_OP_TRYGET else 0
    cdef int i, rc
    cdef pc_thread_rec *rec
    # Acquire pairs with _enter_percpu's release store: a thread that saw
    # the per-CPU mode also sees the bias, so a shared put it hands on can
    # never reach zero (free on x86 and ARMv8). A stale per-CPU reading is
    # settled by the section below, a stale shared one by the bias.
    if pc_load_i32(&r.mode, PC_ACQUIRE) != PCREF_MODE_PERCPU:
        return _shared_op(r, op)
    if pc_refs_rseq(r.reg):
        for i in range(_RSEQ_RETRIES):
            rc = pc_rseq_add_if_i64(&r.mode, r.base, r.stride, v)
            if rc == 0:
                return committed
            if rc == 2:
                break
        # Not the per-CPU mode, or aborted time after time. Never fall back
        # to an atomic add on a slot here: the rseq commits of other threads
        # are plain read-modify-writes and would overwrite it.
        return _shared_op(r, op)
    # No rseq: the mode check and the slot add form a read-side section that
    # the grace period waits for.
    rec = pc_thread_record(r.reg)
    if rec != NULL:
        pc_section_enter(r.reg, rec)
        # pc_section_enter orders this load after the section is published
        # (fence, or the switcher's membarrier), so a switch either waits
        # for this section or is seen by this load; acquire as above.
        if pc_load_i32(&r.mode, PC_ACQUIRE) == PCREF_MODE_PERCPU:
            # Atomic: without rseq several threads may share a CPU's slot
            # (stale cpu ids, per-thread fallback ids). Relaxed: the slots
            # only feed the fold, which reads them after the grace period;
            # pc_section_exit's release store orders this add before it.
            pc_fetch_add_i64(<int64_t *>(r.base + <size_t>pc_current_slot() * r.stride), v,
                             PC_RELAXED)
            pc_section_exit(rec)
            return committed
        pc_section_exit(rec)
    # Registry full (or not per-CPU mode): the shared count is always right.
    return _shared_op(r, op)


# ---------------------------------------------------------------------------
# Mode switches. All run under the switch lock, and none runs a user callback
# while holding it (a callback may call value() or reinit()).

cdef inline void _enter_percpu(pc_ref *r) noexcept nogil:
    # The bias goes in before any thread can see the per-CPU mode: from the
    # first slot add on, no shared put can reach zero. Relaxed add, then a
    # release store of the mode, which pcref_slow reads with acquire (the
    # rseq sections' plain load is acquire on x86, the only rseq target).
    pc_fetch_add_i64(&r.count, PCREF_BIAS, PC_RELAXED)
    pc_store_i32(&r.mode, PCREF_MODE_PERCPU, PC_RELEASE)


cdef int64_t _leave_percpu(pc_ref *r, int32_t new_mode) noexcept nogil:
    """Switch out of per-CPU mode and fold; returns the shared count after it."""
    cdef int64_t total = 0
    cdef int c, n
    # Seq_cst: the store must be globally visible before the grace period
    # looks at the sections (the Dekker pair of pc_section_enter's fence).
    pc_store_i32(&r.mode, new_mode, PC_SEQ_CST)
    # After this, every per-CPU add has committed (the fold sees it) or will
    # read the new mode: membarrier(PRIVATE_EXPEDITED_RSEQ) aborts each rseq
    # section in flight, and the registry scan waits for open fallback
    # sections.
    pc_synchronize(r.reg)
    # Only the slots in use can hold anything (see pc_proc in percpu/cpu.h):
    # an add that committed raised the bound (or saw it raised) before it
    # wrote, and the grace period made that add, and so the raise, visible
    # here.
    n = pc_slots_in_use(&r.reg.proc)
    for c in range(n):
        # Relaxed: nobody writes the slots any more, and the grace period
        # made every committed add visible to us.
        total += pc_exchange_i64(<int64_t *>(r.base + <size_t>c * r.stride), 0, PC_RELAXED)
    # Acq_rel: later shared ops follow the fold, and if a later put makes the
    # count zero it acquires the history of the puts folded in here.
    return pc_add_fetch_i64(&r.count, total - PCREF_BIAS, PC_ACQ_REL)


cdef int _underflow(pc_ref *r) noexcept nogil:
    # The fold found fewer references than the initial one the switch still
    # counts on: more puts than gets. The count says nobody holds it, so
    # release it (once, moving it to PCREF_DEAD so tryget refuses) and report.
    # r may be gone after the release: the return code is all that is left.
    _decide_release(r, pc_load_i64(&r.count, PC_RELAXED))
    return PCREF_ERR_UNDERFLOW


cdef int ref_kill_and_confirm(pc_ref *r, pc_ref_release_fn confirm, void *confirm_ctx) noexcept nogil:
    cdef int32_t s
    cdef int64_t n = 1
    if r.kind == PCREF_ATOMIC:
        s = pc_load_i32(&r.state, PC_RELAXED)
        while True:
            if s & (PCREF_KILLED | PCREF_RELEASED):
                return PCREF_ERR_STATE
            # Acq_rel: one kill wins; the initial reference is dropped below.
            if pc_cas_i32(&r.state, &s, s | PCREF_KILLED, PC_ACQ_REL, PC_RELAXED):
                break
        pc_store_i32(&r.mode, PCREF_MODE_DEAD, PC_RELAXED)
    else:
        _lock(r)
        s = pc_load_i32(&r.state, PC_RELAXED)
        if s & (PCREF_KILLED | PCREF_RELEASED):
            _unlock(r)
            return PCREF_ERR_STATE
        _state_or(r, PCREF_KILLED, PC_RELAXED)
        if pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_PERCPU:
            # bigref's disown: from here on the initial reference is what
            # keeps the count above zero while the slots are folded in.
            n = _leave_percpu(r, PCREF_MODE_DEAD)
        else:
            # Already shared (switch_to_atomic): no slot holds anything.
            # The fence orders the store before our accesses to the count,
            # which _shared_tryget_live relies on (in per-CPU mode the grace
            # period fences: membarrier() or a seq_cst fence).
            pc_store_i32(&r.mode, PCREF_MODE_DEAD, PC_SEQ_CST)
            pc_fence(PC_SEQ_CST)
        _unlock(r)
        if n <= 0:
            # More puts than gets: the release below is not the caller's to
            # stop, but the shared mode is in force, so confirm still runs
            # first, as it does on every other path.
            if confirm != NULL:
                confirm(confirm_ctx)
            return _underflow(r)
    # The initial reference is still held: nothing can be released before
    # confirm has run.
    if confirm != NULL:
        confirm(confirm_ctx)
    return pcref_shared_put(r)


cdef int ref_kill(pc_ref *r) noexcept nogil:
    return ref_kill_and_confirm(r, NULL, NULL)


cdef int ref_switch_to_atomic(pc_ref *r) noexcept nogil:
    cdef int64_t n = 1
    if r.kind != PCREF_PERCPU:
        return PCREF_ERR_ARG
    _lock(r)
    if pc_load_i32(&r.state, PC_RELAXED) & PCREF_RELEASED:
        _unlock(r)
        return PCREF_ERR_STATE
    if pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_PERCPU:
        n = _leave_percpu(r, PCREF_MODE_SHARED)
    _unlock(r)
    if n <= 0:
        return _underflow(r)
    return 0


cdef int ref_switch_to_percpu(pc_ref *r) noexcept nogil:
    if r.kind != PCREF_PERCPU:
        return PCREF_ERR_ARG
    _lock(r)
    if pc_load_i32(&r.state, PC_RELAXED) & (PCREF_KILLED | PCREF_RELEASED):
        _unlock(r)
        return PCREF_ERR_STATE
    if pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_SHARED:
        # The slots are zero: the last fold cleared them and no slot add
        # runs outside per-CPU mode.
        _enter_percpu(r)
    _unlock(r)
    return 0


cdef int ref_resurrect(pc_ref *r) noexcept nogil:
    cdef int32_t s
    if r.kind != PCREF_PERCPU:
        return PCREF_ERR_ARG
    _lock(r)
    s = pc_load_i32(&r.state, PC_RELAXED)
    # The count, not the flag, says whether the release is under way: take
    # the initial reference back only while it is above zero.
    if not (s & PCREF_KILLED) or (s & PCREF_RELEASED) or not _shared_tryget(r):
        _unlock(r)
        return PCREF_ERR_STATE
    _state_clear(r, PCREF_KILLED)
    _enter_percpu(r)
    _unlock(r)
    return 0


cdef int ref_reinit(pc_ref *r) noexcept nogil:
    if r.kind != PCREF_PERCPU:
        return PCREF_ERR_ARG
    _lock(r)
    # RELEASED: the count is PCREF_DEAD and nobody holds a reference. The
    # release callback may be running still (a reinit from inside it is
    # fine: the library does not touch r after calling it); waiting for it
    # is the caller's business (the Python class waits for PCREF_DONE).
    if not (pc_load_i32(&r.state, PC_ACQUIRE) & PCREF_RELEASED):
        _unlock(r)
        return PCREF_ERR_STATE
    # Nobody holds a reference and the slots were cleared by the fold that
    # preceded the release: relaxed stores, published by the mode's release.
    pc_store_i64(&r.count, PCREF_BIAS + 1, PC_RELAXED)
    pc_store_i32(&r.state, 0, PC_RELAXED)
    pc_store_i32(&r.mode, PCREF_MODE_PERCPU, PC_RELEASE)
    _unlock(r)
    return 0


cdef int64_t ref_value(pc_ref *r) noexcept nogil:
    cdef int64_t v
    if r.kind == PCREF_ATOMIC:
        v = pc_load_i64(&r.count, PC_RELAXED)
        return 0 if v <= PCREF_DEAD_ZONE else v
    # Under the lock no fold is half done: either the bias is in the count
    # and the slots hold their share, or the count holds everything.
    _lock(r)
    v = pc_load_i64(&r.count, PC_RELAXED)
    if pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_PERCPU:
        v += pc_percpu_sum(r.base, r.stride) - PCREF_BIAS
    _unlock(r)
    # Released: PCREF_DEAD, plus any misused gets in flight.
    return 0 if v <= PCREF_DEAD_ZONE else v


cdef bint ref_is_zero(pc_ref *r) noexcept nogil:
    # Mode before count: a ref that goes back to per-CPU mode in between has
    # the bias in its count, so it cannot read as zero by mistake.
    if r.kind != PCREF_ATOMIC and pc_load_i32(&r.mode, PC_ACQUIRE) == PCREF_MODE_PERCPU:
        return False
    # Zero on its way to release, or PCREF_DEAD (released).
    return pc_load_i64(&r.count, PC_ACQUIRE) <= 0


cdef int ref_init(pc_ref *r, int kind, pc_pool *pool, bint atomic,
                  pc_ref_release_fn release, void *ctx) noexcept nogil:
    cdef int64_t h
    memset(r, 0, sizeof(pc_ref))
    # Until it is set up, the struct reads as released and off the per-CPU
    # mode, so no path can reach the (absent) slots, and every get fails.
    r.mode = PCREF_MODE_DEAD
    r.state = PCREF_RELEASED | PCREF_DONE
    r.count = PCREF_DEAD
    r.reg = _registry
    if kind != PCREF_ATOMIC and kind != PCREF_BIGREF and kind != PCREF_PERCPU:
        return PCREF_ERR_ARG
    r.kind = kind
    if kind != PCREF_ATOMIC:
        if pool == NULL:
            pool = _the_default_pool.c
        h = pcpool_alloc(pool, sizeof(int64_t), sizeof(int64_t), atomic)
        if h < 0:
            return PCREF_ERR_NOMEM if h == -1 else PCREF_ERR_ARG
        r.pool = pool
        r.handle = h
        r.base = pcpool_ptr(pool, h, 0)
        r.stride = pcpool_stride(pool)
    r.release = release
    r.ctx = ctx
    r.state = 0
    if kind == PCREF_ATOMIC:
        r.count = 1
        r.mode = PCREF_MODE_SHARED
    else:
        # The initial reference lives in the shared count, beside the bias.
        r.count = PCREF_BIAS + 1
        r.mode = PCREF_MODE_PERCPU
    return 0


cdef int ref_destroy(pc_ref *r) noexcept nogil:
    cdef int rc = 0
    # Off the per-CPU mode first, so a stray fast path cannot reach freed slots.
    pc_store_i32(&r.mode, PCREF_MODE_DEAD, PC_RELAXED)
    # Handle 0 is a valid handle: the pool pointer says whether there are slots.
    if r.pool != NULL:
        rc = pcpool_free(r.pool, r.handle)
    r.pool = NULL
    r.handle = -1
    r.base = NULL
    return rc


# ---------------------------------------------------------------------------
# Python classes

cdef void _call_noexcept(object fn) noexcept:
    # An exception here has nowhere to go: it is reported through
    # sys.unraisablehook, like one from a weakref callback.
    fn()


cdef void _py_release_done(void *ctx) noexcept:
    # The library does not touch the struct once it has called us; the
    # Python object records the end of on_release itself, for wait_released()
    # and reinit(). `self` holds a new reference: on_release may drop the
    # last other one, and the object must outlive the store below.
    cdef _Ref self = <_Ref>ctx
    _call_noexcept(self.on_release)
    # Release: a waiter that sees DONE sees what the callback did.
    _state_or(&self.c, PCREF_DONE, PC_RELEASE)


cdef void _py_release(void *ctx) noexcept nogil:
    # The only place a native thread takes the GIL: the last put.
    with gil:
        _py_release_done(ctx)


cdef void _py_confirm(void *ctx) noexcept nogil:
    with gil:
        _call_noexcept(<object>ctx)


# The one map from a strategy name (the keys of percpu.REFS) to its kind.
cdef dict _KINDS = {"atomic": PCREF_ATOMIC, "bigref": PCREF_BIGREF, "percpu": PCREF_PERCPU}


cdef int ref_kind_of(object name) except -1:
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"unknown reference strategy {name!r}; valid: {', '.join(_KINDS)}")
    return kind


cdef int _setup(_Ref self, int kind) except -1:
    """From __cinit__: a live reference without a callback, its slots (if
    any) on the default pool; __init__ then applies the arguments."""
    cdef PerCPUPool pool = None
    cdef int rc
    if kind != PCREF_ATOMIC:
        pool = default_pool()
    rc = ref_init(&self.c, kind, pool.c if pool is not None else NULL, False, NULL, NULL)
    if rc == PCREF_ERR_NOMEM:
        raise MemoryError("percpu: the pool cannot hold another reference")
    if rc != 0:
        raise ValueError(f"percpu: cannot set up the reference (error {rc})")
    self.pool = pool
    return 0


cdef int _configure(_Ref self, object on_release, object pool) except -1:
    """__init__: checks the arguments, then moves the slots to ``pool`` (when
    given) and installs ``on_release``. Runs once."""
    cdef int64_t h
    cdef pc_pool *p
    if on_release is not None and not callable(on_release):
        raise TypeError(f"on_release must be callable or None, not {type(on_release).__name__}")
    if pool is not None and not isinstance(pool, PerCPUPool):
        raise TypeError(f"pool must be a PerCPUPool or None, not {type(pool).__name__}")
    if self._configured:
        raise RuntimeError(f"{type(self).__name__}.__init__() was already called: "
                           "a reference is configured once")
    if pool is not None and pool is not self.pool:
        # Only an untouched reference moves: one made with __new__ and used
        # before __init__ may have counts in its slots or threads inside it.
        if pc_load_i32(&self.c.state, PC_RELAXED) != 0 or ref_value(&self.c) != 1:
            raise RuntimeError(f"cannot move a {type(self).__name__} that is already in use "
                               "to another pool")
        p = (<PerCPUPool>pool).c
        h = pcpool_alloc(p, sizeof(int64_t), sizeof(int64_t), False)
        if h < 0:
            raise MemoryError("percpu: the pool cannot hold another reference")
        # The slots are all zero (value 1 is the initial reference, in the
        # shared count) and nobody else has seen them: swap them for the new.
        pcpool_free(self.c.pool, self.c.handle)
        self.c.pool = p
        self.c.handle = h
        self.c.base = pcpool_ptr(p, h, 0)
        self.c.stride = pcpool_stride(p)
        self.pool = pool
    if on_release is not None:
        self.on_release = on_release
        self.c.ctx = <void *>self
        self.c.release = _py_release
    self._configured = True
    return 0


cdef int _check(int rc, str what) except -1:
    if rc >= 0:
        return 0
    if rc == PCREF_ERR_UNDERFLOW:
        raise RuntimeError(f"{what}: more put() than get() calls; the count fell below "
                           "zero and the reference has been released")
    if rc == PCREF_ERR_STATE:
        raise RuntimeError(f"{what}: not allowed in this state")
    raise RuntimeError(f"{what}: failed (error {rc})")


# Timeouts from this many seconds on (about 136 years) wait forever: the
# deadline in ns must stay far from the int64 limit.
cdef object _WAIT_FOREVER_S = 1 << 32


cdef bint _wait_forever(object timeout) except -1:
    """Checks ``timeout`` for wait_released; True when it means no deadline."""
    if timeout is None:
        return True
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout:
        raise ValueError("timeout must be a number of seconds, not NaN")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    # Compared as Python numbers: an int too large for a float is fine too.
    return timeout >= _WAIT_FOREVER_S


@cython.no_gc_clear
cdef class _Ref:
    """Common part of the reference classes (not instantiated directly).

    Construction: each class's ``__cinit__`` takes any arguments and ignores
    them (they belong to ``__init__``, a subclass's own included) and makes a
    live reference without a callback, its slots on the default pool;
    ``__init__`` checks ``on_release`` and ``pool`` and applies them, once.
    A subclass that never calls ``super().__init__()`` still has a working
    reference. ``no_gc_clear``: ``__dealloc__`` gives the slots back to the
    pool that ``self.pool`` keeps alive, and a release may call
    ``self.on_release``; the collector must not drop either first.
    """

    def __cinit__(self, *args, **kwargs):
        # Until a subclass sets it up the struct reads as released.
        self.c.mode = PCREF_MODE_DEAD
        self.c.kind = PCREF_ATOMIC
        self.c.state = PCREF_RELEASED | PCREF_DONE
        self.c.count = PCREF_DEAD

    def __dealloc__(self):
        ref_destroy(&self.c)

    def get(self) -> None:
        """Take a reference (the caller must already hold one)."""
        if ref_get(&self.c) != 0:
            raise RuntimeError("get() on a released reference")

    def put(self) -> bool:
        """Drop a reference; True exactly when this put released the object."""
        cdef int rc = ref_put(&self.c)
        if rc < 0:
            raise RuntimeError("put() on a released reference (more put() than get())")
        return rc == 1

    def tryget(self) -> bool:
        """Take a reference unless the object is already released."""
        return ref_tryget(&self.c) == 1

    def value(self) -> int:
        """The exact count (sums the per-CPU slots; exact when no get/put runs)."""
        cdef int64_t v
        with nogil:
            v = ref_value(&self.c)
        return v

    def kill(self) -> None:
        """Leave the per-CPU mode and drop the initial reference."""
        cdef int rc
        with nogil:
            rc = ref_kill(&self.c)
        _check(rc, "kill()")

    @property
    def released(self) -> bool:
        """Whether the last reference has been dropped."""
        return ref_released(&self.c)

    @property
    def killed(self) -> bool:
        """Whether kill() has run (and, for PercpuRef, no resurrect() since)."""
        return (pc_load_i32(&self.c.state, PC_RELAXED) & PCREF_KILLED) != 0

    def wait_released(self, timeout=None) -> bool:
        """Wait until the release callback has returned; False on timeout.

        ``timeout``: seconds (int or float, >= 0), or None to wait for as long
        as it takes; a timeout too long to matter (``inf``, ``1e300``) is the
        same as None. The GIL is released while waiting; signals (Ctrl-C)
        are handled.
        """
        cdef int64_t deadline = 0, now, nap = 10000
        cdef bint forever = _wait_forever(timeout)
        cdef timespec ts
        if not forever:
            deadline = pc_now_ns() + <int64_t>(float(timeout) * 1e9)
        while True:
            if pc_load_i32(&self.c.state, PC_ACQUIRE) & PCREF_DONE:
                return True
            now = pc_now_ns()
            if not forever:
                if now >= deadline:
                    return False
                if deadline - now < nap:
                    nap = deadline - now
            ts.tv_sec = nap // 1000000000
            ts.tv_nsec = nap % 1000000000
            with nogil:
                nanosleep(&ts, NULL)
            PyErr_CheckSignals()
            # Back off to 2 ms: short waits stay short, long ones stay cheap.
            nap = min(nap * 2, 2000000)

    def __repr__(self):
        state = "released" if self.released else ("killed" if self.killed else "live")
        return f"<{type(self).__name__} {state} count={self.value()}>"


cdef class AtomicRef(_Ref):
    """One shared atomic count (kref): every get/put is a locked add."""

    def __cinit__(self, *args, **kwargs):
        _setup(self, PCREF_ATOMIC)

    def __init__(self, on_release=None):
        _configure(self, on_release, None)

    def get(self) -> None:
        if atomicref_get(&self.c) != 0:
            raise RuntimeError("get() on a released reference")

    def put(self) -> bool:
        cdef int rc = atomicref_put(&self.c)
        if rc < 0:
            raise RuntimeError("put() on a released reference (more put() than get())")
        return rc == 1


cdef class BigRef(_Ref):
    """The 2005 bigref: per-CPU counts plus a shared slow count.

    kill() is bigref's disown: switch to the shared count, wait a grace period,
    fold the per-CPU counts in and drop the initial reference.
    """

    def __cinit__(self, *args, **kwargs):
        _setup(self, PCREF_BIGREF)

    def __init__(self, on_release=None, *, pool=None):
        _configure(self, on_release, pool)

    def is_fast(self) -> bool:
        """Whether get/put still go to the per-CPU counts."""
        return pc_load_i32(&self.c.mode, PC_RELAXED) == PCREF_MODE_PERCPU


cdef class PercpuRef(_Ref):
    """Linux percpu_ref: per-CPU counts that switch to one shared count."""

    def __cinit__(self, *args, **kwargs):
        _setup(self, PCREF_PERCPU)

    def __init__(self, on_release=None, *, pool=None):
        _configure(self, on_release, pool)

    def is_percpu(self) -> bool:
        """Whether get/put go to the per-CPU counts."""
        return pc_load_i32(&self.c.mode, PC_RELAXED) == PCREF_MODE_PERCPU

    def tryget_live(self) -> bool:
        """Take a reference unless kill() has started (or it is released)."""
        return percpuref_tryget_live(&self.c) == 1

    def kill_and_confirm(self, confirm) -> None:
        """kill(), calling confirm() once the shared mode is in force, before
        any release can happen."""
        cdef int rc
        if not callable(confirm):
            raise TypeError(f"confirm must be callable, not {type(confirm).__name__}")
        with nogil:
            rc = ref_kill_and_confirm(&self.c, _py_confirm, <void *>confirm)
        _check(rc, "kill_and_confirm()")

    def switch_to_atomic(self) -> None:
        """Move every count into the shared one (grace period, fold); stays live."""
        cdef int rc
        with nogil:
            rc = ref_switch_to_atomic(&self.c)
        _check(rc, "switch_to_atomic()")

    def switch_to_percpu(self) -> None:
        """Go back to per-CPU counts; only while live (not killed)."""
        cdef int rc
        with nogil:
            rc = ref_switch_to_percpu(&self.c)
        _check(rc, "switch_to_percpu()")

    def resurrect(self) -> None:
        """Undo kill() of a reference that is not released yet: it is live,
        per-CPU and holds its initial reference again."""
        cdef int rc
        with nogil:
            rc = ref_resurrect(&self.c)
        _check(rc, "resurrect() needs a killed reference that is not released;"
               " resurrect()")

    def reinit(self) -> None:
        """Start a released reference over: live, per-CPU, one reference."""
        cdef int rc = PCREF_ERR_STATE
        # Once on_release has returned (DONE), not only released: the
        # callback must not find its object live again, and its end must not
        # mark the new life as done.
        if pc_load_i32(&self.c.state, PC_ACQUIRE) & PCREF_DONE:
            with nogil:
                rc = ref_reinit(&self.c)
        _check(rc, "reinit() needs a released reference; reinit()")

    def is_zero(self) -> bool:
        """True when in shared mode with a count of zero."""
        return ref_is_zero(&self.c)


def fast_path() -> str:
    """How the per-CPU references' gets and puts run here: ``"rseq"`` (rseq
    critical sections, aborted by membarrier(PRIVATE_EXPEDITED_RSEQ) at a
    mode switch) or ``"sections"`` (read-side sections the grace period waits
    for: no rseq, or a kernel without the RSEQ membarrier)."""
    return "rseq" if pc_refs_rseq(_registry) else "sections"
