"""The per-CPU allocator: ``PerCPUPool`` (the 2005 compact allocator) and
``NaivePool`` (the pre-2005 scheme, kept as the baseline).

Cython code cimports the nogil C API from ``percpu._alloc``.
"""
from __future__ import annotations

from percpu._alloc import (
    DEFAULT_UNIT_SIZE,
    GRANULE_SIZE,
    MAX_UNIT_SIZE,
    NAIVE_MAX_SIZE,
    NaivePool,
    PerCPUPool,
    get_default_pool,
)

__all__ = [
    "DEFAULT_UNIT_SIZE",
    "GRANULE_SIZE",
    "MAX_UNIT_SIZE",
    "NAIVE_MAX_SIZE",
    "NaivePool",
    "PerCPUPool",
    "get_default_pool",
]
