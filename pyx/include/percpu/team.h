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

/* Kernels that honour a time limit check pc_team_expired() once every
 * PC_TEAM_POLL ops (a clock read costs ~20 ns: once per 1024 ops it is lost
 * in the noise, and a thread overruns the limit by fewer than 1024 ops) and
 * report the ops they completed in *done. */
#define PC_TEAM_POLL 1024

typedef struct {
    int nthreads;
    int pin;               /* pin thread i to the i-th allowed CPU, round-robin */
    int64_t ops;           /* operations per thread (with duration_ns: the cap) */
    pc_kernel_fn fn;
    void *arg;
    /* 0: every thread runs its ops. > 0: kernels that poll pc_team_expired()
     * stop at their first poll once duration_ns have passed since the
     * barrier's release: a time-bounded run, where each thread's *done says
     * how far it got in the same time (fairness). */
    int64_t duration_ns;
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

/* This thread's deadline (a pc_now_ns() time), or 0: none. Set by the team
 * before it calls the kernel; a thread-local, so kernels keep their
 * signature. */
static PC_TLS int64_t pc_team_tls_deadline;

/* Whether this team member's time is up (always 0 without duration_ns). */
static inline int pc_team_expired(void) {
    int64_t d = pc_team_tls_deadline;
    return d != 0 && pc_now_ns() >= d;
}

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
    /* t0 was written before the go flag's release store, which we acquired. */
    pc_team_tls_deadline = t->duration_ns > 0 ? t->t0 + t->duration_ns : 0;
    t->fn(t->arg, m->tid, t->ops, &t->done[m->tid]);
    pc_team_tls_deadline = 0;
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
    if (t->nthreads <= 0 || t->ops < 0 || t->duration_ns < 0 || !t->fn || !t->done)
        return EINVAL;
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
