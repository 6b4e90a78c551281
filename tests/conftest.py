from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import traceback
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
