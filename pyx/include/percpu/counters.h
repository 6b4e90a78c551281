/*
 * percpu/counters.h: the hot paths of the seven counter strategies.
 */
#ifndef PERCPU_COUNTERS_H
#define PERCPU_COUNTERS_H

#include "percpu/registry.h"

/* ------------------------------------------------------------------------ */
/* Counters: the hot paths of the seven strategies                           */
/*
 * Every counter is exact except the racy one: no update is lost. Relaxed
 * order is enough for every counter update, because a counter publishes no
 * other data: readers only need each slot's own latest value, which atomicity
 * (or the single-writer rule) gives.
 */

/* One int64 alone on its cache line. */
typedef struct {
    int64_t value;
    char pad[PC_CACHELINE - sizeof(int64_t)];
} PC_CACHELINE_ALIGNED pc_cell;

/* atomic: one shared atomic; every add is a locked RMW on one line. */
static inline void pc_atomic_counter_add(pc_cell *c, int64_t v) {
    pc_fetch_add_i64(&c->value, v, PC_RELAXED);
}

static inline int64_t pc_cell_read(const pc_cell *c) {
    return pc_load_i64(&c->value, PC_RELAXED);
}

/* racy: a plain load and store; concurrent adds lose updates (reference
 * point only). Relaxed atomics rather than plain C accesses keep the race
 * well defined for the compiler: it is the algorithm that loses, not UB. */
static inline void pc_racy_counter_add(pc_cell *c, int64_t v) {
    pc_store_i64(&c->value, pc_load_i64(&c->value, PC_RELAXED) + v, PC_RELAXED);
}

/* locked: a mutex around a shared integer. */
typedef struct {
    pthread_mutex_t lock;
    int64_t value;
    pc_fork_node fork;
} PC_CACHELINE_ALIGNED pc_locked_counter;

static inline void pc_locked_counter_add(pc_locked_counter *c, int64_t v) {
    pthread_mutex_lock(&c->lock);
    c->value += v;
    pthread_mutex_unlock(&c->lock);
}

static inline int64_t pc_locked_counter_read(pc_locked_counter *c) {
    int64_t v;
    pthread_mutex_lock(&c->lock);
    v = c->value;
    pthread_mutex_unlock(&c->lock);
    return v;
}

/* percpu: one int64 per CPU (from a PerCPUPool); this_cpu_add(). The
 * registry pointer is what the slow path adopts the process's choice from,
 * so that code which holds only the counter (a user module that cimports
 * percpu.counters) indexes and protects the slots as every module does. */
typedef struct {
    char *base;      /* id 0's slot; id c's is base + c * stride; nr_cpus + 1 slots */
    size_t stride;
    pc_registry *reg;
} pc_percpu_counter;

/* The choice as adopted by this module: from the counter's registry, or, for
 * a struct filled in without one, this module's own adoption. */
static inline pc_proc *pc_percpu_counter_proc(pc_percpu_counter *c) {
    return PC_LIKELY(c->reg != NULL) ? pc_adopt_registry(c->reg) : pc_mod_proc();
}

static PC_COLD void pc_percpu_counter_add_slow(pc_percpu_counter *c, int64_t v) {
    pc_percpu_add_slow(pc_percpu_counter_proc(c), c->base, c->stride, v);
}

static inline void pc_percpu_counter_add(pc_percpu_counter *c, int64_t v) {
    if (PC_LIKELY(pc_rseq_add_i64(c->base, c->stride, v) == 0)) return;
    /* Not adopted yet, no sections, an id not yet below the bound, or
     * aborted. */
    pc_percpu_counter_add_slow(c, v);
}

/* Sums the slots in use: what the running CPUs cost, not the possible ones. */
static inline int64_t pc_percpu_counter_read(pc_percpu_counter *c) {
    /* Reading needs the bound, not this module's adoption. */
    return pc_slots_sum(PC_LIKELY(c->reg != NULL) ? &c->reg->proc : pc_mod_proc(), c->base,
                        c->stride);
}

/* perthread: one padded slot per registered thread, written only by its
 * owner with a plain add. The registry hands a slot index to one live
 * thread at a time; an exiting thread's slot keeps its value and passes,
 * through the registry mutex (a happens-before edge), to the next thread
 * that gets the index, so nothing is lost when threads exit. Threads beyond
 * the capacity (or a full registry) add atomically to a shared overflow
 * cell. */
