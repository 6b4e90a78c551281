# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._refs: reference counts (AtomicRef, BigRef, PercpuRef).

The struct, the inline fast paths and the documented nogil C API are in
src/percpu/_refs.pxd; this module holds the out-of-line paths (slow and cold:
the mode switches, the grace period, the fold, the release), the Python
classes, and native-thread kernels for the tests and measurements.

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


# ---------------------------------------------------------------------------
# The release and the shared count

cdef int _release(pc_ref *r) noexcept nogil:
    # The state bit is the one decision on who runs the callback, so that even
    # a misused count (puts after reinit races, a put after a clamp) cannot
    # release twice. Seq_cst: a holder that announces itself and then checks
    # `released` (as the stress test does) must see one or be seen.
    cdef int32_t old = _state_or(r, PCREF_RELEASED, PC_SEQ_CST)
    if old & PCREF_RELEASED:
        return 0
    if r.release != NULL:
        r.release(r.ctx)
    # Release: a waiter that sees DONE sees what the callback did.
    _state_or(r, PCREF_DONE, PC_RELEASE)
    return 1


cdef int pcref_put_last(pc_ref *r, int64_t old) noexcept nogil:
    if old == 1:
        # Acquire: pairs with the release of every earlier put, so every
        # holder's use of the object happens before the callback.
        pc_fence(PC_ACQUIRE)
        return 1 if _release(r) else PCREF_ERR_STATE
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


