"""fork(): the child can use the counters it inherited and create new ones.

Each scenario runs in a fresh interpreter (so a hang or crash cannot take the
test run with it), forks there, and checks the child's exit status within a
timeout: a child that deadlocks on a lock some other thread held at fork time
is killed and the test fails. Both cpu-id paths run: rseq and the fallback.
"""
from __future__ import annotations

import os

import pytest

from .conftest import run_python

PRELUDE = r"""
import os, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
import percpu
from percpu import _alloc, _core, _lab
from percpu._lab import hammer
from percpu.counters import COUNTERS, EXACT_COUNTERS

CHILD_TIMEOUT = float(os.environ.get("CHILD_TIMEOUT", "60"))


def wait_child(pid):
    # A deadlocked child never exits: poll, then kill it and fail.
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "deadlocked"


def child_checks(inherited, base):
    # Inherited counters keep their value and keep counting exactly.
    for name, c in inherited.items():
        assert c.value() == base[name], (name, c.value(), base[name])
        c.inc()
        c.add(41)
        assert c.value() == base[name] + 42, name
        r = hammer(c, 2, 5000)
        assert c.value() == base[name] + 42 + r["expected"], name
    # New objects, new pool slots, the registry, a grace period, the team.
    for name in EXACT_COUNTERS:
        c = COUNTERS[name]()
        r = hammer(c, 3, 5000, mixed=True)
        assert c.value() == r["expected"], name
    pool = _alloc.get_default_pool()
    h = pool.alloc(24)
    pool.free(h)
    # These wait for every per-CPU cache's lock: a lock held at fork by a
    # thread the child does not have would hang here.
    pool.stats()
    pool.drain()
    assert pool.stats()["cached_objects"] == 0
    stats = _core.registry_stats()
    # Only the forking thread survives: the parent's other threads' records
    # were given back by the atfork handler.
    assert stats["live"] <= 1, stats
    _core.synchronize()
    t = _lab.team_selftest(2, 1000)
    assert t["cells"] == [1000, 1000]
    # The same choice in the child; the slot bound only ever grows.
    now = percpu.features()
    assert now["slots_in_use"] >= FEATURES["slots_in_use"], (now, FEATURES)
    assert dict(now, slots_in_use=0) == dict(FEATURES, slots_in_use=0), (now, FEATURES)


FEATURES = percpu.features()
"""


@pytest.mark.parametrize("no_rseq", ["0", "1"], ids=["rseq", "fallback"])
def test_child_uses_inherited_and_new_counters(no_rseq: str) -> None:
    code = PRELUDE + r"""
inherited = {name: COUNTERS[name]() for name in EXACT_COUNTERS}
for c in inherited.values():
    hammer(c, 2, 10000)  # native threads registered, then exited
base = {name: c.value() for name, c in inherited.items()}
pid = os.fork()
if pid == 0:
    try:
        child_checks(inherited, base)
    except BaseException as e:
        import traceback; traceback.print_exc()
        os._exit(1)
    os._exit(0)
status = wait_child(pid)
assert status == 0, f"child: {status}"
# The parent's counters are the parent's: the child's adds are not here.
assert {name: c.value() for name, c in inherited.items()} == base
print("ok")
"""
    assert run_python(code, {"PERCPU_NO_RSEQ": no_rseq}, timeout=240).strip() == "ok"


LOCK_FREE = ("atomic", "percpu", "perthread", "striped")


@pytest.mark.skipif(bool(os.environ.get("PERCPU_SANITIZED")), reason=(
    "under ASan a child forked while the team creates threads deadlocked once in ~50 "
    "forks (never in 240 without it): gcc 12's libasan does not hold its own thread "
    "registry lock across fork()"))
@pytest.mark.parametrize("no_rseq", ["0", "1"], ids=["rseq", "fallback"])
@pytest.mark.parametrize("busy,names", [
    pytest.param("counters", LOCK_FREE, id="lock-free-counters"),
    pytest.param("pool", LOCK_FREE, id="pool"),
    pytest.param("counters", ("locked", "approx"), id="mutex-counters"),
])
def test_fork_while_native_threads_are_busy(no_rseq: str, busy: str, names: tuple[str, ...]) -> None:
    # A Python thread runs the native team (GIL released) on shared objects
    # while the main thread forks again and again: the child, where those
    # threads do not exist, must still be able to use everything.
    code = PRELUDE + r"""
BUSY = %r
inherited = {name: COUNTERS[name](*([1] if name == "approx" else [])) for name in %r}
pool = _alloc.get_default_pool()
stop = threading.Event()
errors = []

def churn():
    try:
        while not stop.is_set():
            if BUSY == "counters":
                for c in inherited.values():
                    hammer(c, 2, 20000)
            else:
                r = _lab._stress(pool, 2, 2000, 64)
                assert r["corrupt"] == 0 and r["nonzero"] == 0, r
    except BaseException as e:
        errors.append(e)

t = threading.Thread(target=churn)
t.start()
results = []
# Up to 30 forks; the first child that fails ends the loop (a deadlock
# costs the whole child timeout).
for i in range(30):
    time.sleep(0.02)
    # The values are moving: the child takes what it finds, as a base.
    pid = os.fork()
    if pid == 0:
        try:
            base = {name: c.value() for name, c in inherited.items()}
            child_checks(inherited, base)
        except BaseException:
            import traceback; traceback.print_exc()
            os._exit(1)
        os._exit(0)
    results.append(wait_child(pid))
    if results[-1] != 0:
        break
stop.set()
t.join()
assert not errors, errors
assert results == [0] * 30, results
print("ok")
""" % (busy, names)
    # approx with batch=1 folds (under its mutex) on every add: the window
    # the child can fall into is most of the time, not a rare one.
    # A healthy child is done in well under a second (more under ASan).
    child_timeout = "30" if os.environ.get("PERCPU_SANITIZED") else "5"
    out = run_python(code, {"PERCPU_NO_RSEQ": no_rseq, "CHILD_TIMEOUT": child_timeout}, timeout=400)
    assert out.strip() == "ok"


