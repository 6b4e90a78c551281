"""pyperf benchmark of the percpu `stat` workload: one benchmark per strategy
and thread count (`stat/STRATEGY/tN`).

    python benchmarks/bench_stat.py -o stat.json [--preset quick] [--strategies ...]
        [--threads 1,2,4] [pyperf options: --fast, -p N, --affinity CPUS, ...]
"""
import sys

from percpu.bench import script_main

if __name__ == "__main__":
    sys.exit(script_main("stat"))
