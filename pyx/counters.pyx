# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: binding=False, always_allow_keywords=False
"""percpu._counters: the seven counter strategies.

Each class keeps its hot state in a C struct (``self.c``) whose add/read are
``static inline`` functions of percpu.h; nogil code calls those directly and
inlines them.

The Python call path is as short as CPython allows, because from Python the
call is nearly all of an increment's cost:

- ``binding=False`` and ``always_allow_keywords=False`` make ``inc()``,
  ``dec()`` and ``value()`` plain ``METH_NOARGS`` method descriptors and
  ``add(n)`` a ``METH_O`` one (a Cython function object with
  ``METH_FASTCALL|METH_KEYWORDS`` parses a vector and keywords first).
- Every concrete class defines its own methods instead of inheriting them:
  CPython 3.11+ specialises a call to a method descriptor only when the
  instance's type is exactly the descriptor's class, so a method inherited
  from ``CounterBase`` takes the generic call path (2.5x the instructions of
  the specialised one under callgrind). The methods call the strategy's
  inline add directly, so no vtable sits on the Python path either.
- ``c += n`` (``nb_inplace_add``) returns the counter itself; it costs one
  int check and conversion more than ``inc()``.

``CounterBase._add``/``_read`` (the vtable) remain for code that holds a
counter typed as ``CounterBase``.
"""
from cpython.exc cimport PyErr_NoMemory
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import numpy as np

from percpu.cpercpu cimport *
from percpu._alloc cimport (PerCPUPool, default_pool, pcpool_alloc, pcpool_free,
                            pcpool_ptr, pcpool_stride)

cdef extern from "pthread.h" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)

cdef extern from "percpu.h" nogil:
    int posix_memalign(void **p, size_t align, size_t size)

