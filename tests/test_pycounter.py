from __future__ import annotations

import io
import threading
from typing import Any, Iterator

import pytest

import percpu
from percpu import pycounter, workloads
from percpu.counters import COUNTERS, EXACT_COUNTERS

from .conftest import run_python

ALWAYS_THERE = ["peer:itertools.count", "peer:lock+int"]


def _refresh() -> None:
    """Registers the pycounter workload again with the peers now in PEERS."""
    workloads.register(workloads.pycounter_workload(), replace=True)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("strategy", sorted(COUNTERS))
def test_every_counter_counts_every_increment(strategy: str, threads: int, inplace: bool) -> None:
    ops = 3_000
    r = pycounter.run(strategy, threads, ops, inplace=inplace)
    assert r["expected"] == threads * ops
    assert r["lost_updates"] == r["expected"] - r["observed"]
    assert r["exact"] is (r["observed"] == r["expected"])
    assert r["idiom"] == ("c += 1" if inplace else "c.inc()")
    assert r["seconds"] > 0 and r["ns_per_increment"] > 0
    if strategy in EXACT_COUNTERS:
        assert r["observed"] == threads * ops and r["exact"] is True and r["lost_updates"] == 0
    else:
        # racy: what it keeps is never more than was added.
        assert 0 < r["observed"] <= threads * ops


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("strategy", ALWAYS_THERE)
def test_peers_that_are_always_there(strategy: str, threads: int) -> None:
    assert strategy in pycounter.available_strategies()
    for inplace in (False, True):
        r = pycounter.run(strategy, threads, 4_000, inplace=inplace)
        assert r["observed"] == threads * 4_000 and r["exact"] is True
    assert pycounter.run("peer:itertools.count", 1, 7)["idiom"] == "next(c)"


def test_every_peer_is_either_available_or_says_why() -> None:
    status = pycounter.peer_status()
    assert set(status) == set(pycounter.PEERS)
    for name in ("itertools.count", "lock+int"):
        assert status[name] is None
    unavailable = pycounter.unavailable_strategies()
    for name, why in status.items():
        strategy = pycounter.PEER_PREFIX + name
        assert strategy in pycounter.strategies()
        if why is None:
            assert strategy in pycounter.available_strategies()
            r = pycounter.run(strategy, 2, 2_000)
            assert r["observed"] == 4_000, (name, r)
        else:
            assert unavailable[strategy] == why
            with pytest.raises(ValueError, match="cannot run here"):
                pycounter.run(strategy, 1, 10)


@pytest.fixture
def fake_peers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A peer whose module does not exist and one that drops every other
    increment, so that the skip and the lost-update report can be seen."""

    class Lossy:
        def __init__(self) -> None:
            self.n = 0
            self.calls = 0

        def inc(self) -> None:
            self.calls += 1
            if self.calls % 2:
                self.n += 1

    missing = pycounter.Peer("test-missing", "percpu_test_no_such_module", lambda m: m.C(),
                             lambda c: 0, ("c.inc()", pycounter.PEERS["atomicx"].method[1]))
    lossy = pycounter.Peer("test-lossy", "threading", lambda m: Lossy(), lambda c: c.n,
                           ("c.inc()", pycounter.PEERS["atomicx"].method[1]))
    monkeypatch.setitem(pycounter.PEERS, missing.name, missing)
    monkeypatch.setitem(pycounter.PEERS, lossy.name, lossy)
    yield
    monkeypatch.undo()
    _refresh()


def test_missing_peer_is_skipped_with_a_reason(fake_peers: None) -> None:
    assert pycounter.peer_status()["test-missing"] == "not installed"
    assert pycounter.unavailable_strategies()["peer:test-missing"] == "not installed"
    assert "peer:test-missing" not in pycounter.available_strategies()
    with pytest.raises(ValueError, match="not installed"):
        pycounter.run("peer:test-missing", 1, 10)


def test_lost_updates_are_reported(fake_peers: None) -> None:
    # One thread: the fake's own loss is then exactly every other call.
    r = pycounter.run("peer:test-lossy", 1, 1_000)
    assert r["expected"] == 1_000 and r["observed"] == 500
    assert r["lost_updates"] == 500 and r["exact"] is False


def test_inplace_add_keeps_identity_and_exact_value_across_threads() -> None:
    for name in sorted(EXACT_COUNTERS):
        c = COUNTERS[name]()
        n, k = 4, 3_000
        barrier = threading.Barrier(n)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                alias = c
                barrier.wait()
                for i in range(k):
                    alias += 3
                    alias -= 1
                if alias is not c:
                    raise AssertionError(f"{name}: += returned another object")
            except BaseException as e:  # surfaced below
                errors.append(e)

        ts = [threading.Thread(target=work) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        assert c.value() == n * k * 2, name


@pytest.mark.parametrize(
    "args, exc",
    [
        (("percpu", 0, 10), ValueError),
        (("percpu", 1025, 10), ValueError),
        (("percpu", 1, -1), ValueError),
        (("percpu", 1.0, 10), TypeError),
        (("percpu", True, 10), TypeError),
        (("percpu", 1, "10"), TypeError),
        (("nope", 1, 10), ValueError),
        (("peer:nope", 1, 10), ValueError),
        ((3, 1, 10), TypeError),
    ],
)
def test_bad_requests(args: tuple[Any, ...], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        pycounter.run(*args)


def test_zero_ops_is_exact() -> None:
    r = pycounter.run("percpu", 2, 0)
    assert r["observed"] == 0 and r["exact"] is True and r["ns_per_increment"] == 0.0


def test_kernel_reports_the_workload_figures() -> None:
    r = pycounter.kernel("atomic", 2, 500, {"inplace": 1})
    assert "strategy" not in r
    assert r["kernel"] == "python" and r["idiom"] == "c += 1"
    assert r["ops"] == 1_000 and r["lost_updates"] == 0 and r["exact"] is True


def test_fallback_without_rseq_is_exact() -> None:
    out = run_python(
        """
        import percpu
        from percpu import pycounter, workloads
        assert percpu.features()["rseq"] is False
        for strategy in ("percpu", "approx", "perthread", "striped"):
            for inplace in (0, 1):
                r = pycounter.run(strategy, 3, 5_000, inplace=inplace)
                assert r["exact"] and r["observed"] == 15_000, (strategy, r)
        print("ok")
        """,
        {"PERCPU_NO_RSEQ": "1"},
    )
    assert out.strip() == "ok"


def test_main_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert pycounter.main(["1,2", "200", "1"]) == 0
    out = capsys.readouterr().out
    for strategy in list(COUNTERS) + ALWAYS_THERE:
        assert f"\n{strategy} " in out
    assert pycounter.main(["x"]) == 2


def test_registered_in_the_harness() -> None:
    w = workloads.WORKLOADS["pycounter"]
    assert set(COUNTERS) <= set(w.strategies)
    assert set(ALWAYS_THERE) <= set(w.strategies)
    assert dict(w.unavailable) == pycounter.unavailable_strategies()
    assert dict(w.params) == {"inplace": 0}
    r = workloads.run("pycounter", "percpu", 2, 1_000, inplace=1)
    assert r["ops"] == 2_000 and r["exact"] is True and r["lost_updates"] == 0
    assert r["seconds"] > 0


def test_missing_peer_shows_in_the_bench_listing(fake_peers: None) -> None:
    from percpu.bench import _cli

    _refresh()
    out = io.StringIO()
    assert _cli.list_command(out) == 0
    text = out.getvalue()
    assert "peer:test-missing (not installed)" in text
    assert "pycounter" in text and "peer:itertools.count" in text

