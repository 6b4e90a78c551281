/*
 * percpu/registry_init.h: creating the process-wide thread registry and the
 * fork handlers that keep it (and every tracked lock) consistent.
 *
 * Included by the one module that owns the registry (percpu._core) and by the
 * C tests; every other module reaches the registry through percpu._core's
 * capsule (pc_registry_import() in cpercpu.pxd).
 */
#ifndef PERCPU_REGISTRY_INIT_H
#define PERCPU_REGISTRY_INIT_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

#include "percpu/registry.h"

static pc_registry *pc_the_registry;

/* The key's destructor, in the exiting thread. Other keys' destructors may
 * run after it (in this round or the next ones) and use percpu: they find
 * the caches cleared and the key set to PC_REC_GONE, so they take the shared
 * paths instead of the record another thread may own by then. Setting the
 * key again makes glibc call this once more next round (up to
 * PTHREAD_DESTRUCTOR_ITERATIONS), which keeps it set to the end. */
static void pc_registry_thread_exit(void *p) {
    pc_registry *reg = pc_the_registry;
    if (!p || !reg) return;
    if ((pc_thread_rec *)p != PC_REC_GONE(reg)) pc_registry_leave(reg, (pc_thread_rec *)p);
    pthread_setspecific(reg->key, PC_REC_GONE(reg));
}

/* Around fork(): take the registry lock and every tracked lock (see
 * pc_fork_node), in the forking thread, so that none is held by a thread
 * that will not exist in the child. */
static void pc_fork_prepare(void) {
    pc_registry *reg = pc_the_registry;
    pc_fork_node *n;
    int32_t free_;
    pthread_mutex_lock(&reg->fork_lock);
    /* Every gated spinlock (pc_fork_gate): close the gate (seq_cst, the
     * Dekker pair of pc_fork_gate_enter), then wait for the threads inside
     * to release theirs (acquire: pairs with pc_fork_gate_leave, so the
     * locks they released read free, here and in the child). */
    pc_store_i32(&reg->gate.closed, 1, PC_SEQ_CST);
    while (pc_load_i32(&reg->gate.inside, PC_SEQ_CST) != 0) sched_yield();
    pthread_mutex_lock(&reg->lock);
    for (n = reg->fork_head.next; n != &reg->fork_head; n = n->next) {
        if (n->mutex) pthread_mutex_lock(n->mutex);
        else if (n->spin) {
            /* Acquire, as any taker of the spinlock. */
            for (free_ = 0; !pc_cas_i32(n->spin, &free_, 1, PC_ACQUIRE, PC_RELAXED); free_ = 0)
                sched_yield();
        }
    }
}

static void pc_fork_release(void) {
    pc_registry *reg = pc_the_registry;
    pc_fork_node *n;
    for (n = reg->fork_head.prev; n != &reg->fork_head; n = n->prev) {
        if (n->mutex) pthread_mutex_unlock(n->mutex);
        else if (n->spin) pc_store_i32(n->spin, 0, PC_RELEASE);
    }
    pthread_mutex_unlock(&reg->lock);
    /* Release: a thread that sees the gate open again sees the parent's
     * state as the fork left it (nothing changed it meanwhile). */
    pc_store_i32(&reg->gate.closed, 0, PC_RELEASE);
    pthread_mutex_unlock(&reg->fork_lock);
}

/* In the child only the forking thread exists: records of the parent's
 * other threads would never be given back. */
static void pc_fork_child(void) {
    pc_registry *reg = pc_the_registry;
    pc_thread_rec *mine = (pc_thread_rec *)pthread_getspecific(reg->key);
    int i;
    int32_t live = 0;
    for (i = 0; i < PC_MAX_THREADS; i++) {
        pc_thread_rec *r = &reg->recs[i];
        if (r == mine) { r->seq &= ~(uint64_t)1; live++; }
        /* The caches of a thread that is not in the child are not ours to
         * clear; the next owner starts without them. */
        else if (r->in_use) { r->in_use = 0; r->seq = 0; r->caches = NULL; }
    }
    /* Only this thread exists: relaxed, as every write of the count. */
    pc_store_i32(&reg->live, live, PC_RELAXED);
    /* Threads that stepped into the gate and back out while it was closed
     * left their count behind; none of them exists here. */
    reg->gate.inside = 0;
    pc_fork_release();
}

static int pc_registry_create(void) {
    pc_registry *reg;
    int i;
    if (pc_the_registry) return 0;
    /* The records are cache-line aligned; so must the block be. */
    if (posix_memalign((void **)&reg, PC_CACHELINE, sizeof *reg)) return -1;
    memset(reg, 0, sizeof *reg);
    pthread_mutex_init(&reg->lock, NULL);
    pthread_mutex_init(&reg->fork_lock, NULL);
    reg->fork_head.next = reg->fork_head.prev = &reg->fork_head;
    if (pthread_key_create(&reg->key, pc_registry_thread_exit)) return -1;
    for (i = 0; i < PC_MAX_THREADS; i++) reg->recs[i].index = i;
    /* The process-wide choice of the cpu-id source and the fast paths: made
     * here, once, before any other module can reach the registry. */
    pc_proc_decide(&reg->proc);
    /* Register both expedited flavours; each may be missing (old kernel,
     * seccomp). The RSEQ one is useful only where sections run. */
    if (pc_membarrier(PC_MB_REGISTER_PRIVATE_EXPEDITED, 0) == 0) {
        reg->membarrier = PC_MB_EXPEDITED;
        if (reg->proc.sections &&
            pc_membarrier(PC_MB_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0) == 0)
            reg->membarrier = PC_MB_EXPEDITED_RSEQ;
    }
    reg->proc.refs_sections = reg->proc.sections && reg->membarrier == PC_MB_EXPEDITED_RSEQ;
    /* The creator adopts first; the others adopt through the capsule or
     * through the objects that carry the registry. */
    pc_adopt(&reg->proc);
    pc_the_registry = reg;
    pthread_atfork(pc_fork_prepare, pc_fork_release, pc_fork_child);
    return 0;
}

#pragma GCC diagnostic pop
#endif /* PERCPU_REGISTRY_INIT_H */