cdef int _shared_op(pc_ref *r, int op) noexcept nogil:
    # Always right, in any mode: in per-CPU mode the bias keeps the count
    # far from zero and the fold adds the slots to it.
    if op == PCREF_OP_GET:
        # Relaxed: see atomicref_get.
        if PC_LIKELY(pc_fetch_add_i64(&r.count, 1, PC_RELAXED) > 0):
            return 0
        return pcref_undo_get(r)
    if op == PCREF_OP_PUT:
        return pcref_shared_put(r)
    # Relaxed: kill stores DEAD before it drops the initial reference; a
    # tryget_live that reads an older mode is ordered before the kill.
    if op == PCREF_OP_TRYGET_LIVE and pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_DEAD:
        return 0
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
            pc_fetch_add_i64(<int64_t *>(r.base + <size_t>pc_current_cpu() * r.stride), v,
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
    n = pc_nr_cpus()
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
    # release it (once) and report; clamp to zero so tryget refuses.
    cdef int64_t c = pc_load_i64(&r.count, PC_RELAXED)
    while c < 0:
        if pc_cas_i64(&r.count, &c, 0, PC_ACQ_REL, PC_RELAXED):
            break
    pc_fence(PC_ACQUIRE)
    _release(r)
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
            pc_store_i32(&r.mode, PCREF_MODE_DEAD, PC_SEQ_CST)
        _unlock(r)
        if n <= 0:
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
    # DONE, not only RELEASED: a reinit from inside the callback would have
    # its state overwritten when the callback returns.
    if not (pc_load_i32(&r.state, PC_ACQUIRE) & PCREF_DONE):
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
        return pc_load_i64(&r.count, PC_RELAXED)
    # Under the lock no fold is half done: either the bias is in the count
    # and the slots hold their share, or the count holds everything.
    _lock(r)
    v = pc_load_i64(&r.count, PC_RELAXED)
    if pc_load_i32(&r.mode, PC_RELAXED) == PCREF_MODE_PERCPU:
        v += pc_percpu_sum(r.base, r.stride) - PCREF_BIAS
    _unlock(r)
    return v


cdef bint ref_is_zero(pc_ref *r) noexcept nogil:
    # Mode before count: a ref that goes back to per-CPU mode in between has
    # the bias in its count, so it cannot read as zero by mistake.
    if r.kind != PCREF_ATOMIC and pc_load_i32(&r.mode, PC_ACQUIRE) == PCREF_MODE_PERCPU:
        return False
    return pc_load_i64(&r.count, PC_ACQUIRE) == 0


cdef int ref_init(pc_ref *r, int kind, pc_pool *pool, bint atomic,
                  pc_ref_release_fn release, void *ctx) noexcept nogil:
    cdef int64_t h
    memset(r, 0, sizeof(pc_ref))
    # Until it is set up, the struct reads as released and off the per-CPU
    # mode, so no path can reach the (absent) slots.
    r.mode = PCREF_MODE_DEAD
    r.state = PCREF_RELEASED | PCREF_DONE
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


cdef void _py_release(void *ctx) noexcept nogil:
    # The only place a native thread takes the GIL: the last put.
    with gil:
        _call_noexcept((<_Ref>ctx).on_release)


cdef void _py_confirm(void *ctx) noexcept nogil:
    with gil:
        _call_noexcept(<object>ctx)


cdef dict _KINDS = {"atomic": PCREF_ATOMIC, "bigref": PCREF_BIGREF, "percpu": PCREF_PERCPU}


cdef int _setup(_Ref self, int kind, object on_release, object pool) except -1:
    cdef pc_pool *p = NULL
    cdef pc_ref_release_fn release = NULL
    cdef int rc
    if on_release is not None and not callable(on_release):
        raise TypeError(f"on_release must be callable or None, not {type(on_release).__name__}")
    if kind != PCREF_ATOMIC:
        if pool is None:
            pool = default_pool()
        elif not isinstance(pool, PerCPUPool):
            raise TypeError(f"pool must be a PerCPUPool, not {type(pool).__name__}")
        p = (<PerCPUPool>pool).c
    if on_release is not None:
        release = _py_release
    rc = ref_init(&self.c, kind, p, False, release, <void *>self)
    if rc == PCREF_ERR_NOMEM:
        raise MemoryError("percpu: the pool cannot hold another reference")
    if rc != 0:
        raise ValueError(f"percpu: cannot set up the reference (error {rc})")
    self.on_release = on_release
    self.pool = pool
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


# ref_destroy in __dealloc__ frees the slots into the pool that self.pool keeps
# alive (r.pool is its C struct): the cycle collector must not drop that
# reference first. A cycle through on_release (a callback that refers to its
# reference) is broken by clearing the callback's closure instead.
@cython.no_gc_clear
cdef class _Ref:
    """Common part of the reference classes (not instantiated directly)."""

    def __cinit__(self, *args, **kwargs):
        # Until a subclass sets it up the struct reads as released.
        self.c.mode = PCREF_MODE_DEAD
        self.c.kind = PCREF_ATOMIC
        self.c.state = PCREF_RELEASED | PCREF_DONE

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

        The GIL is released while waiting; signals (Ctrl-C) are handled.
        """
        cdef int64_t deadline = 0, now, nap = 10000
        cdef timespec ts
        if timeout is not None:
            if not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
            t = float(timeout)
            if t != t:
                raise ValueError("timeout must be a number, not NaN")
            deadline = pc_now_ns() + <int64_t>(max(t, 0.0) * 1e9)
        while True:
            if pc_load_i32(&self.c.state, PC_ACQUIRE) & PCREF_DONE:
                return True
            now = pc_now_ns()
            if timeout is not None:
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

    def __cinit__(self, on_release=None):
        _setup(self, PCREF_ATOMIC, on_release, None)

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

    def __cinit__(self, on_release=None, *, pool=None):
        _setup(self, PCREF_BIGREF, on_release, pool)

    def is_fast(self) -> bool:
        """Whether get/put still go to the per-CPU counts."""
        return pc_load_i32(&self.c.mode, PC_RELAXED) == PCREF_MODE_PERCPU


cdef class PercpuRef(_Ref):
    """Linux percpu_ref: per-CPU counts that switch to one shared count."""

    def __cinit__(self, on_release=None, *, pool=None):
        _setup(self, PCREF_PERCPU, on_release, pool)

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
        cdef int rc
        with nogil:
            rc = ref_reinit(&self.c)
        _check(rc, "reinit() needs a released reference; reinit()")

    def is_zero(self) -> bool:
        """True when in shared mode with a count of zero."""
        return ref_is_zero(&self.c)


# ---------------------------------------------------------------------------
# Native-thread kernels for the tests and the measurements

cdef int _kind_of(str kind) except -1:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown reference kind {kind!r}; expected one of {sorted(_KINDS)}") from None


cdef int _run_team(int threads, int64_t ops, pc_kernel_fn fn, void *arg, int64_t *wall_ns,
                   int64_t *total) except -1:
    cdef int i
    cdef int64_t wall
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    cdef int64_t *done = <int64_t *>calloc(threads, sizeof(int64_t))
    if done == NULL:
        raise MemoryError()
    try:
        wall = pc_run_team(fn, arg, threads, ops, done, False)
        if total != NULL:
            total[0] = 0
            for i in range(threads):
                total[0] += done[i]
    finally:
        free(done)
    if wall_ns != NULL:
        wall_ns[0] = wall
    return 0


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


cdef void _stress_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _StressArg *a = <_StressArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, got = 0, refused = 0, bad = 0
    cdef bint live_op = r.kind == PCREF_PERCPU
    cdef int rc
    for i in range(ops):
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
    pc_fetch_add_i64(&a.got, got, PC_RELAXED)
    pc_fetch_add_i64(&a.refused, refused, PC_RELAXED)
    pc_fetch_add_i64(&a.bad, bad, PC_RELAXED)
    done[0] = ops


def fast_path() -> str:
    """How the per-CPU references' gets and puts run here: ``"rseq"`` (rseq
    critical sections, aborted by membarrier(PRIVATE_EXPEDITED_RSEQ) at a
    mode switch) or ``"sections"`` (read-side sections the grace period waits
    for: no rseq, or a kernel without the RSEQ membarrier)."""
    return "rseq" if pc_refs_rseq(_registry) else "sections"


def _stress_kill(str kind, int threads, long long ops, long long kill_at, py_callback=None) -> dict:
    """N native threads tryget/get/put/put in a loop; thread 0 kills the
    reference at iteration kill_at (the controller kills it afterwards when
    kill_at >= ops). Returns the counts the test checks: releases (must be 1),
    bad (premature release, refused tryget while live, failed get/put: 0)."""
    cdef _StressArg *a = <_StressArg *>calloc(1, sizeof(_StressArg))
    cdef int k = _kind_of(kind)
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
            _run_team(threads, ops, _stress_kernel, a, NULL, NULL)
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
            }
        finally:
            ref_destroy(&a.ref)
    finally:
        free(a)


cdef struct _ExactArg:
    pc_ref ref
    int64_t keep
    int64_t flip_every
    int64_t bad
    int64_t flips
    int64_t releases


cdef void _count_release(void *ctx) noexcept nogil:
    pc_fetch_add_i64(<int64_t *>ctx, 1, PC_RELAXED)


cdef void _exact_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _ExactArg *a = <_ExactArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, j, bad = 0, flips = 0
    cdef int step
    for i in range(ops):
        if tid == 0 and a.flip_every > 0 and i % a.flip_every == 0 and r.kind == PCREF_PERCPU:
            step = <int>((i // a.flip_every) % 3)
            flips += 1
            if step == 0:
                if ref_switch_to_atomic(r) != 0:
                    bad += 1
            elif step == 1:
                if ref_switch_to_percpu(r) != 0:
                    bad += 1
            else:
                # Our own extra reference keeps it from release while killed.
                if ref_get(r) != 0:
                    bad += 1
                if ref_kill(r) != 0:
                    bad += 1
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
        if i == ops // 2:
            for j in range(a.keep):
                if ref_get(r) != 0:
                    bad += 1
    pc_fetch_add_i64(&a.bad, bad, PC_RELAXED)
    pc_fetch_add_i64(&a.flips, flips, PC_RELAXED)
    done[0] = ops


def _stress_exact(str kind, int threads, long long ops, long long keep, long long flip_every=0) -> dict:
    """Balanced get/tryget/put/put loops on N native threads, each keeping
    `keep` extra references from the middle of its run; thread 0 of a
    PercpuRef cycles switch_to_atomic / switch_to_percpu / kill+resurrect every
    `flip_every` ops. Then value(), kill, and putting the kept references back
    one by one: the counts must be exact and the last put must release."""
    cdef _ExactArg *a = <_ExactArg *>calloc(1, sizeof(_ExactArg))
    cdef int k = _kind_of(kind)
    cdef int64_t i, kept, value_before, value_killed
    cdef int rc, kill_rc, last_rc = -100, early = 0, errors = 0
    if a == NULL:
        raise MemoryError()
    try:
        if keep < 0 or flip_every < 0:
            raise ValueError("keep and flip_every must be >= 0")
        rc = ref_init(&a.ref, k, NULL, False, _count_release, &a.releases)
        if rc != 0:
            raise MemoryError(f"ref_init failed ({rc})")
        a.keep = keep
        a.flip_every = flip_every
        try:
            _run_team(threads, ops, _exact_kernel, a, NULL, NULL)
            value_before = ref_value(&a.ref)
            kept = <int64_t>threads * keep if ops > 0 else 0
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
                "value_before": value_before,
                "value_killed": value_killed,
                "kill_rc": kill_rc,
                "last_put_rc": last_rc,
                "early_releases": early,
                "put_errors": errors,
                "releases": a.releases,
                "released": bool(ref_released(&a.ref)),
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


cdef void _team_refops_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _TeamArg *a = <_TeamArg *>arg
    cdef int64_t i, j, released = 0, errors = 0
    cdef int rc
    for i in range(ops):
        for j in range(a.gets):
            if ref_get(a.ref) != 0:
                errors += 1
        for j in range(a.puts):
            rc = ref_put(a.ref)
            if rc < 0:
                errors += 1
            elif rc == 1:
                released += 1
    pc_fetch_add_i64(&a.released, released, PC_RELAXED)
    pc_fetch_add_i64(&a.errors, errors, PC_RELAXED)
    done[0] = ops


def _team_refops(_Ref ref, int threads, long long ops, long long gets=1, long long puts=1) -> dict:
    """Each of N native threads does `ops` times: `gets` get(), then `puts`
    put() on ref (its Python release callback then runs on a native thread).
    Returns how many puts released it and how many calls failed."""
    cdef _TeamArg a
    memset(&a, 0, sizeof(a))
    a.ref = &ref.c
    a.gets = gets
    a.puts = puts
    _run_team(threads, ops, _team_refops_kernel, &a, NULL, NULL)
    return {"released": a.released, "errors": a.errors}


# Measurements: one kernel per strategy with the fast path inlined.

cdef extern from "<time.h>" nogil:
    int CLOCK_THREAD_CPUTIME_ID


cdef inline int64_t _thread_cpu_ns() noexcept nogil:
    # CPU time, unlike wall time, does not count the time a crowded machine
    # kept the thread off the CPU.
    cdef timespec ts
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef struct _BenchArg:
    pc_ref ref
    int64_t *cpu_ns     # per thread


cdef void _bench_atomic(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _BenchArg *a = <_BenchArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, t0 = _thread_cpu_ns()
    for i in range(ops):
        atomicref_get(r)
        atomicref_put(r)
    a.cpu_ns[tid] = _thread_cpu_ns() - t0
    done[0] = ops


cdef void _bench_bigref(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _BenchArg *a = <_BenchArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, t0 = _thread_cpu_ns()
    for i in range(ops):
        bigref_get(r)
        bigref_put(r)
    a.cpu_ns[tid] = _thread_cpu_ns() - t0
    done[0] = ops


cdef void _bench_percpu(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _BenchArg *a = <_BenchArg *>arg
    cdef pc_ref *r = &a.ref
    cdef int64_t i, t0 = _thread_cpu_ns()
    for i in range(ops):
        percpuref_get(r)
        percpuref_put(r)
    a.cpu_ns[tid] = _thread_cpu_ns() - t0
    done[0] = ops


def _bench_getput(str kind, int threads, long long ops) -> dict:
    """get+put pairs on one reference from N native threads (fast path inlined).
    ns_per_pair: wall time over the ops of one thread (what a thread sees);
    cpu_ns_per_pair: the threads' CPU time per pair (robust on a busy machine)."""
    cdef int k = _kind_of(kind)
    cdef _BenchArg a
    cdef int64_t wall = 0, total = 0, value, cpu = 0
    cdef int i
    cdef pc_kernel_fn fn = _bench_percpu
    if k == PCREF_ATOMIC:
        fn = _bench_atomic
    elif k == PCREF_BIGREF:
        fn = _bench_bigref
    if ops <= 0:
        raise ValueError(f"ops must be > 0, not {ops}")
    if threads <= 0:
        raise ValueError(f"threads must be > 0, not {threads}")
    a.cpu_ns = <int64_t *>calloc(threads, sizeof(int64_t))
    if a.cpu_ns == NULL:
        raise MemoryError()
    if ref_init(&a.ref, k, NULL, False, NULL, NULL) != 0:
        free(a.cpu_ns)
        raise MemoryError()
    try:
        _run_team(threads, ops, fn, &a, &wall, &total)
        value = ref_value(&a.ref)
        for i in range(threads):
            cpu += a.cpu_ns[i]
    finally:
        ref_destroy(&a.ref)
        free(a.cpu_ns)
    return {"kind": kind, "threads": threads, "ops": ops, "wall_ns": wall,
            "ns_per_pair": wall / <double>ops,
            "cpu_ns_per_pair": cpu / <double>(<int64_t>threads * ops), "value": value}


