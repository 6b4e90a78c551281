"""Instructions per op, counted by callgrind: a figure that noise cannot move.

On a small or busy machine timings of strategies that differ by a few percent
overlap; the instructions one op executes do not. Each (workload, strategy,
parameters) runs at one thread under ``valgrind --tool=callgrind`` twice, with
``ops`` and ``2 * ops`` operations (after a short warm-up run, so that
one-time initialisation lands in neither); counting is on only inside the team's
threads (``pc_team_main``) and a dump follows every team run
(``pc_team_run``), so the difference of the two dumps is ``ops`` operations'
instructions, with the setup, the teardown and the thread's start cancelled
out. One valgrind process measures every point of a sweep.

What it cannot see: contention (an atomic add costs the same instructions on
a line that bounces as on one that stays) and, for the per-CPU strategies,
the rseq fast path: valgrind does not implement rseq, so under it the
library takes its fallback (cpu id from ``getcpu``, references through
read-side sections) and the per-CPU strategies' counts are those of that
path. ``path`` says which path ran. Kernels written in Python (``pycounter``)
run no native team and are not counted.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from percpu import workloads

__all__ = ["OPS", "Count", "available", "measure", "unavailable_reason"]

#: Ops per counted run (and twice that in the second run).
OPS = 20_000
_CHILD = "percpu.bench._instructions"
_WARMUP = 100
_RUNS = 3           # per spec: the warm-up, ops, 2 * ops
_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    """Instructions per op of one (workload, strategy, params) at one thread,
    or ``None`` with ``why`` when it could not be counted; ``path`` is the
    fast path that ran (``cpu <source>, refs <path>``)."""

    workload: str
    strategy: str
    per_op: float | None
    path: str = ""
    why: str = ""


def unavailable_reason() -> str | None:
    """Why instructions cannot be counted here (None: they can)."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind)"
    return None


def available() -> bool:
    return unavailable_reason() is None


def _native(workload: str) -> bool:
    return workloads.WORKLOADS[workload].kernel is None


def measure(specs: Sequence[tuple[str, str, Mapping[str, int]]], ops: int = OPS,
            timeout: float | None = None) -> list[Count]:
    """Count instructions per op for each ``(workload, strategy, params)``.

    Raises RuntimeError when valgrind is missing or fails; a spec whose
    workload has no native kernel comes back with ``per_op=None``.
    """
    why = unavailable_reason()
    if why is not None:
        raise RuntimeError(why)
    if ops < 1:
        raise ValueError(f"ops must be >= 1, not {ops}")
    native = [(w, s, dict(p)) for w, s, p in specs if _native(w)]
    counts: dict[tuple[str, str, str], Count] = {}
    if native:
        counts = _run_valgrind(native, ops, timeout)
    out = []
    for w, s, p in specs:
        key = (w, s, json.dumps(dict(p), sort_keys=True))
        if key in counts:
            out.append(counts[key])
        else:
            out.append(Count(w, s, None, why="a Python-level kernel runs no native team to count"))
    return out


def _run_valgrind(specs: list[tuple[str, str, dict[str, int]]], ops: int,
                  timeout: float | None) -> dict[tuple[str, str, str], Count]:
    with tempfile.TemporaryDirectory(prefix="percpu-callgrind-") as tmp:
        out_file = os.path.join(tmp, "cg.out")
        request = os.path.join(tmp, "request.json")
        answer = os.path.join(tmp, "answer.json")
        with open(request, "w", encoding="utf-8") as f:
            json.dump({"ops": ops, "specs": specs}, f)
        cmd = [
            "valgrind", "--tool=callgrind", "-q",
            "--collect-atstart=no",
            "--toggle-collect=pc_team_main*",
            "--dump-after=pc_team_run*",
            f"--callgrind-out-file={out_file}",
            sys.executable, "-m", _CHILD, request, answer,
        ]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"callgrind run failed (exit {proc.returncode}): " + " | ".join(tail))
        with open(answer, encoding="utf-8") as f:
            info = json.load(f)
        dumps = sorted(
            (p for p in glob.glob(out_file + ".*") if p.rsplit(".", 1)[1].isdigit()),
            key=lambda p: int(p.rsplit(".", 1)[1]),
        )
        totals = [_total(p) for p in dumps]
    if len(totals) != _RUNS * len(specs):
        raise RuntimeError(f"callgrind wrote {len(totals)} dumps for {len(specs)} points "
                           f"({_RUNS} each)")
    path = f"cpu {info['cpu_source']}, refs {info['refs_path']}"
    out = {}
    for i, (w, s, p) in enumerate(specs):
        small, large = totals[_RUNS * i + 1], totals[_RUNS * i + 2]
        out[(w, s, json.dumps(p, sort_keys=True))] = Count(w, s, (large - small) / ops, path)
    return out


def _total(path: str) -> int:
    with open(path, "rb") as f:
        match = _TOTALS.search(f.read())
    if match is None:
        raise RuntimeError(f"no totals in callgrind dump {path}")
    return int(match.group(1))


def _child(request: str, answer: str) -> int:
    """Under valgrind: run every spec with ops and with 2 * ops at one thread."""
    import percpu
    import percpu.refs

    with open(request, encoding="utf-8") as f:
        job: dict[str, Any] = json.load(f)
    ops = int(job["ops"])
    for w, s, p in job["specs"]:
        workloads.run(w, s, 1, _WARMUP, **p)
        workloads.run(w, s, 1, ops, **p)
        workloads.run(w, s, 1, 2 * ops, **p)
    with open(answer, "w", encoding="utf-8") as f:
        json.dump({"cpu_source": percpu.features()["cpu_source"],
                   "refs_path": percpu.refs.fast_path()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
