"""Counter strategies (percpu.counters).

``percpu.Counter`` is the recommended default (``PerCPUCounter``);
``COUNTERS`` maps each strategy name to its class.
"""
from __future__ import annotations

from percpu._counters import (
    ApproxCounter,
    AtomicCounter,
    CounterBase,
    LockedCounter,
    PerCPUCounter,
    PerThreadCounter,
    RacyCounter,
    StripedCounter,
)

Counter = PerCPUCounter

#: Every counter strategy by name, as the benchmarks and the tests know them.
COUNTERS: dict[str, type[CounterBase]] = {
    "atomic": AtomicCounter,
    "locked": LockedCounter,
    "percpu": PerCPUCounter,
    "perthread": PerThreadCounter,
    "approx": ApproxCounter,
    "striped": StripedCounter,
    "racy": RacyCounter,
}

#: Strategies that never lose an update.
EXACT_COUNTERS = tuple(name for name in COUNTERS if name != "racy")

__all__ = [
    "COUNTERS",
    "EXACT_COUNTERS",
    "ApproxCounter",
    "AtomicCounter",
    "Counter",
    "CounterBase",
    "LockedCounter",
    "PerCPUCounter",
    "PerThreadCounter",
    "RacyCounter",
    "StripedCounter",
]
