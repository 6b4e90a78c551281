"""pyperf benchmark of the per-CPU allocators: alloc+free pairs through the
nogil C API (``pcpool_alloc``/``pcpool_free``, or the naive pool's), from a
team of native threads (``alloc/POOL/tN``). A value is the time one thread
sees per pair; with N threads the pool serves N pairs in that time.

    python benchmarks/bench_alloc.py -o alloc.json [--pools percpu,naive]
        [--threads 1,2] [--size 8] [pyperf options: --fast, -p N, ...]

The kernel is ``percpu._lab.alloc_free``. To compare two builds (before and
after a change), run the script once with each on ``PYTHONPATH`` and read
``python -m pyperf compare_to before.json after.json``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import pyperf

import percpu
from percpu import _lab
from percpu.alloc import NaivePool, PerCPUPool

POOLS: dict[str, Callable[[], Any]] = {"percpu": PerCPUPool, "naive": NaivePool}


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _worker_args(cmd: list[str], args: argparse.Namespace) -> None:
    # pyperf starts worker processes with its own options only.
    cmd.extend(["--pools", args.pools, "--threads", args.threads, "--size", str(args.size)])


def _time_func(pool: Any, threads: int, size: int) -> Callable[[int], float]:
    def time_func(loops: int) -> float:
        r = _lab.alloc_free(pool, threads, loops, size)
        if r["failures"]:
            raise RuntimeError(f"{r['failures']} allocations failed")
        return float(r["wall_ns"]) / 1e9

    return time_func


def main() -> int:
    runner = pyperf.Runner(add_cmdline_args=_worker_args)
    runner.argparser.add_argument("--pools", default="percpu,naive",
                                  help=f"comma-separated, of {', '.join(POOLS)}")
    runner.argparser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    runner.argparser.add_argument("--size", type=int, default=8, help="bytes per object")
    args = runner.parse_args()
    pools = _csv(args.pools)
    unknown = sorted(set(pools) - set(POOLS))
    if unknown:
        runner.argparser.error(f"unknown pool(s) {', '.join(unknown)}; valid: {', '.join(POOLS)}")
    threads = [int(t) for t in _csv(args.threads)]
    runner.metadata["percpu_workload"] = "alloc"
    runner.metadata["percpu_nr_cpus"] = percpu.nr_cpus()
    runner.metadata["percpu_size"] = args.size
    for name in pools:
        # One pool per benchmark and process, reused across values: its blocks
        # (and caches) are warm after the first, as in a running program.
        pool = POOLS[name]()
        for n in threads:
            runner.bench_time_func(
                f"alloc/{name}/t{n}", _time_func(pool, n, args.size),
                metadata={"percpu_strategy": name, "percpu_threads": n},
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
