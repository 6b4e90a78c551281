"""What ordinary Python code can do to the objects, they survive.

- Reference cycles, collected in whatever order the collector picks:
  subclasses holding themselves, references whose ``on_release`` reaches
  them, a pool in one cycle with the objects it holds. Each scenario runs in
  a forked child: a crash fails its one test.
- ``wait_released`` with any timeout: ``inf`` and huge ones wait, negative
  and NaN ones are refused.
- Subclassing: a subclass's own ``__init__`` arguments never reach the base
  (nor become ``on_release``), and a subclass that never calls
  ``super().__init__()`` still has a working object.
"""
from __future__ import annotations

import gc
import math
import random
import threading
import time
import weakref
from typing import Any, Callable

import pytest

import percpu
from percpu import _alloc
from percpu.alloc import get_default_pool

from .conftest import run_forked

POOLS: dict[str, type] = {"PerCPUPool": percpu.PerCPUPool, "NaivePool": percpu.NaivePool}
#: Every class the collector may meet: counters, references, pools.
CLASSES: dict[str, type] = {
    **{cls.__name__: cls for cls in percpu.COUNTERS.values()},
    **{cls.__name__: cls for cls in percpu.REFS.values()},
    **POOLS,
}
#: The classes that take a pool.
POOLED = [cls for cls in CLASSES.values() if cls in (percpu.PerCPUCounter, percpu.ApproxCounter)
          or cls in (percpu.BigRef, percpu.PercpuRef)]


def live_objects() -> int:
    return int(get_default_pool().stats()["objects"])


def collect_and_check(refs: list[weakref.ref[Any]], pool_objects: int | None = None) -> None:
    gc.collect()
    gc.collect()
    assert all(r() is None for r in refs), "a cycle was not collected"
    if pool_objects is not None:
        # Every slot went back to the default pool: each __dealloc__ ran.
        assert live_objects() == pool_objects


# ---------------------------------------------------------------------------
# Garbage collection


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_subclass_holding_itself_is_collected(name: str) -> None:
    cls = CLASSES[name]

    def child() -> None:
        sub = type("Sub", (cls,), {})
        before = live_objects()
        refs = []
        for _ in range(20):
            o = sub()
            o.me = o
            refs.append(weakref.ref(o))
        del o
        collect_and_check(refs, before)

    run_forked(child)


@pytest.mark.parametrize("name", sorted(cls.__name__ for cls in POOLED))
def test_subclass_on_its_own_pool_in_a_cycle(name: str) -> None:
    # The object holds the only reference to its pool: if the collector
    # dropped the pool first, __dealloc__ would free a slot in freed memory.
    cls = CLASSES[name]

    def child() -> None:
        sub = type("Sub", (cls,), {})
        refs = []
        for _ in range(20):
            o = sub(pool=percpu.PerCPUPool())
            o.me = o
            refs.append(weakref.ref(o))
        del o
        collect_and_check(refs)

    run_forked(child)


def _callback_cycle(cls: type, shape: int, hold: bool) -> None:
    """A reference whose on_release reaches it, on a pool only it holds; the
    shapes put the reference before the rest of its cycle in the collector's
    list, so it is cleared first (the order that used to crash)."""
    pooled = not issubclass(cls, percpu.AtomicRef)
    kwargs = {"pool": percpu.PerCPUPool()} if pooled else {}
    if shape == 0:
        # The issue's own example; freezing the box moves it behind the
        # reference when the collector next looks.
        box: list[Any] = []
        gc.freeze()
        r = cls(on_release=box.clear, **kwargs)
        box.append(r)
        gc.collect()
        gc.unfreeze()
    elif shape == 1:
        # An empty dict is not tracked until it holds the reference: it
        # enters the collector's list after it.
        holder: dict[str, Any] = {}
        r = cls(on_release=holder.clear, **kwargs)
        holder["r"] = r
    else:
        # A subclass whose own attribute closes the cycle.
        r = type("Sub", (cls,), {})(on_release=lambda: None, **kwargs)
        r.me = r
    if hold:
        r.get()  # a held reference in the cycle: still collected


@pytest.mark.parametrize("name", sorted(percpu.REFS))
def test_release_callback_reaching_the_reference(name: str) -> None:
    cls = percpu.REFS[name]

    def child() -> None:
        before = live_objects()
        for i in range(30):
            _callback_cycle(cls, i % 3, i % 4 == 0)
        collect_and_check([], before)
        # Every reference was collected (they are tracked: the collector
        # lists every live one).
        assert not [o for o in gc.get_objects() if isinstance(o, cls)]

    run_forked(child)


