from __future__ import annotations

import io
import threading
from typing import Any, Callable, Iterator

import pytest

import percpu
from percpu import pycounter, workloads
from percpu.counters import COUNTERS, EXACT_COUNTERS

from .conftest import run_python

ALWAYS_THERE = ["peer:itertools.count", "peer:lock+int", "peer:list.__len__"]


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
    assert r["idiom"] == ("c += 1" if inplace else "c.inc()")
    assert r["seconds"] > 0 and r["ns_per_increment"] > 0
    if strategy in EXACT_COUNTERS:
        assert r["observed"] == threads * ops and r["exact"] is True and r["lost_updates"] == 0
    else:
        # racy: what it keeps is never more than was added (the lost-update
        # report itself is checked against a peer of known loss below).
        assert 0 < r["observed"] <= threads * ops
        assert r["exact"] is (r["observed"] == threads * ops)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("strategy", ALWAYS_THERE)
def test_peers_that_are_always_there(strategy: str, threads: int) -> None:
    assert strategy in pycounter.available_strategies()
    counts = pycounter.PEERS[strategy[len(pycounter.PEER_PREFIX):]].read is not None
    for inplace in (False, True):
        r = pycounter.run(strategy, threads, 4_000, inplace=inplace)
        if counts:
            assert r["observed"] == threads * 4_000 and r["exact"] is True
        else:  # the call baseline
            assert r["observed"] is None and r["exact"] is None and r["ns_per_increment"] > 0
    assert pycounter.run("peer:itertools.count", 1, 7)["idiom"] == "next(c)"


def test_every_peer_is_either_available_or_says_why() -> None:
    status = pycounter.peer_status()
    assert set(status) == set(pycounter.PEERS)
    for name in ("itertools.count", "lock+int", "list.__len__"):
        assert status[name] is None
    unavailable = pycounter.unavailable_strategies()
    for name, why in status.items():
        strategy = pycounter.PEER_PREFIX + name
        assert strategy in pycounter.strategies()
        if why is None:
            assert strategy in pycounter.available_strategies()
            r = pycounter.run(strategy, 2, 2_000)
            if pycounter.PEERS[name].read is None:
                # A baseline: it counts nothing, so there is nothing to check.
                assert r["observed"] is None and r["exact"] is None and r["lost_updates"] is None
            else:
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
    assert dict(w.params) == {"inplace": 0, "bound": 0, "own": 0}
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



