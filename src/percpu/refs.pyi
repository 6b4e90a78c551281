from percpu._refs import AtomicRef as AtomicRef
from percpu._refs import BigRef as BigRef
from percpu._refs import PercpuRef as PercpuRef

REFS: dict[str, type[AtomicRef] | type[BigRef] | type[PercpuRef]]

__all__ = ["REFS", "AtomicRef", "BigRef", "PercpuRef"]
