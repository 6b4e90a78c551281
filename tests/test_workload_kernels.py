"""The four workloads' native kernels, through percpu.workloads.run (the one
entry point that validates a request): every strategy at 1, 2 and 4 threads,
their self-checks, their figures, the slow paths (unregister, churn) actually
taken, bad input, and the non-rseq fallback in a subprocess."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from percpu.workloads import run
from percpu.counters import COUNTERS, EXACT_COUNTERS

from .conftest import run_python

THREADS = [1, 2, 4]
REFS = ["atomic", "bigref", "percpu", "atomic-sharedline"]
PAIRS = [f"{a}+{b}" for a in REFS for b in REFS]
STANDARD = ("seconds", "ops", "ops_per_sec", "threads")


def timed_run(*args: Any, **params: Any) -> tuple[dict[str, Any], float]:
    """run(*args, **params) and the seconds the call took, by the test's own clock."""
    t0 = time.perf_counter()
    res = run(*args, **params)
    return res, time.perf_counter() - t0


def check_standard(res: dict[str, Any], threads: int, ops: int, elapsed: float) -> None:
    for key in STANDARD:
        assert key in res, key
    assert res["threads"] == threads
    assert res["ops"] == threads * ops
    # The team's time lies within the call, so its rate is at least the
    # rate over the whole call (the test's clock, not the result's own).
    assert 0 < res["seconds"] <= elapsed
    assert res["ops_per_sec"] >= res["ops"] / elapsed


