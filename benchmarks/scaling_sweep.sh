#!/usr/bin/env bash
# Scaling sweep for a many-core machine: every workload and strategy at 1..32
# threads with the quick preset's pyperf settings, then the report.
# Usage: benchmarks/scaling_sweep.sh OUTDIR [THREADS [WORKLOAD ...]]
set -euo pipefail
out=${1:?usage: scaling_sweep.sh OUTDIR [THREADS]}
threads=${2:-1,2,4,8,16,32}
shift $(( $# < 2 ? $# : 2 ))
workloads=("$@")
mkdir -p "$out"
python3 setup.py -q build_ext --inplace >/dev/null
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import os, percpu; print("cpus:", os.cpu_count(), "features:", percpu.features())'
python3 -m percpu.bench run --preset quick --threads "$threads" \
    ${workloads[@]:+--workloads "${workloads[@]}"} --force -o "$out/results.json" || true
python3 -m percpu.report "$out/results.json" -o "$out/report"
