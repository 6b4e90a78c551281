"""python -m percpu: the report, its JSON form, the self-check's verdicts and
the command line's errors."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

import percpu
from percpu import workloads
from percpu.__main__ import main
from percpu.counters import EXACT_COUNTERS
from percpu.refs import fast_path

OPS = 20_000


def same_machine(features: dict[str, Any]) -> bool:
    """The child's features are ours, except the slots each process has used."""
    mine = percpu.features()
    return {k: v for k, v in features.items() if k != "slots_in_use"} == {
        k: v for k, v in mine.items() if k != "slots_in_use"}


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "percpu", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_json_reports_every_strategy_with_exact_totals() -> None:
    proc = run_cli("--json", "--threads", "2", "--ops", str(OPS))
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["version"] == percpu.__version__
    assert same_machine(rep["features"])
    # Read after the self-check, which used at least one slot.
    assert 1 <= rep["features"]["slots_in_use"] <= rep["features"]["nr_cpus"]
    assert rep["fast_path"] == {"refs": fast_path()}
    if rep["features"]["rseq"]:
        assert rep["fast_paths"]["counters"].startswith("rseq critical section")
        assert rep["fast_paths"]["counters"].endswith(
            f"indexed by {rep['features']['cpu_source']}")
    check = rep["selfcheck"]
    assert check["threads"] == [1, 2]
    assert check["ok"] is True
    seen = {(p["strategy"], p["threads"]) for p in check["counters"]}
    assert seen == {(s, t) for s in workloads.COUNTER_STRATEGIES for t in (1, 2)}
    for p in check["counters"]:
        total = p["threads"] * OPS
        assert p["ops"] == p["expected"] == total
        assert p["observed"] + p["lost_updates"] == total
        assert p["exact"] is (p["lost_updates"] == 0)
        assert p["exact_by_design"] is (p["strategy"] in EXACT_COUNTERS)
        if p["exact_by_design"]:
            assert p["observed"] == total
        assert p["ns_per_op"] > 0
    seen = {(p["strategy"], p["threads"]) for p in check["refs"]}
    assert seen == {(s, t) for s in workloads.REF_STRATEGIES for t in (1, 2)}
    for p in check["refs"]:
        assert p["ops"] == p["threads"] * OPS
        assert p["created"] == p["released"] >= 1
        assert p["exact"] is True


def test_text_report_names_version_features_and_every_strategy() -> None:
    proc = run_cli("--threads", "2", "--ops", "5000")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"percpu {percpu.__version__} on ")
    assert f"cpu_source={percpu.features()['cpu_source']}" in out
    assert f"percpu.refs.fast_path() = {fast_path()!r}" in out
    rows = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(workloads.COUNTER_STRATEGIES) | set(workloads.REF_STRATEGIES) <= rows
    assert out.rstrip().endswith("self-check: ok")


def test_default_threads_are_the_allowed_cpus_at_least_two() -> None:
    proc = run_cli("--json", "--ops", "1000")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    allowed = len(os.sched_getaffinity(0))
    assert rep["selfcheck"]["threads"] == [1, max(2, allowed)]


def test_no_check_prints_no_selfcheck() -> None:
    proc = run_cli("--json", "--no-check")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["selfcheck"] is None
    assert same_machine(rep["features"])


def test_fallback_fast_paths_are_reported() -> None:
    """Without rseq the report must say that increments are atomic adds."""
    proc = run_cli("--json", "--no-check", env_extra={"PERCPU_NO_RSEQ": "1"})
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["features"]["rseq"] is False
    assert rep["fast_path"]["refs"] == "sections"
    assert rep["fast_paths"]["counters"].startswith("atomic add on the current CPU's slot")
    assert rep["features"]["cpu_source"] in rep["fast_paths"]["counters"]


