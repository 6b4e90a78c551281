"""The sweep: points, their pyperf metadata, output files, and the run loop."""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType, MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

import pyperf

import percpu
from percpu import pycounter, workloads
from percpu._checks import (
    check_instance,
    check_instances,
    check_int,
    check_mapping,
    check_path,
    check_str,
    check_strs,
)
from percpu.bench._presets import FAIRNESS_SECONDS, default_threads

__all__ = [
    "FAIRNESS_SECONDS",
    "METADATA_PREFIX",
    "Output",
    "Point",
    "UsageError",
    "bench_name",
    "figures_metadata",
    "plan",
    "point_metadata",
    "probe",
    "probe_ops",
    "sweep",
]

METADATA_PREFIX = "percpu_"


class UsageError(ValueError):
    """A bad request, found before anything runs (the CLI exits with 2)."""


@dataclass(frozen=True)
class Point:
    """One pyperf benchmark: a workload, a strategy, a thread count and the
    workload's parameters (defaults filled in)."""

    workload: str
    strategy: str
    threads: int
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str(self.workload, "workload")
        check_str(self.strategy, "strategy")
        check_int(self.threads, "threads", 1, workloads.MAX_THREADS)
        check_mapping(self.params, "params")
        for key, value in self.params.items():
            check_str(key, "params key")
            check_int(value, f"params[{key!r}]")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def name(self) -> str:
        return bench_name(self.workload, self.strategy, self.threads)


def bench_name(workload: str, strategy: str, threads: int) -> str:
    """``workload/strategy/tN``: the benchmark's name in the pyperf JSON."""
    check_str(workload, "workload")
    check_str(strategy, "strategy")
    check_int(threads, "threads", 1)
    return f"{workload}/{strategy}/t{threads}"


def _split(items: Iterable[str] | None, name: str) -> list[str] | None:
    # Accept "a b", "a,b" and a mix: shells and tox files write both.
    if items is None:
        return None
    out = [part.strip() for item in check_strs(items, name) for part in item.split(",")]
    return [part for part in out if part]


def plan(
    workload_names: Iterable[str] | None = None,
    strategies: Iterable[str] | None = None,
    threads: Iterable[int] | None = None,
    params: Mapping[str, int] | None = None,
    notes: list[str] | None = None,
) -> list[Point]:
    """The points of a sweep, in order: workload, strategy, thread count.

    ``threads`` defaults to ``default_threads()``; ``strategies`` filters each workload's own (a name applies to every
    selected workload that has it); ``params`` are ``name`` (every workload
    that has it) or ``workload.name``. Strategies that cannot run here are
    skipped with a line in ``notes``. Raises ``UsageError`` with a one-line
    message for anything unknown or out of range.
    """
    if notes is not None and not isinstance(notes, list):
        raise TypeError(f"notes must be a list or None, not {type(notes).__name__}")
    check_mapping(params, "params", optional=True)
    names = _split(workload_names, "workload_names") or list(workloads.WORKLOADS)
    for name in names:
        if name not in workloads.WORKLOADS:
            raise UsageError(
                f"unknown workload {name!r} (valid: {', '.join(workloads.WORKLOADS)})"
            )
    names = list(dict.fromkeys(names))
    selected = [workloads.WORKLOADS[n] for n in names]

    if threads is not None and not isinstance(threads, (list, tuple, range)):
        raise TypeError(f"threads must be a list of ints or None, not {type(threads).__name__}")
    given = list(threads) if threads is not None else default_threads()
    if not given:
        raise UsageError("no thread counts given (--threads)")
    for n in given:
        try:
            workloads.check_threads(n)
        except (TypeError, ValueError):
            raise UsageError(f"thread counts must be in 1..{workloads.MAX_THREADS}, not {n!r}") from None
    counts = sorted(set(given))

    wanted = _split(strategies, "strategies")
    if wanted is not None:
        known = {s for w in selected for s in (*w.strategies, *w.unavailable)}
        for s in wanted:
            if s not in known:
                valid = "; ".join(f"{w.name}: {', '.join(w.strategies)}" for w in selected)
                raise UsageError(f"unknown strategy {s!r} (valid: {valid})")

    per_workload = _params_per_workload(selected, params or {})
    points = []
    for w in selected:
        chosen = [s for s in w.strategies if wanted is None or s in wanted]
        for s, why in w.unavailable.items():
            if (wanted is None or s in wanted) and notes is not None:
                notes.append(f"skipped {w.name}/{s}: {why}")
        for s in chosen:
            for n in counts:
                points.append(Point(w.name, s, n, per_workload[w.name]))
    if not points:
        raise UsageError("nothing to run: no selected workload has the selected strategies")
    return points


