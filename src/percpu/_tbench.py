"""The 2005 experiment the lab reproduces, as data: one home for its figures.

The patch set "mm: Reimplementation of dynamic per-cpu allocator" (Ravikiran
Thirumalai, 13 Sep 2005, cover letter [patch 0/11]) measured tbench on
loopback with 8 clients: the bigref ``net_device`` count gained 6% on an 8-way
3.0 GHz Xeon (x445); per-CPU ``dst_entry`` counts on top of it gained 55% there
and 30% on an x460 (8-way 3.3 GHz x86_64 Xeon). Both gains are over the
kernel before the patches, whose two counts were plain atomics.

The skeptic's control is the layout of those atomics: in 2005 each count sat
on a cache line that every lookup also reads (``dst_entry.__refcnt`` beside
the fields the route lookup compares; Eric Dumazet's answer to patch 7/11 was
to move ``net_device``'s count to a line of its own first). The lab keeps the
padded atomic as ``atomic`` and the 2005 layout as ``atomic-sharedline``.

Pure data, importable without the compiled core: the workload registry
(``percpu.workloads``), the calibration (``percpu.bench``) and the report
(``percpu.report``) all read it from here.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = [
    "BASELINE",
    "CONTROL_2005",
    "LAYOUT_CONTROLS",
    "PACKET_ORDER",
    "SEED_CLIENTS",
    "SEED_GAINS",
    "SEED_GAINS_X460",
    "SEED_SOURCE",
    "seed_threads",
]

#: The packet strategy every gain is measured against.
BASELINE = "atomic+atomic"
#: The patch set's comparison, in the order it claims for throughput.
PACKET_ORDER = ("atomic+atomic", "bigref+atomic", "bigref+percpu")
#: tbench gains over ``atomic+atomic`` on the 8-way x445 (3.0 GHz Xeon).
SEED_GAINS: Mapping[str, float] = MappingProxyType({"bigref+atomic": 0.06, "bigref+percpu": 0.55})
#: The same patch set on the 8-way x460 (3.3 GHz x86_64 Xeon); only the total was given.
SEED_GAINS_X460: Mapping[str, float] = MappingProxyType({"bigref+percpu": 0.30})
#: tbench ran 8 clients on 8-way machines: one client per CPU.
SEED_CLIENTS = 8
SEED_SOURCE = "[patch 0/11] mm: Reimplementation of dynamic per-cpu allocator (13 Sep 2005), tbench on loopback"

#: Lab-only layouts of a shared count, each the false-sharing control of a
#: library strategy: name -> the percpu.REFS strategy whose operations it
#: runs. The count and its operations are the library's; only where the count
#: sits differs (on the cache line that every lookup of the object reads).
LAYOUT_CONTROLS: Mapping[str, str] = MappingProxyType({"atomic-sharedline": "atomic"})
#: The kernel before the patch set: both counts atomic, both in the 2005 layout.
CONTROL_2005 = "atomic-sharedline+atomic-sharedline"


def seed_threads(cpus: int) -> int:
    """The thread count that stands for the seed's 8 clients on a machine with
    ``cpus`` CPUs: 8, or every CPU where there are fewer (one thread per CPU,
    as one client per CPU)."""
    return max(1, min(SEED_CLIENTS, cpus))
