# Reference counts: the C struct, the nogil C API and the inline fast paths.
#
# Cython users: `from percpu.refs cimport ...` (that file re-exports this one).
#
# The three strategies share one struct, `pc_ref`:
#   PCREF_ATOMIC  one shared atomic count (kref).
#   PCREF_BIGREF  the 2005 bigref: an int64 per CPU (from a PerCPUPool) plus the
#                 shared count; kill() is its disown.
#   PCREF_PERCPU  Linux percpu_ref: the same storage, plus switching between
#                 per-CPU and shared mode, tryget_live, resurrect and reinit.
#
# Invariant of the per-CPU kinds: while mode == PCREF_MODE_PERCPU the shared
# count holds PCREF_BIAS on top of the references counted in it, so the true
# count is `count - PCREF_BIAS + sum(slots)`. The bias is what lets any thread
# take the shared path at any moment (an aborted rseq section, a thread without
# a registry record, a reader of a stale mode): with the bias in, a shared put
# can never reach zero, and once the fold has removed it the shared count is
# the whole truth. The bigref of 2005 added its bias at disown time; here it is
# put in when the per-CPU mode starts and taken out by the fold, which covers
# the same window and the shared fallbacks besides.
#
# Publishing: ref_init() writes plain fields; hand the struct to other threads
# through something with release/acquire ordering (a team start, a mutex, a
# release store of the pointer).
#
# Lifetime (the nogil contract):
# - get() needs a reference the caller holds; tryget() and tryget_live() do
#   not. A get without one is misuse; on a released reference it fails, and
#   it never makes a concurrent tryget() succeed: the release moves the count
#   to PCREF_DEAD, far below zero, in one step that only a count of zero
#   allows, so a stray increment can neither undo a release nor be seen as a
#   reference.
# - The release callback runs once, on the thread whose put (or kill, or the
#   fold of a switch) dropped the last reference, after every holder's
#   accesses (acquire). The library reads r before calling it and never
#   touches r after: the callback may ref_destroy() r and free the struct
#   that holds it, or ref_reinit() it (the kernel's usual patterns). So
#   PCREF_DONE is set by the library only for references without a callback
#   (with PCREF_RELEASED, in one store); with a callback, the callback signals
#   its own end if anyone waits for it (the Python classes set PCREF_DONE from
#   their callback wrapper; the workloads count the release in the object).
# - ref_kill(): once it has returned (or kill_and_confirm's confirm has run),
#   no tryget_live() succeeds until ref_resurrect()/ref_reinit(), on every
#   path (rseq sections, read-side sections, the shared count when rseq keeps
#   aborting or the registry is full): every tryget_live() that succeeds has
#   taken its reference before the kill switched the mode, so the kill's fold
#   and every ref_value() after it count it. confirm runs on every path where
#   the kill succeeds, the underflow one included, before any release.
# - A put without a reference is misuse the library can detect only while r
#   is still there: if the callback has freed r, that put writes freed memory.
# - No thread may use r after ref_destroy(r); destroy only a released or
#   never-shared reference.
#
# Return codes of the nogil API:
#   get:            0 done; PCREF_ERR_STATE (-1) the reference was released
#   put:            1 this put released it; 0 not (a misused get may have
#                   taken the count back up from zero: that holder's put
#                   releases); -1 it was already released
#   tryget*:        1 got a reference; 0 refused
#   ref_kill*:      1 the kill released it; 0 killed, other holders remain;
#                   -1 already killed or released; -3 more puts than gets were
#                   found by the fold (the reference is released)
#   ref_switch_*, ref_resurrect, ref_reinit: 0 ok; -1 wrong state; -2 wrong
#                   kind; -3 as above
#   ref_init:       0 ok; -2 bad kind or allocation size; -4 out of memory
#                   (with atomic=True: the pool's reserve is empty)
from libc.stdint cimport int32_t, int64_t

from percpu.cpercpu cimport *
from percpu._alloc cimport pc_pool

cdef extern from *:
    # Large enough that no run of shared puts can cancel it, small enough that
    # adding the per-CPU sum and the shared gets cannot overflow int64.
    int64_t PCREF_BIAS "((int64_t)1 << 62)"
    # The count of a released reference. Misused gets add to it (and take
    # their increment back) without ever coming near zero; any count at or
    # below PCREF_DEAD_ZONE reads as released (value() reports 0).
    int64_t PCREF_DEAD "(-((int64_t)1 << 62))"
    int64_t PCREF_DEAD_ZONE "(-((int64_t)1 << 61))"

cdef enum:
    PCREF_ATOMIC = 0
    PCREF_BIGREF = 1
    PCREF_PERCPU = 2

cdef enum:
    # 0 is what pc_rseq_add_if_i64 takes for "per-CPU adds allowed".
    PCREF_MODE_PERCPU = 0
    PCREF_MODE_SHARED = 1   # shared count only (AtomicRef; PercpuRef after switch_to_atomic)
    PCREF_MODE_DEAD = 2     # shared count only, killed: tryget_live refuses

