"""The C stress test of percpu.h (tests/c/stress.c) under ThreadSanitizer.

Runs the counters' fallback paths, the thread registry (created and forked
through the library's own pc_registry_create() and atfork handlers) and its
grace period, the slot bound's raises against readers, and the native team with TSAN_OPTIONS=halt_on_error=1: a race report, a lost
update or a reader that sees a retired object fails the test. The rseq
critical sections are compiled out (-DPERCPU_NO_RSEQ_ASM): TSan cannot model
them (see stress.c).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# C alone: no Python version can change the result, so tox runs it once.
pytestmark = pytest.mark.c_only

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "c" / "stress.c"
HEADER_DIR = ROOT / "pyx" / "include"


def _tsan_env() -> dict[str, str]:
    env = dict(os.environ)
    # Under tools/sanitize.sh the suite runs with ASan preloaded; a TSan
    # program cannot start with another sanitizer's runtime in it.
    for name in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PERCPU_NO_RSEQ"):
        env.pop(name, None)
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66:second_deadlock_stack=1"
    return env


@pytest.fixture(scope="module")
def stress(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the TSan stress test needs gcc with libtsan")
    env = _tsan_env()
    lib = subprocess.run([gcc, "-print-file-name=libtsan.so"], capture_output=True, text=True,
                         env=env).stdout.strip()
    if not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip("gcc has no libtsan (install the libtsan package for this gcc)")
    exe = tmp_path_factory.mktemp("tsan") / "stress"
    cmd = [gcc, "-O1", "-g", "-fsanitize=thread", "-fno-omit-frame-pointer", "-Wall", "-Wextra",
           "-Wno-unused-function", "-Wno-tsan", "-Werror", "-DPERCPU_NO_RSEQ_ASM",
           f"-I{HEADER_DIR}", "-o", str(exe), str(SOURCE), "-pthread", "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"cannot build the stress test:\n{proc.stderr}"
    return exe


def _run(exe: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=_tsan_env(),
                          timeout=timeout)


def _rseq_ids_available(exe: Path) -> bool:
    out = _run(exe, "--rseq-ids", "source").stderr
    return "cpu source rseq" in out or "cpu source mm_cid" in out


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="fallback-all"),
        pytest.param(("init",), id="fallback-init-race"),
        pytest.param(("--rseq-ids", "counters", "perthread", "grace"), id="rseq-ids"),
    ],
)
def test_stress_is_clean_under_tsan(stress: Path, args: tuple[str, ...]) -> None:
    proc = _run(stress, *args)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-6000:]}"
    assert "ThreadSanitizer" not in proc.stderr
    assert proc.stderr.rstrip().endswith(": ok")
    if not args:
        # Every phase ran and reported its exact total.
        for name in ("atomic", "locked", "percpu", "striped", "approx", "perthread"):
            assert f"{name} counter: 159976 " in proc.stderr
        assert "grace (fences): 2000 swaps" in proc.stderr
        # The slot bound was raised by racing writers to every id, with
        # readers and the allocator's zeroing checking its ordering.
        assert "bound: raised to 64 by 3 writers" in proc.stderr
        # The library's fork handlers (percpu/registry_init.h) ran 20 times
        # while other threads held the tracked locks, and no child hung.
        assert "fork: 20 children" in proc.stderr


def test_first_use_race_on_rseq_offset(stress: Path) -> None:
    if not _rseq_ids_available(stress):
        pytest.skip("glibc did not register rseq here: nothing to race on")
    for _ in range(3):
        proc = _run(stress, "--rseq-ids", "init")
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-6000:]}"


def test_approx_without_rseq_asm_terminates(stress: Path) -> None:
    if not _rseq_ids_available(stress):
        pytest.skip("glibc did not register rseq here: the approx fallback is taken")
    proc = _run(stress, "--rseq-ids", "approx", timeout=20)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-6000:]}"