cdef struct _LatRound:
    pc_ref ref
    int64_t kill_ns
    int64_t release_ns


cdef struct _LatArg:
    _LatRound *rounds
    int64_t nrounds
    int64_t warm_ns
    int32_t cur
    int32_t stop


cdef void _lat_release(void *ctx) noexcept nogil:
    (<_LatRound *>ctx).release_ns = pc_now_ns()


cdef void _lat_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef _LatArg *a = <_LatArg *>arg
    cdef _LatRound *rd
    cdef pc_ref *r
    cdef int64_t k, n = 0, until
    cdef int spins
    if tid == 0:
        for k in range(a.nrounds):
            rd = &a.rounds[k]
            # Release: the busy threads see the round's reference as set up.
            pc_store_i32(&a.cur, <int32_t>k, PC_RELEASE)
            until = pc_now_ns() + a.warm_ns
            while pc_now_ns() < until:
                pc_cpu_relax()
            rd.kill_ns = pc_now_ns()
            ref_kill(&rd.ref)
            spins = 0
            while not (pc_load_i32(&rd.ref.state, PC_ACQUIRE) & PCREF_DONE):
                spins += 1
                if spins < 100:
                    pc_cpu_relax()
                else:
                    sched_yield()
        pc_store_i32(&a.stop, 1, PC_RELEASE)
        done[0] = a.nrounds
        return
    while not pc_load_i32(&a.stop, PC_ACQUIRE):
        r = &a.rounds[pc_load_i32(&a.cur, PC_ACQUIRE)].ref
        if ref_tryget(r) == 1:
            ref_put(r)
        n += 1
    done[0] = n


