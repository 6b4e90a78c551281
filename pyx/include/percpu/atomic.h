/*
 * percpu/atomic.h: atomics with explicit memory orders.
 */
#ifndef PERCPU_ATOMIC_H
#define PERCPU_ATOMIC_H

#include "percpu/base.h"

/* ------------------------------------------------------------------------ */
/* Atomics. Every call site passes the order as a literal and says why it is  */
/* enough; these wrappers exist so that every access to shared memory goes    */
/* through one visible place.                                                 */

#define PC_RELAXED __ATOMIC_RELAXED
#define PC_ACQUIRE __ATOMIC_ACQUIRE
#define PC_RELEASE __ATOMIC_RELEASE
#define PC_ACQ_REL __ATOMIC_ACQ_REL
#define PC_SEQ_CST __ATOMIC_SEQ_CST

#define PC_DEFINE_ATOMICS(T, S)                                                 \
    static inline T pc_load_##S(const T *p, int mo) {                          \
        return __atomic_load_n(p, mo);                                          \
    }                                                                           \
    static inline void pc_store_##S(T *p, T v, int mo) {                       \
        __atomic_store_n(p, v, mo);                                             \
    }                                                                           \
    static inline T pc_exchange_##S(T *p, T v, int mo) {                       \
        return __atomic_exchange_n(p, v, mo);                                   \
    }                                                                           \
    /* On failure *expected receives the current value. */                     \
    static inline int pc_cas_##S(T *p, T *expected, T desired, int mo_ok,      \
                                 int mo_fail) {                                 \
        return __atomic_compare_exchange_n(p, expected, desired, 0, mo_ok,     \
                                           mo_fail);                            \
    }

#define PC_DEFINE_ARITH(T, S)                                                   \
    static inline T pc_fetch_add_##S(T *p, T v, int mo) {                      \
        return __atomic_fetch_add(p, v, mo);                                    \
    }                                                                           \
    static inline T pc_add_fetch_##S(T *p, T v, int mo) {                      \
        return __atomic_add_fetch(p, v, mo);                                    \
    }

PC_DEFINE_ATOMICS(int32_t, i32)
PC_DEFINE_ATOMICS(int64_t, i64)
PC_DEFINE_ATOMICS(uint64_t, u64)
typedef void *pc_voidp;
PC_DEFINE_ATOMICS(pc_voidp, ptr)
PC_DEFINE_ARITH(int32_t, i32)
PC_DEFINE_ARITH(int64_t, i64)
PC_DEFINE_ARITH(uint64_t, u64)

/* Bit operations on words that several threads change: the old value. */
static inline uint64_t pc_fetch_or_u64(uint64_t *p, uint64_t v, int mo) {
    return __atomic_fetch_or(p, v, mo);
}
static inline uint64_t pc_fetch_and_u64(uint64_t *p, uint64_t v, int mo) {
    return __atomic_fetch_and(p, v, mo);
}

static inline void pc_fence(int mo) { __atomic_thread_fence(mo); }
/* Orders the compiler only: the other side pays for the hardware fence. */
static inline void pc_compiler_barrier(void) { __atomic_signal_fence(PC_SEQ_CST); }

#endif /* PERCPU_ATOMIC_H */
