"""Reading the pyperf JSON that ``percpu.bench`` writes, and checking it.

Everything is validated here, before a single output file is written, so a bad
input can only ever produce an error line, never half a report.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percpu._checks import check_instance, check_path, check_paths, check_str, check_strs
from percpu.report import stats

class ReportError(Exception):
    """An input the report cannot use; ``str()`` is one line naming the file."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.message = message.replace("\n", " ").strip()
        super().__init__(f"{self.path}: {self.message}")


@dataclass(frozen=True)
class Point:
    """One (workload, strategy, threads) benchmark of one results file."""

    source: str
    name: str
    workload: str
    strategy: str
    threads: int
    #: pyperf values: seconds per op as seen by one thread.
    values: tuple[float, ...]
    metadata: Mapping[str, Any]

    @property
    def throughput_samples(self) -> list[float]:
        # One loop is one op on every thread, so all threads together do
        # `threads` ops in the time of one value.
        return [self.threads / v for v in self.values]

    @property
    def ops_mean(self) -> float:
        return stats.mean(self.throughput_samples)

    @property
    def ops_std(self) -> float:
        return stats.stdev(self.throughput_samples)

    @property
    def time_mean(self) -> float:
        return stats.mean(self.values)

    @property
    def time_std(self) -> float:
        return stats.stdev(self.values)

    def number(self, key: str) -> float | None:
        """A numeric metadata figure, or None when absent or not a number."""
        check_str(key, "key")
        value = self.metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    @property
    def exact(self) -> bool | None:
        """Whether the counts came out exact; None when the workload does not say."""
        flag = self.number("percpu_exact")
        lost = self.number("percpu_lost_updates")
        if flag is None and lost is None:
            return None
        if flag is not None and not flag:
            return False
        return not (lost is not None and lost != 0)

    @property
    def fairness(self) -> float | None:
        """Fewest over most ops among the threads of the time-bounded probe
        run (None below 2 threads, or in files from before it was measured)."""
        return self.number("percpu_fairness")

    @property
    def hot_line(self) -> bool:
        """Whether every op of the strategy writes a line all threads write."""
        return bool(self.number("percpu_hot_line"))

    @property
    def instructions(self) -> float | None:
        """Instructions per op at 1 thread under callgrind, when counted."""
        return self.number("percpu_instructions_per_op")

    @property
    def params(self) -> dict[str, Any]:
        raw = self.metadata.get("percpu_params")
        if not isinstance(raw, str):
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


@dataclass
class ResultFile:
    path: Path
    label: str
    points: list[Point] = field(default_factory=list)
    #: Metadata shared by every benchmark of the file: the machine and the run.
    metadata: dict[str, Any] = field(default_factory=dict)

    def workloads(self) -> list[str]:
        return order_workloads({p.workload for p in self.points})

    def of(self, workload: str) -> list[Point]:
        return [p for p in self.points if p.workload == workload]

    def baseline(self, workload: str) -> str | None:
        """The strategy this file's ``workload`` points are measured against:
        the workload's baseline, which percpu.bench records in every point
        (``percpu_baseline``); load_file() checks that the points agree."""
        for p in self.of(workload):
            return str(p.metadata["percpu_baseline"])
        return None

    def get(self, workload: str, strategy: str, threads: int) -> Point | None:
        for p in self.points:
            if (p.workload, p.strategy, p.threads) == (workload, strategy, threads):
                return p
        return None


WORKLOAD_ORDER = ("stat", "netdev", "dst", "packet", "pycounter")
STRATEGY_ORDER = (
    "atomic", "atomic-sharedline", "bigref", "locked", "percpu", "perthread", "approx", "striped",
    "racy",
    "atomic+atomic", "atomic-sharedline+atomic-sharedline", "bigref+atomic",
    "bigref+atomic-sharedline", "atomic+percpu", "bigref+percpu",
    "percpu+atomic", "percpu+percpu",
)


