"""Overlap canaries: a concurrency test that passes must show it could have failed.

An exactness test run by threads that never interleave mid-operation passes
whether the code is exact or not (8 threads of 40k adds each finish inside one
scheduler tick). So every native-thread exactness test runs, in its own
configuration (threads, run length, interruptions), a deliberately racy add
as well, and passes only when that add lost updates: the threads did
interleave in the middle of read-modify-writes. When the racy add loses
nothing the test retries with a longer run, up to a bound, and then fails as
inconclusive instead of passing.

Runs are time-bounded (the team's ``run_ns``), not counted, so that they last
long enough to be preempted and no longer whatever the machine's speed or
load; and the threads are interrupted every ``INTERRUPT_NS`` by a signal
whose handler gives up the CPU, so that another thread runs in the middle of
an add thousands of times a second instead of at the rare scheduler ticks.
"""
from __future__ import annotations

from typing import Callable

import pytest

from percpu import RacyCounter
from percpu._lab import hammer

#: Run lengths tried in turn, ns: the threads of a run share the machine for
#: this long (tens of milliseconds: many preemptions, several ticks).
RUN_NS = (20_000_000, 80_000_000, 320_000_000)
#: How often each thread is interrupted, ns (see the team's interrupt_ns).
INTERRUPT_NS = 200_000
#: The ops cap of a time-bounded run: never reached.
CAP = 1 << 50


def expected_total(done: list[int], mixed: bool) -> int:
    """What threads that did ``done`` ops of hammer()'s loop add up to (a
    mixed thread subtracts 1 on each fourth op)."""
    return sum(n - 2 * (n // 4) if mixed else n for n in done)


def racy_loss(threads: int, run_ns: int, *, mixed: bool = False, pin: bool = False,
              interrupt_ns: int = INTERRUPT_NS) -> int:
    """How far a RacyCounter hammered in this configuration ends from the
    ops its threads did (0: no update lost)."""
    c = RacyCounter()
    r = hammer(c, threads, CAP, mixed=mixed, pin=pin, run_ns=run_ns, interrupt_ns=interrupt_ns)
    return expected_total(r["done"], mixed) - c.value()


def require_overlap(threads: int, *, mixed: bool = False, pin: bool = False,
                    interrupt_ns: int = INTERRUPT_NS, what: str = "") -> int:
    """The canary of a hammer() test: the first run length of RUN_NS at which
    a racy add in this configuration loses updates, to run the test at.
    Fails the test as inconclusive when none does."""
    if threads < 2:
        raise ValueError("one thread cannot interleave with itself")
    tried = []
    for run_ns in RUN_NS:
        lost = racy_loss(threads, run_ns, mixed=mixed, pin=pin, interrupt_ns=interrupt_ns)
        tried.append(f"{run_ns // 1_000_000} ms: {lost} lost")
        if lost != 0:
            print(f"canary{' ' + what if what else ''}: {threads} threads, {', '.join(tried)}")
            return run_ns
    pytest.fail(f"inconclusive: a racy add on {threads} threads lost nothing "
                f"({', '.join(tried)}), so this run cannot show a lost update either")


def require_embedded_overlap(run: Callable[[int], dict], what: str = "") -> dict:
    """The canary of a kernel that carries its own racy count (the lab's
    reference kernels report ``canary_lost``): ``run(run_ns)`` runs the
    kernel for that long, makes the test's checks (so a failure of the code
    under test fails at once, whatever the canary says) and returns the
    result. Called for each run length of RUN_NS until the racy count lost
    updates; fails as inconclusive when it never does."""
    tried = []
    for run_ns in RUN_NS:
        res = run(run_ns)
        tried.append(f"{run_ns // 1_000_000} ms: {res['canary_lost']} lost")
        if res["canary_lost"] != 0:
            print(f"canary{' ' + what if what else ''}: {', '.join(tried)}")
            return res
    pytest.fail(f"inconclusive: the racy count of this run lost nothing ({', '.join(tried)}), "
                "so the threads may never have interleaved")
