"""percpu.workloads: the benchmark workloads, run by the native thread team.

Each workload is a kernel parameterised by a strategy (which counter or which
reference count it uses). ``run`` validates a request and hands it to the
workload's kernel: ``percpu._workloads.run_<name>`` (the nogil kernels) when
that exists, else the workload's own Python-level kernel. The registry is open: ``register`` adds a workload (for instance one
whose strategies depend on what is installed, listed in ``unavailable``).
``run_timed`` runs a point to a deadline instead of a count and says how
evenly the threads got through (``fairness``).
"""
from __future__ import annotations

import importlib
import math
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from percpu import pycounter
from percpu._checks import check_int, check_mapping, check_str
from percpu._core import MAX_THREADS
from percpu._tbench import LAYOUT_CONTROLS
from percpu.counters import COUNTERS
from percpu.refs import REFS

__all__ = [
    "COUNTER_STRATEGIES",
    "HOT_LINE_COUNTERS",
    "HOT_LINE_REFS",
    "MAX_OPS",
    "MAX_SECONDS",
    "MAX_THREADS",
    "PACKET_STRATEGIES",
    "REF_LAYOUTS",
    "REF_STRATEGIES",
    "WORKLOADS",
    "Kernel",
    "Workload",
    "fairness",
    "pycounter_workload",
    "check_threads",
    "ref_operations",
    "register",
    "run",
    "run_timed",
]

#: Counter strategies: the names of ``percpu.COUNTERS``.
COUNTER_STRATEGIES: tuple[str, ...] = tuple(COUNTERS)
#: Lab-only layouts of a reference count (the false-sharing controls): name
#: -> the ``percpu.REFS`` strategy whose operations it runs. Not classes of
#: the library: the count is the library's, only its place in the object
#: differs (percpu._tbench says which and why).
REF_LAYOUTS: Mapping[str, str] = LAYOUT_CONTROLS
#: Reference-count strategies: the names of ``percpu.REFS``, then the layouts.
REF_STRATEGIES: tuple[str, ...] = (*REFS, *REF_LAYOUTS)
#: ``NETDEV+DST``: the strategy of the device reference, then of the route's.
PACKET_STRATEGIES: tuple[str, ...] = tuple(
    f"{dev}+{dst}" for dev in REF_STRATEGIES for dst in REF_STRATEGIES
)
#: Strategies whose every operation writes one cache line that all threads
#: write (a shared count, a lock): where a thread can be starved.
HOT_LINE_COUNTERS: tuple[str, ...] = ("atomic", "locked", "racy")
HOT_LINE_REFS: tuple[str, ...] = ("atomic", *REF_LAYOUTS)


def ref_operations(strategy: str) -> str:
    """The ``percpu.REFS`` strategy whose operations reference strategy
    ``strategy`` runs (itself, or the one a layout control lays out)."""
    check_str(strategy, "strategy")
    return REF_LAYOUTS.get(strategy, strategy)

#: The largest ``ops`` per thread a run accepts, and the largest value of any
#: parameter unless the workload lowers it.
MAX_OPS = 1 << 40
#: The longest time-bounded run (``run_timed``), in seconds.
MAX_SECONDS = 3600.0

#: ``kernel(strategy, threads, ops, params, *, duration_ns=0) -> dict``;
#: ``ops`` is per thread. With ``duration_ns`` > 0 (``run_timed`` passes it;
#: ``run`` never does) each thread stops once that long has passed since the
#: start, ``ops`` is only a cap, and the result carries ``thread_ops``, each
#: thread's completed ops.
Kernel = Callable[..., Mapping[str, Any]]

# Figures every result carries; everything else a kernel reports is the
# workload's own (unregister latency, bytes per entry, lost updates, ...).
_STANDARD_KEYS = frozenset(
    {"seconds", "wall_ns", "ops", "ops_per_sec", "threads", "workload", "strategy", "params"}
)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True threads or False counters is a bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _listing(names: Iterable[object]) -> str:
    return ", ".join(str(n) for n in names)


