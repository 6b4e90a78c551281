# The counters for Cython code:
#
#     from percpu.counters cimport PerCPUCounter, pc_percpu_counter_add
#     cdef PerCPUCounter c = percpu.Counter()
#     with nogil:
#         pc_percpu_counter_add(c.c, 1)       # the rseq fast path, inlined
#
# Each counter class keeps a pointer to its C state in `c`;
# the pc_<strategy>_counter_add/_read functions are `static inline` C and
# compile into the caller. Keep a reference to the Python object while the
# struct is in use. Compile with include_dirs=[percpu.get_include()].
from percpu._counters cimport *
