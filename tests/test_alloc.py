"""PerCPUPool (the 2005 compact per-CPU allocator) and NaivePool (the baseline)."""
from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import percpu
from percpu import _alloc, _lab
from percpu.alloc import NAIVE_MAX_SIZE, NaivePool, PerCPUPool, get_default_pool

from .conftest import run_pytest
from .overlap import CAP, INTERRUPT_NS, RUN_NS, require_overlap

Pool = Union[PerCPUPool, NaivePool]
NO_RSEQ = os.environ.get("PERCPU_NO_RSEQ", "") not in ("", "0")
NR_CPUS = percpu.nr_cpus()
CACHELINE = percpu.features()["cacheline"]
GRANULE = 8


def round8(n: int) -> int:
    return (n + GRANULE - 1) // GRANULE * GRANULE


POOLS: dict[str, Callable[[], Pool]] = {
    "percpu": PerCPUPool,
    "percpu-small-unit": lambda: PerCPUPool(unit_size=CACHELINE * 4),
    "naive": NaivePool,
}


@pytest.fixture(params=sorted(POOLS))
def pool(request: pytest.FixtureRequest) -> Pool:
    return POOLS[request.param]()


def max_size(pool: Pool) -> int:
    return pool.unit_size if isinstance(pool, PerCPUPool) else NAIVE_MAX_SIZE


def fill(pool: Pool, handle: int, size: int, byte: int) -> None:
    """Writes through the raw addresses: works for both pools (NaivePool's view is a copy)."""
    for cpu in range(NR_CPUS):
        ctypes.memset(pool.address(handle, cpu), byte, size)


def read(pool: Pool, handle: int, cpu: int, size: int) -> bytes:
    return ctypes.string_at(pool.address(handle, cpu), size)


# ---------------------------------------------------------------------------
# The stateful model


