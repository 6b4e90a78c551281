"""pyperf benchmark of the percpu `dst` workload: one benchmark per strategy
and thread count (`dst/STRATEGY/tN`).

    python benchmarks/bench_dst.py -o dst.json [--preset quick] [--strategies ...]
        [--threads 1,2,4] [pyperf options: --fast, -p N, --affinity CPUS, ...]
"""
import sys

from percpu.bench import script_main

if __name__ == "__main__":
    sys.exit(script_main("dst"))
