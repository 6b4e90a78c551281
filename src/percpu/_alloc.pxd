# The per-CPU allocator's C API (module percpu._alloc, source pyx/alloc.pyx).
#
# Cython code: `from percpu._alloc cimport PerCPUPool, pc_pool, pcpool_alloc, ...`.
# These functions are reached through Cython's cross-module C-API (a call
# through a pointer), so they belong on alloc/free paths; a fast path keeps
# `base = pcpool_ptr(p, h, 0)` and `stride = pcpool_stride(p)` and indexes
# `base + cpu * stride` itself (e.g. `pc_percpu_add(base, stride, v)`).
#
# Every object has nr_cpus + 1 copies: one per possible CPU and, after them,
# the shared slot (see pc_proc in percpu/cpu.h). A new object is zeroed only
# in the copies that may have been written: the slots below the process's
# slot bound, the copies the pool has handed out by index (view(), address(),
# pcpool_claim()), and the shared slots once one was used. The others were
# never written since their memory was mapped (zero), and stay untouched:
# a CPU that never runs costs no memory. Code that writes a copy by a cpu
# index of its own (not through the fast paths, which stay below the bound)
# calls pcpool_claim() first.
#
# Handles are int64 >= 0: (block << log2(unit_size)) | offset, where offset is
# the object's byte offset inside its unit (a multiple of the 8-byte granule).
# A freed handle's position may be handed out again, like a pointer. Debug
# builds (PERCPU_DEBUG=1) add a generation tag in bits 48-62 that makes such
# a stale handle refused (pool.h); pcpool_ptr ignores it.
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from percpu.cpercpu cimport pc_fork_node

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass

cdef extern from "percpu.h" nogil:
    int64_t PC_HANDLE_TAG_SHIFT
    int64_t PC_HANDLE_POS_MASK
    int64_t PC_HANDLE_TAG_MASK
    bint PC_DEBUG_HANDLES
    enum:
        PC_CACHE_CLASSES
        PC_CACHE_SLOTS
        PC_CACHE_BATCH
        PC_CACHE_SPILL
    ctypedef struct pc_pool_cache:
        # One CPU's cache of free objects (pool.h); fields under its lock.
        int32_t lock
        int32_t count[PC_CACHE_CLASSES]
        int64_t granules
        int64_t allocs
        int64_t frees
        int64_t atomic_allocs
        pc_fork_node fork
        int64_t objs[PC_CACHE_CLASSES][PC_CACHE_SLOTS]


cdef enum:
    GRANULE = 8             # bytes; the bitmap has one bit per granule
    GRANULE_SHIFT = 3

cdef struct pc_block:
    char *base              # unit_size * (nr_cpus + 1) bytes; CPU c's unit at base + c * unit_size
    uint64_t *used          # one bit per granule of a unit: allocated
    uint64_t *start         # one bit per granule: first granule of an object
    uint64_t *end           # one bit per granule: last granule of an object (read
                            # without the lock by the object's owner, pool.h)
    uint64_t *live          # one bit per granule, at an object's first: handed out and
                            # not freed (a cached object is allocated but not live)
    uint64_t *tail          # three bitmaps (bit k of each), at an object's first granule:
                            # how many bytes its size falls short of whole granules
    int32_t *gen            # debug builds: per granule, the tag of the handle last
                            # handed out there; NULL otherwise
    uint32_t free_granules  # clear bits in used