def _bench_kill_latency(str kind, int busy=2, int rounds=50, long long warm_us=200) -> dict:
    """Kill-to-release latency with `busy` native threads doing tryget/put on
    the reference the whole time: thread 0 sets up a reference per round, lets
    the busy threads hammer it for warm_us, kills it and waits for the
    release. Returns the latencies in microseconds."""
    cdef int k = _kind_of(kind)
    cdef _LatArg a
    cdef int64_t i, total = 0
    cdef int inited = 0
    if busy < 0 or rounds <= 0 or warm_us < 0:
        raise ValueError("busy >= 0, rounds > 0 and warm_us >= 0 are needed")
    memset(&a, 0, sizeof(a))
    a.rounds = <_LatRound *>calloc(rounds, sizeof(_LatRound))
    if a.rounds == NULL:
        raise MemoryError()
    a.nrounds = rounds
    a.warm_ns = warm_us * 1000
    try:
        for i in range(rounds):
            if ref_init(&a.rounds[i].ref, k, NULL, False, _lat_release, &a.rounds[i]) != 0:
                raise MemoryError()
            inited += 1
        _run_team(busy + 1, 1, _lat_kernel, &a, NULL, &total)
        lat = [(a.rounds[i].release_ns - a.rounds[i].kill_ns) / 1000.0 for i in range(rounds)]
        return {"kind": kind, "busy": busy, "latency_us": lat,
                "busy_ops": total - rounds}
    finally:
        for i in range(inited):
            ref_destroy(&a.rounds[i].ref)
        free(a.rounds)
