"""percpu.workloads: the registry, run()'s validation and its result."""
from __future__ import annotations

import dataclasses
import sys
import time
import types
from typing import Any, Iterator

import pytest

from percpu import workloads
from percpu.workloads import WORKLOADS, Workload, run

REFS = ("atomic", "bigref", "percpu", "atomic-sharedline")
PACKET_DEFAULTS = {"work": 280, "dev_holds": 1, "dst_holds": 1, "routes": 1,
                   "unregister_every": 0, "churn_every": 0}
EXPECTED = {
    "stat": (("atomic", "locked", "percpu", "perthread", "approx", "striped", "racy"),
             {"counters": 64, "read_every": 1000}),
    "netdev": (REFS, {"unregister_every": 100000}),
    "dst": (REFS, {"entries": 1024, "churn_every": 10000}),
    "packet": (tuple(f"{a}+{b}" for a in REFS for b in REFS), PACKET_DEFAULTS),
}
ALL_POINTS = [(w, s) for w in EXPECTED for s in EXPECTED[w][0]]


@pytest.fixture
def fake_kernels() -> Iterator[list[tuple[Any, ...]]]:
    """A stand-in percpu._workloads whose kernels record their calls."""
    calls: list[tuple[Any, ...]] = []
    module = types.ModuleType("percpu._workloads")

    def make(name: str) -> Any:
        def kernel(strategy: str, threads: int, ops: int, params: dict[str, int],
                   duration_ns: int = 0) -> dict[str, Any]:
            calls.append((name, strategy, threads, ops, params))
            return {"wall_ns": 2_000_000, "ops": threads * ops, "unregisters": 3,
                    "unregister_latency_mean_us": 12.5}
        return kernel

    for name in EXPECTED:
        setattr(module, f"run_{name}", make(name))
    saved = sys.modules.get("percpu._workloads")
    sys.modules["percpu._workloads"] = module
    try:
        yield calls
    finally:
        if saved is None:
            del sys.modules["percpu._workloads"]
        else:
            sys.modules["percpu._workloads"] = saved


def test_registry_matches_the_contract() -> None:
    # pycounter (percpu.pycounter) registers itself; its strategies depend
    # on the peers installed and are tested in test_pycounter.py.
    assert list(WORKLOADS) == [*EXPECTED, "pycounter"]
    for name, (strategies, params) in EXPECTED.items():
        w = WORKLOADS[name]
        assert w.name == name and w.description
        assert w.strategies == strategies
        assert dict(w.params) == params
        assert w.baseline in w.strategies
    assert len(ALL_POINTS) == 7 + 4 + 4 + 16


def test_hot_line_strategies() -> None:
    # The strategies whose every op writes a line all threads write: the
    # shared counts and the lock, and every packet pair with one of them.
    assert WORKLOADS["stat"].hot_line == {"atomic", "locked", "racy"}
    assert WORKLOADS["netdev"].hot_line == {"atomic", "atomic-sharedline"}
    packet = WORKLOADS["packet"].hot_line
    assert "atomic+percpu" in packet and "bigref+atomic-sharedline" in packet
    assert "bigref+percpu" not in packet and "percpu+bigref" not in packet
    assert len(packet) == 16 - 4
    assert WORKLOADS["pycounter"].hot_line == frozenset()
    with pytest.raises(ValueError, match="hot_line of 'w' names unknown strategies y"):
        Workload("w", "d", ("x",), {}, hot_line=frozenset({"y"}))