def _pool_cycle(rng: random.Random, pool_last: bool) -> weakref.ref[Any]:
    """A pool subclass holding its objects, some of which hold it back."""
    pool_cls = type("P", (percpu.PerCPUPool,), {})
    p = pool_cls()
    if pool_last:
        # Out of the collector's lists until its objects are in the oldest
        # generation; then back behind them, so they are cleared first.
        gc.freeze()
    made: list[Any] = []
    for cls in rng.sample(POOLED, len(POOLED)):
        sub = rng.random() < 0.5
        make = type(f"Sub{cls.__name__}", (cls,), {}) if sub else cls
        if cls in (percpu.BigRef, percpu.PercpuRef):
            o = make(pool=p, on_release=lambda: None)
        else:
            o = make(pool=p)
        if sub:
            o.pool_too = p  # the object holds the pool, the pool holds it
        made.append(o)
    # A tuple made last: the objects come before it in the collector's list.
    p.objs = tuple(made)
    del made, o
    if pool_last:
        gc.collect()
        gc.unfreeze()
    return weakref.ref(p)


def test_pool_in_one_cycle_with_its_objects() -> None:
    def child() -> None:
        rng = random.Random(13)
        refs = [_pool_cycle(rng, i % 2 == 0) for i in range(30)]
        collect_and_check(refs)

    run_forked(child)


def test_objects_in_cycles_give_their_slots_back() -> None:
    # The pool lives on; its objects die in cycles (with each other, through
    # their callbacks): each must have given its slot back to the pool.
    def child() -> None:
        pool = percpu.PerCPUPool()
        rng = random.Random(7)
        subs = {cls: type(f"Sub{cls.__name__}", (cls,), {}) for cls in POOLED}
        for _ in range(20):
            objs = [subs[cls](pool=pool) for cls in rng.sample(POOLED, len(POOLED))]
            for a, b in zip(objs, objs[1:] + objs[:1]):
                a.next = b
            del objs, a, b
        gc.collect()
        assert pool.stats()["objects"] == 0
        assert _alloc._audit(pool)["consistent"]

    run_forked(child)


# ---------------------------------------------------------------------------
# wait_released timeouts

HUGE = [math.inf, 1e10, 1e300, 10**400]


def _held(cls: type) -> Any:
    """A killed reference that one extra holder keeps from its release."""
    r = cls()
    r.get()
    r.kill()
    assert not r.released
    return r


@pytest.mark.parametrize("timeout", HUGE, ids=str)
@pytest.mark.parametrize("name", sorted(percpu.REFS))
def test_huge_timeout_waits_for_the_release(name: str, timeout: float) -> None:
    r = _held(percpu.REFS[name])

    def release_later() -> None:
        time.sleep(0.1)
        r.put()

    t = threading.Thread(target=release_later)
    t.start()
    assert r.wait_released(timeout) is True
    t.join()
    assert r.released


@pytest.mark.parametrize("timeout", HUGE, ids=str)
@pytest.mark.parametrize("name", sorted(percpu.REFS))
def test_huge_timeout_keeps_waiting(name: str, timeout: float) -> None:
    r = _held(percpu.REFS[name])
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(r.wait_released(timeout)), daemon=True)
    t.start()
    time.sleep(0.2)
    still_waiting = t.is_alive() and not result
    r.put()
    t.join(30)
    assert still_waiting, f"wait_released({timeout}) returned {result} without a release"
    assert result == [True]


@pytest.mark.parametrize("timeout", [-1, -0.5, -math.inf, math.nan, -(10**400)], ids=str)
@pytest.mark.parametrize("name", sorted(percpu.REFS))
def test_negative_or_nan_timeout_is_refused(name: str, timeout: float) -> None:
    r = _held(percpu.REFS[name])
    with pytest.raises(ValueError, match="timeout"):
        r.wait_released(timeout)
    r.put()
    assert r.wait_released(0) is True


# ---------------------------------------------------------------------------
# Subclassing


@pytest.mark.parametrize("name", sorted(percpu.REFS))
def test_reference_subclass_takes_its_own_arguments(name: str) -> None:
    cls = percpu.REFS[name]

    def child() -> None:
        class Named(cls):  # type: ignore[valid-type,misc]
            def __init__(self, name: object) -> None:
                super().__init__()
                self.name = name

        calls: list[int] = []
        r = Named("device")
        assert r.name == "device" and r.value() == 1
        # A callable argument is the subclass's, never on_release.
        r2 = Named(lambda: calls.append(1))
        r2.kill()
        assert r2.released and calls == []

        class WithCallback(cls):  # type: ignore[valid-type,misc]
            def __init__(self, name: str, on_release: Callable[[], None]) -> None:
                super().__init__(on_release=on_release)

        r3 = WithCallback("x", lambda: calls.append(3))
        r3.kill()
        assert calls == [3]

    run_forked(child)


