# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._alloc: the compact per-CPU allocator (PerCPUPool) and the pre-2005
baseline (NaivePool).

PerCPUPool follows "mm: Reimplementation of dynamic per-cpu allocator" (2005):
memory comes in blocks of ``unit_size * nr_cpus`` bytes; an object is an offset
inside a unit, and CPU ``c``'s copy lives at ``base + c * unit_size + offset``,
so per_cpu_ptr is one add and there is no pointer array. Objects are packed
inside a unit at 8-byte granules (no cache-line padding per object: the units
already keep different CPUs' copies on different lines), free space is found
with a bitmap, and ``atomic=True`` allocations are served only from space
reserved beforehand, never by growing the pool.

NaivePool is what the kernel had before: one separate cache-line-aligned
allocation per CPU per object, and a pointer array to find them.

Without a GIL (``freethreading_compatible``) every method may run in many
threads at once: each one works under the pool's mutex, or reads only the
geometry fixed at creation and block bases that never move (``view`` of a
PerCPUPool, ``pcpool_ptr``); the default pool is made at import.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from percpu.cpercpu cimport *

import operator

cnp.import_array()

# The process-wide registry: pools list their locks there for fork.
cdef pc_registry *_registry = pc_registry_import()

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from *:
    """
    #include <sys/mman.h>

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
    """
    size_t pc_bit_find(const uint64_t *map, size_t start, size_t end, int want) noexcept nogil
    void pc_bit_fill(uint64_t *map, size_t start, size_t end, int val) noexcept nogil
    bint pc_bit_test(const uint64_t *map, size_t i) noexcept nogil
    size_t pc_page_size() noexcept nogil
    void *pc_map_aligned(size_t nbytes, size_t align) noexcept nogil
    void pc_unmap(void *p, size_t nbytes) noexcept nogil


cdef enum:
    GRANULE = 8             # bytes; the bitmap has one bit per granule
    GRANULE_SHIFT = 3
    MAX_UNIT = 1 << 22      # bitmaps of 64 KiB per block at most
    NAIVE_MAX = 4096
    RING = 8                # live objects per thread in _stress
    MAPS = 5                # bitmaps per block: used, start, three of tail

#: Object sizes are rounded up to this many bytes inside a unit.
GRANULE_SIZE = GRANULE
#: The unit size of ``PerCPUPool()``: one page.
DEFAULT_UNIT_SIZE = max(<size_t>PC_CACHELINE, pc_page_size())
#: The largest unit size ``PerCPUPool`` accepts.
MAX_UNIT_SIZE = MAX_UNIT
#: The largest object (and alignment) ``NaivePool`` accepts: the default unit.
NAIVE_MAX_SIZE = NAIVE_MAX


# ---------------------------------------------------------------------------
# PerCPUPool in C terms

cdef int _pool_init(pc_pool *p, size_t unit_size) noexcept nogil:
    """Fills in the geometry of a zeroed pool; -1 when out of memory."""
    cdef int shift = 0
    while (<size_t>1 << shift) < unit_size:
        shift += 1
    p.unit_size = unit_size
    p.unit_shift = shift
    p.nr_cpus = pc_nr_cpus()
    p.granules = unit_size >> GRANULE_SHIFT
    p.map_words = (p.granules + 63) >> 6
    # Units smaller than a page would waste the rest of a mapping.
    p.mapped = unit_size >= pc_page_size()
    # The reserve for atomic allocations: one block's worth of free space.
    p.reserve_granules = <int64_t>p.granules
    p.hint = 0
    p.cap = 8
    p.blocks = <pc_block *>malloc(<size_t>p.cap * sizeof(pc_block))
    if p.blocks == NULL:
        return -1
    pthread_mutex_init(&p.lock, NULL)
    pc_fork_track(_registry, &p.fork, &p.lock, NULL)
    return 0


cdef void _pool_destroy(pc_pool *p) noexcept nogil:
    cdef int64_t b
    cdef size_t nbytes = p.unit_size * <size_t>p.nr_cpus
    if p.blocks != NULL:
        for b in range(p.nblocks):
            if p.mapped:
                pc_unmap(p.blocks[b].base, nbytes)
            else:
                free(p.blocks[b].base)
            free(p.blocks[b].used)
        free(p.blocks)
    for b in range(p.nretired):
        free(p.retired[b])
    pc_fork_untrack(_registry, &p.fork)
    pthread_mutex_destroy(&p.lock)


cdef int _block_new(pc_pool *p, pc_block *blk) noexcept nogil:
    """Creates a block (outside the lock: this is the slow part of growth)."""
    cdef size_t nbytes = p.unit_size * <size_t>p.nr_cpus
    cdef void *mem = NULL
    # Every unit starts at a multiple of unit_size from an address aligned to
    # unit_size, so any alignment up to unit_size holds on every CPU's copy.
    if p.mapped:
        mem = pc_map_aligned(nbytes, p.unit_size)
    elif posix_memalign(&mem, p.unit_size, nbytes) == 0:
        memset(mem, 0, nbytes)
    else:
        mem = NULL
    if mem == NULL:
        return -1
    # One allocation holds all five bitmaps.
    blk.used = <uint64_t *>malloc(MAPS * p.map_words * sizeof(uint64_t))
    if blk.used == NULL:
        if p.mapped:
            pc_unmap(mem, nbytes)
        else:
            free(mem)
        return -1
    memset(blk.used, 0, MAPS * p.map_words * sizeof(uint64_t))
    blk.start = blk.used + p.map_words
    blk.tail = blk.used + 2 * p.map_words
    blk.base = <char *>mem
    blk.free_granules = <uint32_t>p.granules
    return 0


cdef void _block_drop(pc_pool *p, pc_block *blk) noexcept nogil:
    if p.mapped:
        pc_unmap(blk.base, p.unit_size * <size_t>p.nr_cpus)
    else:
        free(blk.base)
    free(blk.used)


cdef int _block_insert(pc_pool *p, pc_block *blk) noexcept nogil:
    """Adds a block; call with the lock held. -1 when out of memory."""
    cdef pc_block *grown
    if p.nblocks == p.cap:
        if p.nretired == 64:
            return -1
        grown = <pc_block *>malloc(<size_t>(2 * p.cap) * sizeof(pc_block))
        if grown == NULL:
            return -1
        memcpy(grown, p.blocks, <size_t>p.nblocks * sizeof(pc_block))
        # Release: a lockless pcpool_ptr that loads the new array (acquire)
        # sees the copied bases. The old array stays valid for readers that
        # loaded it before: its bases never change.
        p.retired[p.nretired] = p.blocks
        p.nretired += 1
        pc_store_ptr(<void **>&p.blocks, grown, PC_RELEASE)
        p.cap *= 2
    p.blocks[p.nblocks] = blk[0]
    p.nblocks += 1
    p.free_granules += <int64_t>p.granules
    p.grows += 1
    return 0


cdef inline void _tail_store(pc_pool *p, pc_block *blk, size_t g, size_t tail) noexcept nogil:
    cdef int k
    for k in range(3):
        pc_bit_fill(blk.tail + k * p.map_words, g, g + 1, <int>((tail >> k) & 1))


cdef inline size_t _tail_load(pc_pool *p, pc_block *blk, size_t g) noexcept nogil:
    cdef int k
    cdef size_t tail = 0
    for k in range(3):
        tail |= <size_t>pc_bit_test(blk.tail + k * p.map_words, g) << k
    return tail


cdef int64_t _take(pc_pool *p, size_t n, size_t ag, size_t tail) noexcept nogil:
    """First fit of n granules at a multiple of ag granules, for an object
    tail bytes short of n granules; call with the lock held. Returns the
    handle, or -1."""
    cdef int64_t b
    cdef size_t g, busy
    cdef size_t G = p.granules
    cdef pc_block *blk
    while p.hint < p.nblocks and p.blocks[p.hint].free_granules == 0:
        p.hint += 1
    for b in range(p.hint, p.nblocks):
        blk = &p.blocks[b]
        if blk.free_granules < n:
            continue
        g = 0
        while True:
            g = pc_bit_find(blk.used, g, G, 0)
            g = (g + ag - 1) & ~(ag - 1)
            if g + n > G:
                break
            busy = pc_bit_find(blk.used, g, g + n, 1)
            if busy == g + n:
                pc_bit_fill(blk.used, g, g + n, 1)
                pc_bit_fill(blk.start, g, g + 1, 1)
                _tail_store(p, blk, g, tail)
                blk.free_granules -= <uint32_t>n
                p.free_granules -= <int64_t>n
                p.used_granules += <int64_t>n
                p.objects += 1
                p.allocs += 1
                return (b << p.unit_shift) | <int64_t>(g << GRANULE_SHIFT)
            g = busy + 1
    return -1


cdef inline bint _bad_request(size_t size, size_t align, size_t limit) noexcept nogil:
    return size == 0 or size > limit or align == 0 or (align & (align - 1)) != 0 or align > limit


cdef int64_t pcpool_alloc(pc_pool *p, size_t size, size_t align, bint atomic) noexcept nogil:
    cdef size_t n, ag, c, tail
    cdef int64_t h
    cdef bint want_refill = False
    cdef pc_block blk
    cdef char *first
    if _bad_request(size, align, p.unit_size):
        return -2
    n = (size + GRANULE - 1) >> GRANULE_SHIFT
    ag = align >> GRANULE_SHIFT if align > GRANULE else 1
    tail = (n << GRANULE_SHIFT) - size
    pthread_mutex_lock(&p.lock)
    h = _take(p, n, ag, tail)
    if atomic:
        if h >= 0:
            p.atomic_allocs += 1
        else:
            p.atomic_failures += 1
    else:
        want_refill = p.free_granules + p.pending * <int64_t>p.granules < p.reserve_granules
    pthread_mutex_unlock(&p.lock)
    if h < 0:
        if atomic:
            # GFP_ATOMIC: never grow, never wait for growth.
            return -1
        while h < 0:
            # Growth maps memory: do it outside the lock, then insert.
            if _block_new(p, &blk) != 0:
                return -1
            pthread_mutex_lock(&p.lock)
            if _block_insert(p, &blk) != 0:
                pthread_mutex_unlock(&p.lock)
                _block_drop(p, &blk)
                return -1
            # A racing thread may have taken the new block; then go again.
            h = _take(p, n, ag, tail)
            want_refill = p.free_granules + p.pending * <int64_t>p.granules < p.reserve_granules
            pthread_mutex_unlock(&p.lock)
    if want_refill:
        # Failure leaves the object allocated and a smaller reserve; the next
        # non-atomic allocation tries again.
        pcpool_refill(p)
    # The space is ours since _take; the previous owner's writes happened
    # before its free, which the lock ordered before our take.
    first = pcpool_ptr(p, h, 0)
    for c in range(<size_t>p.nr_cpus):
        memset(first + c * p.unit_size, 0, n << GRANULE_SHIFT)
    return h


cdef int pcpool_refill(pc_pool *p) noexcept nogil:
    cdef pc_block blk
    cdef int rc
    while True:
        pthread_mutex_lock(&p.lock)
        # Blocks other threads are already creating count: no over-growth
        # when several threads notice the same shortfall.
        if p.free_granules + p.pending * <int64_t>p.granules >= p.reserve_granules:
            pthread_mutex_unlock(&p.lock)
            return 0
        p.pending += 1
        pthread_mutex_unlock(&p.lock)
        rc = _block_new(p, &blk)
        pthread_mutex_lock(&p.lock)
        p.pending -= 1
        if rc == 0 and _block_insert(p, &blk) != 0:
            pthread_mutex_unlock(&p.lock)
            _block_drop(p, &blk)
            return -1
        pthread_mutex_unlock(&p.lock)
        if rc != 0:
            return -1


cdef inline size_t _object_granules(pc_pool *p, pc_block *blk, size_t g) noexcept nogil:
    """Length of the object starting at granule g: up to the first free
    granule or the next object's start."""
    cdef size_t end = pc_bit_find(blk.used, g + 1, p.granules, 0)
    return pc_bit_find(blk.start, g + 1, end, 1) - g


cdef inline pc_block *_lookup(pc_pool *p, int64_t handle) noexcept nogil:
    """The block of a live handle, or NULL; call with the lock held."""
    cdef int64_t b
    cdef size_t g
    # Handles are granule offsets: anything else was never handed out.
    if handle < 0 or (handle & (GRANULE - 1)) != 0:
        return NULL
    b = handle >> p.unit_shift
    g = <size_t>(handle & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT
    if b >= p.nblocks or not pc_bit_test(p.blocks[b].start, g):
        return NULL
    return &p.blocks[b]


cdef int pcpool_free(pc_pool *p, int64_t handle) noexcept nogil:
    cdef pc_block *blk
    cdef size_t g, n
    pthread_mutex_lock(&p.lock)
    blk = _lookup(p, handle)
    if blk == NULL:
        pthread_mutex_unlock(&p.lock)
        return -2
    g = <size_t>(handle & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT
    n = _object_granules(p, blk, g)
    pc_bit_fill(blk.used, g, g + n, 0)
    pc_bit_fill(blk.start, g, g + 1, 0)
    _tail_store(p, blk, g, 0)
    blk.free_granules += <uint32_t>n
    p.free_granules += <int64_t>n
    p.used_granules -= <int64_t>n
    p.objects -= 1
    p.frees += 1
    if handle >> p.unit_shift < p.hint:
        p.hint = handle >> p.unit_shift
    pthread_mutex_unlock(&p.lock)
    return 0


cdef int64_t pcpool_object_size(pc_pool *p, int64_t handle) noexcept nogil:
    cdef pc_block *blk
    cdef int64_t size = -2
    cdef size_t g
    pthread_mutex_lock(&p.lock)
    blk = _lookup(p, handle)
    if blk != NULL:
        g = <size_t>(handle & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT
        size = <int64_t>((_object_granules(p, blk, g) << GRANULE_SHIFT) - _tail_load(p, blk, g))
    pthread_mutex_unlock(&p.lock)
    return size


cdef char *pcpool_ptr(pc_pool *p, int64_t handle, int cpu) noexcept nogil:
    # Acquire pairs with the release in _block_insert: a concurrent array
    # replacement is seen with its copied contents. The caller's handle came
    # from an alloc that happened before, so its block is in any array we see.
    cdef pc_block *blocks = <pc_block *>pc_load_ptr(<void **>&p.blocks, PC_ACQUIRE)
    return (blocks[handle >> p.unit_shift].base
            + (<size_t>cpu << p.unit_shift)
            + (<size_t>handle & (p.unit_size - 1)))


cdef size_t pcpool_stride(pc_pool *p) noexcept nogil:
    return p.unit_size


# ---------------------------------------------------------------------------
# NaivePool in C terms

cdef int _naive_init(pc_naive *p) noexcept nogil:
    p.nr_cpus = pc_nr_cpus()
    p.max_size = NAIVE_MAX
    p.cap = 64
    p.objs = <char ***>malloc(<size_t>p.cap * sizeof(char **))
    p.sizes = <uint32_t *>malloc(<size_t>p.cap * sizeof(uint32_t))
    p.free_slots = <int64_t *>malloc(<size_t>p.cap * sizeof(int64_t))
    if p.objs == NULL or p.sizes == NULL or p.free_slots == NULL:
        free(p.objs)
        free(p.sizes)
        free(p.free_slots)
        p.objs = NULL
        return -1
    pthread_mutex_init(&p.lock, NULL)
    pc_fork_track(_registry, &p.fork, &p.lock, NULL)
    return 0


cdef void _naive_copies_free(char **copies, int nr_cpus) noexcept nogil:
    cdef int c
    for c in range(nr_cpus):
        free(copies[c])
    free(copies)


cdef void _naive_destroy(pc_naive *p) noexcept nogil:
    cdef int64_t i
    if p.objs == NULL:
        return
    for i in range(p.top):
        if p.objs[i] != NULL:
            _naive_copies_free(p.objs[i], p.nr_cpus)
    free(p.objs)
    free(p.sizes)
    free(p.free_slots)
    for i in range(p.nretired):
        free(p.retired[i])
    pc_fork_untrack(_registry, &p.fork)
    pthread_mutex_destroy(&p.lock)


cdef inline size_t _naive_footprint(pc_naive *p, size_t size) noexcept nogil:
    # Each CPU's copy is rounded up to a whole cache line (that is what kept
    # copies of different CPUs off each other's lines), plus the pointer array.
    return <size_t>p.nr_cpus * (pc_round_up(size, PC_CACHELINE) + sizeof(char *))


cdef int _naive_grow(pc_naive *p) noexcept nogil:
    """Doubles the slot arrays; call with the lock held."""
    cdef int64_t cap = 2 * p.cap
    cdef char ***objs
    cdef uint32_t *sizes
    cdef int64_t *slots
    if p.nretired == 64:
        return -1
    objs = <char ***>malloc(<size_t>cap * sizeof(char **))
    sizes = <uint32_t *>malloc(<size_t>cap * sizeof(uint32_t))
    slots = <int64_t *>malloc(<size_t>cap * sizeof(int64_t))
    if objs == NULL or sizes == NULL or slots == NULL:
        free(objs)
        free(sizes)
        free(slots)
        return -1
    memcpy(objs, p.objs, <size_t>p.top * sizeof(char **))
    memcpy(sizes, p.sizes, <size_t>p.top * sizeof(uint32_t))
    memcpy(slots, p.free_slots, <size_t>p.nfree * sizeof(int64_t))
    free(p.sizes)
    free(p.free_slots)
    p.sizes = sizes
    p.free_slots = slots
    # As for pc_pool.blocks: readers without the lock may hold the old array.
    p.retired[p.nretired] = p.objs
    p.nretired += 1
    pc_store_ptr(<void **>&p.objs, objs, PC_RELEASE)
    p.cap = cap
    return 0


cdef int64_t naive_alloc(pc_naive *p, size_t size, size_t align, bint atomic) noexcept nogil:
    cdef char **copies
    cdef void *mem
    cdef int c
    cdef int64_t h
    cdef size_t rounded = pc_round_up(size, PC_CACHELINE)
    if _bad_request(size, align, p.max_size):
        return -2
    if align < PC_CACHELINE:
        align = PC_CACHELINE
    copies = <char **>malloc(<size_t>p.nr_cpus * sizeof(char *))
    if copies == NULL:
        return -1
    for c in range(p.nr_cpus):
        if posix_memalign(&mem, align, rounded) != 0:
            _naive_copies_free(copies, c)
            return -1
        memset(mem, 0, rounded)
        copies[c] = <char *>mem
    pthread_mutex_lock(&p.lock)
    if p.nfree > 0:
        p.nfree -= 1
        h = p.free_slots[p.nfree]
    elif p.top < p.cap or _naive_grow(p) == 0:
        h = p.top
        p.top += 1
    else:
        pthread_mutex_unlock(&p.lock)
        _naive_copies_free(copies, p.nr_cpus)
        return -1
    p.objs[h] = copies
    p.sizes[h] = <uint32_t>size
    p.objects += 1
    p.allocs += 1
    if atomic:
        p.atomic_allocs += 1
    p.bytes_used += <int64_t>(pc_round_up(size, GRANULE) * <size_t>p.nr_cpus)
    p.bytes_reserved += <int64_t>_naive_footprint(p, size)
    pthread_mutex_unlock(&p.lock)
    return h


cdef int naive_free(pc_naive *p, int64_t handle) noexcept nogil:
    cdef char **copies
    cdef size_t size
    pthread_mutex_lock(&p.lock)
    if handle < 0 or handle >= p.top or p.objs[handle] == NULL:
        pthread_mutex_unlock(&p.lock)
        return -2
    copies = p.objs[handle]
    p.objs[handle] = NULL
    size = p.sizes[handle]
    p.free_slots[p.nfree] = handle
    p.nfree += 1
    p.objects -= 1
    p.frees += 1
    p.bytes_used -= <int64_t>(pc_round_up(size, GRANULE) * <size_t>p.nr_cpus)
    p.bytes_reserved -= <int64_t>_naive_footprint(p, size)
    pthread_mutex_unlock(&p.lock)
    _naive_copies_free(copies, p.nr_cpus)
    return 0


cdef int64_t naive_object_size(pc_naive *p, int64_t handle) noexcept nogil:
    cdef int64_t size = -2
    pthread_mutex_lock(&p.lock)
    if 0 <= handle < p.top and p.objs[handle] != NULL:
        size = p.sizes[handle]
    pthread_mutex_unlock(&p.lock)
    return size


cdef char *naive_ptr(pc_naive *p, int64_t handle, int cpu) noexcept nogil:
    # Acquire: pairs with the release in _naive_grow (see pcpool_ptr).
    cdef char ***objs = <char ***>pc_load_ptr(<void **>&p.objs, PC_ACQUIRE)
    return objs[handle][cpu]


cdef int64_t _naive_copy_out(pc_naive *p, int64_t handle, char *dst, int64_t cap) noexcept nogil:
    """Copies a live object's copies, CPU after CPU, into dst (room for cap
    bytes per CPU); returns its size, or -2 when the handle is not live.

    Under the lock: a free in another thread (with no GIL to keep the two
    apart, or with the GIL released by free) could otherwise release the
    copies between the liveness check and the copy."""
    cdef int64_t size = -2
    cdef int c
    pthread_mutex_lock(&p.lock)
    if 0 <= handle < p.top and p.objs[handle] != NULL:
        size = p.sizes[handle]
        if size <= cap:
            for c in range(p.nr_cpus):
                memcpy(dst + c * size, p.objs[handle][c], <size_t>size)
    pthread_mutex_unlock(&p.lock)
    return size


cdef uintptr_t _naive_address(pc_naive *p, int64_t handle, int cpu) noexcept nogil:
    """The address of a live object's copy on cpu, or 0; under the lock for
    the same reason as _naive_copy_out (naive_ptr would read a freed array)."""
    cdef uintptr_t addr = 0
    pthread_mutex_lock(&p.lock)
    if 0 <= handle < p.top and p.objs[handle] != NULL:
        addr = <uintptr_t>p.objs[handle][cpu]
    pthread_mutex_unlock(&p.lock)
    return addr


# ---------------------------------------------------------------------------
# Python API

cdef size_t _as_size(object value, str name, size_t limit) except 0:
    """A positive int <= limit; TypeError for non-ints, ValueError otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if v <= 0 or v > limit:
        raise ValueError(f"{name} must be in [1, {limit}], not {v}")
    return <size_t>v


cdef size_t _as_align(object value, size_t limit) except 0:
    cdef size_t a = _as_size(value, "align", limit)
    if a & (a - 1):
        raise ValueError(f"align must be a power of two, not {a}")
    return a


cdef int64_t _as_handle(object value) except -1:
    if isinstance(value, bool):
        raise TypeError("handle must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"handle must be an int, not {type(value).__name__}") from None
    if v < 0 or v >= (1 << 63):
        raise ValueError(f"unknown handle {v}")
    return <int64_t>v


cdef int _as_cpu(object value, int nr_cpus) except -1:
    if isinstance(value, bool):
        raise TypeError("cpu must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"cpu must be an int, not {type(value).__name__}") from None
    if v < 0 or v >= nr_cpus:
        raise ValueError(f"cpu must be in range({nr_cpus}), not {v}")
    return <int>v


cdef int64_t _live_size(int64_t size, object handle) except -1:
    if size < 0:
        raise ValueError(f"unknown or already freed handle {handle}")
    return size


cdef class PerCPUPool:
    """The compact per-CPU allocator.

    ``PerCPUPool(unit_size=None)``: ``unit_size`` is the bytes each CPU gets per
    block (a power of two, at least the cache line, at most ``MAX_UNIT_SIZE``;
    default one page). Objects up to ``unit_size`` bytes, aligned up to
    ``unit_size``. Blocks are kept until the pool dies; freed space is reused.
    """

    def __cinit__(self, unit_size=None):
        cdef size_t unit
        if unit_size is None:
            unit = DEFAULT_UNIT_SIZE
        else:
            unit = _as_size(unit_size, "unit_size", MAX_UNIT)
            if unit & (unit - 1) or unit < <size_t>PC_CACHELINE:
                raise ValueError(
                    f"unit_size must be a power of two >= {PC_CACHELINE}, not {unit}")
        self.c = <pc_pool *>malloc(sizeof(pc_pool))
        if self.c == NULL:
            raise MemoryError()
        memset(self.c, 0, sizeof(pc_pool))
        if _pool_init(self.c, unit) != 0:
            free(self.c)
            self.c = NULL
            raise MemoryError()
        # Atomic allocations may come first: have the reserve ready.
        self.refill()

    def __dealloc__(self):
        if self.c != NULL:
            _pool_destroy(self.c)
            free(self.c)
            self.c = NULL

    @property
    def unit_size(self) -> int:
        """Bytes per CPU per block: the stride between two CPUs' copies."""
        return self.c.unit_size

    @property
    def nr_cpus(self) -> int:
        return self.c.nr_cpus

    def alloc(self, size, align=8, atomic=False) -> int:
        """Allocate ``size`` bytes on every CPU, zeroed; returns the handle.

        ``atomic=True`` never grows the pool: it is served from the reserve and
        raises ``MemoryError`` when that is used up (``refill()`` restores it).
        """
        cdef size_t s = _as_size(size, "size", self.c.unit_size)
        cdef size_t a = _as_align(align, self.c.unit_size)
        cdef bint at = bool(atomic)
        cdef int64_t h
        with nogil:
            h = pcpool_alloc(self.c, s, a, at)
        if h == -1:
            raise MemoryError("atomic reserve exhausted" if at else "out of memory")
        return h

    def free(self, handle) -> None:
        """Free an object; ``ValueError`` if the handle is not live."""
        cdef int64_t h = _as_handle(handle)
        if pcpool_free(self.c, h) != 0:
            raise ValueError(f"unknown or already freed handle {handle}")

    def size(self, handle) -> int:
        """The size the object was allocated with."""
        return _live_size(pcpool_object_size(self.c, _as_handle(handle)), handle)

    def address(self, handle, cpu) -> int:
        """Address of CPU ``cpu``'s copy (per_cpu_ptr)."""
        cdef int64_t h = _as_handle(handle)
        cdef int c = _as_cpu(cpu, self.c.nr_cpus)
        _live_size(pcpool_object_size(self.c, h), handle)
        return <uintptr_t>pcpool_ptr(self.c, h, c)

    def view(self, handle):
        """A live uint8 view, shape ``(nr_cpus, size)``, of every CPU's copy.

        The view keeps the pool alive; after ``free`` it still points at the
        (possibly reused) space.
        """
        cdef int64_t h = _as_handle(handle)
        cdef int64_t size = _live_size(pcpool_object_size(self.c, h), handle)
        cdef cnp.npy_intp dims[2]
        cdef cnp.npy_intp strides[2]
        cdef cnp.ndarray arr
        dims[0] = self.c.nr_cpus
        dims[1] = size
        strides[0] = <cnp.npy_intp>self.c.unit_size
        strides[1] = 1
        arr = cnp.PyArray_New(
            cnp.ndarray, 2, dims, cnp.NPY_UINT8, strides,
            pcpool_ptr(self.c, h, 0), 0, cnp.NPY_ARRAY_WRITEABLE, None)
        # The array borrows pool memory: it must keep the pool alive.
        cnp.set_array_base(arr, self)
        return arr

    def refill(self) -> None:
        """Grow the pool until the atomic reserve (one block's worth of free
        space) is there again."""
        cdef int rc
        with nogil:
            rc = pcpool_refill(self.c)
        if rc != 0:
            raise MemoryError("cannot refill the atomic reserve")

    def stats(self) -> dict:
        """Footprint and counts. Byte figures cover all CPUs' copies:
        ``bytes_reserved`` is the blocks' memory, ``bytes_used`` the live
        objects' sizes rounded to the granule, ``bytes_free`` the free space,
        ``metadata_bytes`` the bitmaps and block table."""
        cdef pc_pool snap
        cdef pc_pool *p = &snap
        cdef int64_t n = self.c.nr_cpus
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            snap = self.c[0]
            pthread_mutex_unlock(&self.c.lock)
        s = {
            "nr_cpus": p.nr_cpus,
            "unit_size": p.unit_size,
            "granule": GRANULE,
            "blocks": p.nblocks,
            "objects": p.objects,
            "allocs": p.allocs,
            "frees": p.frees,
            "atomic_allocs": p.atomic_allocs,
            "atomic_failures": p.atomic_failures,
            "bytes_reserved": p.nblocks * <int64_t>p.unit_size * n,
            "bytes_used": p.used_granules * GRANULE * n,
            "bytes_free": p.free_granules * GRANULE * n,
            "reserve_bytes": p.reserve_granules * GRANULE * n,
            "metadata_bytes": <int64_t>sizeof(pc_pool) + p.cap * <int64_t>sizeof(pc_block)
                              + p.nblocks * <int64_t>(MAPS * p.map_words * sizeof(uint64_t)),
        }
        s["bytes_per_object"] = (
            (s["bytes_reserved"] + s["metadata_bytes"]) / s["objects"] if s["objects"] else None)
        return s

    def __repr__(self) -> str:
        cdef int64_t nblocks, objects
        # Under the lock: allocations in other threads write these.
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            nblocks = self.c.nblocks
            objects = self.c.objects
            pthread_mutex_unlock(&self.c.lock)
        return (f"PerCPUPool(unit_size={self.c.unit_size}, nr_cpus={self.c.nr_cpus}, "
                f"blocks={nblocks}, objects={objects})")


cdef class NaivePool:
    """The pre-2005 per-CPU allocator, kept as the baseline: every object is
    one cache-line-aligned allocation per CPU plus an array of their pointers.
    Objects and alignments up to ``NAIVE_MAX_SIZE`` bytes."""

    def __cinit__(self):
        self.c = <pc_naive *>malloc(sizeof(pc_naive))
        if self.c == NULL:
            raise MemoryError()
        memset(self.c, 0, sizeof(pc_naive))
        if _naive_init(self.c) != 0:
            free(self.c)
            self.c = NULL
            raise MemoryError()

    def __dealloc__(self):
        if self.c != NULL:
            _naive_destroy(self.c)
            free(self.c)
            self.c = NULL

    @property
    def nr_cpus(self) -> int:
        return self.c.nr_cpus

    def alloc(self, size, align=8, atomic=False) -> int:
        """Allocate ``size`` bytes on every CPU, zeroed; returns the handle.
        ``atomic`` is counted only: the baseline has no reserve."""
        cdef size_t s = _as_size(size, "size", self.c.max_size)
        cdef size_t a = _as_align(align, self.c.max_size)
        cdef bint at = bool(atomic)
        cdef int64_t h
        with nogil:
            h = naive_alloc(self.c, s, a, at)
        if h == -1:
            raise MemoryError("out of memory")
        return h

    def free(self, handle) -> None:
        cdef int64_t h = _as_handle(handle)
        cdef int rc
        with nogil:
            rc = naive_free(self.c, h)
        if rc != 0:
            raise ValueError(f"unknown or already freed handle {handle}")

    def size(self, handle) -> int:
        return _live_size(naive_object_size(self.c, _as_handle(handle)), handle)

    def address(self, handle, cpu) -> int:
        cdef int64_t h = _as_handle(handle)
        cdef int c = _as_cpu(cpu, self.c.nr_cpus)
        cdef uintptr_t addr = _naive_address(self.c, h, c)
        if addr == 0:
            raise ValueError(f"unknown or already freed handle {handle}")
        return addr

    def view(self, handle):
        """A copy, shape ``(nr_cpus, size)``: the copies are not evenly spaced."""
        cdef int64_t h = _as_handle(handle)
        cdef int64_t size = _live_size(naive_object_size(self.c, h), handle)
        cdef int64_t copied
        cdef cnp.npy_intp dims[2]
        cdef cnp.ndarray out
        cdef char *dst
        while True:
            dims[0] = self.c.nr_cpus
            dims[1] = size
            out = cnp.PyArray_ZEROS(2, dims, cnp.NPY_UINT8, 0)
            dst = <char *>cnp.PyArray_DATA(out)
            with nogil:
                copied = _naive_copy_out(self.c, h, dst, size)
            if copied == size:
                return out
            # Freed in between (ValueError), or freed and handed out again
            # with another size: size the copy from what is there now.
            size = _live_size(copied, handle)

    def refill(self) -> None:
        """Nothing to do: the baseline allocates per object."""

    def stats(self) -> dict:
        """As ``PerCPUPool.stats``; ``bytes_reserved`` is every copy rounded up
        to the cache line plus the pointer arrays."""
        cdef pc_naive snap
        cdef pc_naive *p = &snap
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            snap = self.c[0]
            pthread_mutex_unlock(&self.c.lock)
        s = {
            "nr_cpus": p.nr_cpus,
            "granule": GRANULE,
            "objects": p.objects,
            "allocs": p.allocs,
            "frees": p.frees,
            "atomic_allocs": p.atomic_allocs,
            "atomic_failures": 0,
            "bytes_reserved": p.bytes_reserved,
            "bytes_used": p.bytes_used,
            "metadata_bytes": <int64_t>sizeof(pc_naive)
                              + p.cap * <int64_t>(sizeof(char **) + sizeof(uint32_t) + sizeof(int64_t)),
        }
        s["bytes_per_object"] = (
            (s["bytes_reserved"] + s["metadata_bytes"]) / s["objects"] if s["objects"] else None)
        return s

    def __repr__(self) -> str:
        cdef int64_t objects
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            objects = self.c.objects
            pthread_mutex_unlock(&self.c.lock)
        return f"NaivePool(nr_cpus={self.c.nr_cpus}, objects={objects})"


# Made once, at import (module initialisation runs in one thread, under the
# import lock), and never replaced: default_pool() is then a plain load that
# many threads may run at once without the GIL. A lazy check-then-set here
# would let two threads each store a pool (and drop a reference twice) on a
# free-threaded build. The cost is one block's mapping, whose pages are only
# touched when counters land in them; percpu._refs asks for the pool at its
# own import anyway.
cdef PerCPUPool _default_pool = PerCPUPool()


cdef PerCPUPool default_pool():
    return _default_pool


def get_default_pool() -> PerCPUPool:
    """The process-wide pool that counters and references allocate from."""
    return default_pool()


# ---------------------------------------------------------------------------
# Native-thread kernels for tests and measurements

cdef struct TeamArg:
    pc_pool *pool           # one of pool / naive is set
    pc_naive *naive
    size_t size
    int nr_cpus
    int64_t *corrupt        # per thread: copies whose pattern another object overwrote
    int64_t *nonzero        # per thread: copies not zeroed at alloc
    int64_t *failures       # per thread: allocations that failed
    char *counter_base      # _percpu_add_stress: the counters' CPU-0 copies
    size_t counter_stride


cdef inline int64_t _t_alloc(TeamArg *a, size_t size) noexcept nogil:
    if a.pool != NULL:
        return pcpool_alloc(a.pool, size, GRANULE, False)
    return naive_alloc(a.naive, size, GRANULE, False)


cdef inline void _t_free(TeamArg *a, int64_t h) noexcept nogil:
    if a.pool != NULL:
        pcpool_free(a.pool, h)
    else:
        naive_free(a.naive, h)


cdef inline char *_t_ptr(TeamArg *a, int64_t h, int cpu) noexcept nogil:
    if a.pool != NULL:
        return pcpool_ptr(a.pool, h, cpu)
    return naive_ptr(a.naive, h, cpu)


cdef inline uint64_t _tag(int tid, int64_t i, int cpu) noexcept nogil:
    # splitmix64 of (tid, i, cpu): every byte differs between two objects with
    # high probability, so a partial overlap shows too.
    cdef uint64_t z = (<uint64_t>(tid + 1) << 48) ^ (<uint64_t>i << 8) ^ <uint64_t>cpu
    z += 0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline size_t _stress_size(TeamArg *a, int tid, int64_t i) noexcept nogil:
    # Varying sizes fragment the units; the largest is a.size.
    return 1 + <size_t>((<uint64_t>i * 2654435761ULL + <uint64_t>tid * 40503ULL) % a.size)


cdef int64_t _check_object(TeamArg *a, int64_t h, int tid, int64_t i) noexcept nogil:
    cdef size_t size = _stress_size(a, tid, i), j
    cdef int c
    cdef uint64_t tag
    cdef unsigned char *q
    cdef int64_t bad = 0
    for c in range(a.nr_cpus):
        tag = _tag(tid, i, c)
        q = <unsigned char *>_t_ptr(a, h, c)
        for j in range(size):
            if q[j] != <unsigned char>(tag >> (8 * (j & 7))):
                bad += 1
                break
    return bad


cdef void _stress_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t ring[RING]
    cdef int64_t ring_i[RING]
    cdef int64_t i, h, corrupt = 0, nonzero = 0, failures = 0
    cdef size_t size, j
    cdef int c, k
    cdef uint64_t tag
    cdef unsigned char *q
    for k in range(RING):
        ring[k] = -1
    for i in range(ops):
        k = <int>(i % RING)
        if ring[k] >= 0:
            corrupt += _check_object(a, ring[k], tid, ring_i[k])
            _t_free(a, ring[k])
            ring[k] = -1
        size = _stress_size(a, tid, i)
        h = _t_alloc(a, size)
        if h < 0:
            failures += 1
            continue
        for c in range(a.nr_cpus):
            q = <unsigned char *>_t_ptr(a, h, c)
            for j in range(size):
                if q[j] != 0:
                    nonzero += 1
                    break
            tag = _tag(tid, i, c)
            for j in range(size):
                q[j] = <unsigned char>(tag >> (8 * (j & 7)))
        ring[k] = h
        ring_i[k] = i
    for k in range(RING):
        if ring[k] >= 0:
            corrupt += _check_object(a, ring[k], tid, ring_i[k])
            _t_free(a, ring[k])
    a.corrupt[tid] = corrupt
    a.nonzero[tid] = nonzero
    a.failures[tid] = failures
    done[0] = ops


cdef void _bench_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t i, h, failures = 0
    for i in range(ops):
        h = _t_alloc(a, a.size)
        if h < 0:
            failures += 1
        else:
            _t_free(a, h)
    a.failures[tid] = failures
    done[0] = ops


cdef void _percpu_add_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil:
    cdef TeamArg *a = <TeamArg *>arg
    cdef int64_t i
    # Two counters packed next to each other in the same units: each CPU's
    # pair shares a line, which only that CPU writes.
    for i in range(ops):
        pc_percpu_add(a.counter_base, a.counter_stride, 1)
        pc_percpu_add(a.counter_base + 8, a.counter_stride, 2)
    done[0] = ops


cdef dict _run_team(object pool, int threads, long long ops, size_t size, pc_kernel_fn fn,
                    char *counter_base=NULL, size_t counter_stride=0):
    if threads <= 0:
        raise ValueError(f"threads must be > 0, not {threads}")
    if ops < 0:
        raise ValueError(f"ops must be >= 0, not {ops}")
    cdef TeamArg arg
    memset(&arg, 0, sizeof(arg))
    if isinstance(pool, PerCPUPool):
        arg.pool = (<PerCPUPool>pool).c
        arg.nr_cpus = arg.pool.nr_cpus
        if size > arg.pool.unit_size:
            raise ValueError(f"size must be <= {arg.pool.unit_size}")
    elif isinstance(pool, NaivePool):
        arg.naive = (<NaivePool>pool).c
        arg.nr_cpus = arg.naive.nr_cpus
        if size > arg.naive.max_size:
            raise ValueError(f"size must be <= {arg.naive.max_size}")
    else:
        raise TypeError(f"pool must be a PerCPUPool or NaivePool, not {type(pool).__name__}")
    if size == 0:
        raise ValueError("size must be > 0")
    arg.size = size
    arg.counter_base = counter_base
    arg.counter_stride = counter_stride
    cdef int64_t *buf = <int64_t *>malloc(4 * <size_t>threads * sizeof(int64_t))
    if buf == NULL:
        raise MemoryError()
    memset(buf, 0, 4 * <size_t>threads * sizeof(int64_t))
    arg.corrupt = buf + threads
    arg.nonzero = buf + 2 * threads
    arg.failures = buf + 3 * threads
    try:
        wall_ns = pc_run_team(fn, &arg, threads, ops, buf, False)
        return {
            "threads": threads,
            "ops": ops,
            "wall_ns": wall_ns,
            "done": [buf[i] for i in range(threads)],
            "corrupt": sum([arg.corrupt[i] for i in range(threads)]),
            "nonzero": sum([arg.nonzero[i] for i in range(threads)]),
            "failures": sum([arg.failures[i] for i in range(threads)]),
        }
    finally:
        free(buf)


def _stress(pool, int threads, long long ops, size_t size=64) -> dict:
    """Test helper: ``threads`` native threads each allocate ``ops`` objects of
    1..size bytes (keeping 8 live), check every CPU copy is zeroed, write a
    pattern unique to (thread, object, cpu), check it before freeing. Returns
    counts of ``corrupt`` and ``nonzero`` copies and of ``failures``."""
    return _run_team(pool, threads, ops, size, _stress_kernel)


def _bench_alloc(pool, int threads, long long ops, size_t size=8) -> dict:
    """Measurement helper: each thread runs ``ops`` alloc+free pairs through
    the nogil C API. Adds ``ns_per_pair`` (wall time / ops: the time one
    thread sees per pair) and ``pairs_per_sec`` (all threads)."""
    r = _run_team(pool, threads, ops, size, _bench_kernel)
    r["ns_per_pair"] = r["wall_ns"] / ops if ops else 0.0
    r["pairs_per_sec"] = threads * ops * 1e9 / r["wall_ns"] if r["wall_ns"] else 0.0
    return r


def _audit(PerCPUPool pool) -> dict:
    """Test helper: recounts the bitmaps under the lock. Returns ``objects``
    and ``used_granules`` as the bitmaps say, ``free_granules`` as the blocks'
    counters say, and ``consistent``: the bitmaps, the blocks' and the pool's
    counters agree and every start bit marks a used granule."""
    cdef pc_pool *p = pool.c
    cdef int64_t b, objects = 0, used = 0, free_counted = 0
    cdef size_t g
    cdef bint ok = True
    cdef pc_block *blk
    with nogil:
        pthread_mutex_lock(&p.lock)
        for b in range(p.nblocks):
            blk = &p.blocks[b]
            for g in range(p.granules):
                if pc_bit_test(blk.used, g):
                    used += 1
                elif pc_bit_test(blk.start, g):
                    ok = False
                if pc_bit_test(blk.start, g):
                    objects += 1
                elif _tail_load(p, blk, g) != 0:
                    ok = False
            free_counted += blk.free_granules
        ok = (ok and objects == p.objects and used == p.used_granules
              and free_counted == p.free_granules
              and used + free_counted == p.nblocks * <int64_t>p.granules)
        pthread_mutex_unlock(&p.lock)
    return {"objects": objects, "used_granules": used, "free_granules": free_counted,
            "consistent": bool(ok)}


def _percpu_add_stress(PerCPUPool pool, int threads, long long ops) -> dict:
    """Test helper: two int64 per-CPU counters packed in one 16-byte object,
    bumped by pc_percpu_add (rseq or its fallback) from native threads.
    Returns the sums of both and of the untouched neighbour object."""
    cdef int64_t h = pcpool_alloc(pool.c, 16, 8, False)
    cdef int64_t neighbour = pcpool_alloc(pool.c, 8, 8, False)
    if h < 0 or neighbour < 0:
        raise MemoryError()
    cdef char *base = pcpool_ptr(pool.c, h, 0)
    cdef size_t stride = pcpool_stride(pool.c)
    try:
        r = _run_team(pool, threads, ops, 8, _percpu_add_kernel, base, stride)
        r["first"] = pc_percpu_sum(base, stride)
        r["second"] = pc_percpu_sum(base + 8, stride)
        r["neighbour"] = pc_percpu_sum(pcpool_ptr(pool.c, neighbour, 0), stride)
        r["rseq"] = bool(pc_rseq_live())
        return r
    finally:
        pcpool_free(pool.c, h)
        pcpool_free(pool.c, neighbour)
