"""Sweep presets: pyperf settings and thread counts chosen for a time budget."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

__all__ = ["FAIRNESS_SECONDS", "PRESETS", "Preset", "default_threads"]

#: How long a point's time-bounded fairness run lasts unless a preset says.
FAIRNESS_SECONDS = 0.2


def default_threads(cpus: int | None = None) -> list[int]:
    """1, 2, 4, ... up to twice the CPU count (that count itself included), so
    a sweep shows both the scaling and what oversubscription does."""
    if cpus is None:
        cpus = _usable_cpus()
    elif isinstance(cpus, bool) or not isinstance(cpus, int):
        raise TypeError(f"cpus must be an int or None, not {type(cpus).__name__}")
    elif not 1 <= cpus <= 1 << 20:
        raise ValueError(f"cpus must be in 1..{1 << 20}, not {cpus}")
    top = max(1, 2 * cpus)
    counts = []
    n = 1
    while n < top:
        counts.append(n)
        n *= 2
    counts.append(top)
    return counts


def _usable_cpus() -> int:
    # The affinity mask, not the machine's CPU count: in a container or under
    # taskset the team can only use these.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Preset:
    """pyperf settings for a sweep; command-line options still override them.

    ``loops=0`` lets pyperf calibrate the loop count to ``min_time`` (workloads
    differ by orders of magnitude in cost per op, so a fixed count would be
    too short for some and too long for others). ``probe_events`` sizes the
    run that collects a point's own figures: that many times the largest
    ``*_every`` parameter, so the figure is an average over several events.
    ``fairness_seconds`` is how long a point of two or more threads then runs
    to a deadline, for ``percpu_fairness``.
    """

    name: str
    description: str
    processes: int
    values: int
    warmups: int
    min_time: float
    threads: Callable[[], list[int]]
    loops: int = 0
    probe_events: int = 4
    fairness_seconds: float = FAIRNESS_SECONDS


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "quick",
            "every workload and strategy at 1, 2, 4 threads; a few minutes on 2 cores",
            # One calibration process and two measuring ones, 30 ms values:
            # 1-2.5 s a point with process starts, 66 points in 1-3 minutes.
            processes=2,
            values=3,
            warmups=1,
            min_time=0.03,
            threads=lambda: [1, 2, 4],
            probe_events=2,
            fairness_seconds=0.1,
        ),
        Preset(
            "full",
            "threads up to 2x CPUs, enough processes and values to compare machines",
            processes=10,
            values=5,
            warmups=1,
            min_time=0.1,
            threads=default_threads,
            probe_events=10,
            fairness_seconds=0.5,
        ),
    )
}