REFS_BUSY = r"""
from percpu import AtomicRef, BigRef, PercpuRef

# Shared with the child: each reference some thread is working on right now.
refs = {"atomic": AtomicRef(), "bigref": BigRef(), "percpu": PercpuRef(), "cycle": PercpuRef(),
        "teamed": PercpuRef()}
stop = threading.Event()
errors = []


def guarded(fn):
    def run():
        try:
            while not stop.is_set():
                fn()
        except BaseException as e:
            errors.append(e)
    return run


def switching():
    # Mode switches: grace period and fold under the reference's lock.
    r = refs["percpu"]
    r.switch_to_atomic()
    r.switch_to_percpu()
    r.get()
    r.kill()
    r.resurrect()
    r.put()
    r.value()


def cycling():
    # kill, release, reinit; kill_and_confirm every other round.
    r = refs["cycle"]
    r.get()
    if r.value() & 1:
        r.kill_and_confirm(lambda: None)
    else:
        r.kill()
    r.put()
    r.reinit()


def replacing():
    # New objects: a BigRef disowned and released, an AtomicRef killed.
    for name, cls in (("bigref", BigRef), ("atomic", AtomicRef)):
        old = refs[name]
        refs[name] = cls()
        old.get()
        old.kill()
        old.put()


def teaming():
    # Native threads: gets and puts on the rseq or fallback path.
    _lab._team_refops(refs["teamed"], 2, 2000)


def child_refs():
    # Every inherited reference: the locked paths (value, switches, kill)
    # must not find a lock that a parent's thread held at fork time.
    for name, r in refs.items():
        r.value()
        r.tryget() and r.put()
        if isinstance(r, PercpuRef):
            for op in (r.switch_to_atomic, r.switch_to_percpu, r.resurrect):
                try:
                    op()
                except RuntimeError:
                    pass  # not allowed in the state the fork caught it in
            r.is_zero()
    # New references through a whole life each.
    for cls in (AtomicRef, BigRef, PercpuRef):
        n = cls()
        n.get()
        n.kill()
        assert n.put() is True and n.released and n.value() == 0
    _core.synchronize()


workers = [switching, cycling, replacing]
# Under ASan a child forked while the team creates threads can hang in
# libasan itself (see test_fork_while_native_threads_are_busy).
if not os.environ.get("PERCPU_SANITIZED"):
    workers.append(teaming)
threads = [threading.Thread(target=guarded(f)) for f in workers]
for t in threads:
    t.start()
results = []
for i in range(FORKS):
    time.sleep(0.005)
    pid = os.fork()
    if pid == 0:
        try:
            child_refs()
        except BaseException:
            import traceback; traceback.print_exc()
            os._exit(1)
        os._exit(0)
    results.append(wait_child(pid))
    if results[-1] != 0:
        break  # a deadlock costs the whole child timeout
stop.set()
for t in threads:
    t.join()
assert not errors, errors
assert results == [0] * FORKS, results
print("ok")
"""


@pytest.mark.parametrize("no_rseq", ["0", "1"], ids=["rseq", "fallback"])
def test_fork_while_references_change(no_rseq: str) -> None:
    # Threads switch, kill, resurrect, release and reinit references, make
    # and drop new ones, and a native team gets and puts, while the main
    # thread forks again and again. A child forked while a thread held a
    # reference's switch lock (inside a grace period, say) would wait on it
    # forever: each child must finish within its timeout.
    child_timeout = "30" if os.environ.get("PERCPU_SANITIZED") else "5"
    code = PRELUDE + "FORKS = 40\n" + REFS_BUSY
    out = run_python(code, {"PERCPU_NO_RSEQ": no_rseq, "CHILD_TIMEOUT": child_timeout}, timeout=400)
    assert out.strip() == "ok"