def _params_per_workload(selected: Sequence[workloads.Workload],
                         params: Mapping[str, int]) -> dict[str, dict[str, int]]:
    out = {w.name: dict(w.params) for w in selected}
    for key, value in params.items():
        check_str(key, "params key")
        target, _, pname = key.rpartition(".")
        hits = [w for w in selected if (not target or w.name == target) and pname in w.params]
        if not hits:
            raise UsageError(f"no selected workload has parameter {key!r}")
        for w in hits:
            try:
                out[w.name][pname] = w.check_param(pname, value)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
    return out


def point_metadata(point: Point) -> dict[str, Any]:
    """The contract metadata of a point (figures from a run come separately).
    ``percpu_hot_line`` is 1 where every op of the strategy writes a line all
    threads write (a shared count, a lock): where a thread can be starved."""
    check_instance(point, Point, "point")
    workload = workloads.WORKLOADS[point.workload]
    return {
        "percpu_workload": point.workload,
        "percpu_strategy": point.strategy,
        "percpu_threads": point.threads,
        "percpu_baseline": workload.baseline,
        "percpu_hot_line": int(point.strategy in workload.hot_line),
        "percpu_params": json.dumps(dict(point.params), sort_keys=True, separators=(",", ":")),
        "percpu_nr_cpus": percpu.nr_cpus(),
        "percpu_features": json.dumps(percpu.features(), sort_keys=True, separators=(",", ":")),
        "percpu_version": percpu.__version__,
        # Whether Python threads can run at once: a free-threaded build with
        # the GIL off. Recorded per point, as the GIL can come back on at
        # run time (an extension module that does not declare support).
        **{METADATA_PREFIX + k: int(v) for k, v in pycounter.python_build().items()},
    }


# What a workload result carries that is not a figure of its own (the build
# a result names is the point's metadata already).
_NOT_FIGURES = frozenset(
    {"seconds", "ops", "ops_per_sec", "threads", "workload", "strategy", "params",
     "free_threaded", "gil_enabled"}
)


def figures_metadata(result: Mapping[str, Any]) -> dict[str, Any]:
    """A workload result's own figures as ``percpu_<name>`` metadata.

    pyperf metadata holds str, int and float only: booleans become 0/1, and
    values it cannot hold (lists, None, NaN, empty strings) are left out.
    """
    check_mapping(result, "result")
    out: dict[str, Any] = {}
    for key, value in result.items():
        if not isinstance(key, str) or key in _NOT_FIGURES:
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and value != value:
            continue
        if isinstance(value, str):
            value = value.strip()
            if not value or "\n" in value or "\r" in value:
                continue
        if isinstance(value, (int, float, str)):
            out[METADATA_PREFIX + key] = value
    return out


def probe_ops(point: Point, events: int) -> int:
    """Ops per thread for the figures run: ``events`` times the largest
    ``*_every`` parameter, so latencies and churn counts average several."""
    check_instance(point, Point, "point")
    check_int(events, "events", 1)
    every = [v for k, v in point.params.items() if k.endswith("_every") and v > 0]
    return max(10_000, events * max(every, default=0))


