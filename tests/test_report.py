"""Tests of percpu.report against pyperf JSON generated here with pyperf's API.

``make_suite`` builds a realistic percpu.bench result (the contract's names and
metadata, several values per point, numbers of the order this 2-core machine
gives); the ``results_file`` fixture writes one to disk. Both are meant for
reuse by any test that needs benchmark results without running the harness.
"""
from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pyperf
import pytest

import percpu
from percpu.report import ReportError, compute_findings, load_file, load_results, write_report
from percpu.report import stats
from percpu.report.plots import PLOT_SIZE_PX
from percpu.workloads import WORKLOADS

pytestmark = pytest.mark.slow

# ns per op as seen by one thread, at 1, 2 and 4 threads (pycounter: 1 and 2).
TIMES_NS: dict[str, dict[str, tuple[float, ...]]] = {
    "stat": {
        "atomic": (2.0, 8.5, 17.5),
        "locked": (18.0, 95.0, 210.0),
        "percpu": (0.9, 1.0, 2.1),
        "perthread": (0.6, 0.6, 1.25),
        "approx": (1.1, 1.2, 2.5),
        "striped": (2.1, 2.6, 5.4),
        "racy": (0.5, 2.4, 4.9),
    },
    "netdev": {"atomic": (3.0, 17.0, 35.0), "bigref": (1.9, 2.1, 4.4), "percpu": (1.6, 1.8, 3.7),
               "atomic-sharedline": (3.0, 24.0, 50.0)},
    "dst": {"atomic": (4.0, 19.0, 38.0), "bigref": (2.6, 2.9, 6.0), "percpu": (2.2, 2.4, 5.0),
            "atomic-sharedline": (4.0, 26.0, 52.0)},
    "packet": {
        "atomic+atomic": (95.0, 120.0, 245.0),
        "bigref+atomic": (93.0, 113.0, 231.0),
        "bigref+percpu": (90.0, 78.0, 158.0),
        "atomic-sharedline+atomic-sharedline": (95.0, 140.0, 290.0),
    },
    "pycounter": {
        "atomic": (48.0, 60.0),
        "locked": (75.0, 140.0),
        "percpu": (46.0, 47.0),
        "racy": (38.0, 45.0),
        "peer:itertools.count": (28.0, 40.0),
        "peer:lock+int": (95.0, 180.0),
    },
}
STAT_BYTES = {"atomic": 8.0, "locked": 48.0, "percpu": 16.0, "perthread": 512.0, "approx": 32.0,
              "striped": 256.0, "racy": 8.0}
DST_BYTES = {"atomic": 64.0, "bigref": 96.0, "percpu": 80.0}
LATENCY_US = {"atomic": (1.5, 2.0, 4.0), "bigref": (45.0, 60.0, 80.0), "percpu": (40.0, 55.0, 75.0)}
PARAMS = {
    "stat": {"counters": 64, "read_every": 1000},
    "netdev": {"unregister_every": 200000},
    "dst": {"entries": 256, "churn_every": 50000},
    "packet": {"work": 64},
    "pycounter": {},
}
PYPERF_METADATA = {
    "cpu_model_name": "AMD EPYC",
    "cpu_count": 2,
    "platform": "Linux-6.18.44-x86_64-with-glibc2.36",
    "python_implementation": "cpython",
    "python_version": "3.11.7 (64-bit)",
    "hostname": "testhost",
    "perf_version": pyperf.__version__,
    "date": "2026-01-01 12:00:00.000000",
    "timer": "clock_gettime(CLOCK_MONOTONIC), resolution: 1.00 ns",
}
FEATURES = {"rseq": True, "membarrier": "rseq", "cacheline": 64, "nr_cpus": 2, "cpu_source": "rseq"}
ALL_WORKLOADS = ("stat", "netdev", "dst", "packet")


#: Fairness of the time-bounded probe at 2+ threads; 0.97 where not listed.
FAIRNESS = {("stat", "locked"): 0.45, ("netdev", "atomic-sharedline"): 0.7}


