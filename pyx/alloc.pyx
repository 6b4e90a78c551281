# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._alloc: the compact per-CPU allocator (PerCPUPool) and the pre-2005
baseline (NaivePool).

PerCPUPool follows "mm: Reimplementation of dynamic per-cpu allocator" (2005):
memory comes in blocks of ``unit_size * nr_cpus`` bytes (plus one unit for the
shared slots, see _alloc.pxd); an object is an offset
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
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
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

cdef extern from "percpu.h" nogil:
    size_t pc_bit_find(const uint64_t *map, size_t start, size_t end, int want) noexcept nogil
    void pc_bit_fill(uint64_t *map, size_t start, size_t end, int val) noexcept nogil
    bint pc_bit_test(const uint64_t *map, size_t i) noexcept nogil
    size_t pc_page_size() noexcept nogil
    void *pc_map_aligned(size_t nbytes, size_t align) noexcept nogil
    void pc_unmap(void *p, size_t nbytes) noexcept nogil
    bint pc_bit_test_shared(const uint64_t *map, size_t i) noexcept nogil
    bint pc_bit_set_shared(uint64_t *map, size_t i) noexcept nogil
    bint pc_bit_clear_shared(uint64_t *map, size_t i) noexcept nogil
    size_t pc_bit_find_shared(const uint64_t *map, size_t start, size_t end, int want) noexcept nogil
    void pc_bit_fill_shared(uint64_t *map, size_t start, size_t end, int val) noexcept nogil
    bint pc_cache_trylock(pc_pool_cache *c) noexcept nogil
    void pc_cache_lock(pc_pool_cache *c) noexcept nogil
    void pc_cache_unlock(pc_pool_cache *c) noexcept nogil
    int64_t pc_cache_pop(pc_pool_cache *c, int cls, int64_t align_mask) noexcept nogil
    bint pc_cache_has_room(const pc_pool_cache *c, int cls, int64_t n, int64_t limit) noexcept nogil
    void pc_cache_push(pc_pool_cache *c, int cls, int64_t n, int64_t pos) noexcept nogil


cdef enum:
    MAX_UNIT = 1 << 22      # bitmaps of 64 KiB per block at most
    NAIVE_MAX = 4096
    MAPS = 7                # bitmaps per block: used, start, end, live, three of tail

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
#
# Who touches what. The pool's lock guards the block table, the used and
# start bitmaps and the pool's counters. A cache's lock guards that cache.
# Three bitmaps are also touched without the pool's lock (pool.h): the live
# bit of an object (set when it is handed out, cleared by the free that
# claims it), its last-granule bit (written under the lock when space is
# taken or given back, read without it by the owner of a live object to
# learn its size) and its tail bits (written when it is handed out, maybe
# from a cache). An object's memory changes hands only through one of the
# locks: the freeing thread releases a lock after its last write, and the
# next owner acquires that lock before it zeroes the object.

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
    # A cache keeps at most a quarter of a unit: all the caches together hold
    # back at most nr_cpus / 4 blocks' worth from objects of other sizes.
    p.cache_limit = <int64_t>(p.granules >> 2)
    p.hint = 0
    p.cap = 8
    p.blocks = <pc_block *>malloc(<size_t>p.cap * sizeof(pc_block))
    p.caches = <pc_pool_cache **>calloc(<size_t>p.nr_cpus, sizeof(pc_pool_cache *))
    if p.blocks == NULL or p.caches == NULL:
        free(p.blocks)
        free(p.caches)
        p.blocks = NULL
        p.caches = NULL
        return -1
    pthread_mutex_init(&p.lock, NULL)
    pc_fork_track(_registry, &p.fork, &p.lock, NULL)
    return 0


cdef void _pool_destroy(pc_pool *p) noexcept nogil:
    cdef int64_t b
    cdef int c
    if p.caches != NULL:
        for c in range(p.nr_cpus):
            if p.caches[c] != NULL:
                pc_fork_untrack(_registry, &p.caches[c].fork)
                free(p.caches[c])
        free(p.caches)
    if p.blocks != NULL:
        for b in range(p.nblocks):
            _block_drop(p, &p.blocks[b])
        free(p.blocks)
    for b in range(p.nretired):
        free(p.retired[b])
    pc_fork_untrack(_registry, &p.fork)
    pthread_mutex_destroy(&p.lock)


cdef inline size_t _block_bytes(pc_pool *p) noexcept nogil:
    # A unit per possible CPU, and one for the shared slots. Only the units
    # of the ids that run are ever touched (_zero_copies).
    return p.unit_size * (<size_t>p.nr_cpus + 1)


