"""percpu.bench: the pyperf harness for the percpu workloads.

``python -m percpu.bench list`` shows what can run; ``python -m percpu.bench
run --preset quick -o results.json`` sweeps every workload, strategy and
thread count; ``calibrate`` fits the packet model to the 2005 tbench figures
on this machine; ``instructions`` counts instructions per op under callgrind. Each point is one pyperf benchmark named ``workload/strategy/tN``
and the file is ordinary pyperf JSON (``python -m pyperf compare_to`` reads it).
"""
from __future__ import annotations

from percpu.bench._cli import main, run_command, script_main
from percpu.bench._harness import (
    METADATA_PREFIX,
    Output,
    Point,
    UsageError,
    bench_name,
    figures_metadata,
    plan,
    point_metadata,
    probe,
    probe_ops,
    sweep,
)
from percpu.bench._presets import FAIRNESS_SECONDS, PRESETS, Preset, default_threads

__all__ = [
    "FAIRNESS_SECONDS",
    "METADATA_PREFIX",
    "PRESETS",
    "Output",
    "Point",
    "Preset",
    "UsageError",
    "bench_name",
    "default_threads",
    "figures_metadata",
    "main",
    "plan",
    "point_metadata",
    "probe",
    "probe_ops",
    "run_command",
    "script_main",
    "sweep",
]
