from typing import Any

# Each kernel: ``ops`` operations per thread on ``threads`` native threads,
# with every parameter of the workload given (percpu.workloads.run validates
# the request and fills in the defaults; these trust it). Results carry at
# least seconds, wall_ns, ops (all threads), ops_per_sec, threads,
# thread_ops (each thread's completed ops) and kernel ("native"), plus the
# workload's own figures. ``duration_ns`` > 0: each thread stops at its first
# look at the clock (every 1024 ops) after that long; ``ops`` is then a cap.

def run_stat(strategy: str, threads: int, ops: int, params: dict[str, int],
             duration_ns: int = 0) -> dict[str, Any]: ...
def run_netdev(strategy: str, threads: int, ops: int, params: dict[str, int],
               duration_ns: int = 0) -> dict[str, Any]: ...
def run_dst(strategy: str, threads: int, ops: int, params: dict[str, int],
            duration_ns: int = 0) -> dict[str, Any]: ...
def run_packet(strategy: str, threads: int, ops: int, params: dict[str, int],
               duration_ns: int = 0) -> dict[str, Any]: ...
def obj_layout() -> dict[str, int]: ...
