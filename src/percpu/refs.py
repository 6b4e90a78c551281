"""Reference counts: one shared atomic, the 2005 bigref, Linux percpu_ref.

Every reference starts holding one reference and calls ``on_release()`` exactly
once, from the thread that drops the last one::

    ref = percpu.PercpuRef(on_release=lambda: print("gone"))
    ref.get(); ref.put()      # per-CPU adds while live
    ref.kill()                # grace period, fold, drop the initial reference
"""
from __future__ import annotations

from percpu._refs import AtomicRef, BigRef, PercpuRef, fast_path

#: The strategies by name, as the benchmarks and the tests know them.
REFS: dict[str, type[AtomicRef] | type[BigRef] | type[PercpuRef]] = {
    "atomic": AtomicRef,
    "bigref": BigRef,
    "percpu": PercpuRef,
}

__all__ = ["REFS", "AtomicRef", "BigRef", "PercpuRef", "fast_path"]
