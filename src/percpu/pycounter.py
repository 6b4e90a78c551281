"""percpu.pycounter: the ``pycounter`` workload, counting from Python.

P Python threads each do K increments through a counter's public Python API
on one shared counter: every percpu strategy (``percpu.COUNTERS``) and the
thread-safe counters Python users pick today, the *peers*, each under its
name prefixed ``peer:`` (``peer:itertools.count``, ``peer:lock+int``,
``peer:cereggii``, ``peer:ft_utils``, ``peer:atomicx``, ``peer:fastcounter``,
``peer:atomics``). A peer that cannot be imported here is listed with the
reason (``not installed``, ...) and skipped, never an error.

Each thread runs the idiom a user writes (``c.inc()``, ``next(c)``,
``with lock: n += 1``; with ``inplace=1``, ``c += 1`` where the counter has
it), the time is taken from the release of a ``threading.Barrier`` to the
last thread's finish, and the final count is checked against ``P * K``: lost
updates are reported (``lost_updates``, ``exact``), not hidden.

``percpu.workloads`` registers it as the workload ``pycounter``, so that
``python -m percpu.bench run --workloads pycounter`` runs it.
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from percpu._checks import check_argv, check_int, check_mapping
from percpu._core import MAX_THREADS
from percpu.counters import COUNTERS

__all__ = [
    "BASELINE",
    "DESCRIPTION",
    "PEERS",
    "PEER_PREFIX",
    "WORKLOAD",
    "Peer",
    "available_strategies",
    "kernel",
    "main",
    "peer_status",
    "run",
    "strategies",
    "unavailable_strategies",
]

WORKLOAD = "pycounter"
DESCRIPTION = (
    "P Python threads doing K increments each through the public Python "
    "API on one shared counter (inplace=1: c += 1), percpu's counters and "
    "the peers that are installed"
)
#: What speedups are measured against: the standard library's counter.
BASELINE = "peer:itertools.count"
PEER_PREFIX = "peer:"

Loop = Callable[[Any, int], None]


# The thread loops. Each is the idiom a user writes, spelled out once per
# idiom, so that every counter pays for the same interpreter work around its
# own call: a local variable, a for loop over range, one statement.

def _loop_inc(c: Any, k: int) -> None:
    for _ in range(k):
        c.inc()


def _loop_iadd(c: Any, k: int) -> None:
    for _ in range(k):
        c += 1


def _loop_next(c: Any, k: int) -> None:
    for _ in range(k):
        next(c)


def _loop_increment(c: Any, k: int) -> None:
    for _ in range(k):
        c.increment()


def _loop_increment_and_get(c: Any, k: int) -> None:
    for _ in range(k):
        c.increment_and_get()


def _loop_incr(c: Any, k: int) -> None:
    for _ in range(k):
        c.incr()


class LockedInt:
    """An int behind a ``threading.Lock``: the textbook thread-safe counter."""

    __slots__ = ("lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0


def _loop_locked(box: LockedInt, k: int) -> None:
    lock = box.lock
    for _ in range(k):
        with lock:
            box.value += 1


@dataclass(frozen=True)
class Peer:
    """A counter from outside percpu, as a user would drive it.

    ``module`` is imported to find out whether the peer is here; ``make``
    builds a counter from the module, ``read`` returns its count after the
    run. ``method`` is the increment idiom, ``inplace`` the ``+=`` one (None
    when the counter has none: it then runs ``method`` for ``inplace=1``).
    """

    name: str
    module: str
    make: Callable[[Any], Any]
    read: Callable[[Any], int]
    method: tuple[str, Loop]
    inplace: tuple[str, Loop] | None = None
    needs: str = ""


def _read_count(c: Any) -> int:
    # next() after the run returns the number of next() calls before it.
    return int(next(c))


def _make_atomics(m: Any) -> Any:
    return m.atomic(width=8, atype=m.INT)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("itertools.count", "itertools", lambda m: m.count(), _read_count,
             ("next(c)", _loop_next)),
        Peer("lock+int", "threading", lambda m: LockedInt(), lambda b: int(b.value),
             ("with lock: n += 1", _loop_locked)),
        Peer("cereggii", "cereggii", lambda m: m.AtomicInt64(), lambda c: int(c.get()),
             ("c.increment_and_get()", _loop_increment_and_get), ("c += 1", _loop_iadd)),
        Peer("ft_utils", "ft_utils.concurrency", lambda m: m.AtomicInt64(),
             lambda c: int(c.get()), ("c.incr()", _loop_incr), ("c += 1", _loop_iadd),
             needs="Python 3.12+"),
        Peer("atomicx", "atomicx", lambda m: m.AtomicInt(), lambda c: int(c.load()),
             ("c.inc()", _loop_inc), ("c += 1", _loop_iadd)),
        Peer("fastcounter", "fastcounter", lambda m: m.FastWriteCounter(),
             lambda c: int(c.value), ("c.increment()", _loop_increment)),
        Peer("atomics", "atomics", _make_atomics, lambda c: int(c.load()),
             ("c.inc()", _loop_inc)),
    )
}

_status: dict[str, str | None] = {}
_modules: dict[str, Any] = {}


def _probe(peer: Peer) -> str | None:
    try:
        module = importlib.import_module(peer.module)
        # A module that imports but cannot build a counter (a wheel for
        # another Python, a missing C library) is as unusable as a missing one.
        peer.make(module)
    except ModuleNotFoundError as exc:
        top = peer.module.partition(".")[0]
        if exc.name is not None and exc.name.partition(".")[0] == top:
            return f"not installed; needs {peer.needs}" if peer.needs else "not installed"
        return f"cannot import: {type(exc).__name__}: {exc}"
    except Exception as exc:  # any failure of a third-party import means "skip"
        return f"cannot use: {type(exc).__name__}: {exc}"
    _modules[peer.name] = module
    return None


def peer_status() -> dict[str, str | None]:
    """Each peer's name -> ``None`` when it runs here, else why not.

    Each peer is probed (imported, one counter built) once per process.
    """
    for name, peer in PEERS.items():
        if name not in _status:
            _status[name] = _probe(peer)
    return {name: _status[name] for name in PEERS}


def strategies() -> tuple[str, ...]:
    """Every strategy of the workload: percpu's counters, then every peer."""
    return tuple(COUNTERS) + tuple(PEER_PREFIX + name for name in PEERS)