typedef struct {
    char *slots;          /* capacity slots, PC_CACHELINE apart */
    int32_t capacity;
    pc_registry *reg;
    pc_cell overflow;
} pc_perthread_counter;

static inline void pc_perthread_counter_add(pc_perthread_counter *c, int64_t v) {
    pc_thread_rec *rec = pc_thread_record(c->reg);
    if (PC_LIKELY(rec != NULL && rec->index < c->capacity)) {
        int32_t idx = rec->index;
        int64_t *slot;
        if (pc_mutant(PC_MUT_PERTHREAD_SHARED_SLOT)) idx = pc_current_cpu() % c->capacity;
        slot = (int64_t *)(c->slots + (size_t)idx * PC_CACHELINE);
        /* Single writer: load + store is an exact add; the relaxed store
         * keeps concurrent readers from seeing a torn value. */
        pc_store_i64(slot, pc_load_i64(slot, PC_RELAXED) + v, PC_RELAXED);
    } else {
        pc_fetch_add_i64(&c->overflow.value, v, PC_RELAXED);
    }
}

static inline int64_t pc_perthread_counter_read(pc_perthread_counter *c) {
    int64_t s = pc_cell_read(&c->overflow);
    int32_t i;
    for (i = 0; i < c->capacity; i++)
        s += pc_load_i64((const int64_t *)(c->slots + (size_t)i * PC_CACHELINE), PC_RELAXED);
    return s;
}

/* approx: Linux percpu_counter. Per-CPU deltas stay within (-batch, batch);
 * an add that would leave that range moves the CPU's delta into the shared
 * count under the lock. approx() reads the shared count alone; value() sums
 * everything under the lock, so it never misses a delta in transit. A thread
 * without an id (see pc_rseq_id_check) adds to the shared count under the
 * lock: exact, and approx() stays within its bound. */
typedef struct {
    pthread_mutex_t lock;
    int64_t count;        /* written under lock, read lock-free by approx() */
    char *base;           /* per-CPU deltas, as in pc_percpu_counter */
    size_t stride;
    int64_t batch;
    pc_fork_node fork;
    pc_registry *reg;     /* set by pc_approx_counter_init */
} PC_CACHELINE_ALIGNED pc_approx_counter;

static PC_COLD void pc_approx_counter_fold(pc_approx_counter *c, int64_t v) {
    int64_t moved = v;
    pc_proc *p = pc_adopt_registry(c->reg);
    int rc;
    int locked = !pc_mutant(PC_MUT_APPROX_FOLD_UNLOCKED);
    if (locked) pthread_mutex_lock(&c->lock);
    if (p->sections) {
        /* Empty our id's delta inside a critical section: the slot keeps
         * a single writer (the thread holding its id). */
        while ((rc = pc_rseq_try_take(c->base, c->stride, v, &moved)) != 0) {
            if (pc_rseq_id_check(p) == PC_ID_SHARED) {
                /* No id: no delta of ours to take; v alone moves. */
                moved = v;
                break;
            }
        }
    } else {
        int64_t *slot = (int64_t *)(void *)(c->base + (size_t)pc_current_slot_of(p) * c->stride);
        /* Other threads may add to this slot concurrently: take it
         * atomically. */
        moved = pc_exchange_i64(slot, 0, PC_RELAXED) + v;
    }
    /* Relaxed: the lock orders this against value(); approx() only needs
     * an untorn value. */
    pc_store_i64(&c->count, pc_load_i64(&c->count, PC_RELAXED) + moved, PC_RELAXED);
    if (locked) pthread_mutex_unlock(&c->lock);
}

static PC_COLD void pc_approx_counter_add_slow(pc_approx_counter *c, int64_t v, int rc) {
    pc_proc *p = pc_adopt_registry(c->reg);
    if (p->sections) {
        /* 1 aborted or no id below the bound: retry while this thread has
         * an id; 2 the delta would reach the batch: fold. */
        while (rc == 1) {
            if (pc_rseq_id_check(p) == PC_ID_SHARED) break;
            rc = pc_rseq_try_add_bounded(c->base, c->stride, v, c->batch);
        }
        if (rc == 0) return;
    } else {
        int64_t *slot = (int64_t *)(void *)(c->base + (size_t)pc_current_slot_of(p) * c->stride);
        int64_t old = pc_load_i64(slot, PC_RELAXED);
        /* CAS keeps the delta within the batch even with several threads
         * sharing the slot; relaxed as for every counter update. */
        while (old + v < c->batch && old + v > -c->batch) {
            if (pc_cas_i64(slot, &old, old + v, PC_RELAXED, PC_RELAXED)) return;
        }
    }
    pc_approx_counter_fold(c, v);
}

