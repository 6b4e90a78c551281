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
#include <signal.h>

#ifndef sigev_notify_thread_id /* glibc < 2.35 */
#define sigev_notify_thread_id _sigev_un._tid
#endif

/* ------------------------------------------------------------------------ */
/* The native thread team                                                    */

typedef void (*pc_kernel_fn)(void *arg, int tid, int64_t ops, int64_t *done);

/* Kernels that honour a time limit check pc_team_expired() once every
 * PC_TEAM_POLL ops (a clock read costs ~20 ns: once per 1024 ops it is lost
 * in the noise, and a thread overruns the limit by fewer than 1024 ops) and
 * report the ops they completed in *done. The lab's kernels check first after
 * their first round, so that every member does some work even when the
 * scheduler starts it after the deadline. */
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
     * how far it got in the same time (fairness); long enough for the
     * scheduler to preempt the threads, a test that must see them
     * interleave, and no longer. */
    int64_t duration_ns;
    /* 0: none. > 0: every interrupt_ns each member is interrupted at a
     * random point of its loop by PC_TEAM_SIGNAL, whose handler gives up the
     * CPU: a preemption between any two instructions, thousands of times a
     * second instead of at the scheduler's rare ticks. It aborts an rseq
     * section in flight (so the retry paths run) and lets another thread
     * that shares the CPU run in the middle of a read-modify-write. */
    int64_t interrupt_ns;
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
    int err;               /* the interrupt timer could not be armed */
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

/* Where the round of ops that starts at op i ends: kernels run in rounds of
 * PC_TEAM_POLL ops and look at pc_team_expired() between rounds, so the
 * per-op path carries no check. */
static inline int64_t pc_team_round_end(int64_t i, int64_t ops) {
    return ops - i <= PC_TEAM_POLL ? ops : i + PC_TEAM_POLL;
}

/* A real-time signal that neither glibc nor CPython uses. */
#define PC_TEAM_SIGNAL (SIGRTMIN + 6)

/* Off the CPU for a moment, long enough for a thread that shares it to
 * run (a yield alone hands it back at once when that thread's own signal
 * is pending). nanosleep() is async-signal-safe; errno is saved for the
 * interrupted code. */
static void pc_team_signal_pause(int sig) {
    int saved = errno;
    struct timespec ts = {0, 30000};
    (void)sig;
    nanosleep(&ts, NULL);
    errno = saved;
}

/* The handler is process-wide and stays installed: a signal still on its
 * way when a run ends must find it. SA_RESTART: a member interrupted in a
 * system call (a futex, a yield) carries on. */
static void pc_team_signal_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pc_team_signal_pause;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(PC_TEAM_SIGNAL, &sa, NULL);
}

/* Arms a periodic timer that signals this thread; 0 or an errno value.
 * CLOCK_MONOTONIC, not the thread's CPU clock: CPU-clock timers are only
 * checked at the scheduler tick, high-resolution ones fire when due (and
 * interrupt the thread where it runs). */
static int pc_team_interrupts_start(int64_t interval_ns, timer_t *timer) {
    struct sigevent ev;
    struct itimerspec its;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = PC_TEAM_SIGNAL;
    ev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &ev, timer)) return errno;
    its.it_interval.tv_sec = its.it_value.tv_sec = (time_t)(interval_ns / 1000000000);
    its.it_interval.tv_nsec = its.it_value.tv_nsec = (long)(interval_ns % 1000000000);
    if (timer_settime(*timer, 0, &its, NULL)) {
        int err = errno;
        timer_delete(*timer);
        return err;
    }
    return 0;
}

static void *pc_team_main(void *p) {
    pc_team_member *m = (pc_team_member *)p;
    pc_team *t = m->team;
    int spins = 0;
    int64_t start;
    timer_t timer = (timer_t)0;
    if (m->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(m->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    if (t->interrupt_ns > 0) m->err = pc_team_interrupts_start(t->interrupt_ns, &timer);
    /* Release/acquire on ready/go: the controller sees every member started
     * (and its err), and members see the controller's t0 and the setup
     * before it. */
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
    if (t->interrupt_ns > 0 && !m->err) timer_delete(timer);
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
    static pthread_once_t signal_once = PTHREAD_ONCE_INIT;
    if (t->nthreads <= 0 || t->ops < 0 || t->duration_ns < 0 || t->interrupt_ns < 0 ||
        !t->fn || !t->done)
        return EINVAL;
    if (t->interrupt_ns > 0) pthread_once(&signal_once, pc_team_signal_install);
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
    for (i = 0; i < started && !err; i++) err = mem[i].err;
    if (err) t->ops = 0; /* a member has no interrupt timer: run nothing */
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
