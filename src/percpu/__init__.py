"""percpu: per-CPU counters and reference counts, with a benchmark lab.

``c = percpu.Counter(); c.inc(); c.value()`` is the fast, exact default counter.
"""
from __future__ import annotations

import os as _os

from percpu._version import __version__

try:
    from percpu._core import current_cpu, features, nr_cpus
except ImportError as _exc:
    # Without the compiled core (a checkout that was never built, a machine
    # without a C compiler) the pure-Python parts still import: percpu.report
    # compares result files anywhere. The compiled names then say why they
    # are missing when first used.
    if _exc.name != "percpu._core":
        raise
    _missing_core = _exc

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"percpu.{name} needs the compiled core, which is not built here "
            f"({_missing_core}); install percpu with pip (a C compiler is needed "
            "to build it from source)"
        )
else:
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
