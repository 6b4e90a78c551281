from percpu.bench._cli import main as main
from percpu.bench._cli import run_command as run_command
from percpu.bench._cli import script_main as script_main
from percpu.bench._harness import METADATA_PREFIX as METADATA_PREFIX
from percpu.bench._harness import Output as Output
from percpu.bench._harness import Point as Point
from percpu.bench._harness import UsageError as UsageError
from percpu.bench._harness import bench_name as bench_name
from percpu.bench._harness import figures_metadata as figures_metadata
from percpu.bench._harness import plan as plan
from percpu.bench._harness import point_metadata as point_metadata
from percpu.bench._harness import probe as probe
from percpu.bench._harness import probe_ops as probe_ops
from percpu.bench._harness import sweep as sweep
from percpu.bench._presets import PRESETS as PRESETS
from percpu.bench._presets import Preset as Preset
from percpu.bench._presets import default_threads as default_threads

__all__ = [
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