@pytest.mark.parametrize("argv", [
    ["--bogus"],
    ["extra"],
    ["--threads", "0"],
    ["--threads", "two"],
    ["--threads", str(workloads.MAX_THREADS + 1)],
    ["--ops", "-5"],
    ["--ops", "1e6"],
    ["--ops", str(10**12)],
    ["--json=yes"],
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m percpu: error: "), captured.err


def test_bad_arguments_from_the_command_line() -> None:
    proc = run_cli("--threads", "-1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1


def _lossy(lose: dict[str, int], fail: frozenset[str] = frozenset(),
           leak: frozenset[str] = frozenset()) -> Any:
    """workloads.run, except that the named counter strategies lose updates,
    the strategies in ``fail`` raise the kernel's RuntimeError and the
    reference strategies in ``leak`` release one object fewer than created."""
    def run(name: str, strategy: str, threads: int, ops: int, **params: int) -> dict[str, Any]:
        if strategy in fail:
            raise RuntimeError(f"{name}/{strategy}: counters sum to 1, expected 2")
        r = workloads.run(name, strategy, threads, ops, **params)
        if name == "stat" and strategy in lose:
            r["observed"] = r["expected"] - lose[strategy]
        if name == "netdev" and strategy in leak:
            r["released"] = r["created"] - 1
        return r
    return run


def _json_main(run: Any) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    status = main(["--json", "--threads", "2", "--ops", "2000"], out=out, run=run)
    return status, json.loads(out.getvalue())


def test_a_lossy_exact_strategy_fails_the_check() -> None:
    status, rep = _json_main(_lossy({"percpu": 7}))
    assert status == 1
    assert rep["selfcheck"]["ok"] is False
    bad = [p for p in rep["selfcheck"]["counters"] if p["strategy"] == "percpu"]
    assert [p["lost_updates"] for p in bad] == [7, 7]
    assert all(p["exact"] is False and p["observed"] == p["expected"] - 7 for p in bad)
    others = [p for p in rep["selfcheck"]["counters"]
              if p["strategy"] not in ("percpu", "racy")]
    assert all(p["exact"] for p in others)


def test_a_kernel_error_is_reported_as_not_exact() -> None:
    status, rep = _json_main(_lossy({}, fail=frozenset({"striped"})))
    assert status == 1
    bad = [p for p in rep["selfcheck"]["counters"] if p["strategy"] == "striped"]
    assert len(bad) == 2
    assert all(p["exact"] is False and "expected 2" in p["error"] for p in bad)


def test_racy_losing_updates_does_not_fail_the_check() -> None:
    status, rep = _json_main(_lossy({"racy": 3}))
    assert status == 0
    assert rep["selfcheck"]["ok"] is True
    racy = [p for p in rep["selfcheck"]["counters"] if p["strategy"] == "racy"]
    assert all(p["exact"] is False and p["exact_by_design"] is False for p in racy)


def test_a_reference_released_too_few_times_fails_the_check() -> None:
    status, rep = _json_main(_lossy({}, leak=frozenset({"bigref"})))
    assert status == 1
    bad = [p for p in rep["selfcheck"]["refs"] if p["strategy"] == "bigref"]
    assert all(p["exact"] is False and p["released"] == p["created"] - 1 for p in bad)


def test_text_report_shows_failures() -> None:
    out = io.StringIO()
    status = main(["--threads", "2", "--ops", "2000"], out=out,
                  run=_lossy({"atomic": 5, "racy": 2}, leak=frozenset({"percpu"})))
    assert status == 1
    text = out.getvalue()
    atomic = next(line for line in text.splitlines() if line.startswith("  atomic "))
    assert "lost 5 of 4,000 at 2 threads (NO)" in atomic
    racy = next(line for line in text.splitlines() if line.startswith("  racy "))
    assert "it loses updates" in racy
    percpu_ref = [line for line in text.splitlines() if line.startswith("  percpu ")][-1]
    assert "NO at 1 thread:" in percpu_ref
    assert text.rstrip().endswith("FAILED (an exact strategy was not exact)")
