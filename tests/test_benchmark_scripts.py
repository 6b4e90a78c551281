"""The scripts under benchmarks/ that are not Python modules: the C probe of
the fast paths and the many-core sweep script, each run small."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import percpu
from percpu.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "benchmarks" / "c" / "fastpath_probe.c"
SWEEP = ROOT / "benchmarks" / "scaling_sweep.sh"

def _env_without_preload() -> dict[str, str]:
    # The probe is not built with the sanitizers: do not hand it their runtime.
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def test_fastpath_probe_builds_runs_and_reports(tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("a C compiler is needed to build benchmarks/c/fastpath_probe.c")
    exe = tmp_path / "probe"
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-I", percpu.get_include(), str(PROBE),
                    "-o", str(exe), "-ldl", "-lpthread"], check=True, env=_env_without_preload())
    proc = subprocess.run([str(exe), "20000", "2"], capture_output=True, text=True, timeout=300,
                          env=_env_without_preload())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    m = re.fullmatch(r"rseq live: ([01]), nr_cpus: (\d+), cpu source: (\S+)", lines[0])
    assert m, lines[0]
    assert bool(int(m.group(1))) == percpu.features()["rseq"]
    assert int(m.group(2)) == percpu.nr_cpus()
    assert m.group(3) == percpu.features()["cpu_source"]
    assert lines[1].startswith("ns per op per thread (best of 5)")
    assert lines[1].split()[-2:] == ["1T", "2T"]
    rows = {r[:40].rstrip(): r[40:].split() for r in lines[2:]}
    assert "pc_percpu_counter_add (PerCPUCounter)" in rows and "one shared atomic" in rows
    for name, figures in rows.items():
        assert len(figures) == 2, (name, figures)
        # Each a time per op or a ratio of two: positive (a zero would mean
        # a loop was dropped).
        assert all(float(x) > 0 for x in figures), (name, figures)


@pytest.mark.slow
def test_scaling_sweep_script_tiny_run(tmp_path: Path) -> None:
    """benchmarks/scaling_sweep.sh OUTDIR 1 netdev, in a copy of the tree (it
    builds in place): the sweep's points and the report must all be there."""
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run benchmarks/scaling_sweep.sh")
    tree = tmp_path / "tree"
    # copy2 keeps the mtimes, so a tree already built is not built again.
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".tox", "build", ".hypothesis", "__pycache__", ".mypy_cache", ".pytest_cache"))
    out = tmp_path / "out"
    env = _env_without_preload()
    # The script runs `python3`: this interpreter, with what it has installed.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "scaling_sweep.sh"), str(out), "1",
                           "netdev"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^cpus: \d+ features: \{", proc.stdout, re.M), proc.stdout
    results = json.loads((out / "results.json").read_text())
    names = sorted(b["metadata"]["name"] for b in results["benchmarks"])
    # Every strategy the registry lists for the workload (the references
    # and the controls), each at the one thread count asked for.
    expected = sorted(f"netdev/{s}/t1" for s in WORKLOADS["netdev"].strategies)
    assert set(percpu.REFS) < set(WORKLOADS["netdev"].strategies)
    assert names == expected, names
    for name in ("index.html", "report.md"):
        assert (out / "report" / name).stat().st_size > 0, name
    assert list((out / "report").glob("*.png"))