def probe(point: Point, events: int, fairness_seconds: float = FAIRNESS_SECONDS) -> dict[str, Any]:
    """Run the point once outside pyperf and return its figures as metadata.

    pyperf keeps only the metadata every run agrees on; figures measured in
    each worker would differ and vanish from the benchmark's metadata, so they
    are measured once here and stamped on all of its runs.

    With two or more threads the point also runs time-bounded for
    ``fairness_seconds`` (every thread to the same deadline, not to a count):
    ``percpu_fairness`` is the fewest ops any thread did over the most
    (1.0: perfectly fair), ``percpu_fairness_min_ops``/``_max_ops`` the two
    counts.
    """
    ops = probe_ops(point, events)  # checks both
    result = workloads.run(point.workload, point.strategy, point.threads, ops, **point.params)
    meta = figures_metadata(result)
    meta["percpu_probe_ops"] = ops
    if point.threads >= 2:
        timed = workloads.run_timed(point.workload, point.strategy, point.threads,
                                    fairness_seconds, **point.params)
        if timed["fairness"] is not None:
            meta["percpu_fairness"] = timed["fairness"]
            meta["percpu_fairness_min_ops"] = min(timed["thread_ops"])
            meta["percpu_fairness_max_ops"] = max(timed["thread_ops"])
            meta["percpu_fairness_seconds"] = fairness_seconds
    return meta


def load_results_file(path: str, what: str) -> pyperf.BenchmarkSuite:
    """An existing percpu.bench result (for ``--append``),
    checked as the report checks it; ``UsageError`` with one line otherwise."""
    from percpu.report.loading import ReportError, check_suite

    try:
        suite = pyperf.BenchmarkSuite.load(path)
    except Exception as exc:  # pyperf reports bad JSON with assorted exception types
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise UsageError(f"{what} {path}: not a pyperf JSON file ({reason})") from None
    try:
        check_suite(path, suite)
    except ReportError as exc:
        raise UsageError(f"{what} {path}: {exc.message}") from None
    return suite


class Output:
    """A JSON file the sweep writes, whole, after every point.

    Each write goes to a temporary file in the same directory and is renamed
    into place, so the file on disk is always a complete suite: the previous
    one until the rename, the new one after (a SIGKILL cannot tear it).
    ``mode`` is ``new`` (refuse an existing file), ``force`` (replace it) or
    ``append`` (add runs to what it holds, pyperf's ``--append``).
    """

    def __init__(self, path: str, mode: str) -> None:
        check_path(path, "path")
        check_str(mode, "mode")
        if mode not in ("new", "force", "append"):
            raise ValueError(f"mode must be new, force or append, not {mode!r}")
        self.path = path
        self.mode = mode
        self.suite: pyperf.BenchmarkSuite | None = None
        self.points = 0

    def check(self) -> None:
        """Fail now, with a one-line ``UsageError``, if writing would fail later."""
        path = self.path
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UsageError(f"cannot write {path}: it is a directory")
        if not os.path.isdir(parent):
            raise UsageError(f"cannot write {path}: no directory {parent}")
        if os.path.exists(path):
            if self.mode == "new":
                raise UsageError(f"{path} exists: use --force to replace it or --append to add to it")
            if self.mode == "append":
                self.suite = load_results_file(path, "cannot append to")
        # Access checks lie (root, read-only mounts): only a real file says.
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        os.close(fd)
        os.unlink(tmp)

    def add(self, bench: pyperf.Benchmark) -> None:
        """Add ``bench`` (its runs, to a benchmark of the same name) and save."""
        check_instance(bench, pyperf.Benchmark, "bench")
        if self.suite is None:
            self.suite = pyperf.BenchmarkSuite([bench])
        else:
            try:
                self.suite.add_runs(bench)
            except ValueError as exc:
                # pyperf refuses runs of another machine or setup ("metadata
                # aslr is different"): the file is left as it was.
                raise UsageError(f"cannot add {bench.get_name()} to {self.path}: {exc}") from None
        self.points += 1
        self._save()

    def _save(self) -> None:
        assert self.suite is not None
        parent = os.path.dirname(os.path.abspath(self.path))
        # Keep .gz last: pyperf compresses by the file name.
        suffix = ".tmp.gz" if self.path.endswith(".gz") else ".tmp"
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(self.path)}.", suffix=suffix)
        os.close(fd)
        try:
            self.suite.dump(tmp, replace=True)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class _Interrupts:
    """SIGINT handling for the sweep: a Ctrl-C stops the sweep after the point
    it interrupts, but never in the middle of saving one."""

    def __init__(self) -> None:
        self.requested = False
        self._saving = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self._saving:
            raise KeyboardInterrupt

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handler)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def saving(self, on: bool) -> None:
        self._saving = on


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _say(message: str) -> None:
    print(f"percpu.bench: {message}", file=sys.stderr, flush=True)