class NoInplace:
    """Counts through inc(); has no +=, so ``c += 1`` raises TypeError. The
    lock keeps the count exact where threads run at once (no GIL)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def inc(self) -> None:
        with self.lock:
            self.n += 1


class Rebinding(NoInplace):
    """``c += 1`` returns a new int instead of adding: it does not count."""

    def __add__(self, other: int) -> int:
        return self.n + other


@pytest.fixture
def idiom_peers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    loop_inc = pycounter.PEERS["atomicx"].method[1]
    loop_iadd = pycounter.PEERS["atomicx"].inplace[1]  # type: ignore[index]
    makers: list[tuple[str, Callable[[Any], Any]]] = [
        ("test-noiadd", lambda m: NoInplace()), ("test-rebinding", lambda m: Rebinding())]
    for name, make in makers:
        peer = pycounter.Peer(name, "threading", make, lambda c: c.n,
                              ("c.inc()", loop_inc), ("c += 1", loop_iadd), bind="inc")
        monkeypatch.setitem(pycounter.PEERS, name, peer)
    yield
    monkeypatch.undo()
    _refresh()


def test_a_missing_idiom_is_skipped_with_a_reason_not_a_crash(
        idiom_peers: None, capsys: pytest.CaptureFixture[str]) -> None:
    noiadd = pycounter.idiom_status("peer:test-noiadd")
    assert noiadd["bound"] is None
    assert noiadd["inplace"] is not None and "TypeError" in noiadd["inplace"]
    rebinding = pycounter.idiom_status("peer:test-rebinding")
    assert rebinding["inplace"] is not None and "does not count" in rebinding["inplace"]
    # run() falls back to the plain idiom and says so.
    r = pycounter.run("peer:test-noiadd", 2, 1_000, inplace=1)
    assert r["idiom"] == "c.inc()" and r["observed"] == 2_000
    r = pycounter.run("peer:test-noiadd", 2, 1_000, bound=1)
    assert r["idiom"] == "inc = c.inc; inc()" and r["observed"] == 2_000
    assert pycounter.main(["1,2", "100", "1"]) == 0
    out = capsys.readouterr().out
    assert "# skipped peer:test-noiadd c += 1: c += 1 fails here (TypeError" in out
    assert "# skipped peer:test-rebinding c += 1: c += 1 fails here (does not count" in out
    assert "# skipped peer:lock+int bound method: no method to bind" in out
    assert "\npeer:test-noiadd " in out


def test_bound_and_inplace_together_is_refused() -> None:
    with pytest.raises(ValueError, match="bound"):
        pycounter.run("percpu", 1, 10, inplace=1, bound=1)


@pytest.mark.parametrize("strategy", ["percpu", "racy", "peer:itertools.count", "peer:lock+int"])
def test_own_counters_are_summed(strategy: str) -> None:
    r = pycounter.run(strategy, 3, 2_000, own=1)
    # Each thread alone on its counter: even the racy one loses nothing.
    assert r["shared"] is False and r["observed"] == 6_000 and r["exact"] is True


def test_results_say_which_build_ran_them() -> None:
    r = pycounter.run("percpu", 1, 10)
    assert r["free_threaded"] is pycounter.python_build()["free_threaded"]
    assert r["gil_enabled"] is pycounter.python_build()["gil_enabled"]
    assert isinstance(r["gil_enabled"], bool)


def test_main_table_has_every_form_and_the_scaling(capsys: pytest.CaptureFixture[str]) -> None:
    assert pycounter.main(["1,2", "300", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "GIL" in lines[0] and "2T/1T" in out
    rows = [line.split() for line in lines if line.startswith("percpu ")]
    # shared c.inc(), shared bound, shared c += 1, own c.inc().
    assert [row[1] for row in rows] == ["shared", "shared,", "shared", "own"]
    assert [row[2] for row in rows] == ["c.inc()", "bound", "c", "c.inc()"]
    for row in rows:
        assert float(row[-2]) > 0  # the 2T/1T ratio
        assert row[-1] == "0"  # lost
    base = [line for line in lines if line.startswith("peer:list.__len__ ")]
    assert base and all(line.split()[-1] == "-" for line in base)


def test_a_peer_missing_on_a_free_threaded_build_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = pycounter.Peer("test-ft-missing", "percpu_test_no_such_module", lambda m: m.C(),
                          lambda c: 0, ("c.inc()", pycounter.PEERS["atomicx"].method[1]),
                          needs="Python 3.12+", free_threaded="it needs cffi")
    monkeypatch.setitem(pycounter.PEERS, peer.name, peer)
    why = pycounter.peer_status()[peer.name]
    assert why is not None and why.startswith("not installed; needs Python 3.12+")
    assert ("; on a free-threaded build it needs cffi" in why) is pycounter.python_build()["free_threaded"]
    monkeypatch.undo()
    _refresh()


class FailsInThreads:
    """Counts in the thread that made it; anywhere else inc() raises, as a
    peer that breaks under contention does."""

    def __init__(self) -> None:
        self.n = 0
        self.owner = threading.get_ident()

    def inc(self) -> None:
        if threading.get_ident() != self.owner:
            raise TypeError("not from this thread")
        self.n += 1


def test_a_peer_failing_in_the_table_is_reported_and_dropped(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    peer = pycounter.Peer("test-flaky", "threading", lambda m: FailsInThreads(), lambda c: c.n,
                          ("c.inc()", pycounter.PEERS["atomicx"].method[1]))
    monkeypatch.setitem(pycounter.PEERS, peer.name, peer)
    with pytest.raises(RuntimeError, match="a thread failed"):
        pycounter.run("peer:test-flaky", 1, 10)
    assert pycounter.main(["1", "50", "1"]) == 0
    out = capsys.readouterr().out
    assert "# skipped peer:test-flaky shared: failed at 1 threads (TypeError: not from this thread)" in out
    # Its own counter, made in the thread, works: that row stays.
    rows = [line.split() for line in out.splitlines() if line.startswith("peer:test-flaky ")]
    assert [row[1] for row in rows] == ["own"] and rows[0][-1] == "0"
    monkeypatch.undo()
    _refresh()