cdef struct pc_pool:
    pthread_mutex_t lock    # guards everything below except the immutable geometry
    pc_fork_node fork       # lists lock for the fork handlers (percpu.h)
    # geometry, fixed at creation
    size_t unit_size        # power of two, >= PC_CACHELINE
    int unit_shift          # log2(unit_size)
    int nr_cpus
    size_t granules         # granules per unit
    size_t map_words        # uint64 words per bitmap
    bint mapped             # blocks come from mmap (else posix_memalign)
    int32_t claimed         # copies [0, claimed) may have been written by index (atomic)
    # blocks: the array is replaced, never reallocated in place, when it fills,
    # and old copies are kept until the pool dies, so that pcpool_ptr can read
    # a block's base without the lock
    pc_block *blocks
    int64_t nblocks         # stored with release: lockless readers load it with acquire
    int64_t cap
    void *retired[64]
    int nretired
    int64_t hint            # no block below it has a free granule
    int64_t pending         # blocks being created for the reserve, outside the lock
    int64_t reserve_granules
    # per-CPU caches of free objects (pool.h): caches[cpu] is created on that
    # CPU's first use and then never changes; each holds at most cache_limit granules
    pc_pool_cache **caches
    int64_t cache_limit
    # statistics, in granules per unit or counts. The bitmap's figures count
    # cached objects as allocated; stats() subtracts what the caches hold.
    # allocs/frees here are those the pool served; the caches count their own.
    int64_t free_granules
    int64_t used_granules
    int64_t objects
    int64_t allocs
    int64_t frees
    int64_t atomic_allocs
    int64_t atomic_failures
    int64_t grows


cdef struct pc_naive:
    pthread_mutex_t lock
    pc_fork_node fork
    int nr_cpus
    size_t max_size
    char ***objs            # objs[h]: the object's nr_cpus copies (NULL: free slot);
                            # replaced like pc_pool.blocks, for lockless naive_ptr
    uint32_t *sizes         # requested size per slot
    int64_t *free_slots     # stack of freed slots
    int64_t nfree
    int64_t top             # slots [0, top) have been handed out
    int64_t cap
    void *retired[64]
    int nretired
    int64_t objects
    int64_t allocs
    int64_t frees
    int64_t atomic_allocs
    int64_t bytes_used
    int64_t bytes_reserved


cdef class PerCPUPool:
    cdef pc_pool *c         # the C pool; valid for the life of the object
    cdef bint _configured   # __init__ has run (it may replace c, before any alloc)


cdef class NaivePool:
    cdef pc_naive *c


# nogil C API on the PerCPUPool's C struct (thread-safe):
cdef int64_t pcpool_alloc(pc_pool *p, size_t size, size_t align, bint atomic) noexcept nogil
    # handle >= 0 on success; -1 out of memory (or atomic reserve empty); -2 bad size/align
cdef int pcpool_free(pc_pool *p, int64_t handle) noexcept nogil
    # 0 ok; -2 unknown or already freed handle
cdef char *pcpool_ptr(pc_pool *p, int64_t handle, int cpu) noexcept nogil
    # per_cpu_ptr: base + cpu * unit_size + offset; unchecked (handle and cpu must be valid)
cdef size_t pcpool_stride(pc_pool *p) noexcept nogil
    # unit_size: distance in bytes between CPU c's and CPU c+1's copy of any object
cdef void pcpool_claim(pc_pool *p, int ncpus) noexcept nogil
    # copies [0, ncpus) of every object may be written by index from now on:
    # allocation keeps zeroing them
cdef PerCPUPool default_pool()
    # the process-wide pool that counters and references allocate from (created on first use)

# Additions beyond the contract:
cdef int pcpool_refill(pc_pool *p) noexcept nogil
    # grows the pool until the atomic reserve is full; 0 ok, -1 out of memory
cdef int64_t pcpool_drain(pc_pool *p) noexcept nogil
    # gives every per-CPU cache's free objects back to the shared free space; how many
cdef int64_t pcpool_object_size(pc_pool *p, int64_t handle) noexcept nogil
    # the size the live object was allocated with; -2 unknown or freed handle

# The baseline's nogil API (same return codes):
cdef int64_t naive_alloc(pc_naive *p, size_t size, size_t align, bint atomic) noexcept nogil
cdef int naive_free(pc_naive *p, int64_t handle) noexcept nogil
cdef char *naive_ptr(pc_naive *p, int64_t handle, int cpu) noexcept nogil
cdef int64_t naive_object_size(pc_naive *p, int64_t handle) noexcept nogil
