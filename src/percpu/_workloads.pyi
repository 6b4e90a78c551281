from typing import Any, Mapping

# Each kernel: ``ops`` operations per thread on ``threads`` native threads.
# Results carry at least seconds, wall_ns, ops (all threads), ops_per_sec,
# threads and kernel ("native"), plus the workload's own figures.

def run_stat(
    strategy: str, threads: int, ops: int, params: Mapping[str, int] | None = None
) -> dict[str, Any]: ...
def run_netdev(
    strategy: str, threads: int, ops: int, params: Mapping[str, int] | None = None
) -> dict[str, Any]: ...
def run_dst(
    strategy: str, threads: int, ops: int, params: Mapping[str, int] | None = None
) -> dict[str, Any]: ...
def run_packet(
    strategy: str, threads: int, ops: int, params: Mapping[str, int] | None = None
) -> dict[str, Any]: ...