cdef extern from *:
    """
    /* The mutex counters' locks are tracked for fork (see pc_fork_node). */
    static int pc_locked_counter_init(pc_locked_counter *c, pc_registry *reg) {
        c->value = 0;
        if (pthread_mutex_init(&c->lock, NULL)) return -1;
        pc_fork_track(reg, &c->fork, &c->lock, NULL);
        return 0;
    }
    static void pc_locked_counter_fini(pc_locked_counter *c, pc_registry *reg) {
        pc_fork_untrack(reg, &c->fork);
        pthread_mutex_destroy(&c->lock);
    }
    static int pc_approx_counter_init(pc_approx_counter *c, pc_registry *reg) {
        c->count = 0;
        if (pthread_mutex_init(&c->lock, NULL)) return -1;
        pc_fork_track(reg, &c->fork, &c->lock, NULL);
        return 0;
    }
    static void pc_approx_counter_fini(pc_approx_counter *c, pc_registry *reg) {
        pc_fork_untrack(reg, &c->fork);
        pthread_mutex_destroy(&c->lock);
    }
    static void *pc_aligned_zalloc(size_t size) {
        void *p = NULL;
        if (posix_memalign(&p, PC_CACHELINE, pc_round_up(size, PC_CACHELINE))) return NULL;
        memset(p, 0, pc_round_up(size, PC_CACHELINE));
        return p;
    }

    /* The team kernel of the tests and benchmarks: one loop per strategy, so
     * that the strategy's inline add is compiled into its loop and the
     * choice is made once per run. mixed: every fourth op is -1. */
    enum { PC_K_ATOMIC, PC_K_LOCKED, PC_K_PERCPU, PC_K_PERTHREAD, PC_K_APPROX,
           PC_K_STRIPED, PC_K_RACY };
    typedef struct { int kind; int mixed; void *c; } pc_counter_job;

    #define PC_COUNTER_LOOP(ADD, T)                                            \
        do {                                                                   \
            T *c = (T *)job->c;                                                \
            if (job->mixed)                                                    \
                for (i = 0; i < ops; i++) ADD(c, (i & 3) == 3 ? -1 : 1);       \
            else                                                               \
                for (i = 0; i < ops; i++) ADD(c, 1);                           \
        } while (0)

    static void pc_counter_kernel(void *arg, int tid, int64_t ops, int64_t *done) {
        pc_counter_job *job = (pc_counter_job *)arg;
        int64_t i;
        (void)tid;
        switch (job->kind) {
        case PC_K_ATOMIC: PC_COUNTER_LOOP(pc_atomic_counter_add, pc_cell); break;
        case PC_K_LOCKED: PC_COUNTER_LOOP(pc_locked_counter_add, pc_locked_counter); break;
        case PC_K_PERCPU: PC_COUNTER_LOOP(pc_percpu_counter_add, pc_percpu_counter); break;
        case PC_K_PERTHREAD: PC_COUNTER_LOOP(pc_perthread_counter_add, pc_perthread_counter); break;
        case PC_K_APPROX: PC_COUNTER_LOOP(pc_approx_counter_add, pc_approx_counter); break;
        case PC_K_STRIPED: PC_COUNTER_LOOP(pc_striped_counter_add, pc_striped_counter); break;
        case PC_K_RACY: PC_COUNTER_LOOP(pc_racy_counter_add, pc_cell); break;
        }
        *done = ops;
    }
    """
    int pc_locked_counter_init(pc_locked_counter *c, pc_registry *reg) nogil
    void pc_locked_counter_fini(pc_locked_counter *c, pc_registry *reg) nogil
    int pc_approx_counter_init(pc_approx_counter *c, pc_registry *reg) nogil
    void pc_approx_counter_fini(pc_approx_counter *c, pc_registry *reg) nogil
    void *pc_aligned_zalloc(size_t size) nogil
    enum:
        PC_K_ATOMIC, PC_K_LOCKED, PC_K_PERCPU, PC_K_PERTHREAD, PC_K_APPROX, PC_K_STRIPED, PC_K_RACY
    ctypedef struct pc_counter_job:
        int kind
        int mixed
        void *c
    void pc_counter_kernel(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil

cdef pc_registry *_registry = pc_registry_import()


cdef extern from "stdint.h":
    int64_t INT64_MIN


cdef inline int64_t _as_delta(object n) except? -1:
    # Cython's int64_t conversion would truncate a float: accept ints only
    # (bool included, as everywhere in Python).
    if not isinstance(n, int):
        raise TypeError(f"a counter adds ints, not {type(n).__name__}")
    return n


cdef inline int64_t _as_negated_delta(object n) except? -1:
    cdef int64_t v = _as_delta(n)
    if v == INT64_MIN:
        raise OverflowError("cannot subtract -2**63")
    return -v


cdef class CounterBase:
    """Common Python API of every counter: inc(), dec(), add(n), value(), int(c), c += n."""

    strategy = "abstract"

    def __init__(self, *args, **kwargs):
        if type(self) is CounterBase:
            raise TypeError("CounterBase is abstract: use one of percpu.COUNTERS")

    cdef void _add(self, int64_t v) noexcept nogil:
        pass

    cdef int64_t _read(self) noexcept nogil:
        return 0

    # The generic methods, through the vtable; every concrete class below
    # overrides them with direct calls (see the module docstring).
    def inc(self):
        """Add 1."""
        self._add(1)

    def dec(self):
        """Subtract 1."""
        self._add(-1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        self._add(_as_delta(n))

    def value(self):
        """The exact current value (a sum over slots for the sharded counters)."""
        return self._read()

    def __int__(self):
        return self._read()

    def __index__(self):
        return self._read()

    def __iadd__(self, n):
        self._add(_as_delta(n))
        return self

    def __isub__(self, n):
        self._add(_as_negated_delta(n))
        return self

    def __repr__(self):
        return f"{type(self).__name__}(strategy={self.strategy!r}, value={self.value()})"


cdef inline int _check_cell(void *p) except -1:
    if p == NULL:
        PyErr_NoMemory()
        return -1
    return 0


cdef class AtomicCounter(CounterBase):
    """One shared atomic integer: every add is a locked read-modify-write (the baseline)."""

    strategy = "atomic"

    def __cinit__(self):
        self.c = <pc_cell *>pc_aligned_zalloc(sizeof(pc_cell))
        _check_cell(self.c)

    def __dealloc__(self):
        free(self.c)

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_atomic_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_cell_read(self.c)

    def inc(self):
        """Add 1."""
        pc_atomic_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_atomic_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_atomic_counter_add(self.c, _as_delta(n))

    def value(self):
        """The current value."""
        return pc_cell_read(self.c)

    def __iadd__(self, n):
        pc_atomic_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_atomic_counter_add(self.c, _as_negated_delta(n))
        return self


cdef class RacyCounter(CounterBase):
    """Plain shared load-and-store: loses updates under concurrency. A reference point only."""

    strategy = "racy"

    def __cinit__(self):
        self.c = <pc_cell *>pc_aligned_zalloc(sizeof(pc_cell))
        _check_cell(self.c)

    def __dealloc__(self):
        free(self.c)

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_racy_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_cell_read(self.c)

    def inc(self):
        """Add 1."""
        pc_racy_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_racy_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_racy_counter_add(self.c, _as_delta(n))

    def value(self):
        """The current value (what survived the races)."""
        return pc_cell_read(self.c)

    def __iadd__(self, n):
        pc_racy_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_racy_counter_add(self.c, _as_negated_delta(n))
        return self


cdef class LockedCounter(CounterBase):
    """A mutex around a shared integer."""

    strategy = "locked"

    def __cinit__(self):
        self.c = <pc_locked_counter *>pc_aligned_zalloc(sizeof(pc_locked_counter))
        _check_cell(self.c)
        if pc_locked_counter_init(self.c, _registry) != 0:
            free(self.c)
            self.c = NULL
            raise MemoryError("percpu: cannot create a mutex")

    def __dealloc__(self):
        if self.c != NULL:
            pc_locked_counter_fini(self.c, _registry)
            free(self.c)

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_locked_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_locked_counter_read(self.c)

    def inc(self):
        """Add 1."""
        pc_locked_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_locked_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_locked_counter_add(self.c, _as_delta(n))

    def value(self):
        """The current value."""
        return pc_locked_counter_read(self.c)

    def __iadd__(self, n):
        pc_locked_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_locked_counter_add(self.c, _as_negated_delta(n))
        return self


cdef int64_t _pool_slot(PerCPUPool pool, bint atomic) except -1:
    cdef int64_t h = pcpool_alloc(pool.c, 8, 8, atomic)
    if h < 0:
        raise MemoryError("percpu: the per-CPU pool has no room for a counter")
    return h


cdef object _per_slot_array(const char *base, size_t stride, Py_ssize_t n):
    out = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = pc_load_i64(<const int64_t *>(base + i * stride), PC_RELAXED)
    return out


cdef class PerCPUCounter(CounterBase):
    """One slot per CPU, from a PerCPUPool; adds run as rseq critical sections
    (a plain add on the current CPU's slot) where the kernel allows, else an
    atomic add on that slot. ``value()`` sums the slots."""

    strategy = "percpu"

    def __cinit__(self, PerCPUPool pool=None):
        self.handle = -1
        self.c = <pc_percpu_counter *>calloc(1, sizeof(pc_percpu_counter))
        _check_cell(self.c)
        self.pool = default_pool() if pool is None else pool
        self.handle = _pool_slot(self.pool, False)
        self.c.base = pcpool_ptr(self.pool.c, self.handle, 0)
        self.c.stride = pcpool_stride(self.pool.c)

    def __init__(self, PerCPUPool pool=None):
        pass

    def __dealloc__(self):
        if self.handle >= 0:
            pcpool_free(self.pool.c, self.handle)
        free(self.c)

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_percpu_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_percpu_counter_read(self.c)

    def inc(self):
        """Add 1."""
        pc_percpu_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_percpu_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_percpu_counter_add(self.c, _as_delta(n))

    def value(self):
        """The exact current value: the sum of the per-CPU slots."""
        return pc_percpu_counter_read(self.c)

    def __iadd__(self, n):
        pc_percpu_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_percpu_counter_add(self.c, _as_negated_delta(n))
        return self

    def per_cpu(self):
        """The slots, one per possible CPU (numpy int64)."""
        return _per_slot_array(self.c.base, self.c.stride, pc_nr_cpus())


cdef class PerThreadCounter(CounterBase):
    """One padded slot per thread, written with plain adds by its owner and
    summed on read. A slot outlives its thread: the next thread to get the
    same index continues from its value, so exits lose nothing. Threads
    beyond ``capacity`` share an atomic overflow cell."""

    strategy = "perthread"

    def __cinit__(self, capacity=64):
        # Typed as object: an int parameter would truncate a float.
        if not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity <= 0 or capacity > PC_MAX_THREADS:
            raise ValueError(f"capacity must be in 1..{PC_MAX_THREADS}, not {capacity}")
        self.c = <pc_perthread_counter *>pc_aligned_zalloc(sizeof(pc_perthread_counter))
        _check_cell(self.c)
        self.c.slots = <char *>pc_aligned_zalloc(<size_t>capacity * PC_CACHELINE)
        _check_cell(self.c.slots)
        self.c.capacity = capacity
        self.c.reg = _registry

    def __init__(self, capacity=64):
        pass

    def __dealloc__(self):
        if self.c != NULL:
            free(self.c.slots)
            free(self.c)

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_perthread_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_perthread_counter_read(self.c)

    def inc(self):
        """Add 1."""
        pc_perthread_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_perthread_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_perthread_counter_add(self.c, _as_delta(n))

    def value(self):
        """The exact current value: the sum of the per-thread slots and the overflow cell."""
        return pc_perthread_counter_read(self.c)

    def __iadd__(self, n):
        pc_perthread_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_perthread_counter_add(self.c, _as_negated_delta(n))
        return self

    def per_cpu(self):
        """The per-thread slots (``capacity`` entries) followed by the overflow cell."""
        slots = _per_slot_array(self.c.slots, PC_CACHELINE, self.c.capacity)
        return np.append(slots, np.int64(pc_cell_read(&self.c.overflow)))


cdef class ApproxCounter(CounterBase):
    """Linux's percpu_counter: per-CPU deltas folded into a shared count when
    they reach +-``batch``. ``approx()`` reads the shared count alone (cheap,
    within ``batch * nr_cpus`` of the truth, plus one batch while a fold is
    in flight); ``value()`` is exact."""

    strategy = "approx"

    def __cinit__(self, batch=None, PerCPUPool pool=None):
        cdef int64_t b
        self.handle = -1
        if batch is None:
            b = max(32, 2 * pc_nr_cpus())
        else:
            if not isinstance(batch, int):
                raise TypeError(f"batch must be an int, not {type(batch).__name__}")
            if batch <= 0 or batch > (1 << 40):
                raise ValueError(f"batch must be in 1..2**40, not {batch}")
            b = batch
        self.c = <pc_approx_counter *>pc_aligned_zalloc(sizeof(pc_approx_counter))
        _check_cell(self.c)
        if pc_approx_counter_init(self.c, _registry) != 0:
            free(self.c)
            self.c = NULL
            raise MemoryError("percpu: cannot create a mutex")
        self.c.batch = b
        self.pool = default_pool() if pool is None else pool
        self.handle = _pool_slot(self.pool, False)
        self.c.base = pcpool_ptr(self.pool.c, self.handle, 0)
        self.c.stride = pcpool_stride(self.pool.c)

    def __init__(self, batch=None, PerCPUPool pool=None):
        pass

    def __dealloc__(self):
        if self.handle >= 0:
            pcpool_free(self.pool.c, self.handle)
        if self.c != NULL:
            pc_approx_counter_fini(self.c, _registry)
            free(self.c)

    @property
    def batch(self) -> int:
        return self.c.batch

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_approx_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_approx_counter_read(self.c)

    def inc(self):
        """Add 1."""
        pc_approx_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_approx_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_approx_counter_add(self.c, _as_delta(n))

    def value(self):
        """The exact current value: the shared count plus every per-CPU delta, under the lock."""
        return pc_approx_counter_read(self.c)

    def __iadd__(self, n):
        pc_approx_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_approx_counter_add(self.c, _as_negated_delta(n))
        return self

    def approx(self):
        """The shared count alone: cheap, within ``batch * nr_cpus`` of value()."""
        return pc_approx_counter_approx(self.c)

    def per_cpu(self):
        """The per-CPU deltas not yet folded into the shared count."""
        return _per_slot_array(self.c.base, self.c.stride, pc_nr_cpus())


cdef class StripedCounter(CounterBase):
    """Java's LongAdder: threads hash onto ``stripes`` padded atomic cells and
    move to another cell when a CAS shows contention; ``value()`` sums the cells."""

    strategy = "striped"

    def __cinit__(self, stripes=None):
        cdef uint32_t n
        if stripes is None:
            want = 2 * pc_nr_cpus()
        else:
            if not isinstance(stripes, int):
                raise TypeError(f"stripes must be an int, not {type(stripes).__name__}")
            if stripes <= 0 or stripes > 65536:
                raise ValueError(f"stripes must be in 1..65536, not {stripes}")
            want = stripes
        n = 1
        while n < want:
            n <<= 1
        self.c = <pc_striped_counter *>calloc(1, sizeof(pc_striped_counter))
        _check_cell(self.c)
        self.c.cells = <pc_cell *>pc_aligned_zalloc(n * sizeof(pc_cell))
        _check_cell(self.c.cells)
        self.c.mask = n - 1

    def __init__(self, stripes=None):
        pass

    def __dealloc__(self):
        if self.c != NULL:
            free(self.c.cells)
            free(self.c)

    @property
    def stripes(self) -> int:
        return self.c.mask + 1

    cdef void _add(self, int64_t v) noexcept nogil:
        pc_striped_counter_add(self.c, v)

    cdef int64_t _read(self) noexcept nogil:
        return pc_striped_counter_read(self.c)

    def inc(self):
        """Add 1."""
        pc_striped_counter_add(self.c, 1)

    def dec(self):
        """Subtract 1."""
        pc_striped_counter_add(self.c, -1)

    def add(self, n):
        """Add ``n`` (an int within the signed 64-bit range; negative subtracts)."""
        pc_striped_counter_add(self.c, _as_delta(n))

    def value(self):
        """The exact current value: the sum of the cells."""
        return pc_striped_counter_read(self.c)

    def __iadd__(self, n):
        pc_striped_counter_add(self.c, _as_delta(n))
        return self

    def __isub__(self, n):
        pc_striped_counter_add(self.c, _as_negated_delta(n))
        return self

    def per_cpu(self):
        """The cells (``stripes`` entries)."""
        return _per_slot_array(<char *>self.c.cells, sizeof(pc_cell), self.c.mask + 1)


_KINDS = {
    AtomicCounter: PC_K_ATOMIC, LockedCounter: PC_K_LOCKED, PerCPUCounter: PC_K_PERCPU,
    PerThreadCounter: PC_K_PERTHREAD, ApproxCounter: PC_K_APPROX,
    StripedCounter: PC_K_STRIPED, RacyCounter: PC_K_RACY,
}


cdef void *_state(CounterBase counter):
    if isinstance(counter, AtomicCounter):
        return (<AtomicCounter>counter).c
    if isinstance(counter, RacyCounter):
        return (<RacyCounter>counter).c
    if isinstance(counter, LockedCounter):
        return (<LockedCounter>counter).c
    if isinstance(counter, PerCPUCounter):
        return (<PerCPUCounter>counter).c
    if isinstance(counter, PerThreadCounter):
        return (<PerThreadCounter>counter).c
    if isinstance(counter, ApproxCounter):
        return (<ApproxCounter>counter).c
    return (<StripedCounter>counter).c


def hammer(CounterBase counter not None, int threads, long long ops, bint mixed=False,
           bint pin=False):
    """Run ``ops`` adds per thread on ``threads`` native threads (GIL released),
    each add inlined in a loop specialised for the counter's strategy.

    ``mixed``: every fourth op subtracts 1 instead of adding it, so the
    expected total is ``threads * (ops - 2 * (ops // 4))``; otherwise
    ``threads * ops``. Returns ``{"wall_ns", "ns_per_op", "expected"}``:
    ``ns_per_op`` is wall time per op per thread.
    """
    kind = _KINDS.get(type(counter))
    if kind is None:
        raise TypeError(f"hammer() needs one of the percpu counters, not {type(counter).__name__}")
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    if ops < 0:
        raise ValueError(f"ops must be >= 0, not {ops}")
    cdef pc_counter_job job
    job.kind = kind
    job.mixed = mixed
    job.c = _state(counter)
    cdef pc_team team
    memset(&team, 0, sizeof(team))
    cdef int64_t *done = <int64_t *>calloc(threads, sizeof(int64_t))
    if done == NULL:
        raise MemoryError()
    team.nthreads = threads
    team.pin = pin
    team.ops = ops
    team.fn = pc_counter_kernel
    team.arg = &job
    team.done = done
    cdef int err
    with nogil:
        err = pc_team_run(&team)
    free(done)
    if err:
        raise OSError(err, "percpu: cannot start the thread team")
    per_thread = ops - 2 * (ops // 4) if mixed else ops
    return {
        "wall_ns": team.wall_ns,
        "ns_per_op": team.wall_ns / ops if ops else 0.0,
        "expected": threads * per_thread,
    }
