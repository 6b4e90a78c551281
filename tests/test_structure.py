"""The shape of the package: who imports whom.

The core (``percpu._core``, ``_alloc``, ``_counters``, ``_refs`` and the Python
modules over them) never imports the lab (``percpu._lab``, ``percpu._workloads``,
``percpu.workloads``, ``percpu.bench``); the Python modules import each other
without a cycle; ``percpu.report`` reads result files without the compiled
extension.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_python

SRC = Path(__file__).resolve().parent.parent / "src" / "percpu"
PYX = SRC.parent.parent / "pyx"
LAB = {"percpu._lab", "percpu._workloads", "percpu.workloads", "percpu.bench", "percpu.pycounter"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _python_imports() -> dict[str, set[str]]:
    """percpu module -> the percpu modules it imports at module level (names
    imported inside functions are deferred and do not make cycles)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("percpu"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("percpu"):
                # `from percpu import pycounter` imports the module
                # percpu.pycounter; `from percpu import Counter` the package.
                pkg = SRC.parent / node.module.replace(".", "/")
                for a in node.names:
                    sub = pkg / f"{a.name}.py"
                    deps.add(f"{node.module}.{a.name}" if sub.exists() else node.module)
            elif isinstance(node, ast.Try):
                for inner in ast.walk(node):
                    if (isinstance(inner, ast.ImportFrom) and inner.module
                            and inner.module.startswith("percpu")):
                        deps.add(inner.module)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cython_cimports() -> dict[str, set[str]]:
    """percpu._<name> -> the percpu modules its .pyx cimports or imports."""
    graph: dict[str, set[str]] = {}
    for path in PYX.glob("*.pyx*"):
        name = "percpu._" + path.name.split(".")[0]
        deps = set()
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("from", "import", "cimport") and words[1].startswith("percpu"):
                deps.add(words[1])
        deps.discard(name)
        graph[name] = deps
    return graph


def test_python_modules_import_without_a_cycle() -> None:
    graph = _python_imports()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_cycle_check_sees_a_cycle() -> None:
    # The graph builder must see module-level imports both ways, or the test
    # above could never fail: workloads imports pycounter at module level.
    graph = _python_imports()
    assert "percpu.pycounter" in graph["percpu.workloads"]
    assert "percpu.workloads" not in graph["percpu.pycounter"]


def test_the_core_never_imports_the_lab() -> None:
    graph = _cython_cimports()
    for core in ("percpu._core", "percpu._alloc", "percpu._counters", "percpu._refs"):
        assert core in graph, sorted(graph)
        assert not graph[core] & (LAB | {"percpu._team"}), (core, graph[core])
    assert "percpu._team" in graph["percpu._lab"] and "percpu._team" in graph["percpu._workloads"]
    header = (PYX / "include" / "percpu.h").read_text()
    assert "team.h" not in header.split("*/", 1)[1] and "lab.h" not in header.split("*/", 1)[1]


def test_importing_the_library_loads_no_lab_module() -> None:
    out = run_python(
        """
        import json, sys
        import percpu, percpu.counters, percpu.refs, percpu.alloc
        c = percpu.Counter(); c.inc()
        r = percpu.PercpuRef(); r.kill()
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("percpu"))))
        """
    )
    loaded = set(json.loads(out))
    assert "percpu._core" in loaded and "percpu._refs" in loaded
    assert not loaded & LAB, sorted(loaded & LAB)


def test_report_runs_without_the_compiled_extension(tmp_path: Path) -> None:
    # A results file made here, then read in a process where every compiled
    # module fails to import, as on a machine where the extension was never built.
    pytest.importorskip("matplotlib", reason="the report needs matplotlib (the 'report' extra), "
                        "which this env does not install (tox's py311 does)")
    results = tmp_path / "r.json"
    sweep = subprocess.run(
        [sys.executable, "-m", "percpu.bench", "run", "--workloads", "stat", "--strategies",
         "atomic", "percpu", "--threads", "1", "-p", "1", "-n", "2", "-w", "0", "-l", "3",
         "-o", str(results)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    out = run_python(
        f"""
        import sys
        for m in ("percpu._core", "percpu._alloc", "percpu._counters", "percpu._refs",
                  "percpu._lab", "percpu._workloads"):
            sys.modules[m] = None
        from percpu.report.__main__ import main
        code = main([{str(results)!r}, "-o", {str(tmp_path / "out")!r}])
        import percpu
        try:
            percpu.Counter
        except ImportError as exc:
            print("refused:", exc)
        print("exit", code)
        """
    )
    assert "exit 0" in out
    assert "refused: percpu.Counter needs the compiled core" in out
    assert (tmp_path / "out" / "report.md").exists()
