"""pyperf benchmark of the percpu `packet` workload: one benchmark per strategy
and thread count (`packet/STRATEGY/tN`).

    python benchmarks/bench_packet.py -o packet.json [--preset quick] [--strategies ...]
        [--threads 1,2,4] [pyperf options: --fast, -p N, --affinity CPUS, ...]
"""
import sys

from percpu.bench import script_main

if __name__ == "__main__":
    sys.exit(script_main("packet"))
