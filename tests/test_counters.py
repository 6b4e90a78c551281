from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import percpu
from percpu._lab import hammer
from percpu.counters import COUNTERS, EXACT_COUNTERS

from .conftest import run_python

ALL = sorted(COUNTERS)
EXACT = sorted(EXACT_COUNTERS)
SHARDED = ["percpu", "perthread", "approx", "striped"]


def test_registry_and_default() -> None:
    assert set(COUNTERS) == {"atomic", "locked", "percpu", "perthread", "approx", "striped", "racy"}
    assert percpu.Counter is percpu.PerCPUCounter
    for name, cls in COUNTERS.items():
        assert cls.strategy == name
        assert getattr(percpu, cls.__name__) is cls
    assert percpu.COUNTERS is COUNTERS


@pytest.mark.parametrize("name", ALL)
def test_single_thread_api(name: str) -> None:
    c = COUNTERS[name]()
    assert c.value() == 0
    c.inc()
    c.inc()
    c.dec()
    c.add(41)
    c.add(-2)
    assert c.value() == 40
    assert int(c) == 40
    same = c
    c += 5
    assert c is same and c.value() == 45
    c -= 6
    assert c is same and c.value() == 39
    assert name in repr(c) and "39" in repr(c)
    c.add(2**63 - 1 - 39)
    assert c.value() == 2**63 - 1


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [1.5, "1", None, [1], 2**63, -(2**63) - 1])
def test_bad_add_raises_and_keeps_value(name: str, bad: object) -> None:
    c = COUNTERS[name]()
    c.add(7)
    expected = TypeError if not isinstance(bad, int) else OverflowError
    with pytest.raises(expected):
        c.add(bad)  # type: ignore[arg-type]
    with pytest.raises(expected):
        c += bad  # type: ignore[arg-type, operator]
    assert c.value() == 7


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("threads", [1, 2, 4, 8])
def test_nogil_threads_exact(name: str, threads: int) -> None:
    c = COUNTERS[name]()
    ops = 200_000 if threads <= 2 else 60_000
    r = hammer(c, threads, ops, mixed=True)
    assert r["expected"] == threads * (ops - 2 * (ops // 4))
    assert c.value() == r["expected"]
    # A second team (new threads, recycled thread slots) adds on top.
    r2 = hammer(c, threads, ops)
    assert c.value() == r["expected"] + r2["expected"]


def test_racy_is_a_reference_point_that_can_lose() -> None:
    # Not asserted to lose (it may get lucky), only that it never gains.
    c = percpu.RacyCounter()
    r = hammer(c, 4, 200_000)
    assert 0 < c.value() <= r["expected"]


@pytest.mark.parametrize("name", EXACT)
def test_python_threads_exact(name: str) -> None:
    c = COUNTERS[name]()
    n, k = 8, 5_000
    errors: list[BaseException] = []

    def work() -> None:
        try:
            alias = c
            for i in range(k):
                if i % 5 == 4:
                    c.dec()
                else:
                    c.inc()
                alias += 2
                assert alias is c
        except BaseException as e:  # surfaced below: a thread's error must fail the test
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert c.value() == n * (k - 2 * (k // 5) + 2 * k)


@pytest.mark.parametrize("name", EXACT)
def test_exited_threads_lose_nothing(name: str) -> None:
    c = COUNTERS[name]()
    total = 0
    # Many short-lived teams: thread slots are handed back and reused.
    for round_ in range(20):
        threads = 1 + round_ % 4
        r = hammer(c, threads, 5_000, mixed=bool(round_ % 2))
        total += r["expected"]
    def hundred() -> None:
        for _ in range(100):
            c.inc()

    for _ in range(30):
        t = threading.Thread(target=hundred)
        t.start()
        t.join()
    total += 3000
    assert c.value() == total


def test_no_rseq_fallback_exact() -> None:
    out = run_python(
        """
        import percpu
        from percpu._lab import hammer
        from percpu.counters import COUNTERS, EXACT_COUNTERS
        assert percpu.features()["rseq"] is False
        for name in EXACT_COUNTERS:
            for threads in (1, 2, 4, 8):
                c = COUNTERS[name]()
                r = hammer(c, threads, 40_000, mixed=True)
                assert c.value() == r["expected"], (name, threads, c.value(), r["expected"])
        print("ok")
        """,
        {"PERCPU_NO_RSEQ": "1"},
    )
    assert out.strip() == "ok"


def test_approx_within_bound_during_and_after() -> None:
    c = percpu.ApproxCounter()
    n = percpu.nr_cpus()
    assert c.batch == max(32, 2 * n)
    # One fold may be in flight while approx() reads: allow one more batch.
    bound = c.batch * (n + 1)
    done = threading.Event()
    result: dict[str, int] = {}

    def run() -> None:
        result["expected"] = hammer(c, 4, 300_000)["expected"]
        done.set()

    t = threading.Thread(target=run)
    t.start()
    checks = 0
    while not done.is_set():
        lo = c.value()
        a = c.approx()
        hi = c.value()
        # Only increments: the truth grows, so it lies in [lo, hi] when approx ran.
        assert lo - bound <= a <= hi + bound
        checks += 1
    t.join()
    assert checks > 0
    assert c.value() == result["expected"]
    assert abs(c.value() - c.approx()) < c.batch * n
    assert (np.abs(c.per_cpu()) < c.batch).all()


def test_approx_custom_batch_and_bad_batch() -> None:
    c = percpu.ApproxCounter(batch=4)
    for _ in range(100):
        c.inc()
    assert c.value() == 100 and c.batch == 4
    assert 100 - 4 * percpu.nr_cpus() < c.approx() <= 100
    with pytest.raises(ValueError):
        percpu.ApproxCounter(batch=0)
    with pytest.raises(TypeError):
        percpu.ApproxCounter(batch=1.5)  # type: ignore[arg-type]


def test_striped_and_perthread_parameters() -> None:
    assert percpu.StripedCounter(stripes=5).stripes == 8
    with pytest.raises(ValueError):
        percpu.StripedCounter(stripes=0)
    with pytest.raises(TypeError):
        percpu.StripedCounter(stripes="4")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        percpu.PerThreadCounter(capacity=0)
    c = percpu.PerThreadCounter(capacity=1)
    r = hammer(c, 4, 10_000)  # three of the four threads use the overflow cell
    assert c.value() == r["expected"]


@pytest.mark.parametrize("name", SHARDED)
def test_per_cpu_sums_to_value(name: str) -> None:
    c = COUNTERS[name]()
    hammer(c, 3, 10_000, mixed=True)
    slots = c.per_cpu()  # type: ignore[attr-defined]
    assert slots.dtype == np.int64
    if name == "approx":
        assert int(slots.sum()) + c.approx() == c.value()  # type: ignore[attr-defined]
    else:
        assert int(slots.sum()) == c.value()
    if name in ("percpu", "approx"):
        assert len(slots) == percpu.nr_cpus()


def test_percpu_slots_never_share_a_cache_line() -> None:
    line = percpu.features()["cacheline"]
    for _ in range(50):
        c = percpu.PerCPUCounter()
        addrs = [c.pool.address(c.handle, cpu) for cpu in range(percpu.nr_cpus())]
        lines = {a // line for a in addrs}
        assert len(lines) == len(addrs)


def test_counter_base_is_abstract() -> None:
    with pytest.raises(TypeError):
        percpu.counters.CounterBase()


def test_cython_user_can_cimport(tmp_path: os.PathLike[str]) -> None:
    """A user module cimports percpu.counters and runs the inline fast path."""
    pytest.importorskip("Cython")
    src = os.path.join(str(tmp_path), "user_mod.pyx")
    with open(src, "w") as f:
        f.write(
            "# cython: language_level=3\n"
            "from percpu.counters cimport PerCPUCounter, pc_percpu_counter_add\n"
            "def bump(PerCPUCounter c, long n):\n"
            "    cdef long i\n"
            "    with nogil:\n"
            "        for i in range(n):\n"
            "            pc_percpu_counter_add(c.c, 1)\n"
        )
    out = run_python(
        f"""
        import os, sys, percpu
        from Cython.Build import cythonize
        from setuptools import Extension
        from setuptools.dist import Distribution
        here = os.path.dirname(percpu.__file__)
        pkg_root = os.path.dirname(here)
        ext = Extension("user_mod", [{src!r}], include_dirs=[percpu.get_include()])
        dist = Distribution({{"ext_modules": cythonize([ext], include_path=[pkg_root], quiet=True)}})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = {str(tmp_path)!r}
        cmd.build_temp = {str(tmp_path)!r}
        cmd.ensure_finalized()
        cmd.run()
        sys.path.insert(0, {str(tmp_path)!r})
        import user_mod
        c = percpu.Counter()
        user_mod.bump(c, 12345)
        c.inc()
        print(c.value())
        """
    )
    assert out.strip().splitlines()[-1] == "12346"


@pytest.mark.parametrize("delta", [-(2**63), 2**63 - 1, -(2**40), 2**40, -33, 33])
def test_approx_large_deltas_keep_slots_within_batch(delta: int) -> None:
    c = percpu.ApproxCounter(batch=32)
    c.add(delta)  # onto an empty slot: INT64_MIN's negation overflows
    assert all(abs(int(x)) < c.batch for x in c.per_cpu())  # Python ints: no abs overflow
    c.add(-5)
    c.add(7)
    assert c.value() == ((2 + delta + 2**63) % 2**64) - 2**63  # int64 wraparound
    assert all(abs(int(x)) < c.batch for x in c.per_cpu())  # Python ints: no abs overflow
    hammer(c, 2, 10_000)
    assert all(abs(int(x)) < c.batch for x in c.per_cpu())  # Python ints: no abs overflow
