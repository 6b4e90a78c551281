from __future__ import annotations

import threading

import pytest

import percpu
from percpu import _core, _lab

from .conftest import run_python


def test_features_keys_and_types() -> None:
    f = percpu.features()
    assert set(f) >= {"rseq", "membarrier", "cacheline", "nr_cpus", "cpu_source"}
    assert isinstance(f["rseq"], bool)
    assert f["membarrier"] in (None, "expedited", "rseq")
    assert f["cacheline"] in (64, 128)
    assert f["nr_cpus"] == percpu.nr_cpus() >= 1
    assert f["cpu_source"] in ("mm_cid", "rseq", "getcpu", "thread")
    # rseq fast paths need ids from the rseq area.
    assert not f["rseq"] or f["cpu_source"] in ("mm_cid", "rseq")


def test_current_cpu_in_range_from_many_threads() -> None:
    seen: list[int] = []

    def probe() -> None:
        for _ in range(200):
            seen.append(percpu.current_cpu())

    threads = [threading.Thread(target=probe) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 1600
    assert all(0 <= c < percpu.nr_cpus() for c in seen)


def test_nr_cpus_covers_possible_cpus() -> None:
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    highest = max(int(part.split("-")[-1]) for part in text.split(","))
    assert percpu.nr_cpus() >= highest + 1


def test_no_rseq_env_forces_fallback() -> None:
    out = run_python(
        "import percpu; f = percpu.features(); print(f['rseq'], f['cpu_source'], percpu.current_cpu())",
        {"PERCPU_NO_RSEQ": "1"},
    )
    rseq, source, cpu = out.split()
    assert rseq == "False"
    assert source in ("getcpu", "thread")
    assert 0 <= int(cpu) < percpu.nr_cpus()


@pytest.mark.parametrize("threads", [1, 2, 4, 8])
def test_team_runs_every_thread_to_completion(threads: int) -> None:
    r = _lab.team_selftest(threads, 100_000, pin=threads % 2 == 0)
    assert r["done"] == [100_000] * threads
    assert r["cells"] == [100_000] * threads
    assert r["wall_ns"] > 0


def test_team_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _lab.team_selftest(0, 10)
    with pytest.raises(ValueError):
        _lab.team_selftest(2, -1)
    with pytest.raises(ValueError):
        _lab.hammer(percpu.AtomicCounter(), 2, 10, run_ns=-1)
    with pytest.raises(ValueError):
        _lab.hammer(percpu.AtomicCounter(), 2, 10, interrupt_ns=-1)


def test_team_runs_until_its_deadline() -> None:
    # Time-bounded: no thread stops before the deadline while it has ops
    # left, and what the threads report doing is what they added.
    c = percpu.AtomicCounter()
    r = _lab.hammer(c, 2, 1 << 50, run_ns=10_000_000)
    assert r["wall_ns"] >= 10_000_000
    assert c.value() == sum(r["done"]) == r["expected"] > 0


def test_team_ops_cap_a_deadline_run() -> None:
    # The cap comes first when it is small (the run does not wait out the hour).
    c = percpu.AtomicCounter()
    r = _lab.hammer(c, 3, 5_000, mixed=True, run_ns=3600 * 10**9)
    assert r["done"] == [5_000] * 3
    assert c.value() == r["expected"] == 3 * (5_000 - 2 * (5_000 // 4))


def test_team_interruptions_change_no_result() -> None:
    # The interrupt signal's handler pauses the thread and returns: loops
    # carry on exactly (one thread, so nothing can race).
    c = percpu.AtomicCounter()
    r = _lab.hammer(c, 1, 1 << 50, run_ns=20_000_000, interrupt_ns=100_000)
    assert c.value() == r["done"][0] > 0


def test_synchronize_counts_grace_periods() -> None:
    before = _core.registry_stats()["grace_periods"]
    _core.synchronize()
    _core.synchronize()
    assert _core.registry_stats()["grace_periods"] == before + 2


def test_get_include_has_header() -> None:
    import os

    assert os.path.exists(os.path.join(percpu.get_include(), "percpu.h"))
