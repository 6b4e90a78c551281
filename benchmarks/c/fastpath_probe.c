/*
 * fastpath_probe: the per-op cost of each way to count, in C, on the native
 * thread team, ns per op per thread. The bare rseq critical section is the
 * bar that PerCPUCounter's inline add (pc_percpu_counter_add) is held to.
 *
 *   gcc -O2 -I pyx/include benchmarks/c/fastpath_probe.c -o /tmp/probe -ldl -lpthread
 *   /tmp/probe [ops_per_thread] [max_threads]
 */
#include "percpu.h"
#include "percpu/team.h"

#define MAX_THREADS 64
static pc_cell own[MAX_THREADS];       /* one padded slot per thread */
static pc_cell shared;
static pc_cell slots[MAX_THREADS];     /* per-CPU slots, one line apart */
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static int64_t mutexed;

enum { K_PLAIN, K_RSEQ_BARE, K_PERCPU_ADD, K_PERCPU_ATOMIC, K_ATOMIC, K_MUTEX, K_N };
static const char *names[K_N] = {"plain add, own padded slot", "rseq critical section (bare)",
                                 "pc_percpu_counter_add (PerCPUCounter)",
                                 "cpu id + locked add on per-CPU slot", "one shared atomic",
                                 "mutex"};

static void kernel(void *arg, int tid, int64_t ops, int64_t *done) {
    int kind = *(int *)arg;
    int64_t i;
    char *base = (char *)slots;
    pc_percpu_counter c = {base, sizeof(pc_cell)};
    switch (kind) {
    case K_PLAIN:
        for (i = 0; i < ops; i++)
            pc_store_i64(&own[tid].value, pc_load_i64(&own[tid].value, PC_RELAXED) + 1, PC_RELAXED);
        break;
    case K_RSEQ_BARE:
        for (i = 0; i < ops; i++)
            while (pc_rseq_add_i64(base, sizeof(pc_cell), 1)) {
            }
        break;
    case K_PERCPU_ADD:
        for (i = 0; i < ops; i++) pc_percpu_counter_add(&c, 1);
        break;
    case K_PERCPU_ATOMIC:
        for (i = 0; i < ops; i++)
            pc_fetch_add_i64(&slots[pc_current_cpu()].value, 1, PC_RELAXED);
        break;
    case K_ATOMIC:
        for (i = 0; i < ops; i++) pc_fetch_add_i64(&shared.value, 1, PC_RELAXED);
        break;
    case K_MUTEX:
        for (i = 0; i < ops; i++) {
            pthread_mutex_lock(&mutex);
            mutexed++;
            pthread_mutex_unlock(&mutex);
        }
        break;
    }
    *done = ops;
}

int main(int argc, char **argv) {
    int64_t ops = argc > 1 ? atoll(argv[1]) : 20000000;
    int max_threads = argc > 2 ? atoi(argv[2]) : 2;
    int64_t done[MAX_THREADS];
    int kind, t, rep;
    if (max_threads > MAX_THREADS || pc_nr_cpus() > MAX_THREADS) return 2;
    printf("rseq live: %d, nr_cpus: %d\n", pc_rseq_live(), pc_nr_cpus());
    printf("%-40s", "ns per op per thread (best of 5)");
    for (t = 1; t <= max_threads; t *= 2) printf("  %6dT", t);
    printf("\n");
    for (kind = 0; kind < K_N; kind++) {
        printf("%-40s", names[kind]);
        for (t = 1; t <= max_threads; t *= 2) {
            double best = 1e30;
            for (rep = 0; rep < 5; rep++) {
                pc_team team;
                memset(&team, 0, sizeof team);
                team.nthreads = t;
                team.ops = kind == K_MUTEX ? ops / 4 : ops;
                team.fn = kernel;
                team.arg = &kind;
                team.done = done;
                if (pc_team_run(&team)) return 1;
                if ((double)team.wall_ns / team.ops < best) best = (double)team.wall_ns / team.ops;
            }
            printf("  %7.2f", best);
        }
        printf("\n");
    }
    return 0;
}