def available_strategies() -> tuple[str, ...]:
    """The strategies that can run here."""
    status = peer_status()
    return tuple(COUNTERS) + tuple(PEER_PREFIX + n for n, why in status.items() if why is None)


def unavailable_strategies() -> dict[str, str]:
    """Strategy -> why it cannot run here (the peers that are not installed)."""
    return {PEER_PREFIX + n: why for n, why in peer_status().items() if why is not None}


def _prepare(strategy: str, inplace: bool) -> tuple[Any, Loop, Callable[[Any], int], str]:
    cls = COUNTERS.get(strategy)
    if cls is not None:
        if inplace:
            return cls(), _loop_iadd, lambda c: c.value(), "c += 1"
        return cls(), _loop_inc, lambda c: c.value(), "c.inc()"
    name = strategy[len(PEER_PREFIX):] if strategy.startswith(PEER_PREFIX) else None
    peer = PEERS.get(name) if name is not None else None
    if peer is None:
        raise ValueError(
            f"unknown strategy {strategy!r} for workload {WORKLOAD!r}; "
            f"valid: {', '.join(strategies())}"
        )
    why = peer_status()[peer.name]
    if why is not None:
        raise ValueError(f"strategy {strategy!r} cannot run here: {why}")
    idiom, loop = peer.inplace if inplace and peer.inplace is not None else peer.method
    return peer.make(_modules[peer.name]), loop, peer.read, idiom


def run(strategy: str, threads: int, ops: int, inplace: bool | int = False) -> dict[str, Any]:
    """Run ``threads`` Python threads doing ``ops`` increments each on one
    shared counter of ``strategy``.

    Returns ``seconds`` (barrier release to the last thread's finish),
    ``ops`` (increments asked for, all threads), ``thread_ops`` (each
    thread's), ``threads``, ``expected``,
    ``observed`` (the counter's final count), ``lost_updates`` (expected -
    observed), ``exact`` (bool), ``ns_per_increment`` (seconds / ops) and
    ``idiom`` (the statement each thread ran).

    Raises ``TypeError`` for a threads or ops that is not an int,
    ``ValueError`` for an unknown or unavailable strategy, ``threads``
    outside 1..MAX_THREADS or ``ops`` outside 0..2**40 (``percpu.workloads.MAX_OPS``).
    """
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a str, not {type(strategy).__name__}")
    _check_request(threads, ops)
    return _run(strategy, threads, ops, bool(inplace))


def _check_request(threads: object, ops: object) -> None:
    # percpu.workloads imports this module: its limit is looked up at call time.
    from percpu.workloads import MAX_OPS

    check_int(threads, "threads", 1, MAX_THREADS)
    check_int(ops, "ops", 0, MAX_OPS)


#: A time-bounded run looks at the clock after every this many increments.
TIMED_CHUNK = 256


