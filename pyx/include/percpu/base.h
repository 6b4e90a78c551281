/*
 * percpu/base.h: compiler helpers, the cache-line size and the clock.
 */
#ifndef PERCPU_BASE_H
#define PERCPU_BASE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Compiler helpers                                                          */

#define PC_LIKELY(x) __builtin_expect(!!(x), 1)
#define PC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PC_COLD __attribute__((cold, noinline))
#define PC_MAYBE_UNUSED __attribute__((unused))
/* Thread-locals of a dlopen()ed module default to the general-dynamic model:
 * a __tls_get_addr() call per access (3 ns on a 0.3 ns path). Initial-exec
 * reads them at a fixed offset from the thread pointer; glibc reserves static
 * TLS space for the few bytes that late-loaded modules ask for. */
#define PC_TLS __thread __attribute__((tls_model("initial-exec")))

/* The cache-line size that separates two slots that must not false-share.
 * x86-64 lines are 64 bytes; arm64 (Apple, Neoverse) and POWER move 128 bytes
 * at a time, so padding to 64 there still shares. */
#if defined(__x86_64__) || defined(__i386__)
#define PC_CACHELINE 64
#else
#define PC_CACHELINE 128
#endif
#define PC_CACHELINE_ALIGNED __attribute__((aligned(PC_CACHELINE)))

static inline size_t pc_round_up(size_t n, size_t align) {
    return (n + align - 1) & ~(align - 1);
}

static inline void pc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* ------------------------------------------------------------------------ */
/* Time                                                                      */

static inline int64_t pc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* `size` zeroed bytes (at least one) on their own cache lines; NULL when out
 * of memory. Free with free(). */
static void *pc_aligned_zalloc(size_t size) {
    void *p = NULL;
    size = pc_round_up(size ? size : 1, PC_CACHELINE);
    if (posix_memalign(&p, PC_CACHELINE, size)) return NULL;
    memset(p, 0, size);
    return p;
}

#endif /* PERCPU_BASE_H */
