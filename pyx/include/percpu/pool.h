/*
 * percpu/pool.h: the per-CPU allocator's handles, bitmaps, page mappings and
 * per-CPU caches of free objects (the allocator itself: pyx/alloc.pyx).
 */
#ifndef PERCPU_POOL_H
#define PERCPU_POOL_H

#include <sys/mman.h>

#include "percpu/base.h"
#include "percpu/atomic.h"
#include "percpu/registry.h"

/* ------------------------------------------------------------------------ */
/* Handles                                                                   */
/*
 * The low 48 bits of a handle are its position, (block << log2(unit_size)) |
 * offset. Debug builds (PERCPU_DEBUG_HANDLES, which setup.py defines under
 * PERCPU_DEBUG=1) put a generation tag in bits 48-62: how many times an
 * object has been handed out at that position, so that a handle kept after
 * its free is refused once the position is handed out again. Normal builds
 * leave the tag 0 and refuse a handle that has one.
 */
#define PC_HANDLE_TAG_SHIFT 48
#define PC_HANDLE_POS_MASK ((INT64_C(1) << PC_HANDLE_TAG_SHIFT) - 1)
#define PC_HANDLE_TAG_MASK 0x7FFF
#ifdef PERCPU_DEBUG_HANDLES
#define PC_DEBUG_HANDLES 1
#else
#define PC_DEBUG_HANDLES 0
#endif

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

/* Bitmaps that threads read or change without the pool's lock (an object's
 * last-granule, live and size-tail bits). The bits publish no memory: an
 * object's contents change hands through the pool's lock or a cache's lock,
 * and whoever holds a live handle got it through an allocation that
 * happened before. So every access is relaxed; the atomics are there
 * because one word holds the bits of up to 64 objects, each changed by its
 * own owner. */
static inline int pc_bit_test_shared(const uint64_t *map, size_t i) {
    return (int)((pc_load_u64(&map[i >> 6], PC_RELAXED) >> (i & 63)) & 1);
}

/* Sets bit i, which its caller owns; returns its old value. */
static inline int pc_bit_set_shared(uint64_t *map, size_t i) {
    uint64_t bit = 1ULL << (i & 63);
    return (pc_fetch_or_u64(&map[i >> 6], bit, PC_RELAXED) & bit) != 0;
}

/* Clears bit i; returns its old value. Of two threads clearing the same
 * bit, exactly one sees 1 (read-modify-writes of one word are totally
 * ordered): that is how a double free is told from a free. */
static inline int pc_bit_clear_shared(uint64_t *map, size_t i) {
    uint64_t bit = 1ULL << (i & 63);
    return (pc_fetch_and_u64(&map[i >> 6], ~bit, PC_RELAXED) & bit) != 0;
}

/* pc_bit_find for a map that lock holders change (pc_bit_fill_shared) while
 * this reader looks only at bits that nobody changes meanwhile (those of an
 * object it owns). */
static size_t pc_bit_find_shared(const uint64_t *map, size_t from, size_t end, int want) {
    while (from < end) {
        size_t w = from >> 6;
        uint64_t word = pc_load_u64(&map[w], PC_RELAXED);
        uint64_t bits = (want ? word : ~word) & (~0ULL << (from & 63));
        if (bits) {
            size_t i = (w << 6) + (size_t)__builtin_ctzll(bits);
            return i < end ? i : end;
        }
        from = (w + 1) << 6;
    }
    return end;
}

/* pc_bit_fill for a map whose writers all hold the pool's lock and whose
 * readers may not (pc_bit_find_shared): whole-word relaxed stores. */
