from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest


def run_python(code: str, env_extra: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter (with extra environment) and return stdout;
    fails the test with the child's stderr when it exits non-zero."""
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"child exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def run_pytest(args: list[str], env_extra: dict[str, str]) -> None:
    """Run pytest on ``args`` in a fresh interpreter with extra environment
    (the percpu package importable from where this one comes from). Fails
    with its output unless every selected test passed and none was skipped;
    when every failure there was inconclusive (a canary that saw no
    interleaving), this test fails as inconclusive too."""
    import percpu

    pkg_root = str(Path(percpu.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))
    env["COLUMNS"] = "10000"  # whole failure messages in the summary
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode == 1:
        failed = re.findall(r"^FAILED (\S+)(.*)$", proc.stdout, re.M)
        if failed and all("Failed: inconclusive:" in why for _, why in failed):
            pytest.fail(f"inconclusive: in the subprocess, {', '.join(t for t, _ in failed)}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout


def run_forked(fn: Callable[[], object], timeout: float = 60) -> None:
    """Run ``fn`` in a forked child and fail the test if it raises, dies of a
    signal or is still running after ``timeout`` seconds: a crash (or a hang)
    fails this one test, not the run."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(rfd)
            fn()
        except BaseException:
            os.write(wfd, traceback.format_exc()[-8000:].encode(errors="replace"))
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        ready = select.select([rfd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(rfd)
            pytest.fail(f"the child was still running after {timeout} s (a hang)")
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    output = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        pytest.fail(f"the child died of {signal.Signals(os.WTERMSIG(status)).name}")
    if os.WEXITSTATUS(status) != 0:
        pytest.fail(f"the child failed:\n{output}")
