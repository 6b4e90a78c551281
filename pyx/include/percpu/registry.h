/*
 * percpu/registry.h: the process-wide thread registry, fork tracking, read-side
 * sections and the grace period.
 */
#ifndef PERCPU_REGISTRY_H
#define PERCPU_REGISTRY_H

#include "percpu/rseq.h"
#include "percpu/membarrier.h"

/* ------------------------------------------------------------------------ */
/* Thread registry                                                           */
/*
 * One per process (owned by percpu._core). Each thread that uses a fallback
 * fast path or a per-thread slot gets a record: a small index, unique among
 * live threads and reused after exit, and a sequence number that is odd while
 * the thread is inside a fallback read-side section.
 */
#define PC_MAX_THREADS 1024

/* Each module (each extension and each user module that cimports the .pxd
 * files) caches the calling thread's record in a thread-local of its own;
 * the record links those caches so that handing it back can clear every one
 * of them (see pc_registry_thread_exit). */
typedef struct pc_tls_cache {
    struct pc_thread_rec *rec;   /* NULL: ask the registry (pc_registry_join) */
    struct pc_tls_cache *next;   /* the next module's cache for the same thread */
} pc_tls_cache;

typedef struct pc_thread_rec {
    uint64_t seq;      /* odd: inside a fallback section */
    int32_t index;     /* position in the registry, stable for the record */
    int32_t in_use;    /* owned by a live thread */
    pc_tls_cache *caches; /* the owner's caches that point here; owner-only */
    char pad[PC_CACHELINE - 16 - sizeof(pc_tls_cache *)];
} PC_CACHELINE_ALIGNED pc_thread_rec;

enum { PC_MB_NONE = 0, PC_MB_EXPEDITED = 1, PC_MB_EXPEDITED_RSEQ = 2 };

/* Fork safety. fork() copies only the calling thread: a lock that another
 * thread held at that moment stays held in the child forever. Every lock of a
 * live pool or counter is listed here, and the references' switch locks are
 * covered all at once by the fork gate below; around fork() the forking
 * thread takes them all (percpu._core's pthread_atfork handlers), so the child
 * starts with each one free and the parent's state consistent. Nothing holds
 * one of these locks while taking another, or while taking the list's lock,
 * so taking them all in list order cannot deadlock. */
typedef struct pc_fork_node {
    struct pc_fork_node *prev, *next;
    pthread_mutex_t *mutex;   /* a mutex to take around fork, or NULL */
    int32_t *spin;            /* or a 0/1 spinlock */
} pc_fork_node;

/* The references' switch locks are spinlocks inside the reference structs,
 * and there can be millions of them (a route cache): rather than list each,
 * one gate covers them all. Every taker passes the gate (pc_fork_gate_enter)
 * before it takes such a lock and leaves it after releasing the lock; the
 * fork handler closes the gate and waits until no thread is inside, which is
 * taking every one of those locks at once. Holders never wait for a fork
 * handler's lock or for another gated lock, so the wait ends. */
typedef struct {
    int32_t closed;    /* 1 while a fork is being prepared */
    int32_t inside;    /* threads between pc_fork_gate_enter and _leave */
    char pad[PC_CACHELINE - 8];
} PC_CACHELINE_ALIGNED pc_fork_gate;

typedef struct {
    pc_proc proc;        /* the process-wide cpu-id choice and slot bound (own line) */
    pthread_mutex_t lock;
    pthread_key_t key;
    int32_t high_water;  /* records [0, high_water) have been handed out */
    int32_t live;        /* records in use; written under lock, read without it
                          * only as a hint (pc_registry_join) */
    int32_t membarrier;  /* which PC_MB_* registrations succeeded */
    int32_t grace_periods;
    pthread_mutex_t fork_lock;  /* guards fork_head's list */
    pc_fork_node fork_head;     /* circular; initialised by percpu._core */
    pc_fork_gate gate;          /* its own line: passed on every switch lock */
    pc_thread_rec recs[PC_MAX_THREADS];
} pc_registry;

/* Before taking a gated spinlock. Dekker with pc_fork_prepare: we announce
 * ourselves, then look at the gate; it closes the gate, then counts us. With
 * both sides seq_cst, either we see it closed or it sees us inside. */