def interval(every: int, threads: int) -> int:
    """Thread 0 acts every `every // threads` of its own ops (team-wide `every`)."""
    return max(1, every // threads)


# stat ----------------------------------------------------------------------

#: The strategies the stat kernel has a specialised loop for.
BUILTIN_COUNTERS = ("atomic", "locked", "percpu", "perthread", "approx", "striped", "racy")

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("strategy", sorted(COUNTERS))
def test_stat(strategy: str, threads: int) -> None:
    ops = 20000
    res, elapsed = timed_run("stat", strategy, threads, ops, counters=16, read_every=300)
    check_standard(res, threads, ops, elapsed)
    assert res["counters"] == 16
    assert res["reads"] == threads * (ops // 300)
    # The strategies with a loop of their own report their memory; one that
    # runs through the generic loop reports it as unknown (see below).
    if res["bytes_per_object"] is not None or strategy in BUILTIN_COUNTERS:
        assert res["bytes_per_object"] > 0
    assert res["expected"] == threads * ops
    if strategy in EXACT_COUNTERS:
        assert res["observed"] == threads * ops
        assert res["exact"] == 1 and res["lost_updates"] == 0
    else:
        # racy: never more than was added; exact only when nothing was lost.
        assert 0 < res["observed"] <= threads * ops
        assert res["exact"] == int(res["observed"] == threads * ops)
        assert 0 <= res["lost_updates"] < threads * ops


def test_stat_defaults_and_memory_figures() -> None:
    res = run("stat", "percpu", 1, 1000)
    assert res["counters"] == 64 and res["read_every"] == 1000 and res["reads"] == 1
    per_cpu = run("stat", "percpu", 1, 10)["bytes_per_object"]
    atomic = run("stat", "atomic", 1, 10)["bytes_per_object"]
    perthread = run("stat", "perthread", 1, 10)["bytes_per_object"]
    # The point of the 2005 allocator: a per-CPU counter packs its slots, so on
    # a few CPUs it is smaller than one padded shared line; a per-thread one
    # pads every slot to a line.
    assert atomic == 64
    assert perthread > atomic
    assert 0 < per_cpu


def test_stat_never_reads() -> None:
    assert run("stat", "atomic", 2, 5000, read_every=0)["reads"] == 0


# netdev --------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("strategy", REFS)
def test_netdev(strategy: str, threads: int) -> None:
    ops = 20000
    res, elapsed = timed_run("netdev", strategy, threads, ops, unregister_every=2000)
    check_standard(res, threads, ops, elapsed)
    expected = ops // interval(2000, threads)
    assert res["unregisters"] + res["unregister_failures"] == expected
    assert res["unregisters"] > 0
    assert res["created"] == res["released"] == res["unregisters"] + 1
    assert res["unregister_latency_mean_us"] > 0
    assert res["unregister_latency_max_us"] >= res["unregister_latency_mean_us"]


def test_netdev_without_unregister() -> None:
    res = run("netdev", "bigref", 2, 10000, unregister_every=0)
    assert res["unregisters"] == 0 and res["created"] == res["released"] == 1
    assert res["unregister_latency_mean_us"] == 0.0


# dst -----------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("strategy", REFS)
def test_dst(strategy: str, threads: int) -> None:
    ops = 20000
    res, elapsed = timed_run("dst", strategy, threads, ops, entries=64, churn_every=400)
    check_standard(res, threads, ops, elapsed)
    assert res["entries"] == 64
    assert res["churns"] + res["churn_failures"] == ops // interval(400, threads)
    assert res["churns"] > 0
    assert res["created"] == res["released"] == 64 + res["churns"]
    assert res["bytes_per_entry"] > 0


def test_dst_bytes_per_entry_counts_the_pool() -> None:
    atomic = run("dst", "atomic", 1, 100, entries=256)["bytes_per_entry"]
    bigref = run("dst", "bigref", 1, 100, entries=256)["bytes_per_entry"]
    # Same entry struct; the per-CPU kinds add their slots in the pool.
    assert bigref > atomic


# packet --------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("strategy", PAIRS)
def test_packet(strategy: str, threads: int) -> None:
    ops = 4000
    params = {"work": 10, "dst_holds": 3, "dev_holds": 2, "routes": 32,
              "unregister_every": 1000, "churn_every": 200}
    res, elapsed = timed_run("packet", strategy, threads, ops, **params)
    check_standard(res, threads, ops, elapsed)
    assert (res["work"], res["dst_holds"], res["dev_holds"], res["routes"]) == (10, 3, 2, 32)
    assert res["unregisters"] + res["unregister_failures"] == ops // interval(1000, threads)
    assert res["churns"] + res["churn_failures"] == ops // interval(200, threads)
    assert res["unregisters"] > 0 and res["churns"] > 0
    assert res["created"] == res["released"] == 1 + res["unregisters"] + 32 + res["churns"]
    assert res["unregister_latency_mean_us"] > 0
    # Memory is the dst workload's figure; packet's one hot route says nothing.
    assert "bytes_per_entry" not in res


@pytest.mark.parametrize("dev_holds,dst_holds", [(0, 0), (0, 1), (1, 0), (3, 1), (1, 7), (64, 64)])
@pytest.mark.parametrize("strategy", ["atomic+atomic", "bigref+percpu", "atomic-sharedline+bigref"])
def test_packet_hold_counts(strategy: str, dev_holds: int, dst_holds: int) -> None:
    # Any mix of holds balances: each run checks that every object was
    # released exactly once at teardown and that no get or put failed.
    res = run("packet", strategy, 2, 500, work=7, dev_holds=dev_holds, dst_holds=dst_holds,
              routes=3, unregister_every=100, churn_every=50)
    assert res["ops"] == 1000 and res["created"] == res["released"]
    assert res["unregisters"] > 0 and res["churns"] > 0


def test_packet_defaults_model_loopback() -> None:
    res = run("packet", "bigref+percpu", 2, 2000)
    # One hot route, no unregister or route churn during a tbench run.
    assert res["routes"] == res["entries"] == 1
    assert res["unregisters"] == 0 and res["churns"] == 0 and res["created"] == 2


def test_percpu_pin_spreads_the_team(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read at each run, so pyperf's workers (which inherit PERCPU_*) honour it.
    monkeypatch.setenv("PERCPU_PIN", "1")
    res = run("packet", "bigref+percpu", 3, 2000, routes=2, churn_every=300, unregister_every=500)
    assert res["pinned"] == 1 and res["ops"] == 6000 and res["created"] == res["released"]
    monkeypatch.setenv("PERCPU_PIN", "0")
    assert run("stat", "percpu", 2, 100)["pinned"] == 0
    monkeypatch.delenv("PERCPU_PIN")
    assert run("netdev", "atomic", 2, 100)["pinned"] == 0


def test_object_layout_separates_false_sharing() -> None:
    from percpu._workloads import obj_layout

    lay = obj_layout()
    line = lay["cacheline"]

    def lines(start: int, size: int) -> set[int]:
        return set(range(start // line, (start + size - 1) // line + 1))

    fields = 8 * lay["fields"]
    count = lines(lay["count"], 8)
    # The 2005 layout: the count on the line its users read ...
    assert lines(lay["beside"], fields) == count
    # ... the padded one: the fields on a line of their own, not even the
    # 128-byte buddy of the count's line (adjacent-line prefetch).
    assert not lines(lay["alone"], fields) & count
    assert abs(lay["count"] // 128 - lay["alone"] // 128) >= 1
    assert lay["size"] % line == 0 and lay["alone"] % line == 0


def test_packet_work_costs_time() -> None:
    # Not a timing assertion on the machine's speed: 200x the work per op in
    # the same number of ops can only take longer if the loop is not removed.
    light = run("packet", "atomic+atomic", 1, 20000, work=0, churn_every=0, unregister_every=0)
    heavy = run("packet", "atomic+atomic", 1, 20000, work=2000, churn_every=0, unregister_every=0)
    assert heavy["seconds"] > light["seconds"]


def test_zero_ops() -> None:
    for name, strategy in (("stat", "percpu"), ("netdev", "percpu"),
                           ("dst", "bigref"), ("packet", "bigref+percpu")):
        res = run(name, strategy, 2, 0)
        assert res["ops"] == 0


# bad input -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["stat", "netdev", "dst", "packet"])
def test_bad_input(name: str) -> None:
    good = "atomic+atomic" if name == "packet" else "atomic"
    with pytest.raises(ValueError):
        run(name, "nope", 1, 10)
    with pytest.raises(ValueError):
        run(name, good, 0, 10)
    with pytest.raises(ValueError):
        run(name, good, 2000, 10)
    with pytest.raises(ValueError):
        run(name, good, 1, -1)
    with pytest.raises(TypeError):
        run(name, good, 1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        run(name, good, 1, "10")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run(name, good, 1, 10, bogus=1)


@pytest.mark.parametrize("bad", ["atomic", "atomic+", "+atomic", "a+b+c", "atomic+nope", 3])
def test_packet_bad_strategy(bad: object) -> None:
    with pytest.raises(ValueError):
        run("packet", bad, 1, 10)  # type: ignore[arg-type]


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        run("stat", "atomic", 1, 10, counters=0)
    with pytest.raises(ValueError):
        run("stat", "atomic", 1, 10, read_every=-1)
    with pytest.raises(TypeError):
        run("stat", "atomic", 1, 10, counters=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run("dst", "atomic", 1, 10, entries=0)
    with pytest.raises(ValueError):
        run("packet", "atomic+atomic", 1, 10, work=-1)
    # A stat strategy is not a reference strategy.
    with pytest.raises(ValueError):
        run("netdev", "striped", 1, 10)


# the non-rseq fallback -----------------------------------------------------

def test_no_rseq_subprocess() -> None:
    out = run_python(
        """
        import json
        import percpu
        from percpu.workloads import run, run_timed
        res = {"cpu_source": percpu.features()["cpu_source"], "runs": []}
        for t in (1, 3):
            for s in ("percpu", "approx", "perthread"):
                res["runs"].append(run("stat", s, t, 5000, counters=8, read_every=100))
            for s in ("bigref", "percpu"):
                res["runs"].append(run("netdev", s, t, 5000, unregister_every=500))
                res["runs"].append(run("dst", s, t, 5000, entries=16, churn_every=100))
            for s in ("bigref+percpu", "percpu+bigref"):
                res["runs"].append(run("packet", s, t, 2000, work=5, routes=16, dst_holds=2,
                                       unregister_every=500, churn_every=100))
        # Time-bounded too: the deadline works on the fallback path.
        res["runs"].append(run_timed("packet", "bigref+percpu", 3, 0.05, routes=4,
                                     unregister_every=500, churn_every=100))
        res["runs"].append(run_timed("stat", "percpu", 3, 0.02))
        print(json.dumps(res))
        """,
        env_extra={"PERCPU_NO_RSEQ": "1"},
    )
    res = json.loads(out)
    assert res["cpu_source"] not in ("rseq", "mm_cid")
    assert len(res["runs"]) == 2 * (3 + 4 + 2) + 2
    for r in res["runs"]:
        assert r["ops"] > 0 and r["ops_per_sec"] > 0
        if "exact" in r:
            assert r["exact"] == 1
        if "unregisters" in r:
            assert r["unregisters"] > 0 and r["created"] == r["released"]
        if "churns" in r:
            assert r["churns"] > 0 and r["created"] == r["released"]


# a strategy without a specialised loop --------------------------------------

def test_a_new_counter_strategy_runs_through_the_generic_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A counter class registered in COUNTERS, with no loop of its own in the
    stat kernel or the lab, still runs exactly there (through its C vtable):
    a new strategy is one class and one registry line."""
    import percpu
    from percpu import workloads
    from percpu._lab import hammer

    class Mine(percpu.LockedCounter):
        strategy = "mine"

    monkeypatch.setitem(percpu.COUNTERS, "mine", Mine)
    stat = workloads.WORKLOADS["stat"]
    monkeypatch.setitem(workloads.WORKLOADS, "stat", workloads.Workload(
        stat.name, stat.description, tuple(percpu.COUNTERS), stat.params,
        minimums=stat.minimums, maximums=stat.maximums, baseline=stat.baseline))
    res = run("stat", "mine", 4, 50_000, counters=4, read_every=100)
    assert res["exact"] == 1 and res["observed"] == 4 * 50_000
    assert res["reads"] == 4 * (50_000 // 100)
    # Its C state is its own: the kernel says it does not know its size
    # rather than give the Python object's (which understates it).
    assert res["bytes_per_object"] is None
    c = Mine()
    r = hammer(c, 3, 20_000, mixed=True)
    assert c.value() == r["expected"] == 3 * (20_000 - 2 * (20_000 // 4))