class PoolMachine(RuleBasedStateMachine):
    """Random alloc/free sequences checked against a model of the live objects."""

    def make_pool(self) -> Pool:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.pool = self.make_pool()
        self.limit = min(max_size(self.pool), 600)
        self.live: dict[int, tuple[int, int]] = {}  # handle -> (size, align)
        self.allocs = 0
        self.frees = 0

    def _alloc(self, size: int, align: int, atomic: bool = False) -> int:
        h = self.pool.alloc(size, align, atomic=atomic)
        self.allocs += 1
        assert h not in self.live
        self.live[h] = (size, align)
        view = self.pool.view(h)
        assert view.shape == (NR_CPUS, size) and view.dtype == np.uint8
        assert not view.any(), "allocated memory is not zeroed"
        for cpu in range(NR_CPUS):
            assert read(self.pool, h, cpu, size) == bytes(size)
        return h

    def _free(self, h: int) -> None:
        size, _ = self.live[h]
        # Dirty every copy so that a reuse that skipped zeroing shows.
        fill(self.pool, h, size, 0xA5)
        self.pool.free(h)
        self.frees += 1
        del self.live[h]
        with pytest.raises(ValueError):
            self.pool.free(h)

    @rule(data=st.data(), align=st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 256]))
    def alloc(self, data: st.DataObject, align: int) -> None:
        size = data.draw(st.integers(1, self.limit))
        self._alloc(size, align)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        self._free(data.draw(st.sampled_from(sorted(self.live))))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free_and_realloc(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(sorted(self.live)))
        size, align = self.live[h]
        before = self.pool.stats()
        self._free(h)
        self._alloc(size, align)
        after = self.pool.stats()
        if isinstance(self.pool, NaivePool) or before["bytes_free"] >= before["reserve_bytes"]:
            # The freed space fits the new object; a PerCPUPool whose reserve
            # was already short (atomic allocations) refills instead.
            assert after["bytes_reserved"] == before["bytes_reserved"]

    @rule(data=st.data())
    def alloc_atomic(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(1, self.limit))
        before = self.pool.stats()
        try:
            self._alloc(size, 8, atomic=True)
        except MemoryError:
            assert isinstance(self.pool, PerCPUPool)
            assert self.pool.stats()["atomic_failures"] == before["atomic_failures"] + 1
        if isinstance(self.pool, PerCPUPool):
            after = self.pool.stats()
            assert after["bytes_reserved"] == before["bytes_reserved"], "atomic alloc grew the pool"

    @rule()
    def drain(self) -> None:
        drained = self.pool.drain() if isinstance(self.pool, PerCPUPool) else 0
        if isinstance(self.pool, PerCPUPool):
            s = self.pool.stats()
            assert s["cached_objects"] == s["bytes_cached"] == 0
            assert drained >= 0

    @rule()
    def refill(self) -> None:
        self.pool.refill()
        s = self.pool.stats()
        if isinstance(self.pool, PerCPUPool):
            assert s["bytes_free"] >= s["reserve_bytes"]

    @invariant()
    def stats_match_model(self) -> None:
        s = self.pool.stats()
        assert s["objects"] == len(self.live)
        assert s["bytes_used"] == sum(round8(size) for size, _ in self.live.values()) * NR_CPUS
        assert s["allocs"] == self.allocs
        assert s["frees"] == self.frees
        assert s["bytes_reserved"] >= s["bytes_used"]
        if isinstance(self.pool, PerCPUPool):
            audit = _alloc._audit(self.pool)
            assert audit["consistent"], audit
            assert audit["objects"] == len(self.live)
            assert audit["cached_objects"] == s["cached_objects"]
            assert audit["cached_granules"] * GRANULE * NR_CPUS == s["bytes_cached"]
            assert s["bytes_reserved"] == s["bytes_used"] + s["bytes_cached"] + s["bytes_free"]
            assert s["bytes_reserved"] == s["blocks"] * s["unit_size"] * NR_CPUS

    @invariant()
    def no_overlap_aligned_and_apart(self) -> None:
        ranges = []
        lines: list[set[int]] = [set() for _ in range(NR_CPUS)]
        for h, (size, align) in self.live.items():
            assert self.pool.size(h) == size
            for cpu in range(NR_CPUS):
                addr = self.pool.address(h, cpu)
                assert addr % align == 0, f"copy {cpu} of {h} misaligned"
                ranges.append((addr, addr + size, h, cpu))
                lines[cpu].update(range(addr // CACHELINE, (addr + size - 1) // CACHELINE + 1))
        ranges.sort()
        for (_, end, h1, c1), (start, _, h2, c2) in zip(ranges, ranges[1:]):
            assert end <= start, f"object {h1} cpu {c1} overlaps object {h2} cpu {c2}"
        # Different CPUs' copies never share a cache line.
        for a in range(NR_CPUS):
            for b in range(a + 1, NR_CPUS):
                assert not lines[a] & lines[b], f"cpus {a} and {b} share a line"


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class PerCPUPoolMachine(PoolMachine):
    def make_pool(self) -> Pool:
        return PerCPUPool()


class SmallUnitMachine(PoolMachine):
    """A unit of 4 lines: objects spill over many blocks and fragment them."""

    def make_pool(self) -> Pool:
        return PerCPUPool(unit_size=CACHELINE * 4)


class NaivePoolMachine(PoolMachine):
    def make_pool(self) -> Pool:
        return NaivePool()


TestPerCPUPoolMachine = MACHINE_SETTINGS(PerCPUPoolMachine).TestCase
TestSmallUnitMachine = MACHINE_SETTINGS(SmallUnitMachine).TestCase
TestNaivePoolMachine = MACHINE_SETTINGS(NaivePoolMachine).TestCase


# ---------------------------------------------------------------------------
# Plain behaviour


def test_reexports() -> None:
    assert percpu.PerCPUPool is PerCPUPool is _alloc.PerCPUPool
    assert percpu.NaivePool is NaivePool is _alloc.NaivePool
    assert {"PerCPUPool", "NaivePool"} <= set(percpu.__all__)


def test_default_pool_is_one_pool() -> None:
    a = get_default_pool()
    assert isinstance(a, PerCPUPool)
    assert get_default_pool() is a


def test_geometry() -> None:
    p = PerCPUPool()
    assert p.unit_size == _alloc.DEFAULT_UNIT_SIZE
    assert p.unit_size % CACHELINE == 0 and p.unit_size & (p.unit_size - 1) == 0
    for unit in (CACHELINE, 1 << 14, 1 << 16):
        q = PerCPUPool(unit_size=unit)
        h = q.alloc(8)
        # per_cpu_ptr is one add: copies are exactly one unit apart.
        assert [q.address(h, c) - q.address(h, 0) for c in range(NR_CPUS)] == [
            c * unit for c in range(NR_CPUS)
        ]
        big = q.alloc(unit, align=unit)
        assert all(q.address(big, c) % unit == 0 for c in range(NR_CPUS))
        assert q.stats()["unit_size"] == unit


def test_objects_are_packed() -> None:
    """No per-object padding: consecutive 8-byte objects sit 8 bytes apart."""
    p = PerCPUPool()
    hs = [p.alloc(8) for _ in range(16)]
    addrs = [p.address(h, 0) for h in hs]
    assert [b - a for a, b in zip(addrs, addrs[1:])] == [8] * 15
    # The first block holds them all; the second is the atomic reserve.
    assert p.stats()["blocks"] == 2


def test_zeroed_on_reuse(pool: Pool) -> None:
    h = pool.alloc(40)
    fill(pool, h, 40, 0xFF)
    assert all(read(pool, h, c, 40) == b"\xff" * 40 for c in range(NR_CPUS))
    pool.free(h)
    h2 = pool.alloc(40)
    assert h2 == h, "freed space was not reused"
    assert all(read(pool, h2, c, 40) == bytes(40) for c in range(NR_CPUS))


def test_view_is_live_for_percpu_and_copy_for_naive(pool: Pool) -> None:
    h = pool.alloc(24)
    v = pool.view(h)
    v[:] = np.arange(NR_CPUS * 24, dtype=np.uint8).reshape(NR_CPUS, 24)
    expected = v.copy()
    seen = np.array([list(read(pool, h, c, 24)) for c in range(NR_CPUS)], dtype=np.uint8)
    if isinstance(pool, PerCPUPool):
        assert (seen == expected).all()
        fill(pool, h, 24, 7)
        assert (v == 7).all()
    else:
        assert not seen.any()
        assert not pool.view(h).any()


def test_view_keeps_pool_alive() -> None:
    p = PerCPUPool(unit_size=1 << 16)
    h = p.alloc(64)
    v = p.view(h)
    del p
    gc.collect()
    v[:] = 3  # would fault if the pool's blocks had been unmapped
    assert int(v.sum()) == 3 * 64 * NR_CPUS


def test_a_freed_small_object_waits_in_a_cache_and_counts_as_free() -> None:
    p = PerCPUPool()
    h = p.alloc(24)
    s0 = p.stats()
    p.free(h)
    s1 = p.stats()
    assert s1["objects"] == s0["objects"] - 1 == 0
    assert s1["bytes_used"] == 0
    assert s1["frees"] == s0["frees"] + 1
    assert s1["cached_objects"] == s0["cached_objects"] + 1
    assert s1["bytes_cached"] == s0["bytes_cached"] + 24 * NR_CPUS
    assert s1["bytes_free"] == s0["bytes_free"]  # still reserved for its size
    assert s1["bytes_reserved"] == s1["bytes_used"] + s1["bytes_cached"] + s1["bytes_free"]
    for op in (p.free, p.size, lambda x: p.address(x, 0), p.view):
        with pytest.raises(ValueError):
            op(h)  # freed, even though its space waits in a cache
    # The next allocation of that size takes it back (last freed, first out).
    assert p.alloc(24) == h
    assert p.stats()["cached_objects"] == s0["cached_objects"]
    p.free(h)
    assert p.drain() >= 1
    s2 = p.stats()
    assert s2["cached_objects"] == s2["bytes_cached"] == 0
    assert s2["bytes_free"] == s2["bytes_reserved"]
    with pytest.raises(ValueError):
        p.free(h)  # given back to the shared space: still refused
    assert _alloc._audit(p)["consistent"]


def test_cached_object_is_zeroed_for_a_smaller_size_of_its_class() -> None:
    p = PerCPUPool()
    h = p.alloc(16)
    fill(p, h, 16, 0xEE)
    p.free(h)
    h2 = p.alloc(13)  # two granules too: the same class
    assert h2 == h
    assert p.size(h2) == 13
    assert all(read(p, h2, c, 16) == bytes(16) for c in range(NR_CPUS))


def test_caches_stay_within_their_limit() -> None:
    """Frees beyond a cache's room go back to the shared space."""
    p = PerCPUPool()
    handles = [p.alloc(8) for _ in range(2_000)]
    for h in handles:
        p.free(h)
    s = p.stats()
    audit = _alloc._audit(p)
    assert audit["consistent"], audit
    limit = p.unit_size // 4  # bytes per CPU's copy that one cache may keep
    assert 0 < s["bytes_cached"] <= s["nr_cpus"] * limit * NR_CPUS
    assert s["objects"] == 0
    assert s["allocs"] == s["frees"] == 2_000


def test_alignment_is_kept_for_cached_objects() -> None:
    p = PerCPUPool()
    small = [p.alloc(16, align=8) for _ in range(64)]
    for h in small:
        p.free(h)
    for align in (16, 32, 64):
        hs = [p.alloc(16, align=align) for _ in range(20)]
        assert all(p.address(h, c) % align == 0 for h in hs for c in range(NR_CPUS))
        for h in hs:
            p.free(h)
    assert _alloc._audit(p)["consistent"]


def test_naive_costs_a_line_per_cpu() -> None:
    n = NaivePool()
    h = n.alloc(8)
    s = n.stats()
    ptr = ctypes.sizeof(ctypes.c_void_p)
    assert s["bytes_reserved"] == NR_CPUS * (CACHELINE + ptr)
    assert all(n.address(h, c) % CACHELINE == 0 for c in range(NR_CPUS))
    n.free(h)
    assert n.stats()["bytes_reserved"] == 0


# ---------------------------------------------------------------------------
# The atomic (GFP_ATOMIC) path


def test_atomic_never_grows_and_fails_when_reserve_is_gone() -> None:
    p = PerCPUPool()
    s0 = p.stats()
    assert s0["bytes_free"] >= s0["reserve_bytes"] == p.unit_size * NR_CPUS
    handles = []
    with pytest.raises(MemoryError):
        for _ in range(p.unit_size):  # more than the reserve holds
            handles.append(p.alloc(8, atomic=True))
    s1 = p.stats()
    assert len(handles) == p.unit_size // 8  # exactly the one reserved block
    assert s1["bytes_reserved"] == s0["bytes_reserved"]
    assert s1["atomic_allocs"] == len(handles)
    assert s1["atomic_failures"] == 1
    with pytest.raises(MemoryError):
        p.alloc(8, atomic=True)
    assert p.stats()["bytes_reserved"] == s0["bytes_reserved"]

    p.refill()
    s2 = p.stats()
    assert s2["bytes_reserved"] == s0["bytes_reserved"] + p.unit_size * NR_CPUS
    h = p.alloc(8, atomic=True)
    assert not p.view(h).any()
    assert p.stats()["bytes_reserved"] == s2["bytes_reserved"]

    # Freed space serves atomic allocations without a refill.
    p.free(handles.pop())
    p.alloc(8, atomic=True)


def test_atomic_alloc_takes_back_cached_space_instead_of_failing() -> None:
    p = PerCPUPool()
    # Fill every byte except one cached 64-byte object's, then ask for an
    # atomic 48-byte one: only the cached space can serve it.
    big = p.alloc(64)
    while True:
        try:
            p.alloc(8, atomic=True)
        except MemoryError:
            break
    p.free(big)
    s0 = p.stats()
    assert s0["bytes_free"] == 0 and s0["bytes_cached"] == 64 * NR_CPUS
    h = p.alloc(48, atomic=True)
    s1 = p.stats()
    assert s1["bytes_reserved"] == s0["bytes_reserved"], "atomic alloc grew the pool"
    assert s1["bytes_cached"] == 0
    assert not p.view(h).any()
    assert _alloc._audit(p)["consistent"]


def test_normal_alloc_refills_the_reserve() -> None:
    p = PerCPUPool()
    with pytest.raises(MemoryError):
        while True:
            p.alloc(8, atomic=True)
    p.alloc(8)  # grows for itself and restores the reserve
    s = p.stats()
    assert s["bytes_free"] >= s["reserve_bytes"]
    for _ in range(p.unit_size // 8):
        p.alloc(8, atomic=True)


def test_naive_atomic_is_counted() -> None:
    n = NaivePool()
    n.alloc(8, atomic=True)
    assert n.stats()["atomic_allocs"] == 1


# ---------------------------------------------------------------------------
# Footprint


def test_footprint_of_10000_small_objects(record_property: Callable[[str, Any], None]) -> None:
    count = 10_000
    figures = {}
    for name, factory in (("percpu", PerCPUPool), ("naive", NaivePool)):
        p = factory()
        handles = [p.alloc(8) for _ in range(count)]
        s = p.stats()
        assert s["objects"] == count
        figures[name] = s["bytes_reserved"] / count
        figures[name + "_with_metadata"] = s["bytes_per_object"]
        for h in handles:
            p.free(h)
        assert p.stats()["objects"] == 0
    ideal = 8 * NR_CPUS
    print(f"\nbytes per 8-byte object, {NR_CPUS} cpus (ideal {ideal}): {figures}")
    for key, value in figures.items():
        record_property(key, value)
    assert figures["percpu"] <= 1.10 * ideal
    assert figures["percpu_with_metadata"] <= 1.25 * ideal
    assert figures["naive"] >= 8 * figures["percpu"]


# ---------------------------------------------------------------------------
# Native threads


@pytest.mark.parametrize("threads", [1, 2, 4, 8])
def test_concurrent_alloc_free(pool: Pool, threads: int) -> None:
    ops = 20_000
    s0 = pool.stats()
    r = _lab._stress(pool, threads, ops, 96)
    assert r["done"] == [ops] * threads
    assert r["failures"] == 0
    assert r["nonzero"] == 0, "a copy was not zeroed on alloc"
    assert r["corrupt"] == 0, "two live objects overlapped"
    s1 = pool.stats()
    assert s1["objects"] == s0["objects"] == 0
    assert s1["bytes_used"] == 0
    assert s1["allocs"] - s0["allocs"] == threads * ops
    assert s1["frees"] - s0["frees"] == threads * ops
    if isinstance(pool, NaivePool):
        assert s1["bytes_reserved"] == 0
    else:
        audit = _alloc._audit(pool)
        assert audit["consistent"], audit
        assert audit["objects"] == audit["used_granules"] == 0
        # The threads have exited; what they freed into the per-CPU caches is
        # still the pool's: drained, every byte is free again.
        assert pool.drain() == s1["cached_objects"]
        s2 = pool.stats()
        assert s2["cached_objects"] == s2["bytes_cached"] == 0
        assert s2["bytes_free"] == s2["bytes_reserved"]
        assert _alloc._audit(pool)["consistent"]


@pytest.mark.parametrize("threads", [2, 4])
def test_concurrent_double_frees_succeed_once(pool: Pool, threads: int) -> None:
    objects = 3_000
    s0 = pool.stats()
    r = _lab._free_race(pool, threads, objects)
    assert sum(r["done"]) == objects, r["done"]
    assert r["failures"] == (threads - 1) * objects
    s1 = pool.stats()
    assert s1["objects"] == s0["objects"]
    assert s1["frees"] - s0["frees"] == objects
    if isinstance(pool, PerCPUPool):
        assert _alloc._audit(pool)["consistent"]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_alloc_free_kernel_counts_every_pair(pool: Pool, threads: int) -> None:
    """The benchmark kernel does what it says: ops pairs per thread, no failure."""
    ops = 10_000
    s0 = pool.stats()
    r = _lab.alloc_free(pool, threads, ops, 8)
    assert r["done"] == [ops] * threads
    assert r["failures"] == 0
    assert r["ns_per_pair"] == r["wall_ns"] / ops > 0
    s1 = pool.stats()
    assert s1["allocs"] - s0["allocs"] == threads * ops
    assert s1["frees"] - s0["frees"] == threads * ops
    assert s1["objects"] == s0["objects"]
    with pytest.raises(ValueError):
        _lab.alloc_free(pool, 0, 10)


@pytest.mark.parametrize("threads", [1, 4])
def test_percpu_add_on_pool_memory_is_exact(threads: int) -> None:
    """pc_percpu_add (rseq or its fallback) on two counters packed in one
    pool object, from native threads interrupted mid-add; with 4 threads the
    canary first shows a racy add loses updates in this configuration."""
    run_ns = require_overlap(threads, what="pool counters") if threads > 1 else RUN_NS[0]
    p = PerCPUPool()
    r = _lab._percpu_add_stress(p, threads, CAP, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)
    pairs = sum(r["done"])
    assert r["rseq"] == percpu.features()["rseq"]
    assert r["first"] == pairs, f"{pairs - r['first']} updates lost"
    assert r["second"] == 2 * pairs, f"{2 * pairs - r['second']} lost"
    assert r["neighbour"] == 0
    assert p.stats()["objects"] == 0


@pytest.mark.skipif(NO_RSEQ, reason="already the fallback run")
def test_fallback_without_rseq() -> None:
    """The native-thread tests again, in a process where PERCPU_NO_RSEQ=1
    forces the atomic fallback."""
    run_pytest([__file__, "-k", "percpu_add_on_pool or concurrent_alloc_free or fallback_in_force"],
               {"PERCPU_NO_RSEQ": "1"})


@pytest.mark.skipif(not NO_RSEQ, reason="runs in the PERCPU_NO_RSEQ=1 subprocess")
def test_fallback_in_force() -> None:
    # Selected in the subprocess above: proves that run used the fallback.
    assert percpu.features()["rseq"] is False


def test_team_helpers_reject_bad_arguments() -> None:
    p = PerCPUPool()
    with pytest.raises(ValueError):
        _lab._stress(p, 0, 10)
    with pytest.raises(ValueError):
        _lab._stress(p, 1, -1)
    with pytest.raises(ValueError):
        _lab._stress(p, 1, 10, p.unit_size + 1)
    with pytest.raises(TypeError):
        _lab._stress(object(), 1, 10)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Bad input: a clear error, nothing changed, the pool still usable


def _snapshot(pool: Pool) -> dict[str, Any]:
    s = pool.stats()
    return {k: s[k] for k in ("objects", "allocs", "frees", "bytes_reserved", "bytes_used")}


def test_bad_alloc_arguments(pool: Pool) -> None:
    live = pool.alloc(16)
    before = _snapshot(pool)
    limit = max_size(pool)
    for size in (0, -1, limit + 1, 1 << 70):
        with pytest.raises(ValueError):
            pool.alloc(size)
    for align in (0, -8, 3, 24, 2 * limit):
        with pytest.raises(ValueError):
            pool.alloc(8, align)
    for bad in (8.0, "8", None, True):
        with pytest.raises(TypeError):
            pool.alloc(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pool.alloc(8, bad)  # type: ignore[arg-type]
    assert _snapshot(pool) == before
    h = pool.alloc(np.int64(8), align=np.int32(16))  # integer-like is fine
    assert pool.size(h) == 8
    pool.free(h)
    pool.free(live)


def test_bad_handles_and_cpus(pool: Pool) -> None:
    h = pool.alloc(32)
    other = pool.alloc(8)
    pool.free(other)
    before = _snapshot(pool)
    for bad in (-1, 1 << 40, 1 << 63, 1 << 70, other):
        with pytest.raises(ValueError):
            pool.free(bad)
        with pytest.raises(ValueError):
            pool.address(bad, 0)
        with pytest.raises(ValueError):
            pool.view(bad)
        with pytest.raises(ValueError):
            pool.size(bad)
    if isinstance(pool, PerCPUPool):
        for inside in (h + 1, h + 7, h + 8):  # inside an object, not its start
            with pytest.raises(ValueError):
                pool.free(inside)
            with pytest.raises(ValueError):
                pool.view(inside)
    for bad_type in (1.0, "1", None):
        with pytest.raises(TypeError):
            pool.free(bad_type)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pool.address(h, bad_type)  # type: ignore[arg-type]
    for cpu in (-1, NR_CPUS, 1 << 40):
        with pytest.raises(ValueError):
            pool.address(h, cpu)
    assert _snapshot(pool) == before
    pool.free(h)
    with pytest.raises(ValueError):
        pool.free(h)
    h = pool.alloc(32)
    assert not pool.view(h).any()


# ---------------------------------------------------------------------------
# Stale handles: freed, and the position handed out again


STALE_HANDLE_PROBE = r"""
import json, sys
import percpu
from percpu import _alloc
p = _alloc.PerCPUPool()
h = p.alloc(8)
p.free(h)
h2 = p.alloc(8)  # the same position again (the cache hands it back)
r = {"module": _alloc.__file__, "h": h, "h2": h2,
     "same_place": p.address(h2, 0) == (p.address(h, 0) if h == h2 else None)}
if h != h2:
    r["same_place"] = (h & ((1 << 48) - 1)) == (h2 & ((1 << 48) - 1))
    for name, op in (("free", lambda: p.free(h)), ("size", lambda: p.size(h)),
                     ("address", lambda: p.address(h, 0)), ("view", lambda: p.view(h))):
        try:
            op()
            r[name] = "accepted"
        except ValueError:
            r[name] = "refused"
    r["size2"] = p.size(h2)
    p.free(h2)  # the live handle still works, once
    try:
        p.free(h2)
        r["double_free"] = "accepted"
    except ValueError:
        r["double_free"] = "refused"
# The modules built normally work with the debug-built allocator.
c = percpu.Counter()
c.inc()
c.add(41)
r["counter"] = c.value()
r["audit"] = _alloc._audit(p)["consistent"]
print(json.dumps(r))
"""


def _probe_stale_handles(pythonpath: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", STALE_HANDLE_PROBE], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_normal_build_hands_the_same_handle_out_again() -> None:
    """Without the debug tag a handle is only its position: after a free and a
    new allocation there, the old handle is the new one (like a pointer)."""
    r = _probe_stale_handles()
    assert r["h"] == r["h2"] and r["same_place"]
    assert r["counter"] == 42 and r["audit"]


@pytest.mark.slow
def test_debug_build_refuses_stale_handles(tmp_path: Path) -> None:
    """PERCPU_DEBUG=1 builds the allocator with a generation tag in each
    handle: a handle kept after its free is refused once its position is
    handed out again, by free, size, address and view."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyx" / "alloc.pyx").exists() or not (root / "setup.py").exists():
        pytest.skip("needs the source tree (pyx/ and setup.py) beside the tests")
    pytest.importorskip("Cython")
    tree = tmp_path / "tree"
    # Sources only: a generated .c would carry the normal build's directives.
    shutil.copytree(root / "pyx", tree / "pyx", ignore=shutil.ignore_patterns("*.c", "*.so"))
    shutil.copytree(root / "src", tree / "src",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(root / name, tree / name)
    # The other modules as built for this run; only _alloc is rebuilt.
    installed = Path(percpu.__file__).parent
    for so in installed.glob("_*.so"):
        if not so.name.startswith("_alloc."):
            shutil.copy2(so, tree / "src" / "percpu" / so.name)
    env = dict(os.environ, PERCPU_DEBUG="1", PERCPU_BUILD_ONLY="alloc")
    env.pop("PERCPU_SANITIZE", None)
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-4000:]
    r = _probe_stale_handles(str(tree / "src"))
    assert r["module"].startswith(str(tree)), r["module"]
    assert r["h"] != r["h2"] and r["same_place"], r
    assert {r[k] for k in ("free", "size", "address", "view")} == {"refused"}, r
    assert r["size2"] == 8
    assert r["double_free"] == "refused"
    assert r["counter"] == 42 and r["audit"]


@pytest.mark.parametrize("unit", [0, -4096, 100, 3 * CACHELINE, CACHELINE // 2, 1 << 30])
def test_bad_unit_size(unit: int) -> None:
    with pytest.raises(ValueError):
        PerCPUPool(unit_size=unit)


@pytest.mark.parametrize("unit", [4096.0, "4096", True])
def test_unit_size_type(unit: Any) -> None:
    with pytest.raises(TypeError):
        PerCPUPool(unit_size=unit)


def test_repr() -> None:
    p = PerCPUPool()
    p.alloc(8)
    assert repr(p) == f"PerCPUPool(unit_size={p.unit_size}, nr_cpus={NR_CPUS}, blocks=2, objects=1)"
    n = NaivePool()
    assert repr(n) == f"NaivePool(nr_cpus={NR_CPUS}, objects=0)"
