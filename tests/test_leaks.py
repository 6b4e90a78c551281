"""Leaks: creating and destroying many counters (and references, with their
pool slots) leaves the process's resident memory and the pool's figures flat.

The bound allows allocator noise but not a per-object leak: after a warm-up,
N objects may grow RSS by at most LEAK_BYTES_PER_OBJECT * N (16 bytes an
object; the smallest leak, one pool granule or one malloc chunk, is 8 to 32
bytes on every CPU's copy or per object, so it shows).
"""
from __future__ import annotations

import gc
import os
from typing import Callable

import pytest

import percpu
from percpu import _alloc
from percpu.counters import COUNTERS

N = 200_000
WARMUP = 20_000
LEAK_BYTES_PER_OBJECT = 16
PAGE = os.sysconf("SC_PAGE_SIZE")

#: Under ASan freed memory sits in a quarantine and RSS grows by design.
SANITIZED = bool(os.environ.get("PERCPU_SANITIZED"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _counter_cycle(name: str) -> Callable[[int], None]:
    cls = COUNTERS[name]

    def run(n: int) -> None:
        for _ in range(n):
            c = cls()
            c.inc()
            c.add(-3)
            if c.value() != -2:
                raise AssertionError(f"{name}: {c.value()}")
            del c

    return run


def _ref_cycle(name: str) -> Callable[[int], None]:
    refs = pytest.importorskip("percpu.refs", reason="percpu.refs is not on this branch yet")
    cls = refs.REFS[name]
    released = [0]

    def on_release() -> None:
        released[0] += 1

    def run(n: int) -> None:
        before = released[0]
        for _ in range(n):
            r = cls(on_release=on_release)
            r.get()
            r.put()
            r.kill()
            del r
        if released[0] - before != n:
            raise AssertionError(f"{name}: {released[0] - before} releases for {n} refs")

    return run


def _batch_cycle(name: str) -> Callable[[int], None]:
    # Many alive at once, then all dropped: the pool grows, then must reuse
    # the same space on every later round.
    cls = COUNTERS[name]

    def run(n: int) -> None:
        for _ in range(n // 10_000):
            keep = [cls() for _ in range(10_000)]
            for c in keep:
                c.inc()
            del keep

    return run


#: The strategies whose objects take their slots from the default pool.
POOLED_COUNTERS = ("percpu", "approx")
POOLED_REFS = ("bigref", "percpu")

CASES = (
    [pytest.param(_counter_cycle, name, id=f"counter-{name}") for name in sorted(COUNTERS)]
    + [pytest.param(_batch_cycle, name, id=f"batch-{name}") for name in POOLED_COUNTERS]
    + [pytest.param(_ref_cycle, name, id=f"ref-{name}") for name in ("atomic", "bigref", "percpu")]
)
#: The pool's figures say something only about objects that use the pool.
POOL_CASES = (
    [pytest.param(_counter_cycle, name, id=f"counter-{name}") for name in POOLED_COUNTERS]
    + [pytest.param(_batch_cycle, name, id=f"batch-{name}") for name in POOLED_COUNTERS]
    + [pytest.param(_ref_cycle, name, id=f"ref-{name}") for name in POOLED_REFS]
)


def _measure(make: Callable[[str], Callable[[int], None]], name: str) -> tuple[int, dict, dict]:
    run = make(name)
    pool = _alloc.get_default_pool()
    gc.collect()
    run(WARMUP)
    gc.collect()
    stats_before = pool.stats()
    rss_before = rss_bytes()
    run(N)
    gc.collect()
    return rss_bytes() - rss_before, stats_before, pool.stats()


def test_pool_cases_are_the_pooled_strategies() -> None:
    # A strategy that starts (or stops) taking pool slots moves between the lists.
    for name, cls in COUNTERS.items():
        c = cls()
        assert (getattr(c, "pool", None) is not None) == (name in POOLED_COUNTERS), name


@pytest.mark.parametrize("make,name", POOL_CASES)
def test_pool_figures_flat(make: Callable[[str], Callable[[int], None]], name: str) -> None:
    _, before, after = _measure(make, name)
    # The loop went through the pool (one alloc per object) ...
    assert after["allocs"] - before["allocs"] >= N
    # ... and gave everything back.
    assert after["objects"] == before["objects"]
    assert after["bytes_used"] == before["bytes_used"]
    # Reuse, not growth: the warm-up reserved what the loop needs.
    assert after["bytes_reserved"] == before["bytes_reserved"]
    assert after["allocs"] - before["allocs"] == after["frees"] - before["frees"]


@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
@pytest.mark.parametrize("make,name", CASES)
def test_rss_flat(make: Callable[[str], Callable[[int], None]], name: str) -> None:
    growth, _, _ = _measure(make, name)
    per_object = growth / N
    print(f"{name}: RSS {growth:+d} bytes over {N} objects = {per_object:+.2f} bytes/object")
    assert per_object < LEAK_BYTES_PER_OBJECT, f"{per_object:.1f} bytes/object"


def _leak_pool_objects() -> tuple[int, _alloc.PerCPUPool]:
    """What a counter that left a 16-byte pool object behind (two granules
    on every CPU) would do, N times; returns the RSS growth and the pool."""
    pool = _alloc.PerCPUPool()
    gc.collect()
    rss_before = rss_bytes()
    for _ in range(N):
        pool.alloc(16)  # the handle is dropped: leaked
    return rss_bytes() - rss_before, pool


def test_the_pool_figures_catch_a_leak() -> None:
    _, pool = _leak_pool_objects()
    assert pool.stats()["bytes_used"] == 16 * N * percpu.nr_cpus()
    assert pool.stats()["objects"] == N


@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident: "
                    "the RSS bound is not checked under the sanitizers")
def test_the_rss_bound_catches_a_leak() -> None:
    # The measurement itself: such a leak must exceed the bound.
    growth, _ = _leak_pool_objects()
    assert growth / N >= LEAK_BYTES_PER_OBJECT, growth / N
