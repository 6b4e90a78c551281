# C-level declarations of percpu._counters: the counters' C state and their
# nogil hot paths. Cython users normally cimport percpu.counters instead.
from libc.stdint cimport int32_t, int64_t, uint32_t

from percpu.cpercpu cimport pc_registry
from percpu._alloc cimport PerCPUPool

cdef extern from "percpu.h" nogil:
    ctypedef struct pc_cell:
        int64_t value
    ctypedef struct pc_locked_counter:
        int64_t value
    ctypedef struct pc_percpu_counter:
        char *base              # nr_cpus + 1 slots from a PerCPUPool, stride apart
        size_t stride
        pc_registry *reg        # the slow path adopts the process's cpu-id choice from it
    ctypedef struct pc_perthread_counter:
        char *slots
        int32_t capacity
        pc_registry *reg
        pc_cell overflow
    ctypedef struct pc_approx_counter:
        int64_t count
        char *base
        size_t stride
        int64_t batch
        pc_registry *reg
    ctypedef struct pc_striped_counter:
        pc_cell *cells
        uint32_t mask

    void pc_atomic_counter_add(pc_cell *c, int64_t v)
    void pc_racy_counter_add(pc_cell *c, int64_t v)
    int64_t pc_cell_read(const pc_cell *c)
    void pc_locked_counter_add(pc_locked_counter *c, int64_t v)
    int64_t pc_locked_counter_read(pc_locked_counter *c)
    void pc_percpu_counter_add(pc_percpu_counter *c, int64_t v)
    int64_t pc_percpu_counter_read(pc_percpu_counter *c)
    void pc_perthread_counter_add(pc_perthread_counter *c, int64_t v)
    int64_t pc_perthread_counter_read(pc_perthread_counter *c)
    void pc_approx_counter_add(pc_approx_counter *c, int64_t v)
    int64_t pc_approx_counter_approx(pc_approx_counter *c)
    int64_t pc_approx_counter_read(pc_approx_counter *c)
    void pc_striped_counter_add(pc_striped_counter *c, int64_t v)
    int64_t pc_striped_counter_read(pc_striped_counter *c)


cdef class CounterBase:
    cdef bint _configured   # __init__ has run (it runs once: it may move the storage)
    cdef void _add(self, int64_t v) noexcept nogil
    cdef int64_t _read(self) noexcept nogil


cdef class AtomicCounter(CounterBase):
    cdef pc_cell *c

cdef class RacyCounter(CounterBase):
    cdef pc_cell *c

cdef class LockedCounter(CounterBase):
    cdef pc_locked_counter *c

cdef class PerCPUCounter(CounterBase):
    cdef pc_percpu_counter *c
    cdef readonly PerCPUPool pool
    cdef readonly int64_t handle

cdef class PerThreadCounter(CounterBase):
    cdef pc_perthread_counter *c

cdef class ApproxCounter(CounterBase):
    cdef pc_approx_counter *c
    cdef readonly PerCPUPool pool
    cdef readonly int64_t handle

cdef class StripedCounter(CounterBase):
    cdef pc_striped_counter *c