cdef enum:
    # pc_ref.state bits
    PCREF_KILLED = 1
    PCREF_RELEASED = 2      # the count reached zero; set by the one releasing thread
    PCREF_DONE = 4          # the release is complete: set with RELEASED when there is
                            # no callback; otherwise only by whoever the callback
                            # tells (the Python classes: once on_release returned)

cdef enum:
    PCREF_OP_GET = 0
    PCREF_OP_PUT = 1
    PCREF_OP_TRYGET = 2
    PCREF_OP_TRYGET_LIVE = 3

cdef enum:
    PCREF_ERR_STATE = -1
    PCREF_ERR_ARG = -2
    PCREF_ERR_UNDERFLOW = -3
    PCREF_ERR_NOMEM = -4

ctypedef void (*pc_ref_release_fn)(void *ctx) noexcept nogil

cdef struct pc_ref:
    int32_t mode            # PCREF_MODE_*: read by every fast path
    int32_t kind            # PCREF_ATOMIC / PCREF_BIGREF / PCREF_PERCPU
    int64_t count           # the shared count (plus PCREF_BIAS in per-CPU mode)
    char *base              # CPU 0's int64 slot; CPU c's is base + c * stride
    size_t stride
    int32_t state           # PCREF_KILLED | PCREF_RELEASED | PCREF_DONE
    int32_t lock            # serialises mode switches, folds and value()
    pc_ref_release_fn release   # called once, by the thread that drops the last reference
    void *ctx
    pc_registry *reg
    pc_pool *pool
    int64_t handle          # the slots' handle in pool (valid while pool != NULL)


# ---------------------------------------------------------------------------
# Out of line (percpu._refs). Cold paths and the life cycle: from other modules
# these are calls through function pointers, which is what a cold path wants.

cdef int pcref_slow(pc_ref *r, int op) noexcept nogil
    # the per-CPU kinds' path when the rseq fast path did not commit
cdef int pcref_shared_put(pc_ref *r) noexcept nogil
    # put on the shared count, with the release check
cdef int pcref_put_last(pc_ref *r, int64_t old) noexcept nogil
    # a shared put moved the count from old <= 1: release (old == 1) or misuse
cdef int pcref_undo_get(pc_ref *r) noexcept nogil
    # a shared get found the count released (PCREF_DEAD): take it back, report misuse

cdef int ref_init(pc_ref *r, int kind, pc_pool *pool, bint atomic,
                  pc_ref_release_fn release, void *ctx) noexcept nogil
    # Starts r holding one reference (per-CPU mode for BIGREF/PERCPU, slots
    # from pool, or the default pool when pool is NULL; atomic=True never
    # grows the pool or blocks). release(ctx) runs once, on the last put.
cdef int ref_destroy(pc_ref *r) noexcept nogil
    # Gives the slots back to the pool. No thread may use r afterwards.
cdef int ref_kill(pc_ref *r) noexcept nogil
    # Leave per-CPU mode (grace period, fold) and drop the initial reference.
cdef int ref_kill_and_confirm(pc_ref *r, pc_ref_release_fn confirm, void *confirm_ctx) noexcept nogil
    # ref_kill; confirm(confirm_ctx) runs once the shared mode is in force and
    # before the initial reference is dropped, so before any release (also
    # when the fold finds more puts than gets: -3, released after confirm).
cdef int ref_switch_to_atomic(pc_ref *r) noexcept nogil      # PERCPU only
cdef int ref_switch_to_percpu(pc_ref *r) noexcept nogil      # PERCPU only, while live
cdef int ref_resurrect(pc_ref *r) noexcept nogil             # PERCPU: killed, not released
cdef int ref_reinit(pc_ref *r) noexcept nogil                # PERCPU: released
    # Also from inside the release callback; from elsewhere, only once the
    # callback is known to be done with the object.
cdef int64_t ref_value(pc_ref *r) noexcept nogil
    # Exact when no get/put runs concurrently; takes the switch lock.
cdef bint ref_is_zero(pc_ref *r) noexcept nogil
# The kind (PCREF_*) of a strategy name of percpu.REFS; ValueError for another name.
cdef int ref_kind_of(object name) except -1
    # In shared mode with a count of zero (false in per-CPU mode, as in Linux).


cdef inline bint ref_released(pc_ref *r) noexcept nogil:
    # Acquire: a caller that sees the flag may look at what the releaser wrote.
    return (pc_load_i32(&r.state, PC_ACQUIRE) & PCREF_RELEASED) != 0


# ---------------------------------------------------------------------------
# Fast paths, one set per strategy, to be inlined into callers' loops.