def _run(strategy: str, threads: int, ops: int, inplace: bool,
         duration: float = 0.0) -> dict[str, Any]:
    # The checked request of run() or of percpu.workloads.run(); duration > 0:
    # every thread stops once that many seconds have passed since the start
    # (ops is then a cap) and thread_ops says how far each got.
    counter, loop, read, idiom = _prepare(strategy, inplace)

    started: list[float] = []
    ends = [0.0] * threads
    done = [ops] * threads
    errors: list[BaseException] = []

    def release() -> None:
        # Runs in the last thread to arrive, before any thread is let go.
        started.append(time.perf_counter())

    barrier = threading.Barrier(threads, action=release)

    def timed(i: int) -> None:
        deadline = started[0] + duration
        n = 0
        while n < ops:
            k = min(TIMED_CHUNK, ops - n)
            loop(counter, k)
            n += k
            if time.perf_counter() >= deadline:
                break
        done[i] = n

    def worker(i: int) -> None:
        try:
            barrier.wait()
            if duration > 0:
                timed(i)
            else:
                loop(counter, ops)
            ends[i] = time.perf_counter()
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            barrier.abort()

    team = [threading.Thread(target=worker, args=(i,), name=f"pycounter-{i}")
            for i in range(threads)]
    for t in team:
        t.start()
    for t in team:
        t.join()
    if errors:
        raise RuntimeError(f"pycounter/{strategy}: a thread failed: {errors[0]!r}") from errors[0]
    seconds = max(ends) - started[0]
    expected = sum(done)
    observed = read(counter)
    total = expected
    return {
        "seconds": seconds,
        "ops": total,
        "thread_ops": done,
        "threads": threads,
        "strategy": strategy,
        "expected": expected,
        "observed": observed,
        "lost_updates": expected - observed,
        "exact": observed == expected,
        "ns_per_increment": seconds * 1e9 / total if total else 0.0,
        "idiom": idiom,
    }


def kernel(strategy: str, threads: int, ops: int, params: Mapping[str, int],
           duration_ns: int = 0) -> dict[str, Any]:
    """The workload's kernel for ``percpu.workloads`` (``params``: ``inplace``;
    ``duration_ns`` > 0: a time-bounded run, ``ops`` a cap)."""
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a str, not {type(strategy).__name__}")
    _check_request(threads, ops)
    check_mapping(params, "params")
    check_int(duration_ns, "duration_ns", 0)
    result = _run(strategy, threads, ops, bool(params.get("inplace", 0)), duration_ns / 1e9)
    result.pop("strategy")
    result["kernel"] = "python"
    return result


def _table(threads: list[int], ops: int, repeat: int) -> list[tuple[str, str, int, float, int]]:
    cases = [(strategy, inplace, n) for inplace in (False, True)
             for strategy in available_strategies() for n in threads]
    best: dict[tuple[str, bool, int], dict[str, Any]] = {}
    # Round robin over the cases, so that a noisy moment of the machine
    # spreads over all of them instead of spoiling one.
    for _ in range(repeat):
        for case in cases:
            r = run(case[0], case[2], ops, inplace=case[1])
            if case not in best or r["ns_per_increment"] < best[case]["ns_per_increment"]:
                best[case] = r
    return [(s, best[(s, i, n)]["idiom"], n, best[(s, i, n)]["ns_per_increment"],
             best[(s, i, n)]["lost_updates"]) for s, i, n in cases]


def main(argv: list[str] | None = None) -> int:
    """``python -m percpu.pycounter [THREADS,...] [OPS] [REPEAT]``: a quick
    table of ns per increment (best of REPEAT runs) and lost updates."""
    args = list(sys.argv[1:] if argv is None else check_argv(argv) or ())
    usage = "usage: python -m percpu.pycounter [THREADS,...] [OPS] [REPEAT]"
    try:
        if len(args) > 3:
            raise ValueError(f"at most 3 arguments, not {len(args)}")
        threads = [int(t) for t in (args[0] if args else "1,2").split(",") if t]
        ops = int(args[1]) if len(args) > 1 else 200_000
        repeat = int(args[2]) if len(args) > 2 else 5
        if not threads:
            raise ValueError("THREADS lists no thread count")
        for t in threads:
            _check_request(t, ops)
        if repeat < 1:
            raise ValueError("REPEAT must be >= 1")
    except ValueError as exc:
        print(f"{usage}\npercpu.pycounter: error: {exc}", file=sys.stderr)
        return 2
    print(f"# {sys.implementation.name} {sys.version.split()[0]}, {ops} increments per thread, "
          f"best of {repeat}; ns per increment (all threads)")
    for strategy, why in unavailable_strategies().items():
        print(f"# skipped {strategy}: {why}")
    print(f"{'strategy':24} {'idiom':24} {'threads':>7} {'ns/inc':>8} {'lost':>6}")
    for strategy, idiom, n, ns, lost in _table(threads, ops, repeat):
        print(f"{strategy:24} {idiom:24} {n:>7} {ns:>8.1f} {lost:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
