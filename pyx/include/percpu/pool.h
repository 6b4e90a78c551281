/*
 * percpu/pool.h: the per-CPU allocator's bitmaps and page mappings.
 */
#ifndef PERCPU_POOL_H
#define PERCPU_POOL_H

#include <sys/mman.h>

#include "percpu/base.h"

/* First index in [from, end) whose bit is `want` (0 or 1); end when none. */
static size_t pc_bit_find(const uint64_t *map, size_t from, size_t end, int want) {
    while (from < end) {
        size_t w = from >> 6;
        uint64_t bits = want ? map[w] : ~map[w];
        bits &= ~0ULL << (from & 63);
        if (bits) {
            size_t i = (w << 6) + (size_t)__builtin_ctzll(bits);
            return i < end ? i : end;
        }
        from = (w + 1) << 6;
    }
    return end;
}

/* Sets (val != 0) or clears the bits [from, end). */
static void pc_bit_fill(uint64_t *map, size_t from, size_t end, int val) {
    while (from < end) {
        size_t w = from >> 6, lo = from & 63, n = end - from;
        uint64_t mask;
        if (n > 64 - lo) n = 64 - lo;
        mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << lo;
        if (val) map[w] |= mask;
        else map[w] &= ~mask;
        from += n;
    }
}

static inline int pc_bit_test(const uint64_t *map, size_t i) {
    return (int)((map[i >> 6] >> (i & 63)) & 1);
}

static size_t pc_page_size(void) {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096;
}

/* `bytes` of zeroed memory aligned to `align` (a power of two), straight
 * from the kernel: an over-sized mapping trimmed to the aligned window, so
 * that no alignment slack stays reserved. NULL when out of memory. */
static void *pc_map_aligned(size_t bytes, size_t align) {
    size_t page = pc_page_size(), over;
    char *raw, *start;
    if (align <= page) {
        raw = (char *)mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return raw == MAP_FAILED ? NULL : raw;
    }
    over = bytes + align - page;
    raw = (char *)mmap(NULL, over, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    start = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (start > raw) munmap(raw, (size_t)(start - raw));
    if (start + bytes < raw + over)
        munmap(start + bytes, (size_t)(raw + over - (start + bytes)));
    return start;
}

static void pc_unmap(void *p, size_t bytes) { munmap(p, bytes); }

#endif /* PERCPU_POOL_H */
