"""The Extension list: pyx/<name>.pyx -> percpu._<name>.

PERCPU_DEBUG=1 builds with bounds checks on and -O0 -g, and defines
PERCPU_DEBUG_HANDLES (the pool refuses stale handles: pyx/include/percpu/pool.h);
PERCPU_SANITIZE=address,undefined (or thread) adds the sanitizers;
PERCPU_BUILD_ONLY=alloc,core builds only the modules named; PERCPU_MUTANTS=1
compiles in the known-bad variants of pyx/include/percpu/mutant.h, chosen at
run time by PERCPU_MUTANT=<name> (tools/mutants.py).
"""
import os
import shutil
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
MODULES = ["core", "alloc", "counters", "refs", "lab", "workloads"]
DEBUG = os.environ.get("PERCPU_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("PERCPU_SANITIZE", "")
MUTANTS = os.environ.get("PERCPU_MUTANTS", "") not in ("", "0")
ONLY = [m.strip() for m in os.environ.get("PERCPU_BUILD_ONLY", "").split(",") if m.strip()]
unknown = sorted(set(ONLY) - set(MODULES))
if unknown:
    raise SystemExit(f"PERCPU_BUILD_ONLY: unknown module(s) {', '.join(unknown)}; "
                     f"valid: {', '.join(MODULES)}")

# -O1 under the sanitizers, as their documentation advises: fast enough to
# run the suite, and the 135,000 lines of generated C compile faster (the
# sanitizer build on 2 cores: 52 s -> 41 s).
cflags = ["-O0", "-g"] if DEBUG else ["-O1"] if SANITIZE else ["-O2"]
ldflags = []
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEBUG:
    macros.append(("PERCPU_DEBUG_HANDLES", "1"))
if MUTANTS:
    macros.append(("PERCPU_MUTANTS", "1"))
if SANITIZE:
    cflags += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g"]
    ldflags += [f"-fsanitize={SANITIZE}"]

directives = {"boundscheck": DEBUG, "wraparound": DEBUG, "initializedcheck": DEBUG}


class build_py_with_header(build_py):
    """Ships pyx/include/ (percpu.h and every header it includes) inside the
    package, as percpu/include/, for users who cimport."""

    def run(self):
        super().run()
        dest = Path(self.build_lib) / "percpu" / "include"
        # From scratch: a header renamed or removed in the tree must not
        # linger in a reused build directory, where an #include could find it.
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(HERE / "pyx" / "include", dest)


def render_templates():
    """pyx/<name>.pyx.in (Cython's Tempita) -> pyx/<name>.pyx, when newer."""
    from Cython import Tempita

    for template in (HERE / "pyx").glob("*.pyx.in"):
        target = template.with_suffix("")
        if target.exists() and target.stat().st_mtime >= template.stat().st_mtime:
            continue
        text = Tempita.Template(template.read_text(), name=str(template)).substitute()
        target.write_text(text)


render_templates()

# Every module includes the headers and may cimport any .pxd: a change to one
# must rebuild the C of all (setuptools compares these with each extension).
DEPENDS = sorted(str(p) for p in [*(HERE / "pyx" / "include").rglob("*.h"),
                                   *(HERE / "src" / "percpu").glob("*.pxd")])

extensions = [
    Extension(
        f"percpu._{name}",
        [f"pyx/{name}.pyx"],
        depends=DEPENDS,
        include_dirs=["pyx/include", numpy.get_include()],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=macros,
    )
    for name in MODULES
    if (HERE / "pyx" / f"{name}.pyx").exists() and (not ONLY or name in ONLY)
]

# Cython tracks the .pxd files a module cimports, but finds a module's own
# declarations by file name (pyx/<name>.pxd), while they live beside the
# package as src/percpu/_<name>.pxd (where users cimport them from): drop the
# generated C when that file is newer, so that cythonize writes it again.
for name in MODULES:
    pxd, c_file = HERE / "src" / "percpu" / f"_{name}.pxd", HERE / "pyx" / f"{name}.c"
    if pxd.exists() and c_file.exists() and pxd.stat().st_mtime > c_file.stat().st_mtime:
        c_file.unlink()

# pyx/alloc.c is generated from numpy's own .pxd, which differs between numpy
# releases (a C file made against numpy 2.4 does not compile against 2.2's
# headers), while cythonize only compares modification times: one source
# tree built by several environments (tox's) regenerates it whenever the
# numpy at hand is not the one it was made with.
NUMPY_STAMP = HERE / "pyx" / ".alloc.c.numpy"
if not NUMPY_STAMP.exists() or NUMPY_STAMP.read_text().strip() != numpy.__version__:
    (HERE / "pyx" / "alloc.c").unlink(missing_ok=True)
NUMPY_STAMP.write_text(numpy.__version__ + "\n")

# Cython and the C compiler run one process per CPU by default (a wheel
# build on 2 cores: 40 s -> 23 s); PERCPU_BUILD_JOBS=1 builds serially.
JOBS = int(os.environ.get("PERCPU_BUILD_JOBS", "0")) or os.cpu_count() or 1

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src", "pyx/include"],
        compiler_directives=directives,
        nthreads=JOBS if JOBS > 1 else 0,
    ),
    cmdclass={"build_py": build_py_with_header},
    options={"build_ext": {"parallel": JOBS}},
)
