from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import percpu
from percpu._lab import hammer
from percpu.counters import COUNTERS, EXACT_COUNTERS

from .conftest import run_pytest, run_python
from .overlap import CAP, INTERRUPT_NS, RUN_NS, expected_total, require_overlap

NO_RSEQ = os.environ.get("PERCPU_NO_RSEQ", "") not in ("", "0")
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
    """Native threads add (mixed +1/-1) for a time-bounded run, interrupted
    mid-add all along; the total must be exactly what they did, counted by
    their own loops. With more than one thread the canary first shows that a
    racy add loses updates in the same configuration. One thread is no
    concurrency test, but its interruptions still abort rseq sections, so
    the retry path must be exact there too."""
    run_ns = require_overlap(threads, mixed=True, what=name) if threads > 1 else RUN_NS[0]
    c = COUNTERS[name]()
    r = hammer(c, threads, CAP, mixed=True, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)
    first = expected_total(r["done"], mixed=True)
    assert r["expected"] == first
    assert c.value() == first, f"{first - c.value()} updates lost"
    # A second team (new threads, recycled thread slots) adds on top.
    r2 = hammer(c, threads, CAP, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)
    assert c.value() == first + sum(r2["done"]), f"{first + sum(r2['done']) - c.value()} lost"


def test_racy_loses_when_threads_interleave() -> None:
    # The canary itself: a shared load-and-store must lose updates once
    # threads interleave mid-add (require_overlap fails if it never does),
    # and it can never gain one.
    run_ns = require_overlap(4)
    c = percpu.RacyCounter()
    r = hammer(c, 4, CAP, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)
    assert 0 < c.value() <= sum(r["done"])


def _gil_enabled() -> bool:
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


@pytest.mark.skipif(_gil_enabled(), reason="the GIL serialises every call: a racy add cannot lose "
                    "from Python threads here (the free-threaded build runs this)")
def test_python_threads_can_lose_without_the_gil() -> None:
    assert _python_threads_racy_loss() != 0


def _python_threads_racy_loss() -> int:
    """A RacyCounter driven by Python threads as in the test below, with
    longer runs until it loses (without the GIL it must); returns the loss."""
    lost = 0
    for k in (5_000, 50_000, 200_000):
        c = percpu.RacyCounter()
        _python_threads_work(c, 8, k)
        lost = 8 * (k - 2 * (k // 5) + 2 * k) - c.value()
        if lost:
            break
    return lost


def _python_threads_work(c: Any, n: int, k: int) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def work() -> None:
        try:
            barrier.wait()
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


@pytest.mark.parametrize("name", EXACT)
def test_python_threads_exact(name: str) -> None:
    """Python threads calling inc/dec/+=. Under the GIL each call runs alone,
    so this checks the wrappers (identity of +=, no lost call), not
    atomicity; without the GIL it is a concurrency test, and its canary
    must lose first."""
    if not _gil_enabled() and _python_threads_racy_loss() == 0:
        pytest.fail("inconclusive: a racy counter lost nothing from these Python threads")
    c = COUNTERS[name]()
    n, k = 8, 5_000
    _python_threads_work(c, n, k)
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


@pytest.mark.skipif(NO_RSEQ, reason="already the fallback run")
def test_fallback_concurrency_in_subprocess() -> None:
    """The native-thread tests again, in a process where PERCPU_NO_RSEQ=1
    forces the fallback adds (atomic adds on the current CPU's slot)."""
    run_pytest([__file__, "-k", "nogil_threads or approx_folds or fallback_is_in_force or overflow_cell"],
               {"PERCPU_NO_RSEQ": "1"})


@pytest.mark.skipif(not NO_RSEQ, reason="runs in the PERCPU_NO_RSEQ=1 subprocess")
def test_fallback_is_in_force() -> None:
    # Selected in the subprocess above: proves that run used the fallback.
    assert percpu.features()["rseq"] is False


@pytest.mark.parametrize("batch", [1, 4])
def test_approx_folds_exact_under_threads(batch: int) -> None:
    """A tiny batch makes (nearly) every add a fold into the shared count
    under the lock: the fold path must be as exact as the per-CPU one."""
    run_ns = require_overlap(8, mixed=True, what=f"approx batch={batch}")
    c = percpu.ApproxCounter(batch=batch)
    r = hammer(c, 8, CAP, mixed=True, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)
    expected = expected_total(r["done"], mixed=True)
    assert c.value() == expected, f"{expected - c.value()} updates lost"
    assert (np.abs(c.per_cpu()) < batch).all()


def test_approx_within_bound_during_and_after() -> None:
    c = percpu.ApproxCounter()
    n = percpu.nr_cpus()
    assert c.batch == max(32, 2 * n)
    # One fold may be in flight while approx() reads: allow one more batch.
    bound = c.batch * (n + 1)
    done = threading.Event()
    result: dict[str, int] = {}

    run_ns = require_overlap(4, what="approx bound")

    def run() -> None:
        result["expected"] = sum(hammer(c, 4, CAP, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)["done"])
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


def test_perthread_overflow_cell_exact() -> None:
    # Three of the four threads have no slot and share the atomic overflow cell.
    run_ns = require_overlap(4, what="perthread overflow")
    c = percpu.PerThreadCounter(capacity=1)
    r = hammer(c, 4, CAP, run_ns=run_ns, interrupt_ns=INTERRUPT_NS)
    assert c.value() == sum(r["done"])


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


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_cython_example() -> str:
    text = README.read_text()
    start = text.index("```cython\n", text.index("## From Cython")) + len("```cython\n")
    return text[start:text.index("```", start)]


def test_cython_user_can_cimport(tmp_path: os.PathLike[str]) -> None:
    """The README's example, verbatim, compiled against the installed package,
    plus a function that uses the reference names it cimports: the inline
    fast paths run in the user's module."""
    pytest.importorskip("Cython")
    if not README.exists():
        pytest.fail(f"{README} is missing: the README's example cannot be checked")
    src = os.path.join(str(tmp_path), "user_mod.pyx")
    with open(src, "w") as f:
        f.write("# cython: language_level=3\n")
        f.write(_readme_cython_example())
        f.write(
            "\n"
            "from percpu.refs cimport PercpuRef\n"
            "def hold_and_drop(PercpuRef r, long n):\n"
            "    cdef long i\n"
            "    cdef int rc = 0\n"
            "    cdef pc_ref *c = &r.c\n"
            "    with nogil:\n"
            "        for i in range(n):\n"
            "            rc |= percpuref_get(c)\n"
            "    held = r.value()\n"
            "    with nogil:\n"
            "        for i in range(n):\n"
            "            rc |= percpuref_put(c)\n"
            "    return rc, held\n"
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
        r = percpu.PercpuRef()
        print(user_mod.hold_and_drop(r, 1000), r.value(), r.is_percpu())
        r.kill()
        print(r.released)
        """
    )
    assert out.strip().splitlines()[-3:] == ["12346", "(0, 1001) 1 True", "True"]


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