def _extras(workload: str, strategy: str, index: int, threads: int, ops: int) -> dict[str, int | float]:
    extras: dict[str, int | float] = {}
    extras["percpu_hot_line"] = int(strategy in WORKLOADS[workload].hot_line)
    if threads >= 2:
        extras["percpu_fairness"] = FAIRNESS.get((workload, strategy), 0.97)
    if workload == "stat":
        extras["percpu_bytes_per_object"] = STAT_BYTES.get(strategy, 8.0)
    if workload in ("stat", "pycounter"):
        lost = (ops // 7) * (threads - 1) if strategy == "racy" else 0
        extras["percpu_lost_updates"] = lost
        extras["percpu_exact"] = int(lost == 0)
    if workload == "netdev":
        mean_us = LATENCY_US.get(strategy, (10.0,) * 3)[min(index, 2)]
        extras["percpu_unregister_latency_mean_us"] = mean_us
        extras["percpu_unregister_latency_max_us"] = mean_us * 3.1
        extras["percpu_unregisters"] = 40
    if workload == "dst":
        extras["percpu_bytes_per_entry"] = DST_BYTES.get(strategy, 64.0)
        extras["percpu_churns"] = 120
        extras["percpu_churn_failures"] = 0
    return extras


def make_suite(
    workloads: Iterable[str] = ALL_WORKLOADS,
    threads: Iterable[int] = (1, 2, 4),
    scale: Mapping[tuple[str, str], float] | None = None,
    drop: Iterable[str] = (),
    noise: float = 0.02,
    nruns: int = 3,
    nvalues: int = 5,
    seed: int = 0,
    shared_noise: bool = False,
    metadata: Mapping[str, Any] | None = None,
    per_run_figures: bool = False,
    instructions: Mapping[tuple[str, str], float] | None = None,
) -> pyperf.BenchmarkSuite:
    """A percpu.bench-like suite: one benchmark per (workload, strategy, threads).

    scale multiplies the time of (workload, strategy) points (above 1: slower);
    drop removes metadata keys; shared_noise gives every point the same relative
    noise pattern, so points with equal times have identical samples;
    per_run_figures makes each run (worker process) report its own workload
    figures, run r giving (r + 1) times the table's, as separate pyperf workers do;
    instructions gives (workload, strategy) points percpu_instructions_per_op.
    """
    import random

    scale = scale or {}
    dropped = set(drop)
    benchmarks = []
    for workload in workloads:
        counts = (1, 2) if workload == "pycounter" else tuple(threads)
        for strategy, times in TIMES_NS[workload].items():
            for index, t in enumerate(counts):
                base_ns = times[min(index, len(times) - 1)] * scale.get((workload, strategy), 1.0)
                if index >= len(times):  # beyond the table: contention grows with threads
                    base_ns *= t / counts[len(times) - 1]
                name = f"{workload}/{strategy}/t{t}"
                rng = random.Random(seed if shared_noise else zlib.crc32(name.encode()) ^ seed)
                loops = max(1, int(0.05 / (base_ns * 1e-9)))
                md: dict[str, Any] = dict(PYPERF_METADATA)
                md.update({
                    "name": name,
                    "loops": loops,
                    "unit": "second",
                    "percpu_workload": workload,
                    "percpu_strategy": strategy,
                    "percpu_threads": t,
                    "percpu_baseline": WORKLOADS[workload].baseline,
                    "percpu_params": json.dumps(PARAMS[workload]),
                    "percpu_nr_cpus": 2,
                    "percpu_features": json.dumps(FEATURES),
                    "percpu_version": percpu.__version__,
                })
                md.update(_extras(workload, strategy, index, t, loops * nvalues * t))
                if instructions and (workload, strategy) in instructions:
                    md["percpu_instructions_per_op"] = instructions[(workload, strategy)]
                    md["percpu_instructions_path"] = "cpu getcpu, refs sections"
                md.update(metadata or {})
                for key in dropped:
                    md.pop(key, None)
                runs = []
                for r in range(nruns):
                    values = [base_ns * 1e-9 * (1 + rng.gauss(0, noise)) for _ in range(nvalues)]
                    run_md = dict(md)
                    if per_run_figures:
                        for key, value in _extras(workload, strategy, index, t, loops * nvalues * t).items():
                            if key in run_md and key not in ("percpu_exact", "percpu_hot_line", "percpu_fairness"):
                                run_md[key] = value * (r + 1)
                    runs.append(pyperf.Run(values, warmups=[(loops, base_ns * 1.3e-9)],
                                           metadata=run_md, collect_metadata=False))
                benchmarks.append(pyperf.Benchmark(runs))
    return pyperf.BenchmarkSuite(benchmarks)


@pytest.fixture
def results_file(tmp_path: Path) -> Callable[..., Path]:
    """results_file(name="results.json", **make_suite_kwargs) -> path of the written JSON."""

    def write(name: str = "results.json", **kwargs: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make_suite(**kwargs).dump(str(path), replace=True)
        return path

    return write


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    src = str(Path(percpu.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "percpu.report", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


EXPECTED_FILES = {
    "report.md", "index.html", "bytes_per_object.png", "netdev_unregister_latency.png",
    *(f"throughput_{w}.png" for w in ALL_WORKLOADS), *(f"speedup_{w}.png" for w in ALL_WORKLOADS),
    *(f"fairness_{w}.png" for w in ALL_WORKLOADS),
}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("full")
    results = folder / "results.json"
    make_suite(workloads=(*ALL_WORKLOADS, "pycounter")).dump(str(results))
    out = folder / "report"
    proc = run_cli(str(results), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


# --- the files -------------------------------------------------------------------


def test_every_file_is_written_and_plots_are_pngs_of_the_set_size(full_report: Path) -> None:
    names = {p.name for p in full_report.iterdir() if not p.name.startswith(".")}
    assert EXPECTED_FILES | {"throughput_pycounter.png", "speedup_pycounter.png"} == names
    for name in names:
        assert (full_report / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert png_size(full_report / name) == PLOT_SIZE_PX, name


def test_html_embeds_every_plot_and_needs_no_network(full_report: Path) -> None:
    page = (full_report / "index.html").read_text()
    pngs = sorted(p.name for p in full_report.glob("*.png"))
    embedded = [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    for name in pngs:
        assert f'href="{name}"' in page, name
        assert (full_report / name).read_bytes() in embedded, name
    links = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page, re.I)
    assert links
    assert not [u for u in links if re.match(r"(https?:)?//", u, re.I)]
    assert "<script" not in page.lower() and "<link" not in page.lower()


def test_markdown_has_tables_machine_and_every_plot(full_report: Path) -> None:
    md = (full_report / "report.md").read_text()
    for name in (p.name for p in full_report.glob("*.png")):
        assert f"]({name})" in md, name
    for text in ("AMD EPYC", "Linux-6.18.44", "3.11.7", percpu.__version__, "rseq=True", "## Findings",
                 "## From Python", "`peer:itertools.count`", "no (lost"):
        assert text in md, text
    # stat/percpu/t4: 2.1 ns per op per thread -> 4 / 2.1e-9 = 1.9 G ops/s.
    row = next(line for line in md.splitlines() if line.startswith("| `percpu` | 4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    time_ns = float(cells[2].split()[0])
    ops_g = float(cells[3].split()[0])
    assert cells[3].split()[1] == "Gops/s"
    assert time_ns == pytest.approx(2.1, rel=0.05) and ops_g == pytest.approx(4 / 2.1, rel=0.05)


# --- the findings -----------------------------------------------------------------


def _findings(tmp: Path, **kwargs: Any) -> list[str]:
    path = tmp / f"r{len(list(tmp.iterdir()))}.json"
    make_suite(**kwargs).dump(str(path))
    return compute_findings(load_results([path]))


def _one(findings: list[str], prefix: str) -> str:
    hits = [f for f in findings if f.startswith(prefix)]
    assert len(hits) == 1, (prefix, findings)
    return hits[0]


def test_fastest_strategy_follows_the_data(tmp_path: Path) -> None:
    before = _one(_findings(tmp_path), "`stat` at 4 threads")
    assert "`perthread` is the fastest exact strategy" in before
    assert "`percpu`" in before and "not significant" not in before
    slower = {("stat", s): 50.0 for s in TIMES_NS["stat"] if s != "atomic"}
    after = _one(_findings(tmp_path, scale=slower), "`stat` at 4 threads")
    assert "`atomic` is the fastest exact strategy" in after


def test_racy_never_wins_and_lost_updates_are_reported(tmp_path: Path) -> None:
    faster_racy = {("stat", "racy"): 0.01}
    findings = _findings(tmp_path, scale=faster_racy)
    assert "`racy` is the fastest" not in _one(findings, "`stat` at 4 threads")
    assert "`stat/racy` lost" in _one(findings, "Lost updates")


def test_a_difference_within_noise_is_called_not_significant(tmp_path: Path) -> None:
    # percpu made exactly as fast as perthread at 4 threads, same noise pattern.
    same = {("stat", "percpu"): 1.25 / 2.1}
    text = _one(_findings(tmp_path, scale=same, shared_noise=True), "`stat` at 4 threads")
    assert "not significant" in text


def test_percpu_speedup_over_atomic(tmp_path: Path) -> None:
    text = _one(_findings(tmp_path, shared_noise=True), "`stat`: `percpu` over `atomic`")
    # 17.5 / 2.1 at 4 threads, 2.0 / 0.9 at 1 thread.
    assert "8.33x at 4 threads" in text and "2.22x at 1 thread" in text


def test_packet_ordering_follows_the_data(tmp_path: Path) -> None:
    holds = _one(_findings(tmp_path, shared_noise=True), "`packet` ordering at 4 threads")
    # 245 / 231 and 245 / 158 ns per op.
    assert "holds:" in holds and "+6.1%" in holds and "+55.1%" in holds
    # Each step over the one before it, with its test: 158 ns over 231 ns.
    step = re.search(r"`bigref\+percpu` \+46\.2% over `bigref\+atomic`, p=([0-9.e-]+);", holds)
    assert step is not None, holds
    assert float(step.group(1)) < 0.05
    broken = _one(_findings(tmp_path, scale={("packet", "bigref+percpu"): 1.6}), "`packet` ordering at 4 threads")
    assert "does not hold" in broken and "`bigref+atomic` >= `bigref+percpu`" in broken


def test_model_vs_seed(tmp_path: Path) -> None:
    # 2 CPUs: the seed's 8 clients are 2 threads here. 120 / 113 and 120 / 78 ns.
    text = _one(_findings(tmp_path, shared_noise=True), "Model vs seed at 2 threads")
    assert "`bigref+atomic` +6.2% (seed +6.0%, residual +0.2 points)" in text
    assert "`bigref+percpu` +53.8% (seed +55.0%, residual -1.2 points)" in text
    assert "work=64" in text
    path = tmp_path / "seed.json"
    make_suite(workloads=("packet",), shared_noise=True).dump(str(path))
    write_report([path], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Model vs seed" in md
    row = next(line for line in md.splitlines() if line.startswith("| `bigref+percpu` | +55.0% | +30.0% |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3].startswith("+53.8% +- ") and cells[4] == "-1.2" and cells[5].startswith("significant")
    # Without the seed's thread count there is nothing to set beside it.
    assert not [f for f in _findings(tmp_path, threads=(1, 4)) if f.startswith("Model vs seed")]


def test_false_sharing_control(tmp_path: Path) -> None:
    findings = _findings(tmp_path, shared_noise=True)
    text = _one(findings, "`netdev` false sharing vs true contention at 4 threads")
    # 50 -> 35 ns: +42.9%; 50 -> 3.7 ns: the per-CPU gain; padding gets
    # (1/35 - 1/50) / (1/3.7 - 1/50) of it.
    share = (1 / 35 - 1 / 50) / (1 / 3.7 - 1 / 50)
    assert "gains +42.9%" in text and f"gets {100 * share:.0f}% of the per-CPU gain" in text
    packet = _one(findings, "`packet` false sharing vs true contention at 4 threads")
    assert "`atomic-sharedline+atomic-sharedline` -> `atomic+atomic`" in packet
    share = (1 / 245 - 1 / 290) / (1 / 158 - 1 / 290)
    assert f"gets {100 * share:.0f}% of the per-CPU gain" in packet
    path = tmp_path / "fs.json"
    make_suite(workloads=("netdev", "packet"), shared_noise=True).dump(str(path))
    write_report([path], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## False sharing vs true contention" in md
    assert any(line.startswith("| `netdev` | 4 |") and line.rstrip().endswith(f"| {100 * (1 / 35 - 1 / 50) / (1 / 3.7 - 1 / 50):.0f}% |")
               for line in md.splitlines())


def test_fairness_is_reported_where_a_thread_can_starve(tmp_path: Path) -> None:
    findings = _findings(tmp_path)
    text = _one(findings, "Fairness (fewest / most ops per thread")
    assert "`stat/locked` at 2 threads 0.45" in text and "`netdev/atomic-sharedline` at 2 threads 0.70" in text
    assert "every strategy with a hot line stayed" not in text
    everywhere = _one(_findings(tmp_path, metadata={"percpu_fairness": 0.95}), "Fairness")
    assert "every strategy with a hot line stayed at or above 0.8" in everywhere
    path = tmp_path / "fair.json"
    make_suite(workloads=("stat",), threads=(1, 2)).dump(str(path))
    written = {p.name for p in write_report([path], tmp_path / "out")}
    assert "fairness_stat.png" in written
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| fairness |" in md.splitlines()[next(i for i, l in enumerate(md.splitlines()) if l.startswith("| strategy | threads"))]
    row = next(line for line in md.splitlines() if line.startswith("| `locked` | 2 |"))
    assert "| 0.45 |" in row
    one_thread = next(line for line in md.splitlines() if line.startswith("| `locked` | 1 |"))
    assert "| - |" in one_thread
    # No hot-line point measured: no plot.
    path = tmp_path / "nofair.json"
    make_suite(workloads=("stat",), threads=(1, 2), drop=("percpu_fairness",)).dump(str(path))
    written = {p.name for p in write_report([path], tmp_path / "out2")}
    assert "fairness_stat.png" not in written


def test_instructions_column(tmp_path: Path) -> None:
    path = tmp_path / "ins.json"
    make_suite(workloads=("netdev",), threads=(1, 2),
               instructions={("netdev", "atomic"): 67.0, ("netdev", "bigref"): 326.5}).dump(str(path))
    write_report([path], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    lines = md.splitlines()
    assert any("instr/op (1T, callgrind)" in line for line in lines)
    assert next(line for line in lines if line.startswith("| `atomic` | 2 |")).rstrip().endswith("| 67.0 |")
    assert next(line for line in lines if line.startswith("| `bigref` | 1 |")).rstrip().endswith("| 326.5 |")
    assert next(line for line in lines if line.startswith("| `percpu` | 1 |")).rstrip().endswith("| - |")
    assert "fallback path (cpu getcpu, refs sections)" in md
    path = tmp_path / "noins.json"
    make_suite(workloads=("netdev",), threads=(1, 2)).dump(str(path))
    write_report([path], tmp_path / "out2")
    assert "callgrind" not in (tmp_path / "out2" / "report.md").read_text()


def test_unregister_latency_and_memory_findings(tmp_path: Path) -> None:
    findings = _findings(tmp_path)
    latency = _one(findings, "`netdev` unregister latency at 4 threads")
    assert "`atomic` 4 us" in latency and "`bigref` 80 us" in latency
    assert _one(findings, "`dst` bytes per route entry") == "`dst` bytes per route entry: 64 (`atomic`) to 96 (`bigref`)."


def test_figures_that_differ_between_runs_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    make_suite(workloads=("netdev", "stat"), per_run_figures=True, nruns=3).dump(str(path))
    loaded = load_results([path])[0]
    netdev = loaded.get("netdev", "bigref", 4)
    assert netdev is not None
    # runs report 1x, 2x and 3x the table's figures
    assert netdev.number("percpu_unregister_latency_mean_us") == pytest.approx(80.0 * 2)
    assert netdev.number("percpu_unregister_latency_max_us") == pytest.approx(80.0 * 3.1 * 3)
    assert netdev.number("percpu_unregisters") == 40 * 6
    racy = loaded.get("stat", "racy", 2)
    assert racy is not None and racy.exact is False
    assert racy.number("percpu_lost_updates") == max(
        r.get_metadata()["percpu_lost_updates"] for r in pyperf.BenchmarkSuite.load(str(path))
        .get_benchmark("stat/racy/t2").get_runs()
    )


def test_missing_extras_skip_their_plots_cleanly(results_file: Callable[..., Path], tmp_path: Path) -> None:
    extras = ("percpu_bytes_per_object", "percpu_bytes_per_entry", "percpu_unregister_latency_mean_us",
              "percpu_unregister_latency_max_us")
    path = results_file(workloads=("stat", "netdev", "dst"), threads=(1, 2), drop=extras)
    written = {p.name for p in write_report([path], tmp_path / "out")}
    assert "bytes_per_object.png" not in written and "netdev_unregister_latency.png" not in written
    assert "throughput_netdev.png" in written
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No data: no point carries `percpu_bytes_per_object`" in md


def test_a_workload_without_its_baseline_has_no_speedup_plot(results_file: Callable[..., Path], tmp_path: Path) -> None:
    path = results_file(workloads=("packet",), scale={}, threads=(1, 2))
    suite = pyperf.BenchmarkSuite.load(str(path))
    kept = [b for b in suite.get_benchmarks() if b.get_metadata()["percpu_strategy"] != "atomic+atomic"]
    pyperf.BenchmarkSuite(kept).dump(str(path), replace=True)
    written = {p.name for p in write_report([path], tmp_path / "out")}
    assert "throughput_packet.png" in written and "speedup_packet.png" not in written


# --- comparing files ----------------------------------------------------------------


def test_two_files_are_compared_side_by_side(results_file: Callable[..., Path], tmp_path: Path) -> None:
    before = results_file("before/results.json", workloads=("stat", "netdev"), shared_noise=True)
    after = results_file("after/results.json", workloads=("stat", "netdev"), shared_noise=True,
                         scale={("stat", "percpu"): 0.5})
    out = tmp_path / "cmp"
    proc = run_cli(str(before), str(after), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## Comparison" in md and "### after vs before" in md
    row = next(line for line in md.splitlines() if line.startswith("| `stat` | `percpu` | 4 |"))
    assert "2.00x" in row and "| significant" in row
    same = next(line for line in md.splitlines() if line.startswith("| `stat` | `atomic` | 4 |"))
    assert "1.00x" in same and "not significant" in same
    findings = [line for line in md.splitlines() if line.startswith("- `after` vs `before` on `stat`")]
    assert len(findings) == 1 and "3 significantly faster" in findings[0]
    assert png_size(out / "throughput_stat.png") == PLOT_SIZE_PX
    page = (out / "index.html").read_text()
    assert 'href="throughput_stat.png"' in page and "one line per (file, strategy)" in page


def test_gil_and_free_threaded_runs_side_by_side_from_python(
        results_file: Callable[..., Path], tmp_path: Path) -> None:
    gil = results_file("gil/results.json", workloads=("pycounter",), shared_noise=True,
                       metadata={"percpu_free_threaded": 0, "percpu_gil_enabled": 1,
                                 "percpu_idiom": "c.inc()"})
    ft = results_file("ft/results.json", workloads=("pycounter",), shared_noise=True,
                      scale={("pycounter", "percpu"): 0.5},
                      metadata={"percpu_free_threaded": 1, "percpu_gil_enabled": 0,
                                "percpu_idiom": "c.inc()"})
    out = tmp_path / "py"
    proc = run_cli(str(gil), str(ft), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    section = md[md.index("## From Python"):]
    assert "- `gil`: GIL build; shared: `c.inc()`" in section
    assert "- `ft`: free-threaded, GIL off; shared: `c.inc()`" in section
    header = next(line for line in section.splitlines() if line.startswith("| strategy |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "strategy", "gil, 1 thread", "gil, 2 threads", "gil, 2T/1T",
        "ft, 1 thread", "ft, 2 threads", "ft, 2T/1T", "exact"]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in section.splitlines() if line.startswith("| `")}
    # Total ns per increment at 2 threads over 1: 47 / (2 * 46) and 140 / (2 * 75).
    assert cells["`percpu`"][3] == "0.51" and cells["`percpu`"][6] == "0.51"
    assert float(cells["`percpu`"][1]) == pytest.approx(46, rel=0.05)
    assert float(cells["`percpu`"][4]) == pytest.approx(23, rel=0.05)
    assert cells["`locked`"][3] == "0.93"
    assert cells["`racy`"][-1].startswith("gil 2T: no (lost")
    assert "| free-threaded build | no | yes |" in md and "| GIL enabled | yes | no |" in md


def test_file_labels_are_short_and_unique(tmp_path: Path) -> None:
    from percpu.report.loading import unique_labels

    assert unique_labels([Path("x/before/results.json"), Path("y/after/results.json.gz")]) == ["before", "after"]
    assert unique_labels([Path("a.json"), Path("b.json")]) == ["a", "b"]
    assert unique_labels([Path("a/results.json"), Path("a/results.json")]) == ["results#1", "results#2"]
    assert unique_labels([Path("r/x/res.json"), Path("s/x/res.json")]) == ["r", "s"]


# --- bad input ----------------------------------------------------------------------


def _plain_pyperf(path: Path) -> None:
    run = pyperf.Run([1e-6, 1.1e-6], metadata={"name": "bench", "loops": 10, "unit": "second"},
                     collect_metadata=False)
    pyperf.BenchmarkSuite([pyperf.Benchmark([run])]).dump(str(path))


BAD_INPUTS: dict[str, Callable[[Path], object]] = {
    "missing": lambda p: None,
    "empty": lambda p: p.write_text(""),
    "not-json": lambda p: p.write_text("{not json"),
    "json-not-pyperf": lambda p: p.write_text('{"a": 1}'),
    "json-list": lambda p: p.write_text("[1, 2]"),
    "pyperf-not-percpu": _plain_pyperf,
    "no-strategy": lambda p: make_suite(workloads=("netdev",), drop=("percpu_strategy",)).dump(str(p)),
    "folder": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    kind: str, results_file: Callable[..., Path], tmp_path: Path
) -> None:
    good = results_file(workloads=("netdev",), threads=(1, 2))
    bad = tmp_path / f"{kind}.json"
    BAD_INPUTS[kind](bad)
    out = tmp_path / "out"
    proc = run_cli(str(good), str(bad), "-o", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not out.exists()


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    _plain_pyperf(path)
    with pytest.raises(ReportError, match="plain.json: benchmark 'bench' has no percpu_workload"):
        load_file(path)


def test_a_failed_run_leaves_an_earlier_report_alone(results_file: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_report([results_file(workloads=("netdev",), threads=(1, 2))], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_cli(str(tmp_path / "nonexistent.json"), "-o", str(out))
    assert proc.returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_failure_while_drawing_leaves_nothing(
    results_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from percpu.report import plots

    def broken(*args: object) -> bool:
        raise RuntimeError("the report needs matplotlib")

    monkeypatch.setattr(plots, "plot_latency", broken)
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        write_report([results_file(workloads=("netdev",), threads=(1, 2))], out)
    assert not out.exists()


def test_rerun_replaces_its_own_files_and_keeps_others(results_file: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("kept")
    write_report([results_file(workloads=("stat", "netdev"), threads=(1, 2))], out)
    assert (out / "throughput_stat.png").exists()
    write_report([results_file(workloads=("netdev",), threads=(1, 2))], out)
    names = {p.name for p in out.iterdir()}
    assert "throughput_stat.png" not in names and "throughput_netdev.png" in names
    assert (out / "results.json").read_text() == "kept"
    assert not [n for n in names if n.startswith(".percpu-report-") and n != ".percpu-report-files"]


# --- the statistics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [(2.228, 10, 0.05), (2.086, 20, 0.05), (3.169, 10, 0.01), (1.960, 1e6, 0.05), (0.0, 5, 1.0), (12.706, 1, 0.05)],
)
def test_t_distribution_matches_tables(t: float, df: float, p: float) -> None:
    assert stats.t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)


def test_welch_test() -> None:
    a = [1.0, 1.1, 0.9, 1.05, 0.95]
    assert stats.is_significant(a, a) is False
    assert stats.is_significant(a, [x + 1 for x in a]) is True
    assert stats.is_significant([1.0], [2.0]) is None
    assert stats.is_significant([1.0, 1.0], [2.0, 2.0]) is True
    assert stats.stdev([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(2.138, abs=1e-3)