@dataclass(frozen=True)
class Workload:
    """A workload: its strategies and its integer parameters with defaults.

    ``minimums`` bounds each parameter from below (1 when not listed; 0 means
    "never" for the ``*_every`` ones), ``maximums`` from above (``MAX_OPS``
    when not listed). ``unavailable`` names strategies that
    exist but cannot run here, with the reason (``"not installed"``), so that
    listings can say why they were skipped. ``kernel`` is a Python-level
    kernel; left ``None``, ``percpu._workloads.run_<name>`` is used.
    ``baseline`` is the strategy speedups are measured against.
    ``hot_line`` names the strategies whose every op writes a cache line that
    all threads write (a shared count or a lock), where a thread can starve.
    """

    name: str
    description: str
    strategies: tuple[str, ...]
    params: Mapping[str, int]
    minimums: Mapping[str, int] = field(default_factory=dict)
    maximums: Mapping[str, int] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    kernel: Kernel | None = None
    baseline: str = "atomic"
    hot_line: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_str(self.name, "name")
        if not self.name or "/" in self.name:
            raise ValueError(f"workload name must be a non-empty str without '/', not {self.name!r}")
        check_str(self.description, "description")
        if isinstance(self.strategies, (str, bytes)) or not isinstance(self.strategies, Iterable):
            raise TypeError(f"strategies must be an iterable of str, not {type(self.strategies).__name__}")
        for key in ("params", "minimums", "maximums", "unavailable"):
            check_mapping(getattr(self, key), key)
        if self.kernel is not None and not callable(self.kernel):
            raise TypeError(f"kernel must be callable or None, not {type(self.kernel).__name__}")
        check_str(self.baseline, "baseline")
        strategies = tuple(self.strategies)
        if not strategies and not self.unavailable:
            raise ValueError(f"workload {self.name!r} has no strategies")
        for s in strategies + tuple(self.unavailable):
            if not isinstance(s, str) or not s or "/" in s:
                raise ValueError(f"strategy names must be non-empty str without '/', not {s!r}")
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"workload {self.name!r} lists a strategy twice")
        for key, value in self.params.items():
            check_str(key, "params key")
            if not _is_int(value):
                raise ValueError(f"default of {self.name}.{key} must be an int, not {value!r}")
        for key in (*self.minimums, *self.maximums):
            if key not in self.params:
                raise ValueError(f"bound given for unknown parameter {self.name}.{key}")
        for bounds in ("minimums", "maximums"):
            for key, value in getattr(self, bounds).items():
                check_int(value, f"{bounds}[{key!r}]")
        for key, why in self.unavailable.items():
            check_str(why, f"unavailable[{key!r}]")
        if isinstance(self.hot_line, (str, bytes)) or not isinstance(self.hot_line, Iterable):
            raise TypeError(f"hot_line must be an iterable of str, not {type(self.hot_line).__name__}")
        hot = frozenset(self.hot_line)
        if hot - set(strategies) - set(self.unavailable):
            raise ValueError(f"hot_line of {self.name!r} names unknown strategies "
                             f"{_listing(sorted(hot - set(strategies) - set(self.unavailable)))}")
        object.__setattr__(self, "hot_line", hot)
        # Frozen means frozen: callers must not be able to edit the defaults
        # of a registered workload behind the registry's back.
        object.__setattr__(self, "strategies", strategies)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "minimums", MappingProxyType(dict(self.minimums)))
        object.__setattr__(self, "maximums", MappingProxyType(dict(self.maximums)))
        object.__setattr__(self, "unavailable", MappingProxyType(dict(self.unavailable)))

    def minimum(self, param: str) -> int:
        """Smallest valid value of ``param``."""
        check_str(param, "param")
        if param not in self.params:
            raise ValueError(f"workload {self.name!r} has no parameter {param!r}")
        return self.minimums.get(param, 1)

    def maximum(self, param: str) -> int:
        """Largest valid value of ``param``."""
        check_str(param, "param")
        if param not in self.params:
            raise ValueError(f"workload {self.name!r} has no parameter {param!r}")
        return self.maximums.get(param, MAX_OPS)

    def check_param(self, key: str, value: object) -> int:
        """``value`` as parameter ``key`` of this workload, or ``ValueError``
        (unknown name, out of range) / ``TypeError`` (not an int)."""
        check_str(key, "key")
        if key not in self.params:
            valid = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "none"
            raise ValueError(
                f"unknown parameter(s) {key} for workload {self.name!r}; "
                f"valid (with defaults): {valid}"
            )
        low, high = self.minimum(key), self.maximum(key)
        if not _is_int(value):
            raise TypeError(
                f"the value of parameter {self.name}.{key} must be an int, not {type(value).__name__}"
            )
        assert isinstance(value, int)
        if not low <= value <= high:
            raise ValueError(f"parameter {self.name}.{key} must be in {low}..{high}, not {value!r}")
        return value