def test_workload_is_frozen_and_its_defaults_cannot_be_edited() -> None:
    w = WORKLOADS["stat"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        w.params["counters"] = 1  # type: ignore[index]
    assert w.params["counters"] == 64


@pytest.mark.parametrize("workload,strategy", ALL_POINTS)
def test_run_every_strategy(workload: str, strategy: str) -> None:
    t0 = time.perf_counter()
    r = run(workload, strategy, 2, 3000)
    elapsed = time.perf_counter() - t0
    assert r["workload"] == workload and r["strategy"] == strategy
    assert r["threads"] == 2
    assert r["ops"] == 2 * 3000
    # Within the call, by the test's own clock; so the rate is at least the
    # rate over the whole call.
    assert isinstance(r["seconds"], float) and 0 < r["seconds"] <= elapsed
    assert r["ops_per_sec"] >= r["ops"] / elapsed
    assert r["params"] == EXPECTED[workload][1]
    if workload == "stat":
        # Counters must report whether they lost updates.
        assert r["lost_updates"] >= 0 and r["exact"] in (0, 1)
        if strategy != "racy":
            assert r["observed"] == 2 * 3000
            assert r["lost_updates"] == 0 and r["exact"] == 1


def test_run_zero_ops() -> None:
    r = run("netdev", "atomic", 1, 0)
    assert r["ops"] == 0 and r["seconds"] >= 0


def test_params_override_defaults() -> None:
    r = run("packet", "bigref+percpu", 1, 10, work=0, churn_every=7)
    assert r["params"] == {**PACKET_DEFAULTS, "work": 0, "churn_every": 7}


@pytest.mark.parametrize("args,kwargs,match", [
    (("nope", "atomic", 1, 1), {}, r"unknown workload 'nope'; valid: stat, netdev, dst, packet"),
    (("stat", "bigref", 1, 1), {}, r"unknown strategy 'bigref' .*valid: atomic, locked, percpu"),
    (("packet", "atomic", 1, 1), {}, r"valid: atomic\+atomic, atomic\+bigref"),
    (("netdev", "atomic", 0, 1), {}, r"threads must be in 1\.\.1024, not 0"),
    (("netdev", "atomic", -3, 1), {}, r"not -3"),
    (("netdev", "atomic", 1025, 1), {}, r"not 1025"),
    (("netdev", "atomic", 1, -1), {}, r"ops must be in 0\.\.2\*\*40, not -1"),
    (("netdev", "atomic", 1, 2**40 + 1), {}, r"ops must be in 0\.\.2\*\*40"),
    (("stat", "atomic", 1, 1), {"counter": 3}, r"unknown parameter\(s\) counter .*counters=64, read_every=1000"),
    (("stat", "atomic", 1, 1), {"counters": 0}, r"stat\.counters must be in 1\.\.1048576, not 0"),
    (("stat", "atomic", 1, 1), {"counters": 2**20 + 1}, r"stat\.counters must be in 1\.\.1048576"),
    (("dst", "atomic", 1, 1), {"churn_every": -1}, r"churn_every must be in 0\.\."),
    (("dst", "atomic", 1, 1), {"entries": 2**24 + 1}, r"dst\.entries must be in 1\.\.16777216"),
    (("packet", "atomic+atomic", 1, 1), {"routes": 0}, r"packet\.routes must be in 1\.\.16777216, not 0"),
    (("packet", "atomic+atomic", 1, 1), {"dst_holds": 65}, r"packet\.dst_holds must be in 0\.\.64, not 65"),
    (("packet", "atomic+atomic", 1, 1), {"dev_holds": -1}, r"packet\.dev_holds must be in 0\.\.64, not -1"),
    (("packet", "atomic+atomic", 1, 1), {"work": 2**24 + 1}, r"packet\.work must be in 0\.\.16777216"),
    (("packet", "atomic+atomic", 1, 1), {"entries": 4}, r"unknown parameter\(s\) entries .*routes=1"),
    (("netdev", "atomic-sharedline+atomic", 1, 1), {}, r"unknown strategy"),
])
def test_run_rejects_bad_input(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run(*args, **kwargs)


@pytest.mark.parametrize("value,kind", [("8", "str"), (True, "bool"), (2.0, "float"), (None, "NoneType")])
def test_run_rejects_non_int_params(value: Any, kind: str) -> None:
    with pytest.raises(TypeError, match=f"dst\\.entries must be an int, not {kind}"):
        run("dst", "atomic", 1, 1, entries=value)


@pytest.mark.parametrize("threads,ops", [(1.0, 1), ("2", 1), (True, 1), (1, 1.5), (1, None), (1, False)])
def test_run_rejects_non_int_threads_and_ops(threads: Any, ops: Any) -> None:
    with pytest.raises(TypeError, match="must be an int"):
        run("stat", "atomic", threads, ops)


def test_native_kernels_are_used_when_present(fake_kernels: list[tuple[Any, ...]]) -> None:
    r = run("dst", "bigref", 3, 7, entries=16)
    assert fake_kernels == [("dst", "bigref", 3, 7, {"entries": 16, "churn_every": 10000})]
    assert r["seconds"] == pytest.approx(0.002)
    assert r["ops"] == 21
    assert r["ops_per_sec"] == pytest.approx(21 / 0.002)
    assert r["kernel"] == "native"
    assert r["unregisters"] == 3 and r["unregister_latency_mean_us"] == 12.5
    assert "wall_ns" not in r


def test_run_timed_passes_the_duration_and_measures_fairness(
        fake_kernels: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    module = sys.modules["percpu._workloads"]
    seen = []

    def kernel(strategy: str, threads: int, ops: int, params: dict[str, int],
               duration_ns: int = 0) -> dict[str, Any]:
        seen.append((strategy, threads, ops, params, duration_ns))
        return {"wall_ns": 250_000_000, "ops": 1000, "thread_ops": [400, 600]}

    monkeypatch.setattr(module, "run_netdev", kernel)
    r = workloads.run_timed("netdev", "atomic", 2, 0.25)
    assert seen == [("atomic", 2, workloads.MAX_OPS, {"unregister_every": 100000}, 250_000_000)]
    assert r["thread_ops"] == [400, 600] and r["fairness"] == pytest.approx(400 / 600)
    assert r["duration"] == 0.25 and r["ops"] == 1000 and r["seconds"] == pytest.approx(0.25)
    # run() never passes a duration: a kernel written before it keeps working.
    run("netdev", "atomic", 2, 5)
    assert seen[-1][-1] == 0


def test_run_timed_needs_per_thread_counts(fake_kernels: list[tuple[Any, ...]]) -> None:
    # The fake kernels report no thread_ops: a timed run cannot say how fair it was.
    with pytest.raises(RuntimeError, match="no per-thread ops"):
        workloads.run_timed("dst", "bigref", 2, 0.1)


@pytest.mark.parametrize("seconds,error", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                           (float("inf"), ValueError), (3601, ValueError),
                                           ("1", TypeError), (True, TypeError), (None, TypeError)])
def test_run_timed_rejects_bad_seconds(seconds: Any, error: type) -> None:
    with pytest.raises(error, match="seconds must be"):
        workloads.run_timed("netdev", "atomic", 1, seconds)


@pytest.mark.parametrize("counts,expected", [
    ([5], None), ([], None), ([0, 0], None), ([3, 3, 3], 1.0), ([1, 4], 0.25), ([0, 9], 0.0),
    ([10, 5, 20], 0.25),
])
def test_fairness(counts: list[int], expected: float | None) -> None:
    assert workloads.fairness(counts) == expected


def test_real_timed_runs_count_every_thread() -> None:
    for name, strategy in (("stat", "locked"), ("netdev", "atomic-sharedline"), ("dst", "percpu"),
                           ("packet", "bigref+atomic"), ("pycounter", "percpu")):
        r = workloads.run_timed(name, strategy, 2, 0.02)
        counts = r["thread_ops"]
        assert len(counts) == 2 and all(c > 0 for c in counts)
        # Every op a thread did is in the total, and the checks of the
        # fixed-count run (exact sums, releases) held for these counts too.
        assert r["ops"] == sum(counts)
        assert r["fairness"] == min(counts) / max(counts)
        if "exact" in r:
            assert r["exact"] == 1 and r["expected"] == sum(counts)
        if "released" in r:
            assert r["created"] == r["released"]


def test_validation_happens_before_the_kernel(fake_kernels: list[tuple[Any, ...]]) -> None:
    with pytest.raises(ValueError):
        run("dst", "bigref", 0, 7)
    assert fake_kernels == []


def test_every_builtin_workload_runs_its_native_kernel() -> None:
    for name in ("stat", "netdev", "dst", "packet"):
        strategy = workloads.WORKLOADS[name].strategies[0]
        assert run(name, strategy, 1, 50)["kernel"] == "native"


def test_registry_is_open() -> None:
    calls = []

    def kernel(strategy: str, threads: int, ops: int, params: dict[str, int]) -> dict[str, Any]:
        calls.append((strategy, threads, ops, params))
        return {"seconds": 0.5, "lost_updates": 0}

    w = Workload("pyextra", "a Python-level workload", ("percpu", "peer:lock+int"),
                 {"batch": 4}, unavailable={"peer:nothere": "not installed"}, kernel=kernel)
    workloads.register(w)
    try:
        with pytest.raises(ValueError, match="already registered"):
            workloads.register(w)
        r = run("pyextra", "peer:lock+int", 2, 10)
        assert calls == [("peer:lock+int", 2, 10, {"batch": 4})]
        assert r["kernel"] == "python" and r["ops"] == 20 and r["ops_per_sec"] == 40.0
        with pytest.raises(ValueError, match="cannot run here: not installed"):
            run("pyextra", "peer:nothere", 1, 1)
    finally:
        del WORKLOADS["pyextra"]


@pytest.mark.parametrize("kwargs,match", [
    ({"name": ""}, "non-empty"),
    ({"name": "a/b"}, "without '/'"),
    ({"strategies": ("x", "x")}, "twice"),
    ({"strategies": ("a/b",)}, "without '/'"),
    ({"strategies": ()}, "no strategies"),
    ({"params": {"n": "1"}}, "must be an int"),
    ({"minimums": {"m": 0}}, "unknown parameter"),
])
def test_workload_definition_is_checked(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"name": "w", "description": "d", "strategies": ("x",), "params": {"n": 1}}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Workload(**base)


def test_register_rejects_non_workloads() -> None:
    with pytest.raises(TypeError):
        workloads.register("stat")  # type: ignore[arg-type]


def test_strategies_match_the_counter_and_ref_registries() -> None:
    import percpu

    counters = getattr(percpu, "COUNTERS", None)
    refs = getattr(percpu, "REFS", None)
    if counters is None and refs is None:
        pytest.skip("percpu.COUNTERS / percpu.REFS are not built yet")
    if counters is not None:
        assert set(workloads.COUNTER_STRATEGIES) == set(counters)
    if refs is not None:
        # The library's classes, then the lab's layout controls of them.
        assert workloads.REF_STRATEGIES == (*refs, *workloads.REF_LAYOUTS)
        assert not set(workloads.REF_LAYOUTS) & set(refs)
        assert set(workloads.REF_LAYOUTS.values()) <= set(refs)
        assert workloads.ref_operations("atomic-sharedline") == "atomic"
        assert workloads.ref_operations("bigref") == "bigref"
