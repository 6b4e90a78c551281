from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "COUNTER_STRATEGIES",
    "MAX_THREADS",
    "PACKET_STRATEGIES",
    "REF_STRATEGIES",
    "WORKLOADS",
    "Kernel",
    "Workload",
    "register",
    "run",
]

COUNTER_STRATEGIES: tuple[str, ...]
REF_STRATEGIES: tuple[str, ...]
PACKET_STRATEGIES: tuple[str, ...]
MAX_THREADS: int

Kernel = Callable[[str, int, int, dict[str, int]], Mapping[str, Any]]

@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    strategies: tuple[str, ...]
    params: Mapping[str, int]
    minimums: Mapping[str, int] = ...
    unavailable: Mapping[str, str] = ...
    kernel: Kernel | None = ...
    baseline: str = ...
    def __post_init__(self) -> None: ...
    def minimum(self, param: str) -> int: ...

WORKLOADS: dict[str, Workload]

def register(workload: Workload, *, replace: bool = ...) -> Workload: ...
def run(name: str, strategy: str, threads: int, ops: int, **params: int) -> dict[str, Any]: ...
