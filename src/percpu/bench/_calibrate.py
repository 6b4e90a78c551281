"""Fitting the packet model to the seed on the machine at hand.

The 2005 patch set measured tbench on loopback with 8 clients on 8-way
machines: ``bigref+atomic`` +6% and ``bigref+percpu`` +55% over
``atomic+atomic`` (percpu._tbench). The packet model has two free
parameters that set those two gains on a given machine: ``work`` (the rest of
the stack per packet, which dilutes every reference operation) and
``dst_holds`` (route holds per packet against the one device hold, which sets
how much more the route's count weighs than the device's).

The fit runs at ``seed_threads(cpus)`` threads (8, or every CPU where there
are fewer). For each candidate ``dst_holds`` (and ``dev_holds``, 1 unless
more are asked for: where contention is far from additive, the ratio of the
two counts that the seed implies falls between two integers, and a second
device hold per packet, as for a request and its reply, reaches it) it finds
the ``work`` at which
``bigref+percpu`` gains the seed's 55% (bracketing, then a secant step in the
model's own coordinates: with T(w) = a + w per packet, T_aa / T_bp = 1 + g
is solved exactly from two measured points), measures the three strategies
there, re-measures the best three with twice the repeats (one measurement
of a 6% step is too noisy to choose by), and keeps the one whose two
residuals (model minus seed, in percentage points) have the smallest sum of
squares in that second measurement. Every measurement is a
time-bounded run (``percpu.workloads.run_timed``), repeated and interleaved
across the strategies so that a burst of load falls on all of them.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

from percpu import workloads
from percpu._tbench import BASELINE, PACKET_ORDER, SEED_GAINS, SEED_GAINS_X460, seed_threads
from percpu.report import stats

__all__ = ["Candidate", "Fit", "calibrate", "print_fit"]

WORKLOAD = "packet"
#: The gain the work is solved for; the other seed gain is the check.
TARGET = "bigref+percpu"
CHECK = "bigref+atomic"
#: How many of the best candidates are measured again before one is chosen.
FINALISTS = 3

#: One measurement: strategies, params -> ops/s samples per strategy.
Measure = Callable[[Sequence[str], Mapping[str, int]], dict[str, list[float]]]


@dataclass
class Candidate:
    """The best work found for one (dev_holds, dst_holds), and the gains
    measured there."""

    dev_holds: int
    dst_holds: int
    work: int
    gains: dict[str, float] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)   # model - seed, in points
    note: str = ""

    @property
    def score(self) -> float:
        """Sum of squared residuals (points^2); inf when not measured."""
        if len(self.residuals) < len(SEED_GAINS):
            return math.inf
        return math.fsum(r * r for r in self.residuals.values())


@dataclass
class Fit:
    """The calibration's result: the parameters, the gains measured with
    them (mean of the repeats), the residuals against the seed, and the
    Welch p-value of each step of the seed's ordering."""

    threads: int
    cpus: int
    params: dict[str, int]
    ops_per_sec: dict[str, float]
    ops_per_sec_std: dict[str, float]
    gains: dict[str, float]
    seed: dict[str, float]
    residuals: dict[str, float]
    p_values: dict[str, float | None]
    candidates: list[Candidate]
    finalists: list[Candidate]
    seconds: float
    repeat: int
    load_average: float | None = None
    x460: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def bench_args(self) -> str:
        """The ``--param`` options that run a sweep with this fit."""
        return " ".join(f"--param {WORKLOAD}.{k}={v}" for k, v in self.params.items())


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def timed_measure(threads: int, seconds: float, repeat: int) -> Measure:
    """Measurements by time-bounded runs: ``repeat`` rounds, each strategy
    once per round, in turn."""
    def measure(strategies: Sequence[str], params: Mapping[str, int]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {s: [] for s in strategies}
        for _ in range(repeat):
            for s in strategies:
                r = workloads.run_timed(WORKLOAD, s, threads, seconds, **params)
                out[s].append(float(r["ops_per_sec"]))
        return out
    return measure


def _gain(samples: Mapping[str, list[float]], strategy: str) -> float:
    return stats.mean(samples[strategy]) / stats.mean(samples[BASELINE]) - 1.0


def _solve(p1: tuple[int, float], p2: tuple[int, float], target: float) -> float | None:
    """The work at which the gain is ``target``, from two measured (work,
    gain) points, with T(w) = a_s + w per packet for each strategy s: then
    T_aa / T_bp = (A + w) / (B + w) = 1 + g, linear in A and B."""
    (w1, g1), (w2, g2) = p1, p2
    if g1 == g2 or target <= 0:
        return None
    b = (g1 * w1 - g2 * w2) / (g2 - g1)
    a = g1 * w1 + (1 + g1) * b
    return (a - (1 + target) * b) / target


def fit_work(measure: Measure, params: Mapping[str, int], target: float, max_work: int,
             steps: int) -> tuple[int, float, str]:
    """The work (>= 0) at which TARGET's gain over BASELINE is ``target``:
    (work, gain measured there, note)."""
    pair = (BASELINE, TARGET)

    def gain_at(work: int) -> float:
        return _gain(measure(pair, {**params, "work": work}), TARGET)

    lo, g_lo = 0, gain_at(0)
    if g_lo <= target:
        return lo, g_lo, "below the seed's gain even without other work"
    hi = max(16, 16 * (params.get("dev_holds", 1) + params.get("dst_holds", 1)))
    g_hi = gain_at(min(hi, max_work))
    hi = min(hi, max_work)
    while g_hi > target and hi < max_work:
        lo, g_lo = hi, g_hi
        hi = min(hi * 4, max_work)
        g_hi = gain_at(hi)
    if g_hi > target:
        return hi, g_hi, f"above the seed's gain even at work={max_work}"
    for _ in range(steps):
        guess = _solve((lo, g_lo), (hi, g_hi), target)
        if guess is None or not lo < guess < hi:
            guess = (lo + hi) / 2
        mid = int(round(guess))
        if mid <= lo or mid >= hi:
            break
        g_mid = gain_at(mid)
        if g_mid > target:
            lo, g_lo = mid, g_mid
        else:
            hi, g_hi = mid, g_mid
    # The bracket's ends straddle the target: the model's solution between
    # them, else the nearer end.
    guess = _solve((lo, g_lo), (hi, g_hi), target)
    if guess is not None and lo <= guess <= hi:
        work = int(round(guess))
        return work, (g_lo if abs(work - lo) <= abs(work - hi) else g_hi), ""
    return (lo, g_lo, "") if abs(g_lo - target) <= abs(g_hi - target) else (hi, g_hi, "")


def _residuals(gains: Mapping[str, float]) -> dict[str, float]:
    return {s: 100.0 * (gains[s] - SEED_GAINS[s]) for s in SEED_GAINS if s in gains}


def calibrate(
    threads: int | None = None,
    dst_holds: Iterable[int] = range(1, 9),
    dev_holds: Iterable[int] = (1,),
    seconds: float = 0.2,
    repeat: int = 3,
    steps: int = 4,
    max_work: int = 1 << 16,
    params: Mapping[str, int] | None = None,
    measure: Measure | None = None,
    log: Callable[[str], None] | None = None,
) -> Fit:
    """Fit ``work`` and ``dst_holds`` of the packet model to the seed's
    gains at ``threads`` (default: 8, or every CPU where there are fewer).

    ``params`` fixes the model's other parameters (default: the registry's);
    ``measure`` replaces the time-bounded runs (tests). Raises ValueError for
    a bad argument.
    """
    cpus = _usable_cpus()
    if threads is None:
        threads = seed_threads(cpus)
    holds = sorted(set(dst_holds))
    devs = sorted(set(dev_holds))
    spec = workloads.WORKLOADS[WORKLOAD]
    for name, values in (("dst_holds", holds), ("dev_holds", devs)):
        if not values or any(not spec.minimum(name) <= k <= spec.maximum(name) for k in values):
            raise ValueError(f"{name} must be in {spec.minimum(name)}..{spec.maximum(name)}")
    if not 0 < threads <= workloads.MAX_THREADS:
        raise ValueError(f"threads must be in 1..{workloads.MAX_THREADS}, not {threads}")
    if not (seconds > 0 and repeat >= 1 and steps >= 0 and max_work >= 1):
        raise ValueError("seconds must be > 0, repeat >= 1, steps >= 0, max_work >= 1")
    base = {**spec.params, **(params or {})}
    measure = measure or timed_measure(threads, seconds, repeat)
    say = log or (lambda _: None)
    target = SEED_GAINS[TARGET]

    candidates = []
    for d in devs:
        for k in holds:
            p = {**base, "dev_holds": d, "dst_holds": k}
            work, _, note = fit_work(measure, p, target, max_work, steps)
            samples = measure(PACKET_ORDER, {**p, "work": work})
            gains = {s: _gain(samples, s) for s in PACKET_ORDER[1:]}
            c = Candidate(d, k, work, gains, _residuals(gains), note)
            candidates.append(c)
            say(f"dev_holds={d} dst_holds={k}: work={work}: " + ", ".join(
                f"{s} {100 * g:+.1f}% ({c.residuals[s]:+.1f})" for s, g in gains.items())
                + (f" [{note}]" if note else ""))
    # The verdict: the best few again, twice the repeats, and the best of
    # those second measurements.
    finalists = []
    measured = {}
    for c in sorted(candidates, key=lambda c: c.score)[:FINALISTS]:
        p = {**base, "dev_holds": c.dev_holds, "dst_holds": c.dst_holds, "work": c.work}
        first, second = measure(PACKET_ORDER, p), measure(PACKET_ORDER, p)
        samples = {s: first[s] + second[s] for s in PACKET_ORDER}
        gains = {s: _gain(samples, s) for s in PACKET_ORDER[1:]}
        f = Candidate(c.dev_holds, c.dst_holds, c.work, gains, _residuals(gains), c.note)
        finalists.append(f)
        measured[id(f)] = (p, samples)
        say(f"again: dev_holds={f.dev_holds} dst_holds={f.dst_holds} work={f.work}: " + ", ".join(
            f"{s} {100 * g:+.1f}% ({f.residuals[s]:+.1f})" for s, g in gains.items()))
    best = min(finalists, key=lambda c: c.score)
    chosen, samples = measured[id(best)]
    gains = best.gains
    p_values: dict[str, float | None] = {}
    for a, b in zip(PACKET_ORDER, PACKET_ORDER[1:]):
        test = stats.welch_test(samples[a], samples[b])
        p_values[f"{a} -> {b}"] = None if test is None else test[1]
    try:
        load: float | None = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = None
    ordered = {k: chosen[k] for k in spec.params}
    return Fit(
        threads=threads,
        cpus=cpus,
        params=ordered,
        ops_per_sec={s: stats.mean(v) for s, v in samples.items()},
        ops_per_sec_std={s: stats.stdev(v) for s, v in samples.items()},
        gains=gains,
        seed=dict(SEED_GAINS),
        residuals=_residuals(gains),
        p_values=p_values,
        candidates=candidates,
        finalists=finalists,
        seconds=seconds,
        repeat=repeat,
        load_average=load,
        x460=dict(SEED_GAINS_X460),
    )


def print_fit(fit: Fit, out: TextIO | None = None) -> None:
    """The fit, its residuals and the seed's figures, as a table."""
    out = out or sys.stdout
    load = f", load average {fit.load_average:.2f}" if fit.load_average is not None else ""
    print(f"packet model fitted at {fit.threads} threads on {fit.cpus} CPUs "
          f"({fit.repeat} x {fit.seconds:g} s runs per strategy and point{load})", file=out)
    chosen = (fit.params["dev_holds"], fit.params["dst_holds"], fit.params["work"])
    for title, rows in (("candidates", fit.candidates),
                        (f"measured again ({2 * fit.repeat} runs each)", fit.finalists)):
        print(f"{title} (dev_holds, dst_holds: work, gains, residuals in points):", file=out)
        for c in rows:
            mark = " <- fit" if rows is fit.finalists and (c.dev_holds, c.dst_holds, c.work) == chosen else ""
            gains = ", ".join(f"{s} {100 * g:+.1f}% ({c.residuals.get(s, math.nan):+.1f})"
                              for s, g in c.gains.items())
            note = f" [{c.note}]" if c.note else ""
            print(f"  {c.dev_holds:2d} {c.dst_holds:3d}: work={c.work:<7d} {gains}{note}{mark}", file=out)
    print("fit: " + ", ".join(f"{k}={v}" for k, v in fit.params.items()), file=out)
    print(f"{'strategy':<16} {'ops/s':>12} {'model':>8} {'seed x445':>10} {'residual':>9} "
          f"{'seed x460':>10}  step p-value", file=out)
    previous = None
    for s in PACKET_ORDER:
        ops = f"{fit.ops_per_sec[s]:.4g}"
        if s == BASELINE:
            print(f"{s:<16} {ops:>12} {'':>8} {'':>10} {'':>9} {'':>10}", file=out)
        else:
            seed = fit.seed.get(s)
            x460 = fit.x460.get(s)
            p = fit.p_values.get(f"{previous} -> {s}")
            print(f"{s:<16} {ops:>12} {100 * fit.gains[s]:>+7.1f}% "
                  f"{'' if seed is None else f'{100 * seed:+.0f}%':>10} "
                  f"{fit.residuals.get(s, math.nan):>+8.1f}  "
                  f"{'' if x460 is None else f'{100 * x460:+.0f}%':>10}  "
                  f"{'-' if p is None else f'{p:.2g}'}", file=out)
        previous = s
    print(f"sweep with it: python -m percpu.bench run --workloads packet {fit.bench_args()}", file=out)


def save(fit: Fit, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fit.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
