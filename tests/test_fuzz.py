"""Property-based API fuzzing of every public class.

Each example is a random sequence of calls with random arguments (ints of
every size, floats, None, strings, bytes, numpy scalars, ...) on one object,
checked against a model of what it must hold. The only outcomes allowed are
the documented results and exceptions; after an exception the object must be
unchanged, usable and exact.

Counters are modelled as signed 64-bit integers that wrap modulo 2**64, as C
atomics and numpy.int64 do: a sharded counter's slots may wrap on their own
while the total stays exact, and only wrapping arithmetic sums them back.
"""
from __future__ import annotations

import ctypes
import operator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import percpu
from percpu import _alloc
from percpu.counters import COUNTERS, CounterBase

from .fuzzing import ANYTHING, EDGE_INTS, INT64_MAX, INT64_MIN, SETTINGS, expect, wrap64

NR_CPUS = percpu.nr_cpus()


def is_pyint(x: object) -> bool:
    return isinstance(x, int)


# ---------------------------------------------------------------------------
# Counters

COUNTER_OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["inc", "dec", "value", "int", "index", "repr", "per_cpu",
                                   "approx"]), st.none()),
        st.tuples(st.sampled_from(["add", "iadd", "isub"]), ANYTHING),
    ),
    max_size=40,
)


def _make_counter(name: str, ctor_arg: object) -> tuple[CounterBase | None, type[BaseException] | None]:
    """Construct with a fuzzed parameter; returns the counter or the exception."""
    cls = COUNTERS[name]
    try:
        if name == "approx":
            return cls(ctor_arg), None  # type: ignore[call-arg]
        if name == "striped":
            return cls(ctor_arg), None  # type: ignore[call-arg]
        if name == "perthread":
            return cls(ctor_arg), None  # type: ignore[call-arg]
        return cls(), None
    except (TypeError, ValueError, OverflowError) as e:
        return None, type(e)