def check_threads(threads: object) -> int:
    """``threads`` as a team size, or ``TypeError``/``ValueError``."""
    if not _is_int(threads):
        raise TypeError(f"threads must be an int, not {type(threads).__name__}")
    assert isinstance(threads, int)
    if not 0 < threads <= MAX_THREADS:
        raise ValueError(f"threads must be in 1..{MAX_THREADS}, not {threads}")
    return threads


#: Every registered workload by name (``register`` adds one).
WORKLOADS: dict[str, Workload] = {}

# The check and the insert of register() are one step: without a GIL (and,
# with one, between two bytecodes) two threads registering the same name
# could otherwise both pass the check.
_register_lock = threading.Lock()


def register(workload: Workload, *, replace: bool = False) -> Workload:
    """Add ``workload`` to ``WORKLOADS`` (``replace=True`` to redefine one)."""
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a Workload, not {type(workload).__name__}")
    with _register_lock:
        if workload.name in WORKLOADS and not replace:
            raise ValueError(f"workload {workload.name!r} is already registered")
        WORKLOADS[workload.name] = workload
    return workload


register(Workload(
    "stat",
    "SNMP/MIB-style statistics: each op increments one of many counters; "
    "now and then a reader sums one",
    COUNTER_STRATEGIES,
    {"counters": 64, "read_every": 1000},
    minimums={"read_every": 0},
    maximums={"counters": 1 << 20},
    hot_line=frozenset(HOT_LINE_COUNTERS),
))
register(Workload(
    "netdev",
    "dev_hold/dev_put on one device; now and then it is unregistered "
    "(killed, drained to zero, created again)",
    REF_STRATEGIES,
    {"unregister_every": 100000},
    minimums={"unregister_every": 0},
    hot_line=frozenset(HOT_LINE_REFS),
))
register(Workload(
    "dst",
    "a route cache of reference-counted entries: look up, hold, drop; "
    "churn replaces entries (atomic allocations)",
    REF_STRATEGIES,
    {"entries": 1024, "churn_every": 10000},
    minimums={"churn_every": 0},
    maximums={"entries": 1 << 24},
    hot_line=frozenset(HOT_LINE_REFS),
))
# The packet model of tbench on loopback (README, "The packet model"). One op
# is one packet: `dev_holds` device references and `dst_holds` references on
# the packet's route (the first a lookup and hold, the rest clones of it),
# every get and put followed by an equal share of `work` units of the rest of
# the stack. `routes` hot routes, one picked per packet: on loopback every
# packet of every client holds the same one. Neither unregister nor route
# churn happens during a tbench run. `work`, `dev_holds` and `dst_holds` are
# the calibration's fit to the seed on the 2-CPU machine of the README
# (`python -m percpu.bench calibrate`; README, "The packet model").
register(Workload(
    "packet",
    "tbench on loopback: per packet, device holds, route lookups and clones on "
    "one hot route, other work between them; strategies are NETDEV+DST",
    PACKET_STRATEGIES,
    {"work": 280, "dev_holds": 1, "dst_holds": 1, "routes": 1,
     "unregister_every": 0, "churn_every": 0},
    minimums={"work": 0, "dev_holds": 0, "dst_holds": 0, "unregister_every": 0, "churn_every": 0},
    maximums={"work": 1 << 24, "dev_holds": 64, "dst_holds": 64, "routes": 1 << 24},
    baseline="atomic+atomic",
    hot_line=frozenset(f"{a}+{b}" for a in REF_STRATEGIES for b in REF_STRATEGIES
                       if a in HOT_LINE_REFS or b in HOT_LINE_REFS),
))


