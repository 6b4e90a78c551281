"""The command lines given JSON that is well formed but not what they expect.

``python -m percpu.report FILE`` and ``python -m percpu.bench run --append
FILE`` both read results files. Whatever the file holds, a bad one ends in
one line on stderr naming it and exit status 2, before anything is measured
or written: never a traceback, never a half-written report, never a changed
file.
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pyperf
import pytest

import percpu
import percpu.bench
import percpu.report


def _metadata(name: str = "stat/atomic/t1", **extra: Any) -> dict[str, Any]:
    md: dict[str, Any] = {
        "name": name, "loops": 10, "unit": "second", "percpu_workload": "stat",
        "percpu_strategy": "atomic", "percpu_threads": 1, "percpu_params": "{}",
        "percpu_version": percpu.__version__, "percpu_baseline": "atomic",
    }
    md.update(extra)
    return {k: v for k, v in md.items() if v is not None}


def _suite(*benches: dict[str, Any], values: tuple[float, ...] = (1e-6, 1.1e-6)) -> pyperf.BenchmarkSuite:
    return pyperf.BenchmarkSuite([
        pyperf.Benchmark([pyperf.Run(list(values), warmups=[(1, 1e-6)], metadata=md,
                                     collect_metadata=False)])
        for md in benches
    ])


def _dump(suite: pyperf.BenchmarkSuite) -> Callable[[Path], object]:
    return lambda path: suite.dump(str(path), replace=True)


def _text(text: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(text)


#: Each kind of file, and a word the one-line error must contain.
BAD: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty": (_text(""), "not"),
    "not-json": (_text("{nope"), "not"),
    "json-list": (_text("[1, 2]"), "not"),
    "json-not-pyperf": (_text('{"benchmarks": 3}'), "not"),
    "json-object-of-nothing": (_text("{}"), "not"),
    "truncated": (lambda p: (_dump(_suite(_metadata()))(p), p.write_bytes(p.read_bytes()[:200])), "not"),
    "gzip-garbage": (lambda p: p.write_bytes(b"\x1f\x8b not really gzip"), ""),
    "pyperf-without-our-metadata": (_dump(_suite({"name": "bench", "loops": 1, "unit": "second"})),
                                    "percpu_workload"),
    "missing-strategy": (_dump(_suite(_metadata(percpu_strategy=None))), "percpu_strategy"),
    "threads-not-an-int": (_dump(_suite(_metadata(percpu_threads="two"))), "percpu_threads"),
    "no-values": (_dump(_suite(_metadata(), values=())), "no values"),
    "unknown-workload": (_dump(_suite(_metadata("nosuch/atomic/t1", percpu_workload="nosuch"))),
                         "unknown workload"),
    "mixed-versions": (_dump(_suite(_metadata(), _metadata("stat/atomic/t2", percpu_threads=2,
                                                           percpu_version="0.0.1"))),
                       "versions"),
    "not-seconds": (_dump(_suite(_metadata(unit="byte"))), "unit"),
    "mixed-baselines": (_dump(_suite(_metadata(), _metadata("stat/atomic/t2", percpu_threads=2,
                                                            percpu_baseline="locked"))),
                        "against"),
}


@pytest.fixture
def one_runner_each() -> Iterator[None]:
    # pyperf allows one Runner per process; each call below stands for a
    # command line of its own.
    saved = set(pyperf.Runner._created)
    pyperf.Runner._created.clear()
    yield
    pyperf.Runner._created.clear()
    pyperf.Runner._created.update(saved)


def _bad_file(tmp_path: Path, kind: str) -> Path:
    write, _ = BAD[kind]
    path = tmp_path / (f"{kind}.json.gz" if kind == "gzip-garbage" else f"{kind}.json")
    write(path)
    return path


def _one_line(err: str, path: Path, word: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert path.name in lines[0] and word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BAD))
def test_report_refuses_in_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_file(tmp_path, kind)
    out = tmp_path / "report"
    assert percpu.report.main([str(path), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, path, BAD[kind][1])
    assert captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bench_append_refuses_in_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          one_runner_each: None) -> None:
    path = _bad_file(tmp_path, kind)
    before = path.read_bytes()
    argv = ["run", "--workloads", "stat", "--strategies", "atomic", "--threads", "1",
            "--append", str(path)]
    assert percpu.bench.main(argv) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, path, BAD[kind][1])
    assert path.read_bytes() == before


def test_report_accepts_the_good_file(tmp_path: Path) -> None:
    # The same metadata as above, complete: the refusals are about what each
    # case changed, not about the fixture.
    path = tmp_path / "good.json"
    _suite(_metadata(), _metadata("stat/atomic/t2", percpu_threads=2)).dump(str(path))
    points = percpu.report.load_file(path).points
    assert [(p.workload, p.strategy, p.threads) for p in points] == [("stat", "atomic", 1),
                                                                        ("stat", "atomic", 2)]


@pytest.mark.parametrize("module, args", [
    ("percpu.report", ["{path}", "-o", "{out}"]),
    ("percpu.bench", ["run", "--workloads", "stat", "--threads", "1", "--append", "{path}"]),
])
def test_real_command_line_exits_2_without_a_traceback(module: str, args: list[str], tmp_path: Path) -> None:
    path = _bad_file(tmp_path, "mixed-versions")
    src = str(Path(percpu.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [a.format(path=path, out=tmp_path / "out") for a in args]
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, path, "versions")


def test_gzip_garbage_is_named_as_unreadable(tmp_path: Path) -> None:
    # pyperf opens .json.gz with gzip: garbage is an OSError there, which the
    # report must still turn into its one line.
    path = _bad_file(tmp_path, "gzip-garbage")
    with pytest.raises(percpu.report.ReportError) as info:
        percpu.report.load_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(OSError):
        with gzip.open(path) as f:
            f.read()
