"""``python -m percpu``: what this machine gives percpu, and a self-check.

Prints the version, the features (``percpu.features()``) and which fast paths
are live, then runs every counter and reference-count strategy for a moment
on native threads with the GIL released (through ``percpu.workloads.run``,
the lab's entry point) and reports its cost here and whether the totals came
out exact. ``--json`` prints the same as one JSON object.

Exit status: 0 when every exact strategy was exact and every reference was
released exactly once, 1 otherwise, 2 for bad arguments (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any, Callable, NoReturn, Sequence, TextIO

PROG = "python -m percpu"

# Each measured point runs about this long (after one calibration run), so
# the whole self-check takes a few seconds on any machine.
TARGET_SECONDS = 0.1
# Calibration runs this many ops per thread first and grows it tenfold until
# a run is long enough to time.
CALIBRATION_OPS = 10_000
MIN_TIMED_SECONDS = 0.005
MAX_OPS = 100_000_000


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        description="The version, the features and fast paths live here, and a "
        "few-second self-check: each strategy's cost and exactness.",
        allow_abbrev=False,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-check", action="store_true",
                   help="skip the self-check (version and features only)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads of the contended run (default: the CPUs this "
                   "process may run on, at least 2)")
    p.add_argument("--ops", type=_positive_int, metavar="N",
                   help="operations per thread for every point (default: "
                   f"calibrated to about {TARGET_SECONDS:g} s a point)")
    return p


def allowed_cpus(features: dict[str, Any]) -> int:
    """CPUs this process may run on, as percpu sees them."""
    allowed = features.get("allowed_cpus")
    return int(allowed) if allowed else (os.cpu_count() or 1)


def fast_paths(features: dict[str, Any], refs_fast_path: str) -> dict[str, str]:
    """In words, how an increment and a reference get/put run here."""
    if features.get("rseq"):
        counters = (f"rseq critical section (a plain add, restarted on preemption), "
                    f"slots indexed by {features.get('cpu_source')}")
    else:
        counters = (f"atomic add on the current CPU's slot "
                    f"(cpu id from {features.get('cpu_source')})")
    if refs_fast_path == "rseq":
        refs = "rseq critical sections; mode switches abort them with membarrier"
    else:
        refs = "read-side sections that the grace period waits for"
    return {"counters": counters, "refs": refs}


Runner = Callable[..., dict[str, Any]]


def _timed(run: Runner, workload: str, strategy: str, threads: int, ops: int | None,
           params: dict[str, int]) -> tuple[int, dict[str, Any]]:
    """One run of ``ops`` per thread, or a calibrated one when ``ops`` is None."""
    if ops is None:
        ops = CALIBRATION_OPS
        while True:
            probe = run(workload, strategy, threads, ops, **params)
            if probe["seconds"] >= MIN_TIMED_SECONDS or ops * 10 > MAX_OPS:
                break
            ops *= 10
        ops = int(min(MAX_OPS, max(CALIBRATION_OPS,
                                   ops * TARGET_SECONDS / max(probe["seconds"], 1e-9))))
    return ops, run(workload, strategy, threads, ops, **params)


def _ns_per_op(seconds: float, ops_per_thread: int) -> float:
    # The bench convention: the time per op seen by one thread.
    return seconds * 1e9 / ops_per_thread if ops_per_thread else 0.0


def counter_point(run: Runner, strategy: str, threads: int, ops: int | None,
                  exact_by_design: bool) -> dict[str, Any]:
    """One counter strategy at ``threads``: one counter that every thread
    increments (the ``stat`` workload with one counter and no reader)."""
    point: dict[str, Any] = {"strategy": strategy, "threads": threads,
                             "exact_by_design": exact_by_design}
    try:
        used, r = _timed(run, "stat", strategy, threads, ops, {"counters": 1, "read_every": 0})
    except RuntimeError as exc:  # the kernel's own check: the counts did not add up
        point.update(exact=False, error=str(exc))
        return point
    expected, observed = int(r["expected"]), int(r["observed"])
    point.update(
        ops=int(r["ops"]), seconds=r["seconds"], ns_per_op=_ns_per_op(r["seconds"], used),
        expected=expected, observed=observed, lost_updates=expected - observed,
        exact=expected == observed,
    )
    return point


def ref_point(run: Runner, strategy: str, threads: int, ops: int | None) -> dict[str, Any]:
    """One reference strategy at ``threads``: a get and a put per op on one
    device reference, unregistered now and then (the ``netdev`` workload)."""
    point: dict[str, Any] = {"strategy": strategy, "threads": threads}
    try:
        used, r = _timed(run, "netdev", strategy, threads, ops, {})
    except RuntimeError as exc:
        point.update(exact=False, error=str(exc))
        return point
    created, released = int(r["created"]), int(r["released"])
    point.update(
        ops=int(r["ops"]), seconds=r["seconds"], ns_per_op=_ns_per_op(r["seconds"], used),
        created=created, released=released, unregisters=int(r["unregisters"]),
        exact=created == released and not r.get("unregister_failures"),
    )
    return point


def self_check(threads: int, ops: int | None = None, run: Runner | None = None) -> dict[str, Any]:
    """Every counter and reference strategy at 1 and ``threads`` threads."""
    from percpu import workloads
    from percpu.counters import EXACT_COUNTERS

    run = run or workloads.run
    counts = sorted({1, threads})
    counters = [counter_point(run, s, t, ops, s in EXACT_COUNTERS)
                for s in workloads.COUNTER_STRATEGIES for t in counts]
    refs = [ref_point(run, s, t, ops) for s in workloads.REF_STRATEGIES for t in counts]
    ok = all(p["exact"] for p in counters if p["exact_by_design"]) and all(p["exact"] for p in refs)
    return {"threads": counts, "counters": counters, "refs": refs, "ok": ok}


def report(threads: int | None, ops: int | None, check: bool,
           run: Runner | None = None) -> dict[str, Any]:
    """Everything ``python -m percpu`` prints, as a dict. ``threads`` None:
    the CPUs this process may run on, at least 2."""
    import percpu
    from percpu.refs import fast_path

    if threads is None:
        threads = max(2, allowed_cpus(percpu.features()))
    selfcheck = self_check(threads, ops, run) if check else None
    # Read after the check, so that slots_in_use counts the slots it used.
    features = percpu.features()
    refs_fast_path = fast_path()
    gil = getattr(sys, "_is_gil_enabled", None)
    return {
        "version": percpu.__version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gil_enabled": gil() if gil is not None else True,
        "platform": platform.platform(),
        "features": features,
        "fast_path": {"refs": refs_fast_path},
        "fast_paths": fast_paths(features, refs_fast_path),
        "selfcheck": selfcheck,
    }


def _fmt_ns(point: dict[str, Any]) -> str:
    return f"{point['ns_per_op']:.1f}" if "ns_per_op" in point else "-"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _counter_verdict(points: list[dict[str, Any]]) -> str:
    for p in points:
        if "error" in p:
            return f"NO at {_threads(p['threads'])}: {p['error']}"
    worst = max(points, key=lambda p: (p["lost_updates"], p["threads"]))
    if worst["lost_updates"]:
        note = "a reference point: it loses updates" if not worst["exact_by_design"] else "NO"
        return (f"lost {worst['lost_updates']:,} of {worst['expected']:,} at "
                f"{_threads(worst['threads'])} ({note})")
    tail = "" if worst["exact_by_design"] else " (this time; it may lose updates)"
    return f"yes: {worst['observed']:,} = {worst['expected']:,}{tail}"


def _ref_verdict(points: list[dict[str, Any]]) -> str:
    for p in points:
        if "error" in p:
            return f"NO at {_threads(p['threads'])}: {p['error']}"
        if not p["exact"]:
            return (f"NO at {_threads(p['threads'])}: {p['created']} created, "
                    f"{p['released']} released")
    last = points[-1]
    return f"yes: {last['created']} created, {last['released']} released"


def print_report(rep: dict[str, Any], out: TextIO) -> None:
    """The human-readable form of ``report()``."""
    f = rep["features"]
    print(f"percpu {rep['version']} on {rep['python']}"
          f"{'' if rep['gil_enabled'] else ' (GIL disabled)'}, {rep['platform']}", file=out)
    cpus = [f"{f['nr_cpus']} possible (slots per object)"]
    for key, label in (("online_cpus", "online"), ("allowed_cpus", "allowed here"),
                       ("slots_in_use", "slots in use")):
        if key in f:
            cpus.append(f"{f[key]} {label}")
    print("CPUs: " + ", ".join(cpus), file=out)
    print("features: " + ", ".join(f"{k}={v}" for k, v in f.items()), file=out)
    print(f"fast path, counters:   {rep['fast_paths']['counters']}", file=out)
    print(f"fast path, references: {rep['fast_paths']['refs']} "
          f"(percpu.refs.fast_path() = {rep['fast_path']['refs']!r})", file=out)
    check = rep["selfcheck"]
    if check is None:
        return
    counts = check["threads"]
    heads = [_threads(t) for t in counts]
    print("", file=out)
    print("self-check: native threads, GIL released, one shared object; "
          "ns per op per thread (lower is better)", file=out)
    for title, key, verdict in (("counter (inc)", "counters", _counter_verdict),
                                ("reference (get+put)", "refs", _ref_verdict)):
        print(f"  {title:<20}" + "".join(f"{h:>12}" for h in heads) + "   exact", file=out)
        by_strategy: dict[str, list[dict[str, Any]]] = {}
        for p in check[key]:
            by_strategy.setdefault(p["strategy"], []).append(p)
        for strategy, points in by_strategy.items():
            cells = "".join(f"{_fmt_ns(p):>12}" for p in points)
            print(f"  {strategy:<20}{cells}   {verdict(points)}", file=out)
    print("self-check: " + ("ok" if check["ok"] else "FAILED (an exact strategy was not exact)"),
          file=out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         run: Runner | None = None) -> int:
    """The command line; returns the exit status."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    from percpu.workloads import MAX_THREADS

    if args.threads is not None and args.threads > MAX_THREADS:
        print(f"{PROG}: error: --threads must be at most {MAX_THREADS}, not {args.threads}",
              file=sys.stderr)
        return 2
    if args.ops is not None and args.ops > MAX_OPS:
        print(f"{PROG}: error: --ops must be at most {MAX_OPS}, not {args.ops}", file=sys.stderr)
        return 2
    rep = report(args.threads, args.ops, not args.no_check, run)
    if args.json:
        json.dump(rep, out, indent=2)
        out.write("\n")
    else:
        print_report(rep, out)
    check = rep["selfcheck"]
    return 0 if check is None or check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
