/*
 * percpu/team.h: the native thread team of the benchmark lab and the tests (not part
 * of the library: percpu.h does not include it).
 */
#ifndef PERCPU_TEAM_H
#define PERCPU_TEAM_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

#include "percpu/base.h"
#include "percpu/atomic.h"

/* ------------------------------------------------------------------------ */
/* The native thread team                                                    */

typedef void (*pc_kernel_fn)(void *arg, int tid, int64_t ops, int64_t *done);

typedef struct {
    int nthreads;
    int pin;               /* pin thread i to the i-th allowed CPU, round-robin */
    int64_t ops;           /* operations per thread */
    pc_kernel_fn fn;
    void *arg;
    /* results */
    int64_t wall_ns;       /* barrier release to last finish */
    int64_t *done;         /* per-thread completed ops (nthreads entries) */
    int64_t *thread_ns;    /* per-thread busy time (nthreads entries) */
    /* internal */
    int32_t ready;
    int32_t go;
    int64_t t0;
} pc_team;

typedef struct {
    pc_team *team;
    int tid;
    int cpu;               /* -1: not pinned */
    int64_t end_ns;
} pc_team_member;

static void *pc_team_main(void *p) {
    pc_team_member *m = (pc_team_member *)p;
    pc_team *t = m->team;
    int spins = 0;
    int64_t start;
    if (m->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(m->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    /* Release/acquire on ready/go: the controller sees every member started,
     * and members see the controller's t0 and the setup before it. */
    pc_fetch_add_i32(&t->ready, 1, PC_RELEASE);
    while (!pc_load_i32(&t->go, PC_ACQUIRE)) {
        /* More threads than CPUs: spinning would starve the others. */
        if (++spins < 1000) pc_cpu_relax();
        else sched_yield();
    }
    start = pc_now_ns();
    t->fn(t->arg, m->tid, t->ops, &t->done[m->tid]);
    m->end_ns = pc_now_ns();
    if (t->thread_ns) t->thread_ns[m->tid] = m->end_ns - start;
    return NULL;
}

/* Runs fn on nthreads native threads, released together. Returns 0 or an
 * errno value; on error no kernel has run. Call without the GIL. */
static int pc_team_run(pc_team *t) {
    pthread_t *th;
    pc_team_member *mem;
    int i, err = 0, started = 0, spins = 0;
    int64_t last = 0;
    int allowed[1024], nallowed = 0;
    if (t->nthreads <= 0 || t->ops < 0 || !t->fn || !t->done) return EINVAL;
    th = (pthread_t *)calloc((size_t)t->nthreads, sizeof *th);
    mem = (pc_team_member *)calloc((size_t)t->nthreads, sizeof *mem);
    if (!th || !mem) {
        free(th);
        free(mem);
        return ENOMEM;
    }
    if (t->pin) {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0)
            for (i = 0; i < CPU_SETSIZE && nallowed < 1024; i++)
                if (CPU_ISSET(i, &set)) allowed[nallowed++] = i;
    }
    pc_store_i32(&t->ready, 0, PC_RELAXED);
    pc_store_i32(&t->go, 0, PC_RELAXED);
    for (i = 0; i < t->nthreads; i++) {
        t->done[i] = 0;
        mem[i].team = t;
        mem[i].tid = i;
        mem[i].cpu = nallowed ? allowed[i % nallowed] : -1;
        err = pthread_create(&th[i], NULL, pc_team_main, &mem[i]);
        if (err) break;
        started++;
    }
    if (err) {
        /* Release the ones that started with nothing to do. */
        t->ops = 0;
    }
    while (pc_load_i32(&t->ready, PC_ACQUIRE) < started) {
        if (++spins < 1000) pc_cpu_relax();
        else sched_yield();
    }
    t->t0 = pc_now_ns();
    pc_store_i32(&t->go, 1, PC_RELEASE);
    for (i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        if (mem[i].end_ns > last) last = mem[i].end_ns;
    }
    t->wall_ns = err ? 0 : last - t->t0;
    free(th);
    free(mem);
    return err;
}

#pragma GCC diagnostic pop
#endif /* PERCPU_TEAM_H */