cdef int _block_new(pc_pool *p, pc_block *blk) noexcept nogil:
    """Creates a block (outside the lock: this is the slow part of growth).
    Its memory is zero: _zero_copies relies on it."""
    cdef size_t nbytes = _block_bytes(p)
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
    blk.base = <char *>mem
    # One allocation holds all the bitmaps.
    blk.used = <uint64_t *>calloc(MAPS * p.map_words, sizeof(uint64_t))
    blk.gen = NULL
    if PC_DEBUG_HANDLES:
        blk.gen = <int32_t *>calloc(p.granules, sizeof(int32_t))
    if blk.used == NULL or (PC_DEBUG_HANDLES and blk.gen == NULL):
        _block_drop(p, blk)
        return -1
    blk.start = blk.used + p.map_words
    blk.end = blk.used + 2 * p.map_words
    blk.live = blk.used + 3 * p.map_words
    blk.tail = blk.used + 4 * p.map_words
    blk.free_granules = <uint32_t>p.granules
    return 0


cdef void _block_drop(pc_pool *p, pc_block *blk) noexcept nogil:
    if p.mapped:
        pc_unmap(blk.base, _block_bytes(p))
    else:
        free(blk.base)
    free(blk.used)
    free(blk.gen)


cdef int _block_insert(pc_pool *p, pc_block *blk) noexcept nogil:
    """Adds a block; call with the lock held. -1 when out of memory."""
    cdef pc_block *grown
    # A position must fit below the handle's tag bits.
    if (p.nblocks + 1) > (PC_HANDLE_POS_MASK >> p.unit_shift):
        return -1
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
    # Release: a lockless reader that sees the new count (acquire, in
    # _live_block) sees the entry written above, in whichever array it loads.
    pc_store_i64(&p.nblocks, p.nblocks + 1, PC_RELEASE)
    p.free_granules += <int64_t>p.granules
    p.grows += 1
    return 0


cdef inline void _tail_store(pc_pool *p, pc_block *blk, size_t g, size_t tail) noexcept nogil:
    # Written by whoever hands the object out, maybe without the pool's lock
    # (from a cache): read-modify-writes, as the words hold other objects' bits.
    cdef int k
    cdef uint64_t *map
    for k in range(3):
        map = blk.tail + k * p.map_words
        if pc_bit_test_shared(map, g) != <int>((tail >> k) & 1):
            if (tail >> k) & 1:
                pc_bit_set_shared(map, g)
            else:
                pc_bit_clear_shared(map, g)


cdef inline size_t _tail_load(pc_pool *p, pc_block *blk, size_t g) noexcept nogil:
    cdef int k
    cdef size_t tail = 0
    for k in range(3):
        tail |= <size_t>pc_bit_test_shared(blk.tail + k * p.map_words, g) << k
    return tail


cdef inline size_t _object_granules(pc_pool *p, pc_block *blk, size_t g) noexcept nogil:
    """Length of the allocated object starting at granule g, from its
    last-granule bit; its owner may call it without the pool's lock."""
    return pc_bit_find_shared(blk.end, g, p.granules, 1) + 1 - g


cdef int64_t _take(pc_pool *p, size_t n, size_t ag) noexcept nogil:
    """First fit of n granules at a multiple of ag granules; call with the
    lock held. Returns the position, or -1. The object is allocated in the
    bitmaps but not live: the caller hands it out or caches it."""
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
                pc_bit_fill_shared(blk.end, g + n - 1, g + n, 1)
                blk.free_granules -= <uint32_t>n
                p.free_granules -= <int64_t>n
                p.used_granules += <int64_t>n
                p.objects += 1
                return (b << p.unit_shift) | <int64_t>(g << GRANULE_SHIFT)
            g = busy + 1
    return -1