@pytest.mark.parametrize("name", sorted(percpu.COUNTERS))
def test_counter_subclass_takes_its_own_arguments(name: str) -> None:
    cls = percpu.COUNTERS[name]

    def child() -> None:
        class Named(cls):  # type: ignore[valid-type,misc]
            def __init__(self, label: object, *args: object) -> None:
                super().__init__(*args)
                self.label = label

        c = Named("requests")
        c.inc()
        c.add(41)
        assert c.value() == 42 and c.label == "requests"
        if cls in (percpu.PerCPUCounter, percpu.ApproxCounter):
            own = percpu.PerCPUPool()
            c2 = Named("x", None, own) if cls is percpu.ApproxCounter else Named("x", own)
            c2.inc()
            assert c2.pool is own and c2.value() == 1

    run_forked(child)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_subclass_skipping_super_init_still_works(name: str) -> None:
    cls = CLASSES[name]

    def child() -> None:
        class Lazy(cls):  # type: ignore[valid-type,misc]
            def __init__(self, *args: object, **kwargs: object) -> None:
                pass  # no super().__init__()

        o: Any = Lazy(1, "two", three=3)
        if cls in percpu.COUNTERS.values():
            o.inc()
            o.add(2)
            o += 3
            assert o.value() == 6 and int(o) == 6
        elif cls in percpu.REFS.values():
            o.get()
            assert o.put() is False
            o.kill()
            assert o.released and o.wait_released(0)
        else:
            h = o.alloc(8)
            assert o.size(h) == 8
            o.free(h)
        del o
        gc.collect()

    run_forked(child)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_init_runs_once(name: str) -> None:
    # __init__ may move the object's storage, so only before anyone could
    # hold it: a second call is refused and changes nothing.
    cls = CLASSES[name]

    def child() -> None:
        o = cls()
        # The signature Cython embeds in the class docstring: a class that
        # takes no arguments has nothing to configure.
        if (cls.__doc__ or "").partition("\n")[0] == f"{cls.__name__}()":
            o.__init__()  # nothing to configure: harmless
            return
        with pytest.raises(RuntimeError, match="already"):
            o.__init__()
        if cls in percpu.COUNTERS.values():
            o.inc()
            assert o.value() == 1
        elif cls in percpu.REFS.values():
            assert o.value() == 1

    run_forked(child)


@pytest.mark.parametrize("name", sorted(cls.__name__ for cls in POOLED))
def test_init_never_moves_an_object_in_use(name: str) -> None:
    # Made with __new__ (no __init__), used, then configured: moving its
    # slots to another pool would lose what it holds, so that is refused.
    cls = CLASSES[name]

    def child() -> None:
        o: Any = cls.__new__(cls)  # type: ignore[call-overload]
        o.get() if cls in percpu.REFS.values() else o.inc()
        want = o.value()
        with pytest.raises(RuntimeError, match="use|counted"):
            o.__init__(pool=percpu.PerCPUPool())
        assert o.value() == want
        if cls not in percpu.REFS.values():
            assert o.pool is get_default_pool()

    run_forked(child)


def test_refused_constructor_arguments_name_themselves() -> None:
    cases: list[tuple[Callable[[], object], type[BaseException], str]] = [
        (lambda: percpu.PerCPUCounter(start=5), TypeError, "start"),  # type: ignore[call-arg]
        (lambda: percpu.PerCPUCounter(pool="x"), TypeError, "pool"),  # type: ignore[arg-type]
        (lambda: percpu.PerCPUCounter(3), TypeError, "pool"),  # type: ignore[arg-type]
        (lambda: percpu.ApproxCounter(pool=3), TypeError, "pool"),  # type: ignore[arg-type]
        (lambda: percpu.ApproxCounter(bogus=1), TypeError, "bogus"),  # type: ignore[call-arg]
        (lambda: percpu.ApproxCounter(batch=0), ValueError, "batch"),
        (lambda: percpu.AtomicCounter(bogus=1), TypeError, "bogus"),  # type: ignore[call-arg]
        (lambda: percpu.NaivePool(1), TypeError, "positional"),  # type: ignore[call-arg]
        (lambda: percpu.PerThreadCounter(capacity=True), TypeError, "capacity"),
        (lambda: percpu.StripedCounter(stripes=2.0), TypeError, "stripes"),  # type: ignore[arg-type]
        (lambda: percpu.PercpuRef(pool=percpu.NaivePool()), TypeError, "pool"),  # type: ignore[arg-type]
        (lambda: percpu.BigRef(on_release=3), TypeError, "on_release"),  # type: ignore[arg-type]
        (lambda: percpu.PerCPUPool(unit_size=3), ValueError, "unit_size"),
    ]

    def child() -> None:
        before = live_objects()
        for make, exc, word in cases:
            with pytest.raises(exc, match=word):
                make()
        gc.collect()
        assert live_objects() == before

    run_forked(child)
