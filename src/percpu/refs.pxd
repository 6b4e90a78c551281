# The reference counts for Cython code: `from percpu.refs cimport ...`
# (compile with include_dirs=[percpu.get_include()]).
#
# What each name does, its return codes and the struct's invariants are
# documented in percpu/_refs.pxd. In short:
#
#   cdef pc_ref r
#   ref_init(&r, PCREF_PERCPU, NULL, False, my_release, my_ctx)   # holds one ref
#   percpuref_get(&r); ...; percpuref_put(&r)          # 0; put: 1 = released it
#   percpuref_tryget(&r), percpuref_tryget_live(&r)    # 1 = got one, 0 = refused
#   ref_kill(&r)            # grace period, fold, drop the initial reference
#   ref_destroy(&r)         # after the release: give the per-CPU slots back
#
# my_release(my_ctx) may ref_destroy(&r) and free the memory that holds r: the
# library does not touch r after calling it (see the lifetime rules there).
#
# Loops should call the per-strategy functions (atomicref_*, bigref_*,
# percpuref_*), which inline to the strategy's fast path; ref_get/ref_put
# dispatch on r.kind per call.
from percpu._refs cimport (
    PCREF_ATOMIC, PCREF_BIGREF, PCREF_PERCPU,
    PCREF_MODE_PERCPU, PCREF_MODE_SHARED, PCREF_MODE_DEAD,
    PCREF_KILLED, PCREF_RELEASED, PCREF_DONE,
    PCREF_ERR_STATE, PCREF_ERR_ARG, PCREF_ERR_UNDERFLOW, PCREF_ERR_NOMEM,
    pc_ref, pc_ref_release_fn,
    atomicref_get, atomicref_put, atomicref_tryget,
    bigref_get, bigref_put, bigref_tryget,
    percpuref_get, percpuref_put, percpuref_tryget, percpuref_tryget_live,
    ref_get, ref_put, ref_tryget, ref_tryget_live, ref_released,
    ref_init, ref_destroy, ref_kill, ref_kill_and_confirm,
    ref_switch_to_atomic, ref_switch_to_percpu, ref_resurrect, ref_reinit,
    ref_value, ref_is_zero,
    AtomicRef, BigRef, PercpuRef,
)