cdef inline int atomicref_get(pc_ref *r) noexcept nogil:
    # Relaxed: a new reference is derived from one the caller holds; taking it
    # publishes nothing (kref_get). From zero (a misused get racing the last
    # put, before the release is decided) the get keeps its reference: taking
    # it back would leave a window where tryget sees one. Below zero
    # (PCREF_DEAD) it is released: take the increment back and fail.
    if PC_LIKELY(pc_fetch_add_i64(&r.count, 1, PC_RELAXED) >= 0):
        return 0
    return pcref_undo_get(r)


cdef inline int atomicref_put(pc_ref *r) noexcept nogil:
    # Release: this holder's accesses to the object happen before the release
    # callback, which the last putter runs after an acquire fence.
    cdef int64_t old = pc_fetch_add_i64(&r.count, -1, PC_RELEASE)
    if PC_LIKELY(old > 1):
        return 0
    return pcref_put_last(r, old)


cdef inline int atomicref_tryget(pc_ref *r) noexcept nogil:
    # Relaxed like get; refusing to move the count up from zero is what keeps
    # a released object released.
    cdef int64_t c = pc_load_i64(&r.count, PC_RELAXED)
    while c > 0:
        if pc_cas_i64(&r.count, &c, c + 1, PC_RELAXED, PC_RELAXED):
            return 1
    return 0


# The per-CPU kinds: one rseq section that checks the mode and commits with a
# plain add; everything else (abort, shared mode, no rseq) is pcref_slow().

cdef inline int bigref_get(pc_ref *r) noexcept nogil:
    if PC_LIKELY(pc_refs_rseq(r.reg)) and PC_LIKELY(pc_rseq_add_if_i64(&r.mode, r.base, r.stride, 1) == 0):
        return 0
    return pcref_slow(r, PCREF_OP_GET)


cdef inline int bigref_put(pc_ref *r) noexcept nogil:
    # In per-CPU mode a put cannot release: the initial reference is held
    # until kill, whose fold decides.
    if PC_LIKELY(pc_refs_rseq(r.reg)) and PC_LIKELY(pc_rseq_add_if_i64(&r.mode, r.base, r.stride, -1) == 0):
        return 0
    return pcref_slow(r, PCREF_OP_PUT)


cdef inline int bigref_tryget(pc_ref *r) noexcept nogil:
    # Per-CPU mode means live (initial reference held): tryget is a get.
    if PC_LIKELY(pc_refs_rseq(r.reg)) and PC_LIKELY(pc_rseq_add_if_i64(&r.mode, r.base, r.stride, 1) == 0):
        return 1
    return pcref_slow(r, PCREF_OP_TRYGET)


cdef inline int percpuref_get(pc_ref *r) noexcept nogil:
    return bigref_get(r)


cdef inline int percpuref_put(pc_ref *r) noexcept nogil:
    return bigref_put(r)


cdef inline int percpuref_tryget(pc_ref *r) noexcept nogil:
    return bigref_tryget(r)


cdef inline int percpuref_tryget_live(pc_ref *r) noexcept nogil:
    # kill stores PCREF_MODE_DEAD before anything else, and the section reads
    # the mode: a per-CPU commit here happened before the kill's grace period.
    if PC_LIKELY(pc_refs_rseq(r.reg)) and PC_LIKELY(pc_rseq_add_if_i64(&r.mode, r.base, r.stride, 1) == 0):
        return 1
    return pcref_slow(r, PCREF_OP_TRYGET_LIVE)


# Generic, dispatching on the kind per call (convenient, not for hot loops).

cdef inline int ref_get(pc_ref *r) noexcept nogil:
    if r.kind == PCREF_ATOMIC:
        return atomicref_get(r)
    return bigref_get(r)


cdef inline int ref_put(pc_ref *r) noexcept nogil:
    if r.kind == PCREF_ATOMIC:
        return atomicref_put(r)
    return bigref_put(r)


cdef inline int ref_tryget(pc_ref *r) noexcept nogil:
    if r.kind == PCREF_ATOMIC:
        return atomicref_tryget(r)
    return bigref_tryget(r)


cdef inline int ref_tryget_live(pc_ref *r) noexcept nogil:
    # AtomicRef and BigRef have no dead-but-live state of interest: a kill
    # leaves them to the shared count, where tryget refuses only at zero.
    if r.kind == PCREF_PERCPU:
        return percpuref_tryget_live(r)
    return ref_tryget(r)


# ---------------------------------------------------------------------------
# The Python classes (percpu.refs); `.c` is the struct for nogil callers, who
# must keep the object alive while they use it.

cdef class _Ref:
    cdef pc_ref c
    cdef object on_release
    cdef object pool
    cdef bint _configured   # __init__ has run (it runs once: it may move the slots)

cdef class AtomicRef(_Ref):
    pass

cdef class BigRef(_Ref):
    pass

cdef class PercpuRef(_Ref):
    pass
