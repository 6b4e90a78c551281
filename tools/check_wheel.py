"""Build, repair and check the binary wheel the way a user would receive it.

``tox -e wheel`` runs this (``python tools/check_wheel.py [--keep DIR] [PYTEST ARGS]``;
tox keeps the sdist and the repaired wheel in dist/):

1. ``python -m build``: the sdist, then a wheel built from that sdist (so the
   sdist is known to build from a clean tree). Packaging warnings in the log
   (deprecations, MANIFEST.in patterns that match nothing) fail the check.
2. The sdist holds sources only (no generated C) and every header.
3. ``auditwheel repair --strip``: the wheel gets a manylinux tag, or the
   check fails.
4. The repaired wheel holds the extension modules, every header of
   pyx/include/, every .pxd, the stubs, py.typed, the license and
   ``License-Expression: MIT``.
5. A fresh venv installs it and the test extra from binary wheels only,
   with no compiler to be found (PATH has the venv alone, CC is /bin/false),
   and runs a fast subset of the tests against it from the checkout.
6. With the compiler back on PATH, a Cython module cimports the installed
   package and is built with ``percpu.get_include()`` and run.

Everything happens in a temporary folder; ``--keep DIR`` copies the sdist
and the repaired wheel there at the end. Prints the wheel's tag and size.
"""
from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The fast subset: every compiled module, the command line and the packaging
# checks, about 45 s on 2 cores (the whole non-slow suite runs in the py3x envs).
DEFAULT_TESTS = [
    "tests/test_core.py",
    "tests/test_alloc.py",
    "tests/test_counters.py",
    "tests/test_refs.py",
    "tests/test_workload_kernels.py",
    "tests/test_workloads.py",
    "tests/test_structure.py",
    "tests/test_main.py",
    "tests/test_packaging.py",
]
# Tests that build C (a user's Cython module, a C shim): they run in step 6,
# once a compiler is allowed. A new one fails step 5 loudly: list it here.
COMPILING_TESTS = [
    "tests/test_counters.py::test_cython_user_can_cimport",
    "tests/test_packaging.py::test_a_cython_module_builds_against_the_installed_package",
    "tests/test_refs.py::test_no_rseq_membarrier_means_no_rseq_refs",
    "tests/test_refs.py::test_no_membarrier_means_a_fences_only_grace_period",
]
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "clang++", "x86_64-linux-gnu-gcc")
# Packaging warnings: the build must print none of these.
# (A macro such as -DNPY_NO_DEPRECATED_API on a compiler line is not one.)
BAD_LOG = re.compile(
    r"DeprecationWarning|(?<![\w-])deprecat|SetuptoolsWarning|no files found matching"
    r"|no previously-included files|license.*(table|classifier)",
    re.IGNORECASE,
)
COMPILER_WARNING = re.compile(r": warning: ")


class CheckFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n=== check_wheel: {title}", flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
        capture: bool = False) -> str:
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, cwd=cwd, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)
    if capture:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise CheckFailed(f"{cmd[0]} ... exited {proc.returncode}")
    return proc.stdout if capture else ""


def build(work: Path) -> tuple[Path, Path]:
    step("build the sdist, then the wheel from the sdist")
    dist = work / "dist"
    log = run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], capture=True)
    bad = [line for line in log.splitlines() if BAD_LOG.search(line)]
    if bad:
        raise CheckFailed("packaging warnings in the build log:\n  " + "\n  ".join(bad))
    # Compiler warnings are the C code's business (the py3x envs build it
    # too); they are listed, not failed on.
    for line in log.splitlines():
        if COMPILER_WARNING.search(line):
            print(f"check_wheel: note: compiler {line.strip()}")
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return sdist, wheel


def headers() -> list[str]:
    """Every header under pyx/include/, as a path relative to it."""
    include = ROOT / "pyx" / "include"
    return sorted(str(h.relative_to(include)) for h in include.rglob("*.h"))


def extension_modules() -> list[str]:
    """pyx/<name>.pyx (or .pyx.in) builds percpu._<name>."""
    return sorted({p.name.split(".")[0] for p in (ROOT / "pyx").glob("*.pyx*")})


def check_sdist(sdist: Path) -> None:
    step(f"sdist contents: {sdist.name}")
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    generated = [n for n in names if re.fullmatch(r"pyx/[^/]+\.c", n)]
    if generated:
        raise CheckFailed(f"the sdist carries generated C: {generated}")
    wanted = {f"pyx/include/{h}" for h in headers()}
    wanted |= {"LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py"}
    missing = wanted - set(names)
    if missing:
        raise CheckFailed(f"the sdist lacks {sorted(missing)}")
    print(f"{len(names)} files, no generated C, every header")


