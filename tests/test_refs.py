"""Reference counts: semantics of every strategy in REFS, misuse, and the
release-exactly-once guarantee under native threads, on the rseq path and
(in a subprocess) on the PERCPU_NO_RSEQ fallback path."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import percpu
from percpu import REFS, AtomicRef, BigRef, PercpuRef
from percpu import _lab, _refs
from percpu._alloc import PerCPUPool

from .conftest import run_python

KINDS = sorted(REFS)
NO_RSEQ = os.environ.get("PERCPU_NO_RSEQ", "") not in ("", "0")
Ref = AtomicRef | BigRef | PercpuRef


class Calls:
    """A release callback that records each call."""

    def __init__(self, log: list[str] | None = None, name: str = "release") -> None:
        self.n = 0
        self.threads: list[int] = []
        self.log = log
        self.name = name

    def __call__(self) -> None:
        self.n += 1
        self.threads.append(threading.get_ident())
        if self.log is not None:
            self.log.append(self.name)


def make(kind: str, cb: Callable[[], object] | None = None) -> Ref:
    return REFS[kind](cb)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------------------
# Registry and construction


def test_refs_registry_and_reexports() -> None:
    assert REFS == {"atomic": AtomicRef, "bigref": BigRef, "percpu": PercpuRef}
    assert percpu.REFS is REFS
    for name in ("AtomicRef", "BigRef", "PercpuRef", "REFS"):
        assert name in percpu.__all__


def test_non_callable_on_release_is_type_error(kind: str) -> None:
    with pytest.raises(TypeError):
        REFS[kind](42)  # type: ignore[arg-type]


def test_bad_pool_is_type_error() -> None:
    with pytest.raises(TypeError):
        BigRef(pool=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PercpuRef(pool="pool")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AtomicRef(pool=None)  # type: ignore[call-arg]


def test_slots_come_from_the_given_pool() -> None:
    pool = PerCPUPool()
    base = pool.stats()["objects"]
    refs: list[BigRef | PercpuRef] = [BigRef(pool=pool), PercpuRef(pool=pool)]
    assert pool.stats()["objects"] == base + 2
    for r in refs:
        r.get()
        r.kill()
        assert r.value() == 1
        assert r.put() is True
    del r
    refs.clear()
    assert pool.stats()["objects"] == base


def test_starts_with_one_reference(kind: str) -> None:
    cb = Calls()
    r = make(kind, cb)
    assert r.value() == 1
    assert not r.released and not r.killed
    r.get()
    assert r.tryget()
    assert r.value() == 3
    assert r.put() is False
    assert r.put() is False
    assert r.value() == 1
    assert cb.n == 0


def test_without_callback(kind: str) -> None:
    r = make(kind)
    r.kill()
    assert r.released
    assert r.wait_released(0)


# ---------------------------------------------------------------------------
# Release


def test_kill_releases_exactly_once(kind: str) -> None:
    cb = Calls()
    r = make(kind, cb)
    r.kill()
    assert cb.n == 1
    assert r.released and r.killed
    assert r.value() == 0
    assert not r.tryget()
    assert r.wait_released(0)
    assert cb.n == 1


def test_last_put_releases(kind: str) -> None:
    cb = Calls()
    r = make(kind, cb)
    for _ in range(3):
        r.get()
    r.kill()
    assert not r.released and cb.n == 0
    assert r.value() == 3
    assert [r.put(), r.put(), r.put()] == [False, False, True]
    assert cb.n == 1 and r.released
    assert not r.tryget()


def test_misuse_raises_and_does_not_release_twice(kind: str) -> None:
    cb = Calls()
    r = make(kind, cb)
    r.get()
    r.kill()
    with pytest.raises(RuntimeError):
        r.kill()
    assert r.put() is True
    with pytest.raises(RuntimeError):
        r.put()
    with pytest.raises(RuntimeError):
        r.get()
    with pytest.raises(RuntimeError):
        r.kill()
    assert not r.tryget()
    assert r.value() == 0
    assert cb.n == 1


def test_extra_put_in_shared_mode_is_detected(kind: str) -> None:
    cb = Calls()
    r = make(kind, cb)
    r.kill()  # shared mode, count 0, released
    with pytest.raises(RuntimeError):
        r.put()
    assert r.value() == 0  # did not wrap
    assert cb.n == 1


def test_extra_put_in_percpu_mode_is_caught_by_the_fold() -> None:
    for cls in (BigRef, PercpuRef):
        cb = Calls()
        r = cls(cb)
        r.put()  # drops the initial reference behind kill's back
        with pytest.raises(RuntimeError, match="more put"):
            r.kill()
        assert r.released and cb.n == 1
        assert r.value() == 0
        assert not r.tryget()


def test_release_callback_exception_is_unraisable(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))

    def boom() -> None:
        raise ValueError("boom")

    r = make(kind, boom)
    r.kill()
    assert r.released and r.wait_released(0)
    assert len(seen) == 1 and isinstance(seen[0], ValueError)


def test_wait_released(kind: str) -> None:
    r = make(kind, Calls())
    assert r.wait_released(0) is False
    assert r.wait_released(0.01) is False
    with pytest.raises(ValueError):
        r.wait_released(math.nan)
    with pytest.raises(TypeError):
        r.wait_released("soon")  # type: ignore[arg-type]
    r.get()
    killer = threading.Thread(target=r.kill)
    killer.start()
    killer.join()
    putter = threading.Thread(target=r.put)
    putter.start()
    assert r.wait_released(None) is True
    putter.join()
    assert r.released


# ---------------------------------------------------------------------------
# BigRef / PercpuRef specifics


def test_bigref_is_fast_until_kill() -> None:
    r = BigRef()
    assert r.is_fast()
    r.get()
    r.kill()
    assert not r.is_fast()
    assert r.value() == 1
    assert r.put() is True


def test_percpu_value_exact_in_both_modes() -> None:
    r = PercpuRef()
    for _ in range(5):
        r.get()
    assert r.is_percpu() and r.value() == 6
    r.switch_to_atomic()
    assert not r.is_percpu() and r.value() == 6
    r.switch_to_atomic()  # already shared: nothing to do
    r.put()
    r.put()
    assert r.value() == 4
    r.switch_to_percpu()
    assert r.is_percpu() and r.value() == 4
    r.get()
    assert r.value() == 5
    r.kill()
    assert r.value() == 4
    for _ in range(3):
        assert r.put() is False
    assert r.put() is True


def test_percpu_kill_and_confirm_order() -> None:
    log: list[str] = []
    r = PercpuRef(Calls(log))
    r.kill_and_confirm(Calls(log, "confirm"))
    assert log == ["confirm", "release"]

    log.clear()
    held = PercpuRef(Calls(log))
    held.get()
    held.kill_and_confirm(Calls(log, "confirm"))
    assert log == ["confirm"]
    assert held.put() is True
    assert log == ["confirm", "release"]

    with pytest.raises(TypeError):
        PercpuRef().kill_and_confirm(None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        r.kill_and_confirm(Calls())


def test_percpu_tryget_live() -> None:
    r = PercpuRef()
    assert r.tryget_live()
    r.switch_to_atomic()
    assert r.tryget_live()  # shared but live
    assert r.value() == 3
    assert [r.put(), r.put(), r.put()] == [False, False, True]
    assert r.tryget_live() is False  # released without a kill
    r2 = PercpuRef()
    r2.get()
    r2.kill()
    assert r2.tryget_live() is False  # dead, though a reference is held
    assert r2.tryget() is True  # plain tryget: still above zero
    assert r2.value() == 2


def test_percpu_is_zero() -> None:
    r = PercpuRef()
    assert not r.is_zero()
    r.switch_to_atomic()
    assert not r.is_zero()
    r.kill()
    assert r.is_zero() and r.released


def test_percpu_switch_to_percpu_only_while_live() -> None:
    r = PercpuRef()
    r.get()
    r.kill()
    with pytest.raises(RuntimeError):
        r.switch_to_percpu()
    r.put()
    with pytest.raises(RuntimeError):
        r.switch_to_percpu()
    with pytest.raises(RuntimeError):
        r.switch_to_atomic()


def test_percpu_resurrect_cycles_keep_counts_exact() -> None:
    cb = Calls()
    r = PercpuRef(cb)
    with pytest.raises(RuntimeError):
        r.resurrect()  # live
    r.get()
    for i in range(10):
        r.kill()
        assert not r.tryget_live() and not r.is_percpu()
        assert r.value() == 1 + i
        r.resurrect()
        assert r.is_percpu() and r.tryget_live() and not r.killed
        assert r.value() == 3 + i  # the initial one back, plus the tryget_live
    assert r.value() == 12
    with pytest.raises(RuntimeError):
        r.resurrect()
    r.kill()
    for _ in range(10):
        assert r.put() is False
    assert r.put() is True
    assert cb.n == 1
    with pytest.raises(RuntimeError):
        r.resurrect()  # released


def test_percpu_reinit_cycles() -> None:
    cb = Calls()
    r = PercpuRef(cb)
    with pytest.raises(RuntimeError):
        r.reinit()  # live
    for i in range(5):
        r.get()
        r.kill()
        with pytest.raises(RuntimeError):
            r.reinit()  # killed, not released
        assert r.put() is True
        assert cb.n == i + 1
        r.reinit()
        assert not r.released and not r.killed and r.is_percpu()
        assert r.value() == 1 and r.tryget_live()
        assert r.put() is False
    r.kill()
    assert cb.n == 6


# ---------------------------------------------------------------------------
# Native threads


def check_stress_kill(kind: str, threads: int, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    ops = 1500
    for _ in range(rounds):
        kill_at = rng.randrange(ops + ops // 10)  # sometimes after the run: the controller kills
        res = _lab._stress_kill(kind, threads, ops, kill_at)
        assert res["releases"] == 1, res
        assert res["bad"] == 0, res
        assert res["kill_rc"] in (0, 1), res
        assert res["released"] and res["is_zero"] and res["value"] == 0, res
        assert res["got"] + res["refused"] == threads * ops, res


@pytest.mark.parametrize("threads", [2, 8])
def test_threads_release_exactly_once_under_kill(kind: str, threads: int) -> None:
    check_stress_kill(kind, threads, rounds=200 if threads == 2 else 80, seed=threads)


@pytest.mark.parametrize("threads", [2, 8])
def test_threads_counts_exact(kind: str, threads: int) -> None:
    keep = 3
    res = _lab._stress_exact(kind, threads, 60000, keep, flip_every=4)
    kept = threads * keep
    assert res["bad"] == 0, res
    assert res["value_before"] == 1 + kept, res
    assert res["value_killed"] == kept, res
    assert res["kill_rc"] == 0, res
    assert res["last_put_rc"] == 1 and res["early_releases"] == 0, res
    assert res["put_errors"] == 0 and res["releases"] == 1 and res["released"], res
    if kind == "percpu":
        assert res["flips"] == 60000 // 4, res


def test_threads_python_release_runs_on_a_native_thread(kind: str) -> None:
    cb = Calls()
    r = make(kind, cb)
    threads = 4
    for _ in range(threads):
        r.get()
    r.kill()
    res = _lab._team_refops(r, threads, 1, gets=0, puts=1)
    assert res == {"released": 1, "errors": 0}
    assert cb.n == 1 and r.released
    assert cb.threads[0] != threading.get_ident()


def test_threads_python_callback_in_stress(kind: str) -> None:
    cb = Calls()
    for i in range(20):
        res = _lab._stress_kill(kind, 4, 500, 250, py_callback=cb)
        assert res["releases"] == 1 and res["bad"] == 0, res
        assert cb.n == i + 1


def test_threads_balanced_getput_keeps_value(kind: str) -> None:
    r = make(kind)
    res = _lab._team_refops(r, 4, 5000, gets=2, puts=2)
    assert res == {"released": 0, "errors": 0}
    assert r.value() == 1


def test_helpers_validate_arguments() -> None:
    with pytest.raises(ValueError):
        _lab._stress_kill("nope", 1, 10, 5)
    with pytest.raises(ValueError):
        _lab._stress_kill("atomic", 0, 10, 5)
    with pytest.raises(ValueError):
        _lab._stress_exact("bigref", 1, 10, -1)


# ---------------------------------------------------------------------------
# The fallback path (no rseq): the same concurrency tests in a subprocess


def _no_rseq_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PERCPU_NO_RSEQ"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(percpu.__file__).resolve().parent.parent)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


@pytest.mark.skipif(NO_RSEQ, reason="already the fallback run")
def test_fallback_features_in_subprocess() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import json, percpu; print(json.dumps(percpu.features()))"],
        env=_no_rseq_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    feats: dict[str, Any] = json.loads(out.stdout)
    assert feats["rseq"] is False
    assert feats["cpu_source"] not in ("rseq", "mm_cid")


@pytest.mark.skipif(NO_RSEQ, reason="already the fallback run")
def test_fallback_concurrency_in_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "threads"],
        env=_no_rseq_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout


@pytest.mark.skipif(not NO_RSEQ, reason="runs in the PERCPU_NO_RSEQ=1 subprocess")
def test_threads_fallback_is_in_force() -> None:
    # Selected by "-k threads" in the subprocess: proves the run above used
    # the fallback path.
    assert percpu.features()["rseq"] is False


SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
/* A kernel with rseq but without MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ
 * (4.18-5.9): the RSEQ commands fail with EINVAL. */
long syscall(long n, ...) {
    static long (*real)(long, ...);
    va_list ap;
    long a[6];
    int i;
    va_start(ap, n);
    for (i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (n == __NR_membarrier && (a[0] == (1 << 8) || a[0] == (1 << 7))) {
        errno = EINVAL;
        return -1;
    }
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""


def test_no_rseq_membarrier_means_no_rseq_refs(tmp_path: Path) -> None:
    """With rseq but no RSEQ membarrier the grace period cannot abort a
    critical section, so references must use read-side sections (counters
    keep rseq) and stay exact."""
    import shutil

    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("a C compiler is needed to build the membarrier shim")
    src = tmp_path / "shim.c"
    src.write_text(SHIM_C)
    lib = tmp_path / "shim.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", str(src), "-o", str(lib), "-ldl"], check=True)
    if _refs.fast_path() != "rseq":
        pytest.skip(f"rseq refs are not live on this machine ({percpu.features()}): nothing to take away")
    out = run_python(
        """
        import percpu
        from percpu import _lab, _refs
        f = percpu.features()
        assert f["rseq"] is True and f["membarrier"] == "expedited", f
        assert _refs.fast_path() == "sections" and percpu.refs.fast_path() == "sections"
        for kind in ("bigref", "percpu"):
            res = _lab._stress_exact(kind, 4, 20000, 3, flip_every=4)
            assert res["bad"] == 0 and res["releases"] == 1 and res["value_killed"] == 12, res
        print("ok")
        """,
        # After any preloaded runtime (a sanitizer's must come first).
        {"LD_PRELOAD": f"{os.environ.get('LD_PRELOAD', '')} {lib}".strip()},
    )
    assert out.strip() == "ok"