static inline void pc_approx_counter_add(pc_approx_counter *c, int64_t v) {
    int rc;
    /* A delta of a batch or more goes straight to the shared count. This also
     * keeps slot + v far from overflow below (|slot| < batch <= 2^40), where
     * |INT64_MIN| would otherwise pass the bound check. */
    if (PC_UNLIKELY(v >= c->batch || v <= -c->batch)) {
        pc_approx_counter_fold(c, v);
        return;
    }
    rc = pc_rseq_try_add_bounded(c->base, c->stride, v, c->batch);
    if (PC_LIKELY(rc == 0)) return;
    pc_approx_counter_add_slow(c, v, rc);
}

static inline int64_t pc_approx_counter_approx(pc_approx_counter *c) {
    return pc_load_i64(&c->count, PC_RELAXED);
}

static inline int64_t pc_approx_counter_read(pc_approx_counter *c) {
    int64_t s;
    pthread_mutex_lock(&c->lock);
    s = pc_load_i64(&c->count, PC_RELAXED) + pc_slots_sum(&c->reg->proc, c->base, c->stride);
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* striped: Java's LongAdder. Threads hash onto padded atomic cells; a
 * failed CAS means another thread shares the cell, so this thread moves to
 * another one (and completes its add there with fetch_add). */
typedef struct {
    pc_cell *cells;
    uint32_t mask;        /* stripes - 1, stripes a power of two */
} pc_striped_counter;

static PC_TLS uint32_t pc_tls_probe;

static PC_COLD uint32_t pc_probe_init(void) {
    /* Distinct odd seeds per thread; relaxed: only distinctness matters. */
    static uint32_t seed = 0x9E3779B9u;
    uint32_t p = __atomic_add_fetch(&seed, 0x9E3779B9u, PC_RELAXED) | 1u;
    pc_tls_probe = p;
    return p;
}

static inline void pc_striped_counter_add(pc_striped_counter *c, int64_t v) {
    uint32_t probe = pc_tls_probe;
    pc_cell *cell;
    int64_t old;
    if (PC_UNLIKELY(probe == 0)) probe = pc_probe_init();
    cell = &c->cells[probe & c->mask];
    old = pc_load_i64(&cell->value, PC_RELAXED);
    if (PC_LIKELY(pc_cas_i64(&cell->value, &old, old + v, PC_RELAXED, PC_RELAXED))) return;
    /* Contention: xorshift to another cell for next time. */
    probe ^= probe << 13;
    probe ^= probe >> 17;
    probe ^= probe << 5;
    pc_tls_probe = probe;
    pc_fetch_add_i64(&c->cells[probe & c->mask].value, v, PC_RELAXED);
}

static inline int64_t pc_striped_counter_read(pc_striped_counter *c) {
    int64_t s = 0;
    uint32_t i;
    for (i = 0; i <= c->mask; i++) s += pc_cell_read(&c->cells[i]);
    return s;
}


/* ------------------------------------------------------------------------ */
/* Creating and destroying the counters' C state                             */

/* The mutex counters' locks are tracked for fork (see pc_fork_node). */
static int pc_locked_counter_init(pc_locked_counter *c, pc_registry *reg) {
    c->value = 0;
    return pc_tracked_mutex_init(reg, &c->fork, &c->lock);
}
static void pc_locked_counter_fini(pc_locked_counter *c, pc_registry *reg) {
    pc_tracked_mutex_fini(reg, &c->fork, &c->lock);
}
static int pc_approx_counter_init(pc_approx_counter *c, pc_registry *reg) {
    c->count = 0;
    c->reg = reg;
    return pc_tracked_mutex_init(reg, &c->fork, &c->lock);
}
static void pc_approx_counter_fini(pc_approx_counter *c, pc_registry *reg) {
    pc_tracked_mutex_fini(reg, &c->fork, &c->lock);
}

#endif /* PERCPU_COUNTERS_H */
