"""How increments from Python threads scale: total ns per increment at N
threads over 1 thread, for each way of counting the free-threading page
compares (a ratio of 0.5 at 2 threads is perfect scaling, 1.0 none, above 1
a collapse).

    python benchmarks/freethreaded_ratios.py [--threads 1,2,4] [--ops 1000000]
        [--repeat 5] [--json out.json]

Each row is one strategy in one form (see percpu.pycounter.run):

- own: each thread increments its own counter, made in that thread;
- bound: one shared counter, each thread binds ``inc = c.inc`` once;
- plain: one shared counter, ``c.inc()`` in the loop.

Times are the best of --repeat runs (the machine's noise only adds time), the
thread counts interleaved, and every run's count is checked exact. Meaningful on a free-threaded build with
the GIL off (``PYTHON_GIL=0``); under the GIL it shows the GIL's serialisation.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from percpu import pycounter

ROWS = [
    # (label, strategy, form)
    ("list.__len__ (touches nothing shared: how a call scales)", "peer:list.__len__", "own"),
    ("own PerCPUCounter", "percpu", "own"),
    ("own AtomicCounter", "atomic", "own"),
    ("shared PerCPUCounter, inc = c.inc per thread", "percpu", "bound"),
    ("shared AtomicCounter, inc = c.inc per thread", "atomic", "bound"),
    ("shared PerCPUCounter, c.inc() in the loop", "percpu", "plain"),
    ("shared AtomicCounter, c.inc() in the loop", "atomic", "plain"),
    ("shared ft_utils.AtomicInt64, incr() in the loop", "peer:ft_utils", "plain"),
    ("shared lock + int", "peer:lock+int", "plain"),
]


def best(strategy: str, form: str, counts: list[int], ops: int, repeat: int) -> list[float]:
    """The lowest total ns per increment of ``repeat`` runs at each thread
    count, the counts interleaved (1, 2, 1, 2, ...) so that a drift of the
    machine's speed moves them all; every run exact."""
    times: dict[int, list[float]] = {t: [] for t in counts}
    for _ in range(repeat):
        for threads in counts:
            r = pycounter.run(strategy, threads, ops, bound=form == "bound", own=form == "own")
            if r["exact"] is False:
                raise SystemExit(f"{strategy} ({form}) lost {r['lost_updates']} of "
                                 f"{r['expected']} increments at {threads} threads")
            times[threads].append(r["ns_per_increment"])
    return [min(times[t]) for t in counts]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="thread counts, the first is the base (default 1,2)")
    ap.add_argument("--ops", type=int, default=1_000_000, help="increments per thread (default 1e6)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per point, the best kept (default 5)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    try:
        counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads: a comma-separated list of ints, not {args.threads!r}")
    if not counts or min(counts) < 1 or args.ops < 1 or args.repeat < 1:
        ap.error("--threads, --ops and --repeat must be positive")
    available = set(pycounter.available_strategies())
    build = pycounter.python_build()
    print(f"Python {sys.version.split()[0]}, free-threaded={build['free_threaded']}, "
          f"GIL enabled={build['gil_enabled']}; ns per increment, all threads together; "
          f"best of {args.repeat}", flush=True)
    head = "".join(f"{f'{t}T':>9}" for t in counts) + "".join(
        f"{f'{t}T/{counts[0]}T':>9}" for t in counts[1:])
    print(f"{'':<52}{head}")
    rows: list[dict[str, Any]] = []
    for label, strategy, form in ROWS:
        if strategy not in available:
            print(f"{label:<52}  skipped: {pycounter.unavailable_strategies().get(strategy)}")
            continue
        ns = best(strategy, form, counts, args.ops, args.repeat)
        ratios = [n / ns[0] for n in ns[1:]]
        print(f"{label:<52}" + "".join(f"{n:9.1f}" for n in ns)
              + "".join(f"{r:9.2f}" for r in ratios), flush=True)
        rows.append({"label": label, "strategy": strategy, "form": form,
                     "ns_per_increment": dict(zip(counts, ns)),
                     "ratio": dict(zip(counts[1:], ratios))})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"python": sys.version, **build, "threads": counts, "ops": args.ops,
                       "repeat": args.repeat, "rows": rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
