"""What an installed percpu must carry: one version, every header, .pxd files
that a user's Cython module can cimport and build against.

`tox -e wheel` runs these against the repaired wheel installed in a fresh
venv (the Cython build in a second step, once a compiler is allowed)."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

import percpu

from .conftest import run_python

CHECKOUT = Path(__file__).resolve().parent.parent


def test_version_has_one_source() -> None:
    """The installed distribution's version is the package's __version__."""
    assert importlib.metadata.version("percpu") == percpu.__version__


def test_every_header_is_installed() -> None:
    """percpu.h includes the headers under percpu/: all of them must be shipped."""
    source = CHECKOUT / "pyx" / "include"
    assert source.is_dir(), f"tests run from a checkout or an sdist; {source} is missing"
    wanted = {str(h.relative_to(source)) for h in source.rglob("*.h")}
    assert "percpu.h" in wanted
    include = Path(percpu.get_include())
    installed = {str(h.relative_to(include)) for h in include.rglob("*.h")}
    assert wanted <= installed


def test_pxd_files_are_installed() -> None:
    here = Path(percpu.__file__).parent
    for name in ("counters.pxd", "refs.pxd", "cpercpu.pxd", "_counters.pxd", "_refs.pxd",
                 "_alloc.pxd"):
        assert (here / name).is_file(), name


USER_MODULE = """\
# cython: language_level=3
from libc.stdint cimport int64_t
from percpu.counters cimport PerCPUCounter, pc_percpu_counter_add
from percpu.refs cimport PercpuRef, percpuref_get, percpuref_put
from percpu.cpercpu cimport pc_current_cpu, pc_nr_cpus
from percpu._alloc cimport PerCPUPool


def count(PerCPUCounter c, long n):
    cdef long i
    with nogil:
        for i in range(n):
            pc_percpu_counter_add(c.c, 1)


def hold_and_drop(PercpuRef ref, long n):
    cdef long i
    cdef int failures = 0
    with nogil:
        for i in range(n):
            failures += percpuref_get(&ref.c) != 0
            failures += percpuref_put(&ref.c) != 0
    return failures


def cpu_in_range():
    cdef int cpu
    with nogil:
        cpu = pc_current_cpu()
    return 0 <= cpu < pc_nr_cpus()


def pool_unit(PerCPUPool pool):
    return pool.c.unit_size
"""


def test_a_cython_module_builds_against_the_installed_package(tmp_path: Path) -> None:
    """cimport from every public .pxd, compiled with get_include() alone, then run."""
    pytest.importorskip("Cython")
    src = tmp_path / "user_mod.pyx"
    src.write_text(USER_MODULE)
    out = run_python(
        f"""
        import os, sys, percpu
        from Cython.Build import cythonize
        from setuptools import Extension
        from setuptools.dist import Distribution
        # What a user writes: the .pxd files are found on sys.path, the
        # headers through get_include() alone.
        ext = Extension("user_mod", [{str(src)!r}], include_dirs=[percpu.get_include()])
        dist = Distribution({{"ext_modules": cythonize([ext], quiet=True)}})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = cmd.build_temp = {str(tmp_path)!r}
        cmd.ensure_finalized()
        cmd.run()
        sys.path.insert(0, {str(tmp_path)!r})
        import user_mod
        c = percpu.Counter()
        user_mod.count(c, 100_000)
        released = []
        ref = percpu.PercpuRef(on_release=lambda: released.append(1))
        failures = user_mod.hold_and_drop(ref, 100_000)
        ref.kill()
        pool = percpu.PerCPUPool()
        print(c.value(), failures, released, user_mod.cpu_in_range(),
              user_mod.pool_unit(pool) == pool.unit_size)
        """
    )
    assert out.split() == ["100000", "0", "[1]", "True", "True"]
