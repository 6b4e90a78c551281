# cython: language_level=3
"""Counting and holding references from nogil Cython code."""
from percpu.counters cimport PerCPUCounter, pc_percpu_counter_add
from percpu.refs cimport PercpuRef, percpuref_get, percpuref_put


def count(PerCPUCounter hits, long n):
    """Add 1 to ``hits`` ``n`` times, without the GIL."""
    cdef long i
    with nogil:
        for i in range(n):
            pc_percpu_counter_add(hits.c, 1)


def hold_and_drop(PercpuRef ref, long n):
    """Take and drop a reference to ``ref`` ``n`` times, without the GIL;
    returns how many calls failed."""
    cdef long i
    cdef long failures = 0
    with nogil:
        for i in range(n):
            failures += percpuref_get(&ref.c) != 0
            failures += percpuref_put(&ref.c) < 0
    return failures
