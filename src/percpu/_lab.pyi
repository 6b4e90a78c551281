"""percpu._lab: native-thread kernels for the tests and the measurements."""
from collections.abc import Callable
from typing import Any, TypedDict

from percpu._alloc import NaivePool, PerCPUPool
from percpu._counters import CounterBase, PerThreadCounter
from percpu._refs import PercpuRef, _Ref

class TeamResult(TypedDict):
    wall_ns: int
    done: list[int]
    cells: list[int]

class HammerResult(TypedDict):
    wall_ns: int
    ns_per_op: float
    done: list[int]
    expected: int

class MutantInfo(TypedDict):
    built: bool
    names: list[str]
    active: str | None

def _mutants() -> MutantInfo: ...
def team_selftest(threads: int, ops: int, pin: bool = ...) -> TeamResult: ...
def hammer(
    counter: CounterBase,
    threads: int,
    ops: int,
    mixed: bool = ...,
    pin: bool = ...,
    run_ns: int = ...,
    interrupt_ns: int = ...,
) -> HammerResult: ...
class AllocFreeResult(TypedDict):
    threads: int
    ops: int
    wall_ns: int
    done: list[int]
    corrupt: int
    nonzero: int
    failures: int
    ns_per_pair: float
    pairs_per_sec: float

def alloc_free(
    pool: PerCPUPool | NaivePool, threads: int, ops: int, size: int = 8, pin: bool = ...
) -> AllocFreeResult: ...
def _stress(pool: PerCPUPool | NaivePool, threads: int, ops: int, size: int = 64) -> dict[str, Any]: ...
def _free_race(pool: PerCPUPool | NaivePool, threads: int, objects: int, size: int = 8) -> dict[str, Any]: ...
def _percpu_add_stress(
    pool: PerCPUPool, threads: int, ops: int, run_ns: int = 0, interrupt_ns: int = 0
) -> dict[str, Any]: ...
def _stress_kill(
    kind: str,
    threads: int,
    ops: int,
    kill_at: int,
    py_callback: Callable[[], object] | None = None,
    interrupt_ns: int = 0,
) -> dict[str, Any]: ...
def _stress_exact(
    kind: str,
    threads: int,
    ops: int,
    keep: int,
    flip_every: int = 0,
    run_ns: int = 0,
    interrupt_ns: int = 0,
    hold_ns: int = 0,
) -> dict[str, Any]: ...
def _team_refops(
    ref: _Ref,
    threads: int,
    ops: int,
    gets: int = 1,
    puts: int = 1,
    run_ns: int = 0,
    interrupt_ns: int = 0,
) -> dict[str, Any]: ...
def _tryget_live_vs_kill(
    threads: int, rounds: int, shared: bool, confirm: bool, max_delay: int = 20000, seed: int = 1
) -> dict[str, int]: ...
def _misused_get_vs_tryget(kind: str, threads: int, ops: int) -> dict[str, Any]: ...
def _release_frees_object(kind: str, how: str, really_free: bool = False) -> dict[str, Any]: ...
def _registry_after_exit(counter: PerThreadCounter, ref: PercpuRef) -> dict[str, Any]: ...
