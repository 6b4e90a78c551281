"""Every public callable of the package, called with junk, in forked children.

What is called (found, not listed, so that a new callable is covered by
default):

- every callable named in the ``__all__`` of a public module of the package
  (``percpu``, ``percpu.counters``, ``percpu.bench``, ``percpu.report``, ...:
  every module without a leading underscore that has an ``__all__``), every
  class in ``percpu.COUNTERS`` and ``percpu.REFS``;
- every public method (and ``+=``/``-=``) of an instance of each such class,
  made the ordinary way and, for the extension types, also with ``__new__``
  alone (a subclass that never called ``super().__init__()``); the reference
  classes also once released;
- ``percpu.workloads.run`` with junk for each parameter of each registered
  workload.

How: for each parameter, every ``JUNK`` value, positionally and by keyword,
the other parameters valid (``VALID``); then one positional argument too many
and an unknown keyword. The calls of one callable run in one forked child,
which writes the number of the call it is about to make to a pipe first: a
crash or a hang fails that callable's test and names the exact call, and the
parent goes on from the next call in a new child.

What must hold: a call returns, or raises one of ``REFUSALS``; a
``TypeError`` names the parameter (or is Python's own arity/keyword error), a
``ValueError``/``OverflowError`` names it or shows the value; a refused call
changes nothing (the object's observable state and the process's: the
default pool's live objects, the registered workloads); afterwards the object
still answers and is finalised cleanly. The command-line entry points may
also exit with status 0 or 2.
"""
from __future__ import annotations

import ast
import dataclasses
import gc
import importlib
import inspect
import itertools
import json
import math
import os
import pkgutil
import re
import select
import signal
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyperf
import pytest

import percpu
import percpu.bench
import percpu.pycounter
import percpu.report
import percpu.workloads
from percpu.alloc import get_default_pool

# ---------------------------------------------------------------------------
# The junk, and what counts as a clean answer

JUNK: list[Any] = [
    None, True, False,
    0, 1, -1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**100, -(10**100),
    0.5, -2.5, 1e300, math.nan, math.inf, -math.inf, 1j,
    "", "x", "\x00", b"", b"x",
    [], [1], ["x"], (), {}, {"x": 1},
    object(), object, lambda: None, np.int64(3),
]

#: A refused call raises one of these.
REFUSALS: tuple[type[BaseException], ...] = (
    TypeError, ValueError, OverflowError, MemoryError, RuntimeError, percpu.report.ReportError,
)
#: ... but never one of these (they are RuntimeErrors of the interpreter).
NEVER: tuple[type[BaseException], ...] = (RecursionError,)

#: Command-line entry points: they may also end in SystemExit(0 or 2).
CLI_NAMES = {"main", "run_command", "script_main"}

#: How long one call may make no progress before it counts as a hang.
HANG_S = float(os.environ.get("PERCPU_FUZZ_HANG_S", "30"))

#: Where the children work (relative paths a junk argument names land here).
WORKDIR = Path(tempfile.mkdtemp(prefix="percpu-fuzz-"))
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
#: On a free-threaded build, a child collects garbage after this many calls (see judge()).
COLLECT_EVERY_FT = 64
_calls_judged = itertools.count(1)


