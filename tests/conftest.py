from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