def is_count(x: object) -> bool:
    """A size or count argument: an int or anything with __index__, but no bool."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _ctor_expectation(name: str, arg: object) -> tuple[type[BaseException], ...] | None:
    """What the documented constructor does with ``arg`` (None: the default)."""
    if arg is None:
        return None
    if name in ("approx", "striped", "perthread"):
        if not is_count(arg):
            return (TypeError,)
        # capacity: 1..PC_MAX_THREADS (1024)
        hi = {"approx": 2**40, "striped": 65536, "perthread": 1024}[name]
        return None if 1 <= operator.index(arg) <= hi else (ValueError,)  # type: ignore[arg-type]
    return None


def _check_counter(c: CounterBase, name: str, total: int) -> None:
    want = wrap64(total)
    assert c.value() == want
    if name == "approx":
        approx = c.approx()  # type: ignore[attr-defined]
        batch = c.batch  # type: ignore[attr-defined]
        # Every CPU's delta stays within (-batch, batch).
        gap = wrap64(want - approx)
        assert abs(gap) < batch * NR_CPUS, (approx, want, batch)
        assert wrap64(approx + int(c.per_cpu().sum(dtype=np.int64))) == want  # type: ignore[attr-defined]
    elif hasattr(c, "per_cpu"):
        assert wrap64(int(c.per_cpu().sum(dtype=np.int64))) == want


@pytest.mark.parametrize("name", sorted(COUNTERS))
@SETTINGS
@given(ctor_arg=st.one_of(st.none(), ANYTHING, st.integers(min_value=1, max_value=64)),
       ops=COUNTER_OPS)
def test_counter_call_sequences(name: str, ctor_arg: object, ops: list[tuple[str, object]]) -> None:
    c, err = _make_counter(name, ctor_arg)
    want = _ctor_expectation(name, ctor_arg)
    if want is None:
        assert err is None, f"{name}({ctor_arg!r}) raised {err}"
    else:
        assert err is not None and issubclass(err, want), f"{name}({ctor_arg!r}): {err} not {want}"
        return
    assert c is not None
    total = 0
    for op, arg in ops:
        if op == "inc":
            c.inc()
            total += 1
        elif op == "dec":
            c.dec()
            total -= 1
        elif op in ("add", "iadd", "isub"):
            if not is_pyint(arg):
                allowed: tuple[type[BaseException], ...] | None = (TypeError,)
            elif not INT64_MIN <= arg <= INT64_MAX:  # type: ignore[operator]
                allowed = (OverflowError,)
            elif op == "isub" and arg == INT64_MIN:
                allowed = (OverflowError,)
            else:
                allowed = None
            if op == "add":
                expect(lambda: c.add(arg), allowed)  # type: ignore[arg-type]
            elif op == "iadd":
                r = expect(lambda: c.__iadd__(arg), allowed)  # type: ignore[arg-type]
                assert allowed is not None or r is c
            else:
                r = expect(lambda: c.__isub__(arg), allowed)  # type: ignore[arg-type]
                assert allowed is not None or r is c
            if allowed is None:
                total += -arg if op == "isub" else arg  # type: ignore[operator]
        elif op == "value":
            assert c.value() == wrap64(total)
        elif op == "int":
            assert int(c) == wrap64(total)
        elif op == "index":
            assert operator.index(c) == wrap64(total)
        elif op == "repr":
            assert f"value={wrap64(total)}" in repr(c)
        elif op == "per_cpu" and hasattr(c, "per_cpu"):
            arr = c.per_cpu()
            assert arr.dtype == np.int64 and arr.ndim == 1
        elif op == "approx" and hasattr(c, "approx"):
            assert isinstance(c.approx(), int)
        # Single-threaded, so even the racy counter is exact here.
        _check_counter(c, name, total)


@pytest.mark.parametrize(
    "name,first",
    [(name, v) for name in sorted(COUNTERS) for v in EDGE_INTS if INT64_MIN <= v <= INT64_MAX],
)
def test_counter_edge_values(name: str, first: int) -> None:
    # The extremes on a fresh counter, then small steps across them: the
    # sequences the random search reaches only by luck.
    c = COUNTERS[name]()
    total = 0
    for v in (first, 1, -1, -2, first, 3):
        c.add(v)
        total += v
        _check_counter(c, name, total)


def test_perthread_capacity_rejects_float() -> None:
    with pytest.raises(TypeError):
        COUNTERS["perthread"](2.7)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------
# Pools

# Good arguments three times out of four: junk is rejected up front, so a
# sequence needs mostly good calls to build up state worth checking.
def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # (one_of would flatten ANYTHING's branches into its own and pick junk
    # most of the time.)
    return st.integers(0, 3).flatmap(lambda k: ANYTHING if k == 0 else good)


SIZES = mostly(st.integers(1, 80))
ALIGNS = mostly(st.sampled_from([1, 2, 8, 16, 64]))
ALLOC = st.tuples(st.just("alloc"), SIZES, ALIGNS,
                  st.one_of(st.booleans(), st.sampled_from([0, 1, "", "x", None])))
POOL_OPS = st.lists(
    st.one_of(
        ALLOC,
        ALLOC,
        st.tuples(st.sampled_from(["free", "size", "view", "address"]),
                  mostly(st.integers(0, 30)),  # which live handle, or junk
                  mostly(st.integers(0, NR_CPUS - 1)), st.none()),
        st.tuples(st.sampled_from(["double_free", "stats", "refill", "repr"]), st.none(),
                  st.none(), st.none()),
    ),
    max_size=40,
)


def _size_expectation(v: object, limit: int, power_of_two: bool) -> tuple[type[BaseException], ...] | None:
    if isinstance(v, bool):
        return (TypeError,)
    try:
        n = operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        return (TypeError,)
    if not 1 <= n <= limit:
        return (ValueError,)
    if power_of_two and n & (n - 1):
        return (ValueError,)
    return None


def _fill(pool: Any, h: int, size: int, tag: int) -> None:
    """Writes (tag + cpu) into every byte of every CPU's copy, by address."""
    for cpu in range(NR_CPUS):
        ctypes.memset(pool.address(h, cpu), (tag + cpu) & 0xFF, size)


