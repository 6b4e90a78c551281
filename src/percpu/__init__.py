"""percpu: per-CPU counters and reference counts, with a benchmark lab.

``c = percpu.Counter(); c.inc(); c.value()`` is the fast, exact default counter.
"""
from __future__ import annotations

import os as _os

from percpu._core import current_cpu, features, nr_cpus
from percpu._version import __version__
from percpu.alloc import NaivePool, PerCPUPool
from percpu.counters import (
    COUNTERS,
    ApproxCounter,
    AtomicCounter,
    Counter,
    LockedCounter,
    PerCPUCounter,
    PerThreadCounter,
    RacyCounter,
    StripedCounter,
)
from percpu.refs import REFS, AtomicRef, BigRef, PercpuRef


def get_include() -> str:
    """Directory holding ``percpu.h``, for Cython code that cimports percpu."""
    here = _os.path.dirname(__file__)
    shipped = _os.path.join(here, "include")
    if _os.path.exists(_os.path.join(shipped, "percpu.h")):
        return shipped
    # Editable install: the header lives in the source tree.
    return _os.path.normpath(_os.path.join(here, "..", "..", "pyx", "include"))


__all__ = [
    "COUNTERS",
    "ApproxCounter",
    "AtomicCounter",
    "Counter",
    "LockedCounter",
    "NaivePool",
    "PerCPUPool",
    "PerCPUCounter",
    "PerThreadCounter",
    "RacyCounter",
    "StripedCounter",
    "REFS",
    "AtomicRef",
    "BigRef",
    "PercpuRef",
    "__version__",
    "current_cpu",
    "features",
    "get_include",
    "nr_cpus",
]