def _time_point(point: Point) -> Callable[[int], float]:
    def time_func(loops: int) -> float:
        # One loop is one op on every thread: pyperf divides by loops, so a
        # value is the time per op as one thread sees it.
        result = workloads.run(point.workload, point.strategy, point.threads, loops, **point.params)
        return float(result["seconds"])
    return time_func


def sweep(runner: pyperf.Runner, points: Sequence[Point], outputs: Sequence[Output] = (),
          probe_events: int = 4, fairness_seconds: float = FAIRNESS_SECONDS,
          extra: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Run every point through ``runner``; returns the exit status.

    In a pyperf worker this only measures the point the worker was started
    for. In the parent it first runs each point once for its figures, then
    lets pyperf measure it, stamps the figures (and ``extra[point.name]``,
    e.g. instruction counts measured beforehand) on the benchmark and saves
    every output. SIGINT stops the sweep, keeping the saved points (130).
    """
    check_instance(runner, pyperf.Runner, "runner")
    points = check_instances(points, Point, "points")
    outputs = check_instances(outputs, Output, "outputs")
    check_int(probe_events, "probe_events", 1)
    args = runner.parse_args()
    if args.worker:
        for point in points:
            # Points the worker was not started for return at once.
            runner.bench_time_func(point.name, _time_point(point), metadata=point_metadata(point))
        return 0

    # Workers start with a scrubbed environment: they must see the library's
    # settings (PERCPU_NO_RSEQ, ...) that the parent saw.
    inherit = list(args.inherit_environ or [])
    # The sanitizer runtime and its options too: a sanitized build cannot load
    # in a worker that lost LD_PRELOAD.
    passed = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS", "PYTHONMALLOC")
    inherit += sorted(
        k for k in os.environ if (k.startswith("PERCPU_") or k in passed) and k not in inherit
    )
    args.inherit_environ = inherit or None

    interrupts = _Interrupts()
    interrupts.install()
    start = time.monotonic()
    done = 0
    status = 0
    try:
        for i, point in enumerate(points):
            elapsed = time.monotonic() - start
            left = f", left ~{_clock(elapsed / i * (len(points) - i))}" if i else ""
            _say(f"[{i + 1}/{len(points)}] {point.name} (elapsed {_clock(elapsed)}{left})")
            try:
                figures = probe(point, probe_events, fairness_seconds)
                figures.update((extra or {}).get(point.name, {}))
                bench = runner.bench_time_func(point.name, _time_point(point),
                                               metadata=point_metadata(point))
            except (KeyboardInterrupt, SystemExit):
                # pyperf turns an interrupt into SystemExit(1): tell the two
                # apart by whether a SIGINT came.
                if not interrupts.requested:
                    raise
                break
            except Exception as exc:
                _say(f"error: {point.name} failed: {type(exc).__name__}: {exc}")
                status = 1
                break
            if bench is None:  # --compare-to prints, it returns nothing to keep
                continue
            bench.update_metadata(figures)
            interrupts.saving(True)
            try:
                for out in outputs:
                    out.add(bench)
            except UsageError as exc:
                _say(f"error: {exc}")
                status = 2
                break
            finally:
                interrupts.saving(False)
            done += 1
            if interrupts.requested:
                break
    except KeyboardInterrupt:
        pass
    finally:
        interrupts.restore()
    where = "".join(f"; {out.points} kept in {out.path}" for out in outputs)
    if interrupts.requested:
        _say(f"interrupted after {done} of {len(points)} points{where}")
        return 130
    if status == 0:
        _say(f"done: {done} points in {_clock(time.monotonic() - start)}{where}")
    return status