cdef void _give_back(pc_pool *p, int64_t pos) noexcept nogil:
    """Returns an allocated, not live object's space to the bitmaps; call
    with the lock held."""
    cdef int64_t b = pos >> p.unit_shift
    cdef pc_block *blk = &p.blocks[b]
    cdef size_t g = <size_t>(pos & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT
    cdef size_t n = _object_granules(p, blk, g)
    pc_bit_fill(blk.used, g, g + n, 0)
    pc_bit_fill(blk.start, g, g + 1, 0)
    pc_bit_fill_shared(blk.end, g + n - 1, g + n, 0)
    _tail_store(p, blk, g, 0)
    blk.free_granules += <uint32_t>n
    p.free_granules += <int64_t>n
    p.used_granules -= <int64_t>n
    p.objects -= 1
    if b < p.hint:
        p.hint = b


cdef inline void _zero_copies(pc_pool *p, int64_t pos, size_t nbytes) noexcept nogil:
    """Zeroes the copies of a new object (nbytes at pos) that may have been
    written before: the slots below the process's slot bound, the copies the
    pool handed out by index (pcpool_claim), the shared slot once shared
    slots are in use. Every other copy was never written since the block was
    mapped, so it is still zero; leaving it alone is what keeps the memory of
    CPUs that never run untouched.

    Why the loads see every earlier write: a write to copy k of this space
    (by any earlier owner) happened after its writer saw bound > k or
    claimed > k (an acquire load of the value a raise released, or its own
    raise); the write happened before that owner's free (the object's
    contract), which the pool's lock or a cache's lock ordered before our
    take. So the raise happens before these acquire loads, and they read it
    or a larger value: neither ever shrinks."""
    cdef pc_proc *proc = &_registry.proc
    cdef char *first = pcpool_ptr(p, pos, 0)
    cdef int32_t rows = pc_slots_in_use(proc)
    cdef int32_t claimed = pc_load_i32(&p.claimed, PC_ACQUIRE)
    cdef int32_t c
    if claimed > rows:
        rows = claimed
    if rows > p.nr_cpus:
        rows = p.nr_cpus
    for c in range(rows):
        memset(first + <size_t>c * p.unit_size, 0, nbytes)
    if pc_load_i32(&proc.shared_used, PC_ACQUIRE):
        memset(first + <size_t>p.nr_cpus * p.unit_size, 0, nbytes)


cdef void pcpool_claim(pc_pool *p, int ncpus) noexcept nogil:
    cdef int32_t old = pc_load_i32(&p.claimed, PC_RELAXED)
    if ncpus > p.nr_cpus:
        ncpus = p.nr_cpus
    # Release, paired with _zero_copies' acquire: the claim happens before
    # any write through the copies it hands out, so an allocation that those
    # writes happen before sees it.
    while old < ncpus and not pc_cas_i32(&p.claimed, &old, ncpus, PC_RELEASE, PC_RELAXED):
        pass


cdef inline int64_t _handout(pc_pool *p, int64_t pos, size_t n, size_t tail) noexcept nogil:
    """Makes the allocated object at pos live and zeroed; returns its handle.
    The caller owns the object (it took it under the pool's or a cache's lock)."""
    cdef pc_block *blocks = <pc_block *>pc_load_ptr(<void **>&p.blocks, PC_ACQUIRE)
    cdef pc_block *blk = &blocks[pos >> p.unit_shift]
    cdef size_t g = <size_t>(pos & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT
    cdef int32_t tag
    cdef int64_t handle = pos
    _tail_store(p, blk, g, tail)
    if PC_DEBUG_HANDLES:
        # Only the owner writes the tag; relaxed, like the live bit (pool.h).
        tag = (pc_load_i32(&blk.gen[g], PC_RELAXED) + 1) & PC_HANDLE_TAG_MASK
        pc_store_i32(&blk.gen[g], tag, PC_RELAXED)
        handle |= <int64_t>tag << PC_HANDLE_TAG_SHIFT
    pc_bit_set_shared(blk.live, g)
    _zero_copies(p, pos, n << GRANULE_SHIFT)
    return handle


cdef inline pc_block *_live_block(pc_pool *p, int64_t handle, size_t *g) noexcept nogil:
    """The block of a handle that names an object's first granule with the
    right tag, or NULL; without the lock. Whether the object is live is the
    caller's to check (test or claim its live bit)."""
    cdef int64_t pos = handle & PC_HANDLE_POS_MASK
    cdef int64_t b
    cdef pc_block *blocks
    cdef pc_block *blk
    # Handles are granule offsets: anything else was never handed out.
    if handle < 0 or (pos & (GRANULE - 1)) != 0:
        return NULL
    if not PC_DEBUG_HANDLES and pos != handle:
        return NULL
    b = pos >> p.unit_shift
    # Acquire: pairs with the release in _block_insert (the entry is there).
    if b >= pc_load_i64(&p.nblocks, PC_ACQUIRE):
        return NULL
    blocks = <pc_block *>pc_load_ptr(<void **>&p.blocks, PC_ACQUIRE)
    blk = &blocks[b]
    g[0] = <size_t>(pos & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT
    if PC_DEBUG_HANDLES and (handle >> PC_HANDLE_TAG_SHIFT) != pc_load_i32(&blk.gen[g[0]], PC_RELAXED):
        return NULL
    return blk


cdef inline int _size_class(size_t n) noexcept nogil:
    """The cache class of an object of n granules, or -1 when none caches it."""
    return <int>n - 1 if n <= PC_CACHE_CLASSES else -1


cdef pc_pool_cache *_cache_create(pc_pool *p, int cpu) noexcept nogil:
    cdef pc_pool_cache *c = <pc_pool_cache *>pc_aligned_zalloc(sizeof(pc_pool_cache))
    cdef pc_pool_cache *seen = NULL
    if c == NULL:
        return NULL
    pc_fork_track(_registry, &c.fork, NULL, &c.lock)
    # Release publishes the zeroed cache; on failure, acquire sees the winner's.
    if pc_cas_ptr(<void **>&p.caches[cpu], <void **>&seen, c, PC_ACQ_REL, PC_ACQUIRE):
        return c
    pc_fork_untrack(_registry, &c.fork)
    free(c)
    return seen


cdef inline pc_pool_cache *_this_cpu_cache(pc_pool *p, bint create) noexcept nogil:
    """This CPU's cache, created on first use when ``create``; NULL when none.
    pc_current_cpu() is always in [0, nr_cpus)."""
    cdef int cpu = pc_current_cpu()
    # Acquire: pairs with the CAS in _cache_create.
    cdef pc_pool_cache *c = <pc_pool_cache *>pc_load_ptr(<void **>&p.caches[cpu], PC_ACQUIRE)
    if c == NULL and create:
        c = _cache_create(p, cpu)
    return c


cdef void _give_back_many(pc_pool *p, int64_t *pos, int k) noexcept nogil:
    cdef int i
    if k == 0:
        return
    pthread_mutex_lock(&p.lock)
    for i in range(k):
        _give_back(p, pos[i])
    pthread_mutex_unlock(&p.lock)


cdef int64_t pcpool_drain(pc_pool *p) noexcept nogil:
    cdef int64_t spill[PC_CACHE_CLASSES * PC_CACHE_SLOTS]
    cdef int64_t total = 0
    cdef int cpu, cls, i, k
    cdef pc_pool_cache *c
    for cpu in range(p.nr_cpus):
        c = <pc_pool_cache *>pc_load_ptr(<void **>&p.caches[cpu], PC_ACQUIRE)
        if c == NULL:
            continue
        # One lock at a time: the cache's, then the pool's.
        pc_cache_lock(c)
        k = 0
        for cls in range(PC_CACHE_CLASSES):
            for i in range(c.count[cls]):
                spill[k] = c.objs[cls][i]
                k += 1
            c.count[cls] = 0
        c.granules = 0
        pc_cache_unlock(c)
        _give_back_many(p, spill, k)
        total += k
    return total


cdef void _cache_fill(pc_pool *p, pc_pool_cache *c, size_t n, int64_t *extra, int k) noexcept nogil:
    """Puts k objects of n granules, just taken from the bitmaps, into c;
    what does not fit goes back."""
    cdef int cls = _size_class(n)
    pc_cache_lock(c)
    # Last first: pops then hand them out in address order.
    while k > 0 and pc_cache_has_room(c, cls, <int64_t>n, p.cache_limit):
        k -= 1
        pc_cache_push(c, cls, <int64_t>n, extra[k])
    pc_cache_unlock(c)
    _give_back_many(p, extra, k)


cdef int64_t _alloc_shared(pc_pool *p, size_t n, size_t ag, bint atomic,
                           pc_pool_cache *cache) noexcept nogil:
    """The allocation when no cache could serve it: from the bitmaps, after
    draining the caches, after growing the pool (not when atomic). With a
    cache, a batch of further objects of the same size is taken for it, from
    space beyond the atomic reserve. Returns the position, or -1."""
    cdef int64_t pos, e
    cdef int64_t extra[PC_CACHE_BATCH]
    cdef int nextra = 0, most = 0
    cdef bint want_refill = False
    cdef pc_block blk
    pthread_mutex_lock(&p.lock)
    pos = _take(p, n, ag)
    if pos < 0:
        # Free space may wait in the caches: take it back before growing, or
        # before telling an atomic caller no.
        pthread_mutex_unlock(&p.lock)
        if pcpool_drain(p) > 0:
            pthread_mutex_lock(&p.lock)
            pos = _take(p, n, ag)
        else:
            pthread_mutex_lock(&p.lock)
    if pos >= 0:
        p.allocs += 1
        if atomic:
            p.atomic_allocs += 1
        elif cache != NULL:
            most = <int>min(<int64_t>PC_CACHE_BATCH - 1, (p.cache_limit // <int64_t>n) // 2)
            while nextra < most and p.free_granules - <int64_t>n >= p.reserve_granules:
                e = _take(p, n, ag)
                if e < 0:
                    break
                extra[nextra] = e
                nextra += 1
    elif atomic:
        p.atomic_failures += 1
    if not atomic:
        want_refill = p.free_granules + p.pending * <int64_t>p.granules < p.reserve_granules
    pthread_mutex_unlock(&p.lock)
    if pos < 0:
        if atomic:
            # GFP_ATOMIC: never grow, never wait for growth.
            return -1
        while pos < 0:
            # Growth maps memory: do it outside the lock, then insert.
            if _block_new(p, &blk) != 0:
                return -1
            pthread_mutex_lock(&p.lock)
            if _block_insert(p, &blk) != 0:
                pthread_mutex_unlock(&p.lock)
                _block_drop(p, &blk)
                return -1
            # A racing thread may have taken the new block; then go again.
            pos = _take(p, n, ag)
            if pos >= 0:
                p.allocs += 1
            want_refill = p.free_granules + p.pending * <int64_t>p.granules < p.reserve_granules
            pthread_mutex_unlock(&p.lock)
    if nextra:
        _cache_fill(p, cache, n, extra, nextra)
    if want_refill:
        # Failure leaves the object allocated and a smaller reserve; the next
        # non-atomic allocation tries again.
        pcpool_refill(p)
    return pos


cdef inline bint _bad_request(size_t size, size_t align, size_t limit) noexcept nogil:
    return size == 0 or size > limit or align == 0 or (align & (align - 1)) != 0 or align > limit


cdef int64_t pcpool_alloc(pc_pool *p, size_t size, size_t align, bint atomic) noexcept nogil:
    cdef size_t n, ag, tail
    cdef int64_t pos = -1
    cdef int cls
    cdef pc_pool_cache *cache = NULL
    if _bad_request(size, align, p.unit_size):
        return -2
    n = (size + GRANULE - 1) >> GRANULE_SHIFT
    ag = align >> GRANULE_SHIFT if align > GRANULE else 1
    tail = (n << GRANULE_SHIFT) - size
    cls = _size_class(n)
    if cls >= 0:
        # An atomic caller creates no cache (no malloc on that path).
        cache = _this_cpu_cache(p, not atomic)
        if cache != NULL and pc_cache_trylock(cache):
            pos = pc_cache_pop(cache, cls, <int64_t>align - 1)
            if pos >= 0:
                cache.granules -= <int64_t>n
                cache.allocs += 1
                if atomic:
                    cache.atomic_allocs += 1
            pc_cache_unlock(cache)
            if pos >= 0:
                return _handout(p, pos, n, tail)
        else:
            # Busy (another thread on this slot): no batch for it either,
            # which would have to wait for the lock.
            cache = NULL
    pos = _alloc_shared(p, n, ag, atomic, cache)
    if pos < 0:
        return -1
    return _handout(p, pos, n, tail)


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


cdef int pcpool_free(pc_pool *p, int64_t handle) noexcept nogil:
    cdef size_t g, n
    cdef int64_t pos = handle & PC_HANDLE_POS_MASK
    cdef int64_t spill[PC_CACHE_SPILL]
    cdef int nspill = 0, cls, c, keep, i
    cdef bint class_full
    cdef pc_pool_cache *cache
    cdef pc_block *blk = _live_block(p, handle, &g)
    # Claiming the live bit makes this free the one free of the object: a
    # second (or concurrent) free of the handle finds it clear.
    if blk == NULL or not pc_bit_clear_shared(blk.live, g):
        return -2
    n = _object_granules(p, blk, g)
    cls = _size_class(n)
    if cls >= 0:
        cache = _this_cpu_cache(p, True)
        if cache != NULL and pc_cache_trylock(cache):
            if pc_cache_has_room(cache, cls, <int64_t>n, p.cache_limit):
                pc_cache_push(cache, cls, <int64_t>n, pos)
                cache.frees += 1
                pc_cache_unlock(cache)
                return 0
            # Full: the object goes back, with half of its class (the class
            # is full) or half of every class (the cache is over its limit).
            class_full = cache.count[cls] >= PC_CACHE_SLOTS
            for c in range(PC_CACHE_CLASSES):
                if class_full and c != cls:
                    continue
                keep = cache.count[c] // 2
                for i in range(keep, cache.count[c]):
                    spill[nspill] = cache.objs[c][i]
                    nspill += 1
                cache.granules -= <int64_t>(cache.count[c] - keep) * (c + 1)
                cache.count[c] = keep
            pc_cache_unlock(cache)
    pthread_mutex_lock(&p.lock)
    _give_back(p, pos)
    p.frees += 1
    for i in range(nspill):
        _give_back(p, spill[i])
    pthread_mutex_unlock(&p.lock)
    return 0


cdef int64_t pcpool_object_size(pc_pool *p, int64_t handle) noexcept nogil:
    cdef size_t g
    cdef pc_block *blk = _live_block(p, handle, &g)
    if blk == NULL or not pc_bit_test_shared(blk.live, g):
        return -2
    return <int64_t>((_object_granules(p, blk, g) << GRANULE_SHIFT) - _tail_load(p, blk, g))


cdef char *pcpool_ptr(pc_pool *p, int64_t handle, int cpu) noexcept nogil:
    # Acquire pairs with the release in _block_insert: a concurrent array
    # replacement is seen with its copied contents. The caller's handle came
    # from an alloc that happened before, so its block is in any array we see.
    cdef pc_block *blocks = <pc_block *>pc_load_ptr(<void **>&p.blocks, PC_ACQUIRE)
    cdef int64_t pos = handle & PC_HANDLE_POS_MASK
    return (blocks[pos >> p.unit_shift].base
            + (<size_t>cpu << p.unit_shift)
            + (<size_t>pos & (p.unit_size - 1)))


cdef size_t pcpool_stride(pc_pool *p) noexcept nogil:
    return p.unit_size


cdef struct _CacheTotals:
    int64_t caches
    int64_t objects
    int64_t granules
    int64_t allocs
    int64_t frees
    int64_t atomic_allocs


cdef void _cache_totals(pc_pool *p, _CacheTotals *t) noexcept nogil:
    """Sums the caches' figures, each read under its own lock."""
    cdef int cpu, cls
    cdef pc_pool_cache *c
    memset(t, 0, sizeof(_CacheTotals))
    for cpu in range(p.nr_cpus):
        c = <pc_pool_cache *>pc_load_ptr(<void **>&p.caches[cpu], PC_ACQUIRE)
        if c == NULL:
            continue
        pc_cache_lock(c)
        t.caches += 1
        for cls in range(PC_CACHE_CLASSES):
            t.objects += c.count[cls]
        t.granules += c.granules
        t.allocs += c.allocs
        t.frees += c.frees
        t.atomic_allocs += c.atomic_allocs
        pc_cache_unlock(c)


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


cdef pc_pool *_pool_create(size_t unit) except NULL:
    """A new pool of ``unit`` bytes per CPU per block, its atomic reserve filled."""
    cdef pc_pool *p = <pc_pool *>malloc(sizeof(pc_pool))
    cdef int rc
    if p == NULL:
        raise MemoryError()
    memset(p, 0, sizeof(pc_pool))
    if _pool_init(p, unit) != 0:
        free(p)
        raise MemoryError()
    # Atomic allocations may come first: have the reserve ready.
    with nogil:
        rc = pcpool_refill(p)
    if rc != 0:
        _pool_destroy(p)
        free(p)
        raise MemoryError("cannot fill the atomic reserve")
    return p


cdef class PerCPUPool:
    """The compact per-CPU allocator.

    ``PerCPUPool(unit_size=None)``: ``unit_size`` is the bytes each CPU gets per
    block (a power of two, at least the cache line, at most ``MAX_UNIT_SIZE``;
    default one page). Objects up to ``unit_size`` bytes, aligned up to
    ``unit_size``. Blocks are kept until the pool dies; freed space is reused.
    Each CPU keeps a small cache of freed objects of up to 64 bytes, so that
    threads on different CPUs allocate and free without meeting on one lock
    (``stats()`` says what the caches hold; ``drain()`` empties them).
    """

    def __cinit__(self, *args, **kwargs):
        # The arguments are __init__'s (a subclass's own included): whatever
        # they are, the object is a working pool of the default geometry
        # from here on, and __init__ may then change the geometry.
        self.c = _pool_create(DEFAULT_UNIT_SIZE)

    def __init__(self, unit_size=None):
        cdef size_t unit = DEFAULT_UNIT_SIZE
        cdef pc_pool *old
        if unit_size is not None:
            unit = _as_size(unit_size, "unit_size", MAX_UNIT)
            if unit & (unit - 1) or unit < <size_t>PC_CACHELINE:
                raise ValueError(
                    f"unit_size must be a power of two >= {PC_CACHELINE}, not {unit}")
        if self._configured:
            raise RuntimeError(f"{type(self).__name__}.__init__() was already called: "
                               "a pool is configured once")
        if unit != self.c.unit_size:
            # Handles and slot pointers depend on the geometry: only a pool
            # that never handed anything out may change it.
            if self.c.allocs != 0:
                raise RuntimeError("cannot change the unit_size of a pool that has "
                                   "already allocated")
            old = self.c
            self.c = _pool_create(unit)
            _pool_destroy(old)
            free(old)
        self._configured = True

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
        """Address of CPU ``cpu``'s copy (per_cpu_ptr). From then on, new
        objects of this pool are zeroed in that CPU's copy (and those below
        it) too, as whoever holds the address may write there."""
        cdef int64_t h = _as_handle(handle)
        cdef int c = _as_cpu(cpu, self.c.nr_cpus)
        _live_size(pcpool_object_size(self.c, h), handle)
        pcpool_claim(self.c, c + 1)
        return <uintptr_t>pcpool_ptr(self.c, h, c)

    def view(self, handle):
        """A live uint8 view, shape ``(nr_cpus, size)``, of every CPU's copy.

        The view keeps the pool alive; after ``free`` it still points at the
        (possibly reused) space. A writable view of every CPU's copy makes
        the pool zero every CPU's copy of its new objects from then on (the
        memory of CPUs that never run is then touched on allocation).
        """
        cdef int64_t h = _as_handle(handle)
        cdef int64_t size = _live_size(pcpool_object_size(self.c, h), handle)
        cdef cnp.npy_intp dims[2]
        cdef cnp.npy_intp strides[2]
        cdef cnp.ndarray arr
        pcpool_claim(self.c, self.c.nr_cpus)
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

    def drain(self) -> int:
        """Give the objects that the per-CPU caches keep for reuse back to the
        shared free space (the pool does this itself before it grows);
        returns how many."""
        cdef int64_t k
        with nogil:
            k = pcpool_drain(self.c)
        return k

    def stats(self) -> dict:
        """Footprint and counts. Byte figures cover all CPUs' copies.

        ``objects`` and ``bytes_used`` (sizes rounded to the granule) count
        the live objects: allocated and not yet freed. ``allocs`` and
        ``frees`` count the calls that succeeded. A freed small object may
        wait in a per-CPU cache for the next allocation of its size:
        ``cached_objects`` and ``bytes_cached`` count those, which are free
        (not in ``objects``) but not yet in ``bytes_free``, the space any
        allocation can take. ``bytes_reserved`` (the blocks' memory) is
        ``bytes_used + bytes_cached + bytes_free``; ``metadata_bytes`` is the
        bitmaps, block table and caches. Byte figures are address space: the
        copies of CPUs that never run are never touched, and each block's
        unit of shared slots (not counted) only by threads without an rseq
        id. ``copies_zeroed`` is how many copies of each new object
        allocation zeroes now (the slots in use, or more once ``view()`` or
        ``address()`` handed copies out).

        The figures are exact whenever no allocation or free runs at the
        same time; while some run, the pool's and each cache's figures are
        read one after the other, under their own locks.
        """
        cdef pc_pool snap
        cdef pc_pool *p = &snap
        cdef _CacheTotals cached
        cdef int64_t n = self.c.nr_cpus
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            snap = self.c[0]
            pthread_mutex_unlock(&self.c.lock)
            _cache_totals(self.c, &cached)
        s = {
            "nr_cpus": p.nr_cpus,
            "unit_size": p.unit_size,
            "granule": GRANULE,
            "blocks": p.nblocks,
            "objects": p.objects - cached.objects,
            "allocs": p.allocs + cached.allocs,
            "frees": p.frees + cached.frees,
            "atomic_allocs": p.atomic_allocs + cached.atomic_allocs,
            "atomic_failures": p.atomic_failures,
            "cached_objects": cached.objects,
            "bytes_reserved": p.nblocks * <int64_t>p.unit_size * n,
            "bytes_used": (p.used_granules - cached.granules) * GRANULE * n,
            "bytes_cached": cached.granules * GRANULE * n,
            "bytes_free": p.free_granules * GRANULE * n,
            "reserve_bytes": p.reserve_granules * GRANULE * n,
            "copies_zeroed": min(max(pc_slots_in_use(&_registry.proc), p.claimed), p.nr_cpus)
                             + (1 if _registry.proc.shared_used else 0),
            "metadata_bytes": <int64_t>sizeof(pc_pool) + p.cap * <int64_t>sizeof(pc_block)
                              + p.nblocks * <int64_t>(MAPS * p.map_words * sizeof(uint64_t))
                              + (p.nblocks * <int64_t>(p.granules * sizeof(int32_t))
                                 if PC_DEBUG_HANDLES else 0)
                              + n * <int64_t>sizeof(pc_pool_cache *)
                              + cached.caches * <int64_t>sizeof(pc_pool_cache),
        }
        s["bytes_per_object"] = (
            (s["bytes_reserved"] + s["metadata_bytes"]) / s["objects"] if s["objects"] else None)
        return s

    def __repr__(self) -> str:
        s = self.stats()
        return (f"PerCPUPool(unit_size={s['unit_size']}, nr_cpus={s['nr_cpus']}, "
                f"blocks={s['blocks']}, objects={s['objects']})")


cdef class NaivePool:
    """The pre-2005 per-CPU allocator, kept as the baseline: every object is
    one cache-line-aligned allocation per CPU plus an array of their pointers.
    Objects and alignments up to ``NAIVE_MAX_SIZE`` bytes."""

    def __cinit__(self, *args, **kwargs):
        # The arguments are __init__'s (a subclass's own included).
        self.c = <pc_naive *>malloc(sizeof(pc_naive))
        if self.c == NULL:
            raise MemoryError()
        memset(self.c, 0, sizeof(pc_naive))
        if _naive_init(self.c) != 0:
            free(self.c)
            self.c = NULL
            raise MemoryError()

    def __init__(self):
        pass

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


cdef bint _audit_locked(pc_pool *p, int64_t *pos, uint8_t *cls, int64_t ncached,
                        uint8_t *mark, int64_t *out) noexcept nogil:
    """_audit's checks of the bitmaps; call with the pool's lock held.
    mark: a zeroed byte per granule of every block."""
    cdef int64_t b, i, objects = 0, used = 0, free_counted = 0, live = 0, live_granules = 0
    cdef int64_t cached_found = 0, cached_granules = 0, at
    cdef size_t g, n, end
    cdef bint ok = True
    cdef pc_block *blk
    for i in range(ncached):
        b = pos[i] >> p.unit_shift
        if pos[i] < 0 or b >= p.nblocks:
            return False
        at = b * <int64_t>p.granules + ((pos[i] & <int64_t>(p.unit_size - 1)) >> GRANULE_SHIFT)
        if mark[at] != 0:
            ok = False              # cached twice
        mark[at] = cls[i] + 1
    for b in range(p.nblocks):
        blk = &p.blocks[b]
        for g in range(p.granules):
            at = b * <int64_t>p.granules + <int64_t>g
            if pc_bit_test(blk.used, g):
                used += 1
            elif pc_bit_test(blk.start, g) or pc_bit_test_shared(blk.end, g):
                ok = False
            if not pc_bit_test(blk.start, g):
                if pc_bit_test_shared(blk.live, g) or _tail_load(p, blk, g) != 0 or mark[at]:
                    ok = False
                continue
            objects += 1
            # The object runs to the first free granule or the next start (as
            # the used and start bits say): one end bit, on its last granule.
            end = pc_bit_find(blk.used, g + 1, p.granules, 0)
            end = pc_bit_find(blk.start, g + 1, end, 1)
            n = end - g
            if pc_bit_find_shared(blk.end, g, end, 1) != end - 1:
                ok = False
            if pc_bit_test_shared(blk.live, g):
                live += 1
                live_granules += <int64_t>n
                if mark[at]:
                    ok = False      # live and cached
            elif mark[at]:
                cached_found += 1
                cached_granules += <int64_t>n
                if <size_t>mark[at] != n:
                    ok = False      # in the wrong class
            else:
                ok = False          # allocated, neither live nor cached: lost
        free_counted += blk.free_granules
    out[0] = live
    out[1] = live_granules
    out[2] = cached_granules
    out[3] = free_counted
    return (ok and cached_found == ncached and objects == p.objects and used == p.used_granules
            and free_counted == p.free_granules and live + ncached == objects
            and live_granules + cached_granules == used
            and used + free_counted == p.nblocks * <int64_t>p.granules)


def _audit(PerCPUPool pool) -> dict:
    """Test helper: recounts the bitmaps and the caches (call it when no
    allocation or free runs). Returns ``objects`` and ``used_granules`` of
    the live objects as the live bits say, ``cached_objects`` and
    ``cached_granules`` as the caches hold them, ``free_granules`` as the
    blocks' counters say, and ``consistent``: the bitmaps, the caches, the
    blocks' and the pool's counters agree; every start bit marks a used
    granule and every object has one end bit, on its last granule; live bits
    and tails only at starts; every allocated object is either live or
    cached, and every cached one is cached once, in its size's class, within
    its cache's limits."""
    cdef pc_pool *p = pool.c
    cdef int64_t cap = <int64_t>p.nr_cpus * PC_CACHE_CLASSES * PC_CACHE_SLOTS
    cdef int64_t *pos = <int64_t *>malloc(<size_t>cap * sizeof(int64_t))
    cdef uint8_t *cls = <uint8_t *>malloc(<size_t>cap)
    cdef uint8_t *mark = NULL
    cdef int64_t ncached = 0, granules_in_caches = 0
    cdef int64_t out[4]
    cdef int cpu, k, i
    cdef int64_t n
    cdef bint ok = True
    cdef pc_pool_cache *c
    if pos == NULL or cls == NULL:
        free(pos)
        free(cls)
        raise MemoryError()
    memset(out, 0, sizeof(out))
    with nogil:
        # Each cache under its own lock, then the bitmaps under the pool's.
        for cpu in range(p.nr_cpus):
            c = <pc_pool_cache *>pc_load_ptr(<void **>&p.caches[cpu], PC_ACQUIRE)
            if c == NULL:
                continue
            pc_cache_lock(c)
            n = 0
            for k in range(PC_CACHE_CLASSES):
                if c.count[k] < 0 or c.count[k] > PC_CACHE_SLOTS:
                    ok = False
                    continue
                for i in range(c.count[k]):
                    pos[ncached] = c.objs[k][i]
                    cls[ncached] = <uint8_t>k
                    ncached += 1
                n += <int64_t>c.count[k] * (k + 1)
            if n != c.granules or c.granules > p.cache_limit:
                ok = False
            granules_in_caches += c.granules
            pc_cache_unlock(c)
        pthread_mutex_lock(&p.lock)
        mark = <uint8_t *>calloc(<size_t>(p.nblocks * <int64_t>p.granules) + 1, 1)
        if mark != NULL:
            ok = _audit_locked(p, pos, cls, ncached, mark, out) and ok
        pthread_mutex_unlock(&p.lock)
    free(pos)
    free(cls)
    if mark == NULL:
        raise MemoryError()
    free(mark)
    return {"objects": out[0], "used_granules": out[1], "cached_objects": ncached,
            "cached_granules": out[2], "free_granules": out[3],
            "consistent": bool(ok and out[2] == granules_in_caches)}