def order_workloads(names: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        return (WORKLOAD_ORDER.index(name) if name in WORKLOAD_ORDER else len(WORKLOAD_ORDER), name)

    return sorted(set(names), key=key)


def strategy_rank(name: str) -> tuple[int, int, str]:
    """Sort key: the baseline first, the library's own strategies next, peers last."""
    peer = name.startswith("peer:")
    known = STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return (int(peer), known, name)


def order_strategies(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=strategy_rank)


_REQUIRED = {"percpu_workload": str, "percpu_strategy": str, "percpu_threads": int,
             "percpu_baseline": str}

#: How a workload figure that differs between pyperf runs (one per worker
#: process) becomes one figure for the point; anything else is averaged.
_SUMMED = {"percpu_unregisters", "percpu_churns", "percpu_churn_failures"}
_WORST_HIGH = {"percpu_lost_updates"}
_WORST_LOW = {"percpu_exact"}


def _merge_run_figures(bench: Any, metadata: dict[str, Any]) -> None:
    """Bring back percpu_* figures that pyperf left out of the common metadata.

    pyperf keeps on a benchmark only the metadata every run agrees on; a figure
    each worker measured for itself (a latency, a lost-update count) differs
    from run to run and would otherwise vanish from the report.
    """
    per_key: dict[str, list[float]] = {}
    for run in bench.get_runs():
        if not run.values:  # calibration runs measure nothing
            continue
        for key, value in run.get_metadata().items():
            if key.startswith("percpu_") and key not in metadata:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    per_key.setdefault(key, []).append(value)
    for key, values in per_key.items():
        if key in _SUMMED:
            metadata[key] = sum(values)
        elif key in _WORST_HIGH or "_max_" in key:
            metadata[key] = max(values)
        elif key in _WORST_LOW:
            metadata[key] = min(values)
        else:
            metadata[key] = stats.mean(values)


def _point_from(path: Path, label: str, bench: Any) -> Point:
    name = bench.get_name() or "<unnamed>"
    metadata = dict(bench.get_metadata())
    _merge_run_figures(bench, metadata)
    if "percpu_workload" not in metadata:
        raise ReportError(
            path, f"benchmark {name!r} has no percpu_workload metadata: not written by percpu.bench"
        )
    for key, kind in _REQUIRED.items():
        value = metadata.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or value in ("", None):
            raise ReportError(path, f"benchmark {name!r}: metadata {key} missing or not {kind.__name__}")
    threads = metadata["percpu_threads"]
    if threads < 1:
        raise ReportError(path, f"benchmark {name!r}: percpu_threads must be >= 1, got {threads}")
    if bench.get_unit() != "second":
        raise ReportError(path, f"benchmark {name!r}: unit is {bench.get_unit()!r}, expected 'second'")
    values = tuple(float(v) for v in bench.get_values())
    if not values:
        raise ReportError(path, f"benchmark {name!r} has no values")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ReportError(path, f"benchmark {name!r} has a value that is not a positive number")
    return Point(
        source=label,
        name=name,
        workload=metadata["percpu_workload"],
        strategy=metadata["percpu_strategy"],
        threads=threads,
        values=values,
        metadata=metadata,
    )


def known_workloads() -> set[str]:
    """The workload names a result may carry: the report's own, and any
    registered with ``percpu.workloads`` in this process."""
    known = set(WORKLOAD_ORDER)
    try:
        from percpu import workloads
    except ImportError:  # the compiled core is not built: the report's list
        return known
    return known | set(workloads.WORKLOADS)


def check_suite(path: str | Path, suite: Any, label: str | None = None) -> list[Point]:
    """The points of a loaded pyperf suite, checked to be percpu.bench results
    of one version of percpu, of known workloads, each with values; raises
    ``ReportError`` (one line naming ``path``) otherwise."""
    benches = suite.get_benchmarks()
    if not benches:
        raise ReportError(path, "contains no benchmarks")
    points: list[Point] = []
    seen: dict[tuple[str, str, int], str] = {}
    for bench in benches:
        try:
            point = _point_from(Path(path), label or Path(path).stem, bench)
        except ReportError:
            raise
        except Exception as exc:  # malformed runs inside a well-formed file
            raise ReportError(path, f"malformed benchmark ({type(exc).__name__}: {exc})") from None
        key = (point.workload, point.strategy, point.threads)
        if key in seen:
            raise ReportError(path, f"benchmarks {seen[key]!r} and {point.name!r} are the same point")
        seen[key] = point.name
        other = next((str(q.metadata["percpu_baseline"]) for q in points
                      if q.workload == point.workload), None)
        if other is not None and other != point.metadata["percpu_baseline"]:
            raise ReportError(path, f"workload {point.workload!r} has points measured against "
                              f"{other!r} and against {point.metadata['percpu_baseline']!r}")
        points.append(point)
    known = known_workloads()
    for point in points:
        if point.workload not in known:
            raise ReportError(path, f"benchmark {point.name!r}: unknown workload {point.workload!r} "
                                    f"(known: {', '.join(order_workloads(known))})")
    # Points of different versions measure different code: a comparison is
    # made between files, never inside one.
    versions = {str(p.metadata.get("percpu_version", "unknown")) for p in points}
    if len(versions) > 1:
        raise ReportError(path, f"mixes results of percpu versions {', '.join(sorted(versions))}; "
                                "keep one version per file")
    return points


def load_file(path: str | Path, label: str | None = None) -> ResultFile:
    """Load one pyperf JSON file (``.json`` or ``.json.gz``) of percpu.bench results."""
    import pyperf  # a dependency of the package, but only needed here

    check_path(path, "path")
    check_str(label, "label", optional=True)
    path = Path(path)
    if not path.exists():
        raise ReportError(path, "no such file")
    if not path.is_file():
        raise ReportError(path, "not a regular file")
    try:
        suite = pyperf.BenchmarkSuite.load(str(path))
    except OSError as exc:
        raise ReportError(path, f"cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # pyperf reports bad JSON with assorted exception types
        raise ReportError(path, f"not pyperf JSON ({type(exc).__name__}: {exc})") from None
    result = ResultFile(path=path, label=label or path.stem)
    result.points = check_suite(path, suite, result.label)
    # The machine and the run are the same for every point of a file; where a
    # field does drift (pyperf's date, load average) the first point stands for all.
    result.metadata = dict(result.points[0].metadata)
    return result


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Short names for the files: the file stem, widened by parent folders until unique."""
    # Without the root: a label never starts with "/".
    parts = [list(p.resolve().with_suffix("").parts[1:]) for p in paths]
    # "results.json.gz" -> "results"
    parts = [[*ps[:-1], re.sub(r"\.json$", "", ps[-1])] for ps in parts]
    depth = 1
    while True:
        labels = ["/".join(ps[-depth:]) for ps in parts]
        if len(set(labels)) == len(labels) or depth > max(len(ps) for ps in parts):
            break
        depth += 1
    if len(set(labels)) != len(labels):
        # The same file given twice: number the copies.
        return [f"{ps[-1]}#{i + 1}" for i, ps in enumerate(parts)]
    # before/results and after/results: the shared file name says nothing.
    split = [label.split("/") for label in labels]
    while all(len(s) > 1 for s in split) and len({s[-1] for s in split}) == 1:
        split = [s[:-1] for s in split]
    return ["/".join(s) for s in split]


def load_results(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[ResultFile]:
    """Load and validate every file; raises ReportError for the first bad one."""
    paths = check_paths(paths, "paths")
    labels = check_strs(labels, "labels", optional=True)
    if not paths:
        raise ReportError("-", "no input files")
    as_paths = [Path(p) for p in paths]
    if labels is not None and len(labels) != len(as_paths):
        raise ReportError("-", f"{len(labels)} labels given for {len(as_paths)} files")
    names = list(labels) if labels is not None else unique_labels(as_paths)
    if len(set(names)) != len(names):
        raise ReportError("-", "labels must be unique")
    files = [load_file(p, name) for p, name in zip(as_paths, names)]
    for workload in {w for f in files for w in f.workloads()}:
        recorded = {(f.baseline(workload), f.path) for f in files if f.of(workload)}
        if len({b for b, _ in recorded}) > 1:
            detail = ", ".join(f"{path.name}: {b}" for b, path in sorted(recorded, key=str))
            raise ReportError("-", f"the files measure {workload!r} against different "
                              f"baselines ({detail}): results of different percpu versions?")
    return files


def baseline_for(files: Sequence[ResultFile], workload: str) -> str:
    """The baseline of ``workload`` in ``files`` (load_results() made sure
    that they agree)."""
    for f in files:
        b = f.baseline(workload)
        if b is not None:
            return b
    raise KeyError(workload)