static inline void pc_fork_gate_enter(pc_registry *reg) {
    int spins = 0;
    for (;;) {
        pc_fetch_add_i32(&reg->gate.inside, 1, PC_SEQ_CST);
        if (PC_LIKELY(pc_load_i32(&reg->gate.closed, PC_SEQ_CST) == 0)) return;
        /* A fork is on its way: step back out (relaxed: we touched nothing
         * it needs to see) and wait for it to finish. */
        pc_fetch_add_i32(&reg->gate.inside, -1, PC_RELAXED);
        /* Relaxed: only says when to try again; the loop re-checks. */
        while (pc_load_i32(&reg->gate.closed, PC_RELAXED)) {
            if (++spins < 64) pc_cpu_relax();
            else sched_yield();
        }
    }
}

/* After releasing the gated lock. Release: the fork handler acquires the
 * count and then sees that lock free, in the parent and in the child. */
static inline void pc_fork_gate_leave(pc_registry *reg) {
    pc_fetch_add_i32(&reg->gate.inside, -1, PC_RELEASE);
}

static void pc_fork_track(pc_registry *reg, pc_fork_node *n, pthread_mutex_t *mutex,
                          int32_t *spin) {
    n->mutex = mutex;
    n->spin = spin;
    pthread_mutex_lock(&reg->fork_lock);
    n->next = reg->fork_head.next;
    n->prev = &reg->fork_head;
    n->next->prev = n;
    reg->fork_head.next = n;
    pthread_mutex_unlock(&reg->fork_lock);
}

static void pc_fork_untrack(pc_registry *reg, pc_fork_node *n) {
    if (!n->next) return; /* never tracked */
    pthread_mutex_lock(&reg->fork_lock);
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = NULL;
    pthread_mutex_unlock(&reg->fork_lock);
}

/* A mutex of a live object, created and tracked for fork; 0 or -1. */
static int pc_tracked_mutex_init(pc_registry *reg, pc_fork_node *n, pthread_mutex_t *m) {
    if (pthread_mutex_init(m, NULL)) return -1;
    pc_fork_track(reg, n, m, NULL);
    return 0;
}

static void pc_tracked_mutex_fini(pc_registry *reg, pc_fork_node *n, pthread_mutex_t *m) {
    pc_fork_untrack(reg, n);
    pthread_mutex_destroy(m);
}

static PC_TLS pc_tls_cache pc_tls_rec;

/* The key's value after the thread's record was handed back (its destructor
 * ran: the thread is exiting). Never a record: the registry's own address. */
#define PC_REC_GONE(reg) ((pc_thread_rec *)(void *)(reg))

/* Gives the record of an exiting thread back. Its seq is even (a thread
 * cannot exit inside a section). Every module's cache of it is cleared first
 * (they are this thread's own thread-locals, still there while the key
 * destructors run), so no later use in this thread (another key's destructor)
 * can reach a record that another thread may own by then. The mutex hands
 * the record, and the slots it indexes, over to the next owner with a
 * happens-before edge. */
static void pc_registry_leave(pc_registry *reg, pc_thread_rec *rec) {
    pc_tls_cache *c, *next;
    for (c = rec->caches; c; c = next) {
        next = c->next;
        c->rec = NULL;
        c->next = NULL;
    }
    rec->caches = NULL;
    pthread_mutex_lock(&reg->lock);
    if (rec->in_use) {
        rec->in_use = 0;
        /* Relaxed: the lock orders the writers; pc_registry_join's unlocked
         * read is a hint. */
        pc_store_i32(&reg->live, reg->live - 1, PC_RELAXED);
    }
    pthread_mutex_unlock(&reg->lock);
}

/* This module's cache for the calling thread now points at rec (owned by the
 * calling thread): link it, so that handing rec back clears it. */
static void pc_tls_cache_set(pc_thread_rec *rec) {
    pc_tls_rec.rec = rec;
    pc_tls_rec.next = rec->caches;
    rec->caches = &pc_tls_rec;
}

/* Returns this thread's record, registering it on first use; NULL when the
 * registry is full, or when this thread has already handed its record back
 * (it is exiting): callers then take a shared slow path. */
