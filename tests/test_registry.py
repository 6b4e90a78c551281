"""The thread registry after a thread's exit.

A thread's record goes back to the registry from a pthread key destructor.
Other key destructors may run after that one (C libraries, C++ thread_local
objects of other keys) and use percpu: they must not reach the handed-back
record, which another thread may own by then (its per-thread counter slot,
its read-side sections). The lab's probe thread uses the registry, exits, and
uses it again from a key destructor that runs after the registry's.
"""
from __future__ import annotations

from percpu import PercpuRef, PerThreadCounter, _core, _lab

from .conftest import run_python


def check_after_exit() -> None:
    counter = PerThreadCounter()
    ref = PercpuRef()
    live = _core.registry_stats()["live"]
    res = _lab._registry_after_exit(counter, ref)
    assert res["had_record"] and res["rounds"] >= 2, res
    # The exiting thread, its record handed back, gets none: the shared paths.
    assert not res["later_same"] and not res["later_foreign"], res
    assert res["later_null"], res
    # No read-side section opened on the handed-back record.
    assert res["seq_after"] == res["seq_before"], res
    # And everything still counts exactly.
    assert res["ref_errors"] == 0, res
    assert counter.value() == 2
    assert ref.value() == 1
    ref.kill()
    assert ref.released
    # The record went back once: none is left behind or lost.
    assert _core.registry_stats()["live"] == live


def test_record_not_used_after_it_was_handed_back() -> None:
    check_after_exit()


def test_record_not_used_after_it_was_handed_back_fallback() -> None:
    # Without rseq the reference's get/put open read-side sections on the
    # record: on a handed-back one they would hide from a grace period run
    # for the thread that owns it next.
    out = run_python(
        """
        import percpu
        from tests.test_registry import check_after_exit
        assert not percpu.features()["rseq"]
        for _ in range(3):
            check_after_exit()
        print("ok")
        """,
        {"PERCPU_NO_RSEQ": "1", "PYTHONPATH": _tests_root()},
    )
    assert out.strip() == "ok"


def _tests_root() -> str:
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def test_records_are_not_lost_at_exit() -> None:
    # More exiting threads than the registry has records, one after the
    # other: each must find a record, so each exit gave its record back (a
    # thread that registered again late in its exit would keep one forever).
    stats = _core.registry_stats()
    for i in range(stats["capacity"] + 16):
        res = _lab._registry_after_exit(PerThreadCounter(), PercpuRef())
        assert res["had_record"] and res["later_null"], (i, res)
    assert _core.registry_stats()["live"] == stats["live"]