class Fresh:
    """A valid value made anew for each call (mutable, or an object with state)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _value(v: Any) -> Any:
    return v.make() if isinstance(v, Fresh) else v


def _results_file() -> Path:
    # One small, well-formed percpu.bench result for the report's functions.
    path = WORKDIR / "results.json"
    if not path.exists():
        md = {"name": "stat/atomic/t1", "loops": 10, "unit": "second",
              "percpu_workload": "stat", "percpu_strategy": "atomic", "percpu_threads": 1,
              "percpu_params": "{}", "percpu_version": percpu.__version__,
              "percpu_baseline": "atomic"}
        run = pyperf.Run([1e-6, 1.1e-6], metadata=md, collect_metadata=False)
        pyperf.BenchmarkSuite([pyperf.Benchmark([run])]).dump(str(path))
    return path


def _bench() -> pyperf.Benchmark:
    run = pyperf.Run([1e-6], metadata={"name": "stat/atomic/t1", "loops": 1, "unit": "second"},
                     collect_metadata=False)
    return pyperf.Benchmark([run])


_the_runner: list[pyperf.Runner] = []


def _runner() -> pyperf.Runner:
    # pyperf allows one Runner per process: the calls of a child share one.
    if not _the_runner:
        runner = pyperf.Runner()
        runner.parse_args([])  # an empty command line, not the child's sys.argv
        _the_runner.append(runner)
    return _the_runner[0]


def _workload() -> percpu.workloads.Workload:
    return percpu.workloads.Workload("fuzz", "fuzz", ("a",), {"p": 1})


#: A valid value for each parameter name (per callable overrides: VALID_FOR).
VALID: dict[str, Any] = {
    # counters, pools, references
    "pool": None, "unit_size": None, "capacity": None, "batch": None, "stripes": None,
    "size": 8, "align": 8, "atomic": False, "cpu": 0, "n": 1, "value": 1, "handle": 0,
    "on_release": None, "confirm": lambda: None, "timeout": 0,
    "counter": Fresh(lambda: percpu.AtomicCounter()),
    "threads": 1, "ops": 10, "mixed": False, "pin": False, "seconds": 0.001,
    "thread_ops": (1, 2), "duration_ns": 0, "fairness_seconds": 0.001,
    # workloads
    "name": "stat", "strategy": "atomic", "params": Fresh(dict), "replace": False,
    "description": "fuzz", "strategies": ("atomic",), "minimums": Fresh(dict),
    "unavailable": Fresh(dict), "kernel": None, "baseline": "atomic", "param": "counters",
    "workload": "stat", "inplace": False,
    # bench
    "argv": ["--threads", "0"], "cpus": None, "result": Fresh(lambda: {"seconds": 1.0, "x": 1}),
    "point": Fresh(lambda: percpu.bench.Point("stat", "atomic", 1)), "events": 1,
    "workload_names": ["stat"], "notes": None, "path": "fuzz-out.json", "mode": "new",
    "bench": Fresh(_bench), "runner": Fresh(_runner), "points": Fresh(list), "outputs": (),
    "probe_events": 1, "program_args": None, "prog": None,
    # report
    "files": Fresh(lambda: [percpu.report.load_file(_results_file())]),
    "paths": Fresh(lambda: [str(_results_file())]), "labels": None, "label": None,
    "out": "fuzz-report", "title": None, "key": "percpu_exact",
}

VALID_FOR: dict[Any, dict[str, Any]] = {
    percpu.bench.main: {"argv": ["list"]},
    percpu.report.main: {"argv": ["--help"]},
    percpu.workloads.register: {"workload": Fresh(_workload)},
    percpu.workloads.Workload: {"name": "fuzz", "strategies": ("a",), "params": Fresh(lambda: {"p": 1})},
    percpu.workloads.Workload.check_param: {"key": "p"},
    percpu.bench.plan: {"threads": [1]},
    percpu.bench.Preset: {"name": "fuzz", "processes": 1, "values": 1, "warmups": 0,
                          "min_time": 0.01, "threads": lambda: [1]},
    percpu.report.Point: {"source": "fuzz", "name": "stat/atomic/t1", "values": (1e-6,),
                          "metadata": Fresh(dict)},
    percpu.report.ResultFile: {"path": Path("fuzz.json"), "label": "fuzz"},
    percpu.pycounter.Peer: {"name": "fuzz", "module": "itertools", "make": lambda m: m.count(),
                            "read": lambda c: 0, "method": ("next(c)", lambda c, k: None)},
}


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _small_or_refused(limit: int) -> Callable[[Any, Any], bool]:
    # A number in (limit, 2**40] may be a valid request for that much work.
    def skip(v: Any, subject: Any) -> bool:
        return _positive(v) and limit < v <= 2**40
    return skip


#: Junk that is valid and then costs real time: (parameter, skip(value, subject)).
COSTLY: dict[str, Callable[[Any, Any], bool]] = {
    "ops": _small_or_refused(1000),
    # Seconds a time-bounded run lasts, or nanoseconds.
    "seconds": lambda v, s: _positive(v) and v > 0.01,
    "fairness_seconds": lambda v, s: _positive(v) and v > 0.01,
    "duration_ns": lambda v, s: _positive(v) and v > 10**7,
    "work": _small_or_refused(1000),
    # A positive timeout (or None) on a live reference waits for it.
    "timeout": lambda v, s: (v is None or _positive(v)) and not getattr(s, "released", True),
}
#: The same for one callable: a valid report is drawn (seconds), a valid
#: argument list runs a sweep.
COSTLY_FOR: dict[Any, dict[str, Callable[[Any, Any], bool]]] = {
    percpu.report.write_report: {
        "title": lambda v, s: v is None or isinstance(v, str),
        "out": lambda v, s: isinstance(v, (str, os.PathLike)),
        "labels": lambda v, s: v is None or (isinstance(v, (list, tuple)) and len(v) == 1),
    },
    percpu.bench.run_command: {"argv": lambda v, s: isinstance(v, (list, tuple)) and not v},
    percpu.bench.script_main: {"argv": lambda v, s: isinstance(v, (list, tuple)) and not v},
    percpu.pycounter.main: {"argv": lambda v, s: isinstance(v, (list, tuple)) and not v},
}

# ---------------------------------------------------------------------------
# Signatures


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    positional: bool
    keyword: bool
    default: Any  # inspect.Parameter.empty when required


def _doc_params(fn: Any) -> list[inspect.Parameter] | None:
    # Extension functions without __text_signature__ carry their signature
    # on the first line of the docstring (Cython's embedsignature).
    lines = (getattr(fn, "__doc__", None) or "").splitlines()
    m = re.match(r"^[\w.]+\((.*)\)(\s*->.*)?$", lines[0].strip()) if lines else None
    if m is None:
        return None
    # Cython writes keyword-only parameters as "a=None, b=None, *": close enough
    # for calling (a positional one too many is refused by arity anyway).
    inner = m.group(1).strip()
    if inner.endswith(", *"):
        inner = inner[:-3]
    # C-typed parameters ("PerCPUPool pool=None", "long long ops", "x not None"):
    # the name is the last word before the default.
    items = []
    for item in inner.split(","):
        left, eq, default = item.replace(" not None", "").partition("=")
        words = left.split()
        items.append((words[-1] if words else "") + eq + default)
    inner = ", ".join(items)
    try:
        tree = ast.parse(f"def f({inner}): pass")
    except SyntaxError:
        return None
    fdef = tree.body[0]
    assert isinstance(fdef, ast.FunctionDef)
    args = fdef.args
    out = []
    positional = args.posonlyargs + args.args
    defaults: list[Any] = [inspect.Parameter.empty] * (len(positional) - len(args.defaults))
    for d in args.defaults:
        try:
            defaults.append(ast.literal_eval(d))
        except ValueError:
            defaults.append(inspect.Parameter.empty)
    for a, default in zip(positional, defaults):
        if a.arg != "self":
            out.append(inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    for a, kd in zip(args.kwonlyargs, args.kw_defaults):
        kw_default = ast.literal_eval(kd) if kd is not None else inspect.Parameter.empty
        out.append(inspect.Parameter(a.arg, inspect.Parameter.KEYWORD_ONLY, default=kw_default))
    if args.vararg:
        out.append(inspect.Parameter(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    if args.kwarg:
        out.append(inspect.Parameter(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return out


def signature(fn: Any, drop_self: bool) -> tuple[list[Param], bool, bool]:
    """(params, takes *args, takes **kwargs); fails the collection when unknown."""
    # An extension method's embedded docstring signature comes first: from
    # CPython 3.13, inspect gives a one-argument method without a
    # __text_signature__ the generic "($self, object, /)", which has lost
    # the parameter's name.
    generic = getattr(fn, "__text_signature__", None) in ("($self, object, /)", "($module, object, /)")
    ps = _doc_params(fn) if generic else None
    if ps is None:
        try:
            ps = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            pass
        else:
            if drop_self and ps and ps[0].name == "self":
                ps = ps[1:]
    if ps is None:
        ps = _doc_params(fn)
        if ps is None and isinstance(fn, type) and "__init__" not in vars(fn):
            ps = []  # an extension type that takes no arguments
        if ps is None:
            raise AssertionError(f"cannot find the signature of {fn!r}: give it a docstring "
                                 "signature or a __text_signature__")
    params = []
    varargs = varkw = False
    for p in ps:
        if p.kind is p.VAR_POSITIONAL:
            varargs = True
        elif p.kind is p.VAR_KEYWORD:
            varkw = True
        else:
            params.append(Param(p.name, p.kind is not p.KEYWORD_ONLY,
                                p.kind is not p.POSITIONAL_ONLY, p.default))
    return params, varargs, varkw


# ---------------------------------------------------------------------------
# Discovery


def public_modules() -> list[Any]:
    mods = [percpu]
    for info in pkgutil.walk_packages(percpu.__path__, "percpu."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        mod = importlib.import_module(info.name)
        if hasattr(mod, "__all__"):
            mods.append(mod)
    return mods


def _is_target(obj: Any) -> bool:
    if isinstance(obj, type):
        return not issubclass(obj, BaseException)
    # typing constructs (aliases such as Kernel) are callable but not API
    return callable(obj) and getattr(obj, "__module__", "") != "typing"


#: The methods taking arguments that operators reach.
OPERATORS = ("__iadd__", "__isub__")


def _released_ref(cls: Any) -> Any:
    r = cls()
    r.kill()
    return r


def _pool_with_object(cls: Any) -> tuple[Any, dict[str, Any]]:
    p = cls()
    return p, {"handle": p.alloc(16)}


@dataclasses.dataclass
class Target:
    """One callable: what to call, its parameters, its valid arguments."""

    name: str
    owner: Any  # the object VALID_FOR/COSTLY_FOR know it by
    make: Callable[[], tuple[Callable[..., Any], Any, dict[str, Any]]]  # (callable, subject, context)
    params: list[Param]
    varargs: bool
    varkw: bool
    cli: bool = False


def _states(cls: Any) -> dict[str, Callable[[], tuple[Any, dict[str, Any]]]]:
    states: dict[str, Callable[[], tuple[Any, dict[str, Any]]]] = {}
    if issubclass(cls, (percpu.PerCPUPool, percpu.NaivePool)):
        states["with-object"] = lambda: _pool_with_object(cls)
    elif cls.__module__ == "percpu._refs":
        states["live"] = lambda: (cls(), {})
        states["released"] = lambda: (_released_ref(cls), {})
    else:
        states["made"] = lambda: (construct(cls), {})
    if cls.__module__.startswith("percpu._"):
        # An extension object whose __init__ never ran.
        states["new-only"] = lambda: (cls.__new__(cls), {})
    return states


def construct(cls: Any) -> Any:
    params, _, _ = signature(cls, drop_self=True)
    kwargs = {p.name: valid(cls, p) for p in params if p.default is inspect.Parameter.empty}
    try:
        return cls(**kwargs)
    except TypeError:
        # An abstract class (CounterBase): only __new__ makes one.
        return cls.__new__(cls)


def valid(owner: Any, p: Param, context: dict[str, Any] | None = None) -> Any:
    if context and p.name in context:
        return context[p.name]
    own = VALID_FOR.get(owner, {})
    if p.name in own:
        return _value(own[p.name])
    if p.default is not inspect.Parameter.empty and p.default is not None:
        return p.default
    if p.name in VALID:
        return _value(VALID[p.name])
    if p.default is not inspect.Parameter.empty:
        return p.default
    raise AssertionError(f"no valid value for parameter {p.name!r} of {owner!r}: add one to VALID")


def discover() -> list[Target]:
    seen: set[int] = set()
    targets: list[Target] = []
    found: list[tuple[str, Any]] = []
    for mod in public_modules():
        for name in mod.__all__:
            obj = getattr(mod, name)
            if _is_target(obj):
                # Aliases (Counter) are named after what they are.
                found.append((f"{mod.__name__}.{getattr(obj, '__name__', name)}", obj))
    for reg in (percpu.COUNTERS, percpu.REFS):
        for key, obj in reg.items():
            found.append((f"{obj.__module__}.{obj.__name__}", obj))
    for qual, obj in found:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        cli = qual.rsplit(".", 1)[-1] in CLI_NAMES
        params, va, vk = signature(obj, drop_self=isinstance(obj, type))
        def make_it(o: Any = obj) -> tuple[Any, Any, dict[str, Any]]:
            return o, None, {}

        targets.append(Target(qual, obj, make_it, params, va, vk, cli))
        if not isinstance(obj, type):
            continue
        for state, make_state in _states(obj).items():
            for meth in sorted(dir(obj)):
                if meth.startswith("_") and meth not in OPERATORS:
                    continue
                attr = inspect.getattr_static(obj, meth, None)
                if isinstance(attr, (property, staticmethod, classmethod)) or not callable(getattr(obj, meth)):
                    continue
                if type(attr).__name__ == "getset_descriptor":
                    continue
                mparams, mva, mvk = signature(getattr(obj, meth), drop_self=True)

                def make(make_state: Any = make_state, meth: str = meth) -> tuple[Any, Any, dict[str, Any]]:
                    subject, context = make_state()
                    return getattr(subject, meth), subject, context

                targets.append(Target(f"{qual}.{meth}[{state}]", getattr(obj, meth), make,
                                      mparams, mva, mvk))
    # percpu.workloads.run with each workload's own parameters.
    for wname, w in percpu.workloads.WORKLOADS.items():
        strategy = w.strategies[0]

        def make_run(wname: str = wname, strategy: str = strategy) -> tuple[Any, Any, dict[str, Any]]:
            def run_it(**params: Any) -> Any:
                return percpu.workloads.run(wname, strategy, 1, 10, **params)
            return run_it, None, {}

        wparams = [Param(k, False, True, v) for k, v in w.params.items()]
        targets.append(Target(f"percpu.workloads.run[{wname}]", percpu.workloads.run, make_run,
                              wparams, False, True))
    return targets


TARGETS = discover()

# ---------------------------------------------------------------------------
# The calls


@dataclasses.dataclass(frozen=True)
class Call:
    kind: str   # "pos", "kw", "extra", "unknown"
    param: str | None
    junk: int   # index into JUNK, -1 for none

    def describe(self, target: Target) -> str:
        if self.kind == "extra":
            return f"{target.name}(<valid args>, 'x')  [one positional too many]"
        if self.kind == "unknown":
            return f"{target.name}(<valid args>, fuzz_unknown_keyword=1)"
        how = "positionally" if self.kind == "pos" else "by keyword"
        return f"{target.name}({self.param}={JUNK[self.junk]!r}) [{how}]"


def calls_of(target: Target) -> list[Call]:
    out = []
    for p in target.params:
        for j in range(len(JUNK)):
            if p.positional:
                out.append(Call("pos", p.name, j))
            if p.keyword:
                out.append(Call("kw", p.name, j))
    if not target.varargs:
        out.append(Call("extra", None, -1))
    if not target.varkw:
        out.append(Call("unknown", None, -1))
    return out


def _skip(target: Target, call: Call, subject: Any) -> bool:
    if call.param is None:
        return False
    v = JUNK[call.junk]
    rule = COSTLY_FOR.get(target.owner, {}).get(call.param) or COSTLY.get(call.param)
    return bool(rule and rule(v, subject))


def arguments(target: Target, call: Call, context: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    ps = target.params
    if call.kind == "pos":
        i = next(k for k, p in enumerate(ps) if p.name == call.param)
        args = [valid(target.owner, p, context) for p in ps[:i]] + [JUNK[call.junk]]
        rest = ps[i + 1:]
    elif call.kind == "extra":
        pos = [p for p in ps if p.positional]
        args = [valid(target.owner, p, context) for p in pos] + ["x"]
        rest = [p for p in ps if not p.positional]
    else:
        rest = [p for p in ps if p.name != call.param]
        if call.kind == "kw":
            kwargs[call.param or ""] = JUNK[call.junk]
        else:
            kwargs["fuzz_unknown_keyword"] = 1
    for p in rest:
        if p.default is inspect.Parameter.empty or p.name in context or p.name in VALID_FOR.get(target.owner, {}):
            if not p.keyword:
                args.append(valid(target.owner, p, context))
            else:
                kwargs[p.name] = valid(target.owner, p, context)
    return args, kwargs


# ---------------------------------------------------------------------------
# Checks


QUERIES = ("value", "per_cpu", "approx", "batch", "stripes", "handle", "stats", "released",
           "killed", "is_fast", "is_percpu", "is_zero", "unit_size", "nr_cpus")


def state_of(subject: Any) -> Any:
    """What a refused call must leave as it was."""
    if subject is None:
        return None
    cls = type(subject)
    if any(hasattr(cls, q) for q in QUERIES):
        out = {}
        for q in QUERIES:
            if hasattr(cls, q):
                v = getattr(subject, q)
                v = v() if callable(v) else v
                out[q] = v.tolist() if isinstance(v, np.ndarray) else v
        if hasattr(cls, "pool"):
            out["pool"] = id(subject.pool)
        return out
    if dataclasses.is_dataclass(subject):
        return repr(subject)
    return repr(sorted((k, repr(v)) for k, v in vars(subject).items()))


def world() -> tuple[Any, ...]:
    s = get_default_pool().stats()
    return s["objects"], s["bytes_used"], tuple(percpu.workloads.WORKLOADS)


def _names(exc: BaseException, param: str | None, others: list[str], junk: Any) -> bool:
    """Whether a refusal says what it refuses: the parameter, or (for a value
    error) the value; an error about another argument may name that one."""
    msg = str(exc)
    if param is None or param in msg or any(name in msg for name in others):
        return True
    if isinstance(exc, TypeError):
        # Python's (and Cython's) own wording for a wrong number of
        # arguments or a keyword a function does not take.
        return "argument" in msg and any(w in msg for w in ("positional", "keyword", "takes"))
    if isinstance(exc, (ValueError, OverflowError)):
        # The value itself, or the item of a list or mapping it is about.
        shown = [junk, *(junk if isinstance(junk, (list, tuple, dict)) else ())]
        return any(repr(v) in msg or str(v) in msg for v in shown)
    return True


def judge(target: Target, call: Call) -> str | None:
    """Makes one call; None when it behaved, else what went wrong."""
    # pyperf allows one Runner per process; each CLI call here is a process of its own.
    pyperf.Runner._created.clear()
    fn, subject, context = target.make()
    if _skip(target, call, subject):
        return None
    args, kwargs = arguments(target, call, context)
    before, world_before = state_of(subject), world()
    junk = JUNK[call.junk] if call.junk >= 0 else None
    refused: BaseException | None = None
    try:
        fn(*args, **kwargs)
    except NEVER as exc:
        return f"raised {type(exc).__name__}: {exc}"
    except REFUSALS as exc:
        # Without its traceback: the frames would keep what the call made alive.
        refused = exc.with_traceback(None)
    except SystemExit as exc:
        if not (target.cli and exc.code in (0, 2)):
            return f"raised SystemExit({exc.code!r})"
    except BaseException as exc:
        return f"raised {type(exc).__name__}: {exc}"
    if refused is not None:
        what = f"{type(refused).__name__}: {refused}"
        # An operator's operand has no name the caller ever sees.
        named = None if target.name.split("[")[0].endswith(OPERATORS) else call.param
        if not _names(refused, named, [p.name for p in target.params], junk):
            return f"raised {type(refused).__name__} without naming {call.param!r}: {refused}"
        if state_of(subject) != before:
            return f"refused ({what}) but changed the object"
        if world() != world_before:
            return f"refused ({what}) but changed the default pool or the workloads"
    else:
        state_of(subject)  # still answers
    del fn, subject, args, kwargs
    # Finalise what the call made, inside this call, so that a finaliser's
    # crash names it. A free-threaded build has no young generation: every
    # collection walks the whole heap (40 ms here, 15,000 calls), so there
    # the child collects after every COLLECT_EVERY_FT-th call, and a
    # finaliser's crash names the call that ended that window.
    if not FREE_THREADED or next(_calls_judged) % COLLECT_EVERY_FT == 0:
        gc.collect(0)
    return None



# ---------------------------------------------------------------------------
# The children


def _child(flat: list[tuple[Target, Call]], start: int, wfd: int) -> None:
    os.chdir(WORKDIR)
    # An argv of None means sys.argv: make that a refused one.
    sys.argv = ["percpu-fuzz", "--fuzz-refused-option"]
    for i in range(start, len(flat)):
        os.write(wfd, (json.dumps(["start", i]) + "\n").encode())
        try:
            verdict = judge(*flat[i])
        except BaseException as exc:  # the harness itself (a fixture) failed
            verdict = f"fuzz harness: {type(exc).__name__}: {exc}"
        os.write(wfd, (json.dumps(["end", i, verdict]) + "\n").encode())


def _lines(rfd: int) -> Iterator[list[Any] | None]:
    """The child's messages; None when it made no progress for HANG_S."""
    buf = b""
    while True:
        ready, _, _ = select.select([rfd], [], [], HANG_S)
        if not ready:
            yield None
            return
        chunk = os.read(rfd, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


def run_batch(targets: list[Target]) -> dict[str, list[str]]:
    """Runs every call of ``targets`` in forked children, as few as possible:
    a child that crashes or hangs is replaced by one that goes on from the
    next call. Returns each target's failures."""
    flat = [(t, c) for t in targets for c in calls_of(t)]
    failures: dict[str, list[str]] = {t.name: [] for t in targets}
    start = 0
    while start < len(flat):
        rfd, wfd = os.pipe()
        log = tempfile.TemporaryFile()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(rfd)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                _child(flat, start, wfd)
            finally:
                os._exit(0)
        os.close(wfd)
        current = None
        hung = False
        for msg in _lines(rfd):
            if msg is None:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            if msg[0] == "start":
                current = msg[1]
            else:
                current = None
                if msg[2] is not None:
                    target, call = flat[msg[1]]
                    failures[target.name].append(f"{call.describe(target)}: {msg[2]}")
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
        log.seek(0)
        tail = " | ".join(log.read().decode(errors="replace").strip().splitlines()[-6:])
        log.close()
        if current is None and not hung:
            if status != 0:
                failures[targets[-1].name].append(
                    f"the child exited with {_status(status)} after its calls: {tail}")
            break
        if current is None:  # hung between two calls: cannot happen, but say so
            raise AssertionError(f"a fuzz child hung outside any call: {tail}")
        target, call = flat[current]
        how = "hung" if hung else f"crashed ({_status(status)})"
        failures[target.name].append(f"{call.describe(target)}: {how}; output: {tail}")
        start = current + 1
    return failures


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


# ---------------------------------------------------------------------------
# The tests


def test_discovery_finds_the_api() -> None:
    names = {t.name for t in TARGETS}
    # A few that must be there, from each source of names.
    for expected in ("percpu.PerCPUCounter", "percpu.PerCPUCounter.add[made]",
                     "percpu.PerCPUCounter.__iadd__[new-only]", "percpu.PercpuRef.wait_released[live]",
                     "percpu.PerCPUPool.free[with-object]",
                     "percpu.workloads.run", "percpu.workloads.run[stat]",
                     "percpu.bench.run_command", "percpu.report.write_report"):
        assert expected in names, expected
    for cls in (*percpu.COUNTERS.values(), *percpu.REFS.values()):
        assert any(t.owner is cls for t in TARGETS), cls


#: Targets per forked child: a fork of the test process costs milliseconds.
BATCH = 40
_results: dict[str, list[str]] = {}


def failures_of(index: int) -> list[str]:
    if TARGETS[index].name not in _results:
        first = index - index % BATCH
        _results.update(run_batch(TARGETS[first:first + BATCH]))
    return _results[TARGETS[index].name]


@pytest.mark.parametrize("index", range(len(TARGETS)), ids=[t.name for t in TARGETS])
def test_junk_is_refused_cleanly(index: int) -> None:
    n = len(calls_of(TARGETS[index]))
    assert n > 0
    failures = failures_of(index)
    if failures:
        crashed = sum(": crashed (" in f for f in failures)
        hung = sum(f.endswith("hung") or ": hung;" in f for f in failures)
        shown = "\n  ".join(failures[:40])
        more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
        pytest.fail(f"{len(failures)} of {n} calls misbehaved ({crashed} crashed, {hung} hung, "
                    f"{len(failures) - crashed - hung} raised wrongly):\n  {shown}{more}")
