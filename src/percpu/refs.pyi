from percpu._refs import AtomicRef as AtomicRef
from percpu._refs import BigRef as BigRef
from percpu._refs import PercpuRef as PercpuRef
from percpu._refs import fast_path as fast_path

REFS: dict[str, type[AtomicRef] | type[BigRef] | type[PercpuRef]]

__all__ = ["REFS", "AtomicRef", "BigRef", "PercpuRef", "fast_path"]
