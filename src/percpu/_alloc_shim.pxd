# SHIM: stands in for percpu._alloc (the PerCPUPool C API) until the allocator
# lands on main; delete this file and cimport from percpu._alloc instead.
# Same names and contract as the allocator's C API; each object is its own
# posix_memalign'd block of nr_cpus cache lines, so the handle is the address.
from libc.stdint cimport int64_t, intptr_t
from libc.stdlib cimport free
from libc.string cimport memset

from percpu.cpercpu cimport PC_CACHELINE, pc_nr_cpus

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef struct pc_pool:
    size_t stride       # unit size: one cache line per CPU in the shim


cdef inline int64_t pcpool_alloc(pc_pool *p, size_t size, size_t align, bint atomic) noexcept nogil:
    cdef void *mem = NULL
    if size == 0 or size > p.stride or align == 0 or (align & (align - 1)) or align > p.stride:
        return -2
    if posix_memalign(&mem, PC_CACHELINE, <size_t>pc_nr_cpus() * p.stride) != 0:
        return -1
    memset(mem, 0, <size_t>pc_nr_cpus() * p.stride)
    return <int64_t><intptr_t>mem


cdef inline int pcpool_free(pc_pool *p, int64_t handle) noexcept nogil:
    if handle <= 0:
        return -2
    free(<void *><intptr_t>handle)
    return 0


cdef inline char *pcpool_ptr(pc_pool *p, int64_t handle, int cpu) noexcept nogil:
    return <char *><intptr_t>handle + <size_t>cpu * p.stride


cdef inline size_t pcpool_stride(pc_pool *p) noexcept nogil:
    return p.stride