static PC_COLD pc_thread_rec *pc_registry_join(pc_registry *reg) {
    pc_thread_rec *rec = (pc_thread_rec *)pthread_getspecific(reg->key);
    int i;
    if (rec == PC_REC_GONE(reg)) return NULL;
    if (rec) {
        pc_tls_cache_set(rec);
        return rec;
    }
    /* A full registry sends this thread to the shared paths (exact) without
     * taking the lock and scanning every record on each of its calls.
     * Relaxed: a stale "full" costs one call the shared path, and the next
     * call looks again; a stale "not full" costs the scan. */
    if (pc_load_i32(&reg->live, PC_RELAXED) >= PC_MAX_THREADS) return NULL;
    pthread_mutex_lock(&reg->lock);
    for (i = 0; i < PC_MAX_THREADS; i++) {
        if (!reg->recs[i].in_use) {
            rec = &reg->recs[i];
            rec->in_use = 1;
            pc_store_i32(&reg->live, reg->live + 1, PC_RELAXED);
            /* Writers of high_water hold the lock; the grace period reads it
             * with acquire to see the records' initial state. */
            if (i >= reg->high_water) pc_store_i32(&reg->high_water, i + 1, PC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&reg->lock);
    if (rec) {
        pthread_setspecific(reg->key, rec);
        pc_tls_cache_set(rec);
    }
    return rec;
}

static inline pc_thread_rec *pc_thread_record(pc_registry *reg) {
    pc_thread_rec *rec = pc_tls_rec.rec;
    return PC_LIKELY(rec != NULL) ? rec : pc_registry_join(reg);
}

/* Enter/leave a fallback read-side section. With membarrier the reader only
 * needs a compiler barrier between its seq store and its later loads: the
 * writer's membarrier() acts as a full fence on every running thread.
 * Without membarrier both sides fence (Dekker). */
static inline void pc_section_enter(pc_registry *reg, pc_thread_rec *rec) {
    /* Only this thread writes its seq; the writer reads it. */
    pc_store_u64(&rec->seq, rec->seq + 1, PC_RELAXED);
    if (pc_load_i32(&reg->membarrier, PC_RELAXED) != PC_MB_NONE) pc_compiler_barrier();
    else pc_fence(PC_SEQ_CST);
}

static inline void pc_section_exit(pc_thread_rec *rec) {
    /* Release: the section's writes are visible to a grace period that
     * sees the even value. */
    pc_store_u64(&rec->seq, rec->seq + 1, PC_RELEASE);
}

/* The process's choice as adopted by this module, adopting it from the
 * registry when this module has not yet (objects carry the registry, so
 * their slow paths can). */
static inline pc_proc *pc_adopt_registry(pc_registry *reg) { return pc_adopted(&reg->proc); }

/* Whether reference fast paths run as rseq critical sections: only where the
 * grace period can abort them, i.e. with MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ
 * registered (kernels 4.18-5.9 have rseq but not that command; plain
 * PRIVATE_EXPEDITED only fences, and a section that read the old mode would
 * then commit after the fold). Otherwise they use the registry's read-side
 * sections. Counters need no such care: they never switch modes. Decided
 * once per process with the membarrier registration (proc.refs_sections);
 * this module's copy is 0 until it adopted. Acquire: see pc_adopt(). */
static inline int pc_refs_rseq(const pc_registry *reg) {
    int m = pc_load_i32(&pc_mod.refs, PC_ACQUIRE);
    if (PC_UNLIKELY(m == 0)) m = pc_adopt((pc_proc *)&reg->proc)->refs_sections ? 1 : 2;
    return m == 1;
}

/* Waits until every thread is known to have left the fast paths that could
 * have read state written before this call (a mode switch): the user-space
 * synchronize_sched(). Never call it from inside a section. */
static void pc_synchronize(pc_registry *reg) {
    int i, hw, spins;
    int mb = pc_load_i32(&reg->membarrier, PC_RELAXED);
    pc_fetch_add_i32(&reg->grace_periods, 1, PC_RELAXED);
    if (mb == PC_MB_EXPEDITED_RSEQ) {
        /* Aborts every rseq critical section running in this process and
         * fences every running thread (the IPI runs smp_mb() before
         * rseq_preempt()); preempted ones abort on resume. Used whenever it
         * is registered, whether references run sections or not: the
         * fence also serves the read-side sections below. */
        pc_membarrier_or_die(PC_MB_PRIVATE_EXPEDITED_RSEQ);
    } else if (mb != PC_MB_NONE) {
        pc_membarrier_or_die(PC_MB_PRIVATE_EXPEDITED);
    } else {
        pc_fence(PC_SEQ_CST);
    }
    /* Fallback sections (no rseq, or a thread on a slow path): wait for any
     * section that was open when the mode changed. A section that opens
     * later sees the new mode, by the fence pairing above. */
    hw = pc_load_i32(&reg->high_water, PC_ACQUIRE);
    for (i = 0; i < hw; i++) {
        pc_thread_rec *rec = &reg->recs[i];
        uint64_t s = pc_load_u64(&rec->seq, PC_ACQUIRE);
        if (!(s & 1)) continue;
        for (spins = 0; pc_load_u64(&rec->seq, PC_ACQUIRE) == s; spins++) {
            if (spins < 64) pc_cpu_relax();
            else sched_yield();
        }
    }
}

#endif /* PERCPU_REGISTRY_H */
