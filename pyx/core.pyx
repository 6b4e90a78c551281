# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# cython: freethreading_compatible=True
"""percpu._core: CPU ids, machine features and the thread registry.

The registry is made at import and guarded by its own mutex; readers of its
figures take it too, so nothing here relies on a GIL
(``freethreading_compatible``).
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from percpu.cpercpu cimport *

cdef extern from "percpu/registry_init.h" nogil:
    pc_registry *pc_the_registry
    int pc_registry_create() nogil

# The registry as seen with its lock, for the readers below (the shared
# declaration in percpu.cpercpu leaves the lock out).
cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "percpu.h" nogil:
    ctypedef struct _locked_registry "pc_registry":
        pthread_mutex_t lock
        int32_t live
        int32_t high_water

if pc_registry_create() != 0:
    raise MemoryError("percpu: cannot create the thread registry")

_registry = PyCapsule_New(<void *>pc_the_registry, b"percpu._core._registry", NULL)

#: The thread registry's record count: the most threads a team may have.
MAX_THREADS = PC_MAX_THREADS


def nr_cpus() -> int:
    """Number of per-CPU slots: every possible CPU (not only the online ones)."""
    return pc_nr_cpus()


def current_cpu() -> int:
    """The CPU this thread is running on (a hint: it may migrate right after)."""
    return pc_current_cpu()


def features() -> dict:
    """What the fast paths use on this machine, decided once per process.

    ``rseq``: per-CPU adds run as rseq critical sections; ``membarrier``: the
    expedited membarrier flavour registered (``"rseq"``, ``"expedited"`` or
    ``None``); ``cacheline``: padding unit in bytes; ``nr_cpus``: slot count
    (the possible CPUs); ``cpu_source``: what indexes the slots (``mm_cid``,
    ``rseq``, ``getcpu``, ``thread``); ``mm_cid``: the kernel offers mm_cid
    (used unless ``PERCPU_NO_MM_CID=1`` or rseq is off); ``possible_cpus``,
    ``online_cpus``, ``allowed_cpus`` (this thread's affinity mask);
    ``slots_in_use``: the slot bound, how many slots of each object can hold
    anything and are read by sums and zeroed by allocation.
    """
    cdef int mb = pc_the_registry.membarrier
    cdef pc_proc *proc = &pc_the_registry.proc
    return {
        "rseq": bool(proc.sections),
        "membarrier": {PC_MB_EXPEDITED_RSEQ: "rseq", PC_MB_EXPEDITED: "expedited"}.get(mb),
        "cacheline": PC_CACHELINE,
        "nr_cpus": proc.nr_cpus,
        "cpu_source": pc_cpu_source_name().decode(),
        "mm_cid": bool(proc.mm_cid_seen),
        "possible_cpus": proc.nr_cpus,
        "online_cpus": pc_online_cpus(),
        "allowed_cpus": pc_allowed_cpus(),
        "slots_in_use": pc_slots_in_use(proc),
    }


def registry_stats() -> dict:
    """Thread registry figures: live threads, records handed out, grace periods run."""
    cdef _locked_registry *reg = <_locked_registry *>pc_the_registry
    cdef int32_t live, high_water
    # Threads join and leave under the registry lock, with no GIL to keep
    # them still on a free-threaded build: read the pair under it too.
    with nogil:
        pthread_mutex_lock(&reg.lock)
        live = reg.live
        high_water = reg.high_water
        pthread_mutex_unlock(&reg.lock)
    return {
        "live": live,
        "high_water": high_water,
        # Counted with an atomic add, outside any lock.
        "grace_periods": pc_load_i32(&pc_the_registry.grace_periods, PC_RELAXED),
        "capacity": PC_MAX_THREADS,
    }


def synchronize() -> None:
    """Run one grace period: every per-CPU fast path open now has finished."""
    with nogil:
        pc_synchronize(pc_the_registry)