def _check_pool(pool: Any, live: dict[int, tuple[int, int]], naive: bool) -> None:
    s = pool.stats()
    assert s["objects"] == len(live)
    assert s["allocs"] - s["frees"] == len(live)
    sizes = [size for size, _ in live.values()]
    if naive:
        assert s["bytes_used"] >= sum(sizes) * NR_CPUS
    else:
        assert s["bytes_used"] == sum(-(-size // 8) * 8 for size in sizes) * NR_CPUS
        assert s["bytes_used"] <= s["bytes_reserved"]
    for h, (size, tag) in live.items():
        v = pool.view(h)
        assert v.shape == (NR_CPUS, size)
        for cpu in range(NR_CPUS):
            # Nothing else wrote into this object (no overlap, no stray free).
            assert (v[cpu] == ((tag + cpu) & 0xFF)).all(), (h, cpu)


def _pool_sequence(pool: Any, ops: list[tuple[Any, ...]], naive: bool) -> None:
    limit = _alloc.NAIVE_MAX_SIZE if naive else pool.unit_size
    live: dict[int, tuple[int, int]] = {}
    freed: list[int] = []
    tag = 1

    def aliases_live(h: object) -> bool:
        # A PerCPUPool handle is a position plus the size's shortfall in its
        # low 3 bits, and a freed position is handed out again "like a
        # pointer": a stale or made-up handle naming a live position is that
        # object, whatever its low bits say. Only handles that name no live
        # position are certainly unknown.
        if naive or isinstance(h, bool):
            return False
        try:
            v = operator.index(h)  # type: ignore[arg-type]
        except TypeError:
            return False
        return 0 <= v < 2**63 and any((v ^ k) & ~7 == 0 for k in live)
    for op, a, b, c in ops:
        if op == "alloc":
            err = _size_expectation(a, limit, False) or _size_expectation(b, limit, True)
            if err is not None:
                expect(lambda: pool.alloc(a, b, c), err)
                continue
            try:
                h = pool.alloc(a, b, c)
            except MemoryError:
                # Documented only for atomic allocations (reserve used up).
                assert bool(c) and not naive
                pool.refill()
                continue
            assert isinstance(h, int) and h >= 0 and h not in live
            size, align = operator.index(a), operator.index(b)
            assert pool.size(h) == size
            assert (pool.view(h) == 0).all(), "not zeroed on alloc"
            for cpu in range(NR_CPUS):
                assert pool.address(h, cpu) % align == 0
            if not naive:
                assert pool.address(h, NR_CPUS - 1) - pool.address(h, 0) == (NR_CPUS - 1) * pool.unit_size
            tag = (tag + 37) % 251 + 1
            _fill(pool, h, size, tag)
            live[h] = (size, tag)
            if h in freed:
                freed.remove(h)
        elif op in ("free", "size", "view", "address"):
            if isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 30 and live:
                h = sorted(live)[a % len(live)]
                ok = True
            else:
                h = a
                # The pools take any integer (operator.index, bool excepted), so
                # numpy's int64(7) names the live handle 7 as well.
                try:
                    index = None if isinstance(h, bool) else operator.index(h)
                except TypeError:
                    index = None
                ok = index is not None and index in live
                if ok:
                    h = index
                elif aliases_live(h):
                    continue
            if ok:
                if op == "free":
                    pool.free(h)
                    del live[h]
                    freed.append(h)
                elif op == "size":
                    assert pool.size(h) == live[h][0]
                elif op == "view":
                    assert pool.view(h).shape == (NR_CPUS, live[h][0])
                else:
                    cpu_err = _cpu_expectation(b)
                    if cpu_err is None:
                        assert isinstance(pool.address(h, b), int)
                    else:
                        expect(lambda: pool.address(h, b), cpu_err)
            else:
                try:
                    operator.index(h)
                    bad: tuple[type[BaseException], ...] = (ValueError,)
                except TypeError:
                    bad = (TypeError,)
                if isinstance(h, bool):
                    bad = (TypeError,)
                if op == "free":
                    expect(lambda: pool.free(h), bad)
                elif op == "size":
                    expect(lambda: pool.size(h), bad)
                elif op == "view":
                    expect(lambda: pool.view(h), bad)
                else:
                    expect(lambda: pool.address(h, 0), bad)
        elif op == "double_free":
            if freed and not aliases_live(freed[-1]):
                expect(lambda: pool.free(freed[-1]), (ValueError,))
        elif op == "stats":
            pool.stats()
        elif op == "refill":
            pool.refill()
        elif op == "repr":
            assert type(pool).__name__ in repr(pool)
        _check_pool(pool, live, naive)
    for h in list(live):
        pool.free(h)
    assert pool.stats()["objects"] == 0


def _cpu_expectation(cpu: object) -> tuple[type[BaseException], ...] | None:
    if isinstance(cpu, bool):
        return (TypeError,)
    try:
        v = operator.index(cpu)  # type: ignore[arg-type]
    except TypeError:
        return (TypeError,)
    return None if 0 <= v < NR_CPUS else (ValueError,)


UNIT_SIZES = mostly(st.sampled_from([None, 64, 128, 256, 4096, 1 << 16]))


@SETTINGS
@given(unit_size=UNIT_SIZES, ops=POOL_OPS)
def test_percpu_pool_call_sequences(unit_size: object, ops: list[tuple[Any, ...]]) -> None:
    if unit_size is None:
        want = None
    else:
        want = _size_expectation(unit_size, _alloc.MAX_UNIT_SIZE, True)
        if want is None and operator.index(unit_size) < percpu.features()["cacheline"]:  # type: ignore[arg-type]
            want = (ValueError,)
    if want is not None:
        expect(lambda: _alloc.PerCPUPool(unit_size), want)  # type: ignore[arg-type]
        return
    _pool_sequence(_alloc.PerCPUPool(unit_size), ops, naive=False)  # type: ignore[arg-type]


@SETTINGS
@given(ops=POOL_OPS)
def test_naive_pool_call_sequences(ops: list[tuple[Any, ...]]) -> None:
    _pool_sequence(_alloc.NaivePool(), ops, naive=True)
