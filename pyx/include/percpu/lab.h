/*
 * percpu/lab.h: C helpers of the benchmark lab (percpu._workloads) and the
 * tests: the counter kernel driven by the team and the packet workload's
 * "other work". Not part of the library: percpu.h does not include it.
 */
#ifndef PERCPU_LAB_H
#define PERCPU_LAB_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

#include "percpu.h"
#include "percpu/team.h"

/* The per-packet "other work" of the packet workload: a multiply-add
 * chain whose value goes through an empty asm each round, so the compiler
 * can neither fold the loop nor drop it. */
static inline uint64_t pc_wl_work(uint64_t x, int64_t units) {
    int64_t i;
    for (i = 0; i < units; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        __asm__ __volatile__("" : "+r"(x));
    }
    return x;
}

/* The team kernel of the tests and benchmarks: one loop per strategy, so
 * that the strategy's inline add is compiled into its loop and the
 * choice is made once per run. mixed: every fourth op is -1. The loop runs
 * in rounds of PC_TEAM_POLL ops and stops early when the team's time is up
 * (duration_ns); *done is the number of ops completed. */
enum { PC_K_ATOMIC, PC_K_LOCKED, PC_K_PERCPU, PC_K_PERTHREAD, PC_K_APPROX,
       PC_K_STRIPED, PC_K_RACY };
typedef struct { int kind; int mixed; void *c; } pc_counter_job;

#define PC_COUNTER_LOOP(ADD, T)                                            \
    do {                                                                   \
        T *c = (T *)job->c;                                                \
        for (i = 0; i < ops && (i == 0 || !pc_team_expired());) {          \
            int64_t end = pc_team_round_end(i, ops);                       \
            if (job->mixed)                                                \
                for (; i < end; i++) ADD(c, (i & 3) == 3 ? -1 : 1);        \
            else                                                           \
                for (; i < end; i++) ADD(c, 1);                            \
        }                                                                  \
    } while (0)

static void pc_counter_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    pc_counter_job *job = (pc_counter_job *)arg;
    int64_t i = 0;
    (void)tid;
    switch (job->kind) {
    case PC_K_ATOMIC: PC_COUNTER_LOOP(pc_atomic_counter_add, pc_cell); break;
    case PC_K_LOCKED: PC_COUNTER_LOOP(pc_locked_counter_add, pc_locked_counter); break;
    case PC_K_PERCPU: PC_COUNTER_LOOP(pc_percpu_counter_add, pc_percpu_counter); break;
    case PC_K_PERTHREAD: PC_COUNTER_LOOP(pc_perthread_counter_add, pc_perthread_counter); break;
    case PC_K_APPROX: PC_COUNTER_LOOP(pc_approx_counter_add, pc_approx_counter); break;
    case PC_K_STRIPED: PC_COUNTER_LOOP(pc_striped_counter_add, pc_striped_counter); break;
    case PC_K_RACY: PC_COUNTER_LOOP(pc_racy_counter_add, pc_cell); break;
    }
    *done = i;
}

#pragma GCC diagnostic pop
#endif /* PERCPU_LAB_H */