static void pc_bit_fill_shared(uint64_t *map, size_t from, size_t end, int val) {
    while (from < end) {
        size_t w = from >> 6, lo = from & 63, n = end - from;
        uint64_t mask, word;
        if (n > 64 - lo) n = 64 - lo;
        mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << lo;
        word = pc_load_u64(&map[w], PC_RELAXED);
        pc_store_u64(&map[w], val ? (word | mask) : (word & ~mask), PC_RELAXED);
        from += n;
    }
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

/* ------------------------------------------------------------------------ */
/* Per-CPU caches of free objects                                            */
/*
 * With one lock around the bitmaps, every alloc and free of every thread
 * meets on one cache line. Instead each CPU gets, on first use, a cache of
 * freed small objects (1..PC_CACHE_CLASSES granules), a stack of positions
 * per size class: a free pushes there, an alloc of that size pops, and the
 * pool's lock is taken only when a cache is empty (a batch is taken) or full
 * (half goes back), in the style of the kernel's per-CPU page lists.
 *
 * The cpu id is a hint (the thread may migrate, or share its slot with
 * others when the cpu id comes from a per-thread index), so each cache has a
 * lock. The fast paths only try it, once: when it is busy they use the pool
 * as if there were no cache, so a thread preempted while holding it delays
 * nobody. Nothing holds a cache's lock while taking another lock, and every
 * cache's lock is on the registry's fork list.
 *
 * Cached objects stay allocated in the pool's bitmaps, so their space is not
 * handed to objects of another size until a cache gives them back (the pool
 * drains every cache before it grows or refuses an atomic allocation). They
 * belong to the pool, not to a thread: a thread that exits leaves nothing
 * behind, and the pool's destruction frees the caches with the blocks.
 */
enum {
    PC_CACHE_CLASSES = 8,   /* classes of 1..8 granules (objects up to 64 bytes) */
    PC_CACHE_SLOTS = 32,    /* objects per class */
    PC_CACHE_BATCH = 8,     /* objects taken at once when a class is empty */
    /* most objects one free gives back at once: half of every class */
    PC_CACHE_SPILL = PC_CACHE_CLASSES * PC_CACHE_SLOTS / 2
};

typedef struct {
    int32_t lock;                    /* 0 free, 1 held (a spinlock) */
    int32_t count[PC_CACHE_CLASSES]; /* objects held per class */
    int64_t granules;                /* granules held, all classes */
    int64_t allocs;                  /* allocations served from here */
    int64_t frees;                   /* frees kept here */
    int64_t atomic_allocs;           /* of allocs, atomic=True ones */
    pc_fork_node fork;
    int64_t objs[PC_CACHE_CLASSES][PC_CACHE_SLOTS]; /* positions; a stack per class */
} PC_CACHELINE_ALIGNED pc_pool_cache;

/* One try: 1 when taken. Acquire pairs with the previous holder's release
 * in pc_cache_unlock: what it pushed, and the contents of those objects
 * written before their free, are seen. The plain load first keeps a busy
 * lock's line shared instead of bouncing it with a failing CAS. */
static inline int pc_cache_trylock(pc_pool_cache *c) {
    int32_t free_ = 0;
    return pc_load_i32(&c->lock, PC_RELAXED) == 0 &&
           pc_cas_i32(&c->lock, &free_, 1, PC_ACQUIRE, PC_RELAXED);
}

/* Waits for the lock (slow paths only: stats, draining, refilling). */
static void pc_cache_lock(pc_pool_cache *c) {
    int spins = 0;
    while (!pc_cache_trylock(c)) {
        if (++spins < 64) pc_cpu_relax();
        else sched_yield();
    }
}

static inline void pc_cache_unlock(pc_pool_cache *c) {
    /* Release: see pc_cache_trylock. */
    pc_store_i32(&c->lock, 0, PC_RELEASE);
}

/* Pops an object of class cls whose position is a multiple of align_mask + 1
 * (a power of two up to the unit size: block bases are unit-aligned, so the
 * offset's alignment is the address's); -1 when there is none. The top is
 * the most recently freed, so the search is one step for align <= 8. */
static inline int64_t pc_cache_pop(pc_pool_cache *c, int cls, int64_t align_mask) {
    int32_t top = c->count[cls], i;
    int64_t *stack = c->objs[cls];
    for (i = top - 1; i >= 0; i--) {
        int64_t pos = stack[i];
        if ((pos & align_mask) == 0) {
            stack[i] = stack[top - 1];
            c->count[cls] = top - 1;
            return pos;
        }
    }
    return -1;
}

/* Whether an object of n granules (class n - 1) fits below both limits. */
static inline int pc_cache_has_room(const pc_pool_cache *c, int cls, int64_t n, int64_t limit) {
    return c->count[cls] < PC_CACHE_SLOTS && c->granules + n <= limit;
}

static inline void pc_cache_push(pc_pool_cache *c, int cls, int64_t n, int64_t pos) {
    c->objs[cls][c->count[cls]++] = pos;
    c->granules += n;
}

#endif /* PERCPU_POOL_H */