def pycounter_workload() -> Workload:
    """The ``pycounter`` workload (percpu.pycounter), with the peers that can
    run here now; ``register(pycounter_workload(), replace=True)`` refreshes
    it after peers were installed or removed."""
    return Workload(
        pycounter.WORKLOAD,
        pycounter.DESCRIPTION,
        pycounter.available_strategies(),
        {"inplace": 0, "bound": 0, "own": 0},
        minimums={"inplace": 0, "bound": 0, "own": 0},
        maximums={"inplace": 1, "bound": 1, "own": 1},
        unavailable=pycounter.unavailable_strategies(),
        kernel=pycounter.kernel,
        baseline=pycounter.BASELINE,
    )


register(pycounter_workload())


def _check(workload_name: object, strategy: object, threads: object, ops: object,
           params: Mapping[str, object]) -> tuple[Workload, dict[str, int]]:
    check_threads(threads)
    if not _is_int(ops):
        raise TypeError(f"ops must be an int, not {type(ops).__name__}")
    workload = WORKLOADS.get(workload_name) if isinstance(workload_name, str) else None
    if workload is None:
        raise ValueError(
            f"unknown workload {workload_name!r}; valid: {_listing(WORKLOADS)}"
        )
    if strategy not in workload.strategies:
        if isinstance(strategy, str) and strategy in workload.unavailable:
            raise ValueError(
                f"strategy {strategy!r} of workload {workload.name!r} cannot run here: "
                f"{workload.unavailable[strategy]}"
            )
        raise ValueError(
            f"unknown strategy {strategy!r} for workload {workload.name!r}; "
            f"valid: {_listing(workload.strategies)}"
        )
    assert isinstance(ops, int)
    if not 0 <= ops <= MAX_OPS:
        raise ValueError(f"ops must be in 0..2**40, not {ops}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping, not {type(params).__name__}")
    merged = dict(workload.params)
    for key in sorted(params):
        merged[key] = workload.check_param(key, params[key])
    return workload, merged


def _native_kernel(name: str) -> Kernel | None:
    """``percpu._workloads.run_<name>`` if the nogil kernels are built."""
    try:
        module = importlib.import_module("percpu._workloads")
    except ImportError as exc:
        # Only the module's own absence means "not built yet"; a failure
        # inside it (a missing symbol, a broken dependency) must surface.
        if exc.name != "percpu._workloads":
            raise
        return None
    kernel = getattr(module, f"run_{name}", None)
    return kernel if callable(kernel) else None


