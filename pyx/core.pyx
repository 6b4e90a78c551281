# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""percpu._core: CPU ids, machine features and the thread registry."""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from percpu.cpercpu cimport *

cdef extern from "percpu/registry_init.h" nogil:
    pc_registry *pc_the_registry
    int pc_registry_create() nogil

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
    return {
        "live": pc_the_registry.live,
        "high_water": pc_the_registry.high_water,
        "grace_periods": pc_the_registry.grace_periods,
        "capacity": PC_MAX_THREADS,
    }


def synchronize() -> None:
    """Run one grace period: every per-CPU fast path open now has finished."""
    with nogil:
        pc_synchronize(pc_the_registry)
