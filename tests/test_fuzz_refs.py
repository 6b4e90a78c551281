"""Property-based API fuzzing of the reference classes.

Random call sequences on one reference, checked against a model: the count
(holders plus the initial reference until kill), killed, released, and the
number of on_release calls (exactly one per release). Misuse must raise the
documented error and change nothing; junk arguments must raise TypeError or
ValueError.
"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from percpu import REFS

from .fuzzing import ANYTHING, SETTINGS, expect

OPS = ["get", "put", "tryget", "tryget_live", "value", "kill", "kill_and_confirm", "released",
       "is_fast", "switch_to_atomic", "switch_to_percpu", "resurrect", "reinit", "is_zero",
       "wait", "junk_arg"]

#: Timeouts that never wait long: the sequence may ask an unreleased reference.
TIMEOUTS = st.one_of(
    st.floats(max_value=0.001, allow_nan=False, allow_infinity=False),
    st.just(float("nan")),
    st.integers(max_value=0),
    st.sampled_from(["1", b"1", [0], 1 + 0j, object()]),
)


class Model:
    def __init__(self) -> None:
        self.held = 0          # references taken by get/tryget and not put yet
        self.initial = True    # the reference the object was created with
        self.killed = False
        self.released = False
        self.releases = 0
        self.percpu = True     # PercpuRef: get/put on the per-CPU counts

    @property
    def count(self) -> int:
        return 0 if self.released else self.held + int(self.initial)

    def drop(self) -> bool:
        if self.count == 0:
            self.released = True
            self.releases += 1
            return True
        return False


@pytest.mark.parametrize("kind", sorted(REFS))
@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), TIMEOUTS, ANYTHING), max_size=30))
def test_reference_call_sequences(kind: str, ops: list[tuple[str, Any, Any]]) -> None:
    cls = REFS[kind]
    calls: list[int] = []
    confirms: list[int] = []
    r: Any = cls(on_release=lambda: calls.append(1))
    m = Model()
    percpu_only = kind == "percpu"
    for op, timeout, junk in ops:
        live = not m.killed and not m.released
        if op == "get":
            if m.released:
                expect(r.get, (RuntimeError,))
            else:
                r.get()
                m.held += 1
        elif op == "put":
            if m.released:
                expect(r.put, (RuntimeError,))
            elif m.held > 0:
                m.held -= 1
                assert r.put() is m.drop()
        elif op == "tryget":
            ok = r.tryget()
            assert ok is (not m.released)
            m.held += int(ok)
        elif op == "tryget_live":
            if not percpu_only:
                continue
            ok = r.tryget_live()
            assert ok is live
            m.held += int(ok)
        elif op == "value":
            assert r.value() == m.count
        elif op in ("kill", "kill_and_confirm"):
            if op == "kill_and_confirm" and not percpu_only:
                continue
            if m.killed or m.released:
                # Kill twice (or after the release): RuntimeError, and a
                # confirm callback never runs.
                before = len(confirms)
                expect(r.kill if op == "kill"
                       else (lambda: r.kill_and_confirm(lambda: confirms.append(-1))),
                       (RuntimeError,))
                assert len(confirms) == before
            else:
                if op == "kill":
                    r.kill()
                else:
                    r.kill_and_confirm(lambda: confirms.append(len(calls)))
                    # confirm runs once, before any release
                    assert confirms[-1] == m.releases
                m.killed = True
                m.initial = False
                m.percpu = False
                m.drop()
        elif op == "released":
            assert r.released is m.released
        elif op == "is_fast":
            if kind == "bigref":
                assert r.is_fast() is live
            elif percpu_only:
                assert r.is_percpu() is m.percpu
        elif op == "switch_to_atomic":
            if not percpu_only:
                continue
            if m.released:
                expect(r.switch_to_atomic, (RuntimeError,))
            else:
                # Allowed while killed: already shared, nothing to do.
                r.switch_to_atomic()
                m.percpu = False
        elif op == "switch_to_percpu":
            if not percpu_only:
                continue
            if m.killed or m.released:
                expect(r.switch_to_percpu, (RuntimeError,))
            else:
                r.switch_to_percpu()
                m.percpu = True
        elif op == "resurrect":
            if not percpu_only:
                continue
            if m.killed and not m.released:
                r.resurrect()
                m.killed = False
                m.initial = True
                m.percpu = True
            else:
                expect(r.resurrect, (RuntimeError,))
        elif op == "reinit":
            if not percpu_only:
                continue
            if m.released:
                r.reinit()
                m.__init__()  # type: ignore[misc]
                m.releases = len(calls)
            else:
                expect(r.reinit, (RuntimeError,))
        elif op == "is_zero":
            if percpu_only:
                assert r.is_zero() is m.released
        elif op == "wait":
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
                if timeout != timeout or timeout < 0:  # NaN, negative
                    expect(lambda: r.wait_released(timeout), (ValueError,))
                else:
                    assert r.wait_released(timeout) is m.released
            else:
                expect(lambda: r.wait_released(timeout), (TypeError,))
        elif op == "junk_arg":
            # The no-argument methods refuse an argument and change nothing.
            expect(lambda: r.get(junk), (TypeError,))
            expect(lambda: r.value(junk), (TypeError,))
        # The model and the object agree after every call, whatever it raised.
        assert len(calls) == m.releases
        assert r.released is m.released
        assert r.value() == m.count