def _dispatch(workload: Workload, strategy: str, threads: int, ops: int,
              merged: dict[str, int], duration_ns: int = 0) -> dict[str, Any]:
    kernel = _native_kernel(workload.name)
    source = "native"
    if kernel is None and workload.kernel is not None:
        kernel, source = workload.kernel, "python"
    if kernel is None:
        raise RuntimeError(f"workload {workload.name!r} has no kernel: is percpu._workloads built?")
    if duration_ns:
        raw: Mapping[str, Any] = kernel(strategy, threads, ops, dict(merged), duration_ns=duration_ns)
    else:
        raw = kernel(strategy, threads, ops, dict(merged))
    if not isinstance(raw, Mapping):
        raise RuntimeError(f"kernel of {workload.name!r} returned {type(raw).__name__}, not a dict")
    result: dict[str, Any] = {k: v for k, v in raw.items() if k not in _STANDARD_KEYS}
    result.setdefault("kernel", source)
    if "seconds" in raw:
        seconds = float(raw["seconds"])
    elif "wall_ns" in raw:
        seconds = raw["wall_ns"] / 1e9
    else:
        raise RuntimeError(f"kernel of {workload.name!r} reported no time (seconds or wall_ns)")
    total = int(raw.get("ops", threads * ops))
    result.update(
        seconds=seconds,
        ops=total,
        ops_per_sec=total / seconds if seconds > 0 else 0.0,
        threads=threads,
        workload=workload.name,
        strategy=strategy,
        params=merged,
    )
    return result


def run(name: str, strategy: str, threads: int, ops: int, **params: int) -> dict[str, Any]:
    """Run workload ``name`` with ``strategy`` on ``threads`` native threads,
    ``ops`` operations per thread.

    Returns a dict with at least ``seconds`` (barrier release to the last
    thread's finish), ``ops`` (all threads), ``ops_per_sec``, ``threads``,
    ``workload``, ``strategy``, ``params`` (the parameters used, defaults
    filled in), ``kernel`` (``native`` or ``python``), plus
    the workload's own figures (``unregister_latency_mean_us``,
    ``bytes_per_entry``, ``lost_updates``, ``exact``, ...).

    Raises ``TypeError`` when threads or ops is not an int, ``ValueError``
    naming what is valid for an unknown workload, strategy or parameter, a
    bad value, ``threads`` outside 1..MAX_THREADS or ``ops < 0``.
    """
    workload, merged = _check(name, strategy, threads, ops, params)
    return _dispatch(workload, strategy, threads, ops, merged)


def fairness(thread_ops: Iterable[int]) -> float | None:
    """Fewest ops over most ops among the threads of one time-bounded run:
    1.0 when every thread got as far as every other, 0.0 when one was starved
    completely. None for fewer than two threads, or when none did any op."""
    if isinstance(thread_ops, (str, bytes)) or not isinstance(thread_ops, Iterable):
        raise TypeError(f"thread_ops must be an iterable of ints, not {type(thread_ops).__name__}")
    counts = list(thread_ops)
    for c in counts:
        check_int(c, "thread_ops item", 0)
    if len(counts) < 2 or max(counts) <= 0:
        return None
    return min(counts) / max(counts)


def run_timed(name: str, strategy: str, threads: int, seconds: float, **params: int) -> dict[str, Any]:
    """Like ``run``, but every thread runs until ``seconds`` have passed since
    the start, not to a count: how far each got is the point.

    The result adds ``thread_ops`` (each thread's completed ops), ``fairness``
    (``fairness(thread_ops)``: fewest / most; None below 2 threads) and
    ``duration`` (``seconds``). Kernels poll the clock every 1024 ops, so a
    thread runs past the limit by fewer than 1024 of its ops.

    Raises as ``run`` does, and ``TypeError``/``ValueError`` for ``seconds``
    that is not a number in (0, MAX_SECONDS].
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], not {seconds!r}")
    workload, merged = _check(name, strategy, threads, MAX_OPS, params)
    duration_ns = max(1, int(seconds * 1e9))
    result = _dispatch(workload, strategy, threads, MAX_OPS, merged, duration_ns)
    counts = result.get("thread_ops")
    if not isinstance(counts, (list, tuple)) or len(counts) != threads:
        raise RuntimeError(f"kernel of {workload.name!r} reported no per-thread ops for a timed run")
    result["thread_ops"] = [int(c) for c in counts]
    result["fairness"] = fairness(result["thread_ops"])
    result["duration"] = float(seconds)
    return result
