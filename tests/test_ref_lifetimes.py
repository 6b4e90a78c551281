"""The references' lifetime rules, at the C level (the nogil API the
workloads and Cython users call), under native threads:

- once kill() has returned (or kill_and_confirm's confirm has run), no
  tryget_live() succeeds, whichever path it takes: the rseq section, the
  shared count (shared mode, or rseq aborting time after time), a read-side
  section, or no registry record at all (more threads than records);
- a release callback may free the struct that holds the reference: the
  library never writes to it afterwards;
- a get() on a released reference (a misuse) never lets a concurrent
  tryget() succeed, and kill_and_confirm calls confirm on every path.

The races run in the lab's native-thread kernels; the fallback paths run in a
subprocess with PERCPU_NO_RSEQ=1.
"""
from __future__ import annotations

import os

import pytest

from percpu import REFS, PercpuRef
from percpu import _lab, _refs

from .conftest import run_python

KINDS = sorted(REFS)
#: Takers plus the killer, more than the CPUs: a taker must be able to lose
#: its CPU between reading the mode and taking its reference.
THREADS = min(max(5, 2 * (os.cpu_count() or 1) + 1), 33)


# ---------------------------------------------------------------------------
# kill() against tryget_live()


def tryget_live_vs_kill_faults(shared: bool, confirm: bool, rounds: int) -> list[str]:
    res = _lab._tryget_live_vs_kill(THREADS, rounds, shared, confirm, seed=rounds)
    faults = []
    # Every reference a tryget_live handed out was counted by the kill (or
    # by value() inside confirm): none was taken after the mode switch.
    if res["uncounted"] or res["bad_rounds"]:
        faults.append("references taken after the kill's mode switch")
    # Calls that began after the kill had returned were all refused.
    if res["after"]:
        faults.append("tryget_live succeeded after kill() had returned")
    # The kill's return codes and the release by the last put were right.
    if res["bad"]:
        faults.append("wrong return codes")
    if not res["got"]:
        faults.append("the takers took nothing")
    return [f"shared={shared} confirm={confirm}: {f} {res}" for f in faults]


@pytest.mark.parametrize("confirm", [False, True], ids=["kill", "kill_and_confirm"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "percpu"])
def test_no_tryget_live_after_kill(shared: bool, confirm: bool) -> None:
    # Shared mode (after switch_to_atomic): every tryget_live takes the
    # shared-count path, the one rseq aborts also end on.
    faults = tryget_live_vs_kill_faults(shared, confirm, rounds=60)
    assert not faults, faults


FALLBACK = r"""
import os, threading
import percpu
from percpu import _core, _lab
from tests.test_ref_lifetimes import tryget_live_vs_kill_faults

assert not percpu.features()["rseq"]
faults = []
for shared in (True, False):
    for confirm in (False, True):
        faults += tryget_live_vs_kill_faults(shared, confirm, rounds=40)

# Every registry record taken by a parked thread: the takers get none and go
# to the shared count even in per-CPU mode, outside any read-side section.
threading.stack_size(256 * 1024)
counter = percpu.PerThreadCounter()
go = threading.Event()
ready = threading.Semaphore(0)
def park():
    counter.inc()  # registers this thread
    ready.release()
    go.wait()
stats = _core.registry_stats()
n = stats["capacity"] - stats["live"] + 4
parked = [threading.Thread(target=park) for _ in range(n)]
for t in parked:
    t.start()
for _ in parked:
    ready.acquire()
try:
    stats = _core.registry_stats()
    assert stats["live"] == stats["capacity"], stats
    assert counter.value() == n
    for confirm in (False, True):
        faults += ["registry full: " + f for f in tryget_live_vs_kill_faults(False, confirm, 20)]
finally:
    go.set()
    for t in parked:
        t.join()
assert not faults, "\n".join(faults)
print("ok")
"""


def test_no_tryget_live_after_kill_fallback_paths() -> None:
    # Read-side sections (no rseq), and no registry record at all.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    out = run_python(FALLBACK, {"PERCPU_NO_RSEQ": "1", "PYTHONPATH": pythonpath}, timeout=600)
    assert out.strip() == "ok"


# ---------------------------------------------------------------------------
# A release callback that frees the object


WAYS = [
    ("atomic", "put", 1), ("atomic", "kill", 1),
    ("bigref", "put", 1), ("bigref", "kill", 1), ("bigref", "underflow", -3),
    ("percpu", "put", 1), ("percpu", "kill", 1), ("percpu", "confirm", 1),
    ("percpu", "underflow", -3), ("percpu", "underflow_switch", -3),
    ("percpu", "shared_put", 1),
]


@pytest.mark.parametrize("kind,how,rc", WAYS, ids=[f"{k}-{h}" for k, h, _ in WAYS])
def test_release_callback_may_free_the_object(kind: str, how: str, rc: int) -> None:
    # The callback destroys the reference and overwrites the whole struct
    # that holds it: a write by the library after the callback shows.
    res = _lab._release_frees_object(kind, how)
    assert res["calls"] == 1 and res["rc"] == rc, res
    assert res["confirms"] == (1 if how == "confirm" else 0), res
    assert res["intact"], f"the library wrote to the reference after its release callback: {res}"
    # Really freed: under AddressSanitizer (tools/sanitize.sh, tox -e asan)
    # a write after the callback is a heap-use-after-free report.
    res = _lab._release_frees_object(kind, how, really_free=True)
    assert res["calls"] == 1 and res["rc"] == rc, res


def test_release_frees_object_validates() -> None:
    with pytest.raises(ValueError):
        _lab._release_frees_object("atomic", "underflow")
    with pytest.raises(ValueError):
        _lab._release_frees_object("bigref", "confirm")
    with pytest.raises(ValueError):
        _lab._release_frees_object("percpu", "nope")


# ---------------------------------------------------------------------------
# Misuse: get() on a released reference, and kill_and_confirm's underflow


@pytest.mark.parametrize("kind", KINDS)
def test_misused_get_never_lets_tryget_succeed(kind: str) -> None:
    res = _lab._misused_get_vs_tryget(kind, 4, 3_000_000)
    assert res["get_ok"] == 0 and res["tryget_ok"] == 0, res
    assert res["released"] and res["value"] == 0, res


def test_get_fails_on_a_reference_never_set_up() -> None:
    # The bare base class reads as released until a subclass sets it up.
    r = _refs._Ref()
    with pytest.raises(RuntimeError):
        r.get()
    assert not r.tryget() and r.value() == 0 and r.released


def test_kill_and_confirm_confirms_on_underflow() -> None:
    log: list[str] = []
    r = PercpuRef(on_release=lambda: log.append("release"))
    r.put()  # the initial reference, dropped behind the kill's back
    with pytest.raises(RuntimeError, match="more put"):
        r.kill_and_confirm(lambda: log.append("confirm"))
    assert log == ["confirm", "release"]
    assert r.released and r.value() == 0 and not r.tryget_live() and not r.tryget()
