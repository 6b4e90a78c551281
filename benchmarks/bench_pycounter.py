"""pyperf benchmark of the percpu `pycounter` workload: P Python threads doing
K increments each on one shared counter, for every percpu strategy and every
peer that is installed (`pycounter/STRATEGY/tN`, peers as `peer:NAME`).

    python benchmarks/bench_pycounter.py -o pycounter.json [--preset quick]
        [--strategies percpu,peer:cereggii] [--threads 1,2] [--param inplace=1]
        [pyperf options: --fast, -p N, --affinity CPUS, ...]

Without the harness (percpu.bench) it runs every available strategy at 1 and
2 threads through a plain pyperf Runner (pyperf's own options only).
"""
import sys

from percpu import pycounter


def standalone() -> int:
    import pyperf

    runner = pyperf.Runner()
    runner.metadata["percpu_workload"] = pycounter.WORKLOAD
    for strategy, why in pycounter.unavailable_strategies().items():
        print(f"skipped {pycounter.WORKLOAD}/{strategy}: {why}", file=sys.stderr)
    for strategy in pycounter.available_strategies():
        for threads in (1, 2):
            def time_func(loops: int, strategy: str = strategy, threads: int = threads) -> float:
                return pycounter.run(strategy, threads, loops)["seconds"]
            runner.bench_time_func(f"{pycounter.WORKLOAD}/{strategy}/t{threads}", time_func,
                                   metadata={"percpu_strategy": strategy, "percpu_threads": threads})
    return 0


def main() -> int:
    try:
        from percpu.bench import script_main
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("percpu.bench"):
            raise
        return standalone()
    return script_main(pycounter.WORKLOAD)


if __name__ == "__main__":
    sys.exit(main())