def repair(wheel: Path, work: Path) -> Path:
    step("auditwheel repair")
    house = work / "wheelhouse"
    run(["auditwheel", "repair", "--strip", "-w", str(house), str(wheel)])
    (repaired,) = house.glob("*.whl")
    if not re.search(r"-manylinux_\d+_\d+_\w+\.whl$", repaired.name):
        raise CheckFailed(f"no manylinux tag: {repaired.name}")
    return repaired


def check_wheel_contents(wheel: Path) -> None:
    step(f"wheel contents: {wheel.name}")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    wanted = {f"percpu/include/{h}" for h in headers()}
    src = ROOT / "src" / "percpu"
    wanted |= {f"percpu/{p.relative_to(src)}" for p in src.rglob("*.pxd")}
    wanted |= {f"percpu/{p.relative_to(src)}" for p in src.rglob("*.pyi")}
    wanted.add("percpu/py.typed")
    missing = sorted(wanted - names)
    if missing:
        raise CheckFailed(f"the wheel lacks {missing}")
    for module in extension_modules():
        if not any(re.fullmatch(rf"percpu/_{module}\.cpython-[^/]+\.so", n) for n in names):
            raise CheckFailed(f"the wheel lacks the extension percpu._{module}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        raise CheckFailed("the wheel lacks the license file")
    if meta.get("License-Expression") != "MIT":
        raise CheckFailed(f"License-Expression is {meta.get('License-Expression')!r}, not 'MIT'")
    if meta.get("Version") != _source_version():
        raise CheckFailed(f"wheel version {meta.get('Version')} != {_source_version()}")
    print(f"{len(names)} files: {len(extension_modules())} extensions, {len(wanted)} "
          "headers/.pxd/.pyi, license, metadata ok")


def _source_version() -> str:
    text = (ROOT / "src" / "percpu" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise CheckFailed("src/percpu/_version.py has no __version__")
    return match.group(1)


def no_compiler_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE", "TOX_"))}
    env.update(PATH=str(venv / "bin"), CC="/bin/false", CXX="/bin/false",
               VIRTUAL_ENV=str(venv), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    return env


def install(wheel: Path, work: Path) -> tuple[Path, dict[str, str]]:
    step("install into a fresh venv with no compiler")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    env = no_compiler_env(venv)
    python = str(venv / "bin" / "python")
    found = [c for c in COMPILERS if shutil.which(c, path=env["PATH"])]
    if found:
        raise CheckFailed(f"a compiler is on the stripped PATH: {found}")
    run([python, "-m", "pip", "install", "-q", "--only-binary", ":all:", f"{wheel}[test]"], env=env)
    where = run([python, "-c", "import percpu, sys; print(percpu.__file__)"], env=env,
                capture=True).strip()
    if not Path(where).is_relative_to(venv):
        raise CheckFailed(f"percpu imports from {where}, not from the venv")
    return venv, env


def test(venv: Path, env: dict[str, str], tests: list[str]) -> None:
    python = str(venv / "bin" / "python")
    step("tests against the installed wheel, no compiler on PATH")
    deselect = [a for t in COMPILING_TESTS for a in ("--deselect", t)]
    # One test process per CPU: the test extra brings pytest-xdist.
    run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "auto", "-m", "not slow",
         *deselect, *tests], env=env)
    step("the tests that build C, against the installed package (compiler allowed)")
    with_cc = dict(env)
    with_cc.pop("CC")
    with_cc.pop("CXX")
    with_cc["PATH"] = os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")])
    run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *COMPILING_TESTS], env=with_cc)


USAGE = "usage: python tools/check_wheel.py [--keep DIR] [PYTEST ARGS ...]"


def main(argv: list[str]) -> int:
    args = list(argv)
    keep = None
    if args[:1] == ["--keep"]:
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        keep = Path(args[1])
        args = args[2:]
    tests = args or DEFAULT_TESTS
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="percpu-wheel-") as tmp:
        work = Path(tmp)
        try:
            sdist, wheel = build(work)
            check_sdist(sdist)
            repaired = repair(wheel, work)
            check_wheel_contents(repaired)
            venv, env = install(repaired, work)
            test(venv, env, tests)
        except CheckFailed as exc:
            print(f"\ncheck_wheel: FAILED: {exc}", file=sys.stderr)
            return 1
        tag = repaired.name[:-len(".whl")].split("-", 2)[2]
        print(f"\ncheck_wheel: ok: {repaired.name}")
        print(f"  tag {tag}, {repaired.stat().st_size:,} bytes "
              f"(sdist {sdist.stat().st_size:,} bytes), {time.monotonic() - start:.0f} s")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for artifact in (sdist, repaired):
                shutil.copy(artifact, keep / artifact.name)
            print(f"  sdist and wheel copied to {keep}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
