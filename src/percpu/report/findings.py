"""Findings: short sentences computed from the data, never written by hand.

Each sentence states a measured fact and says "not significant" where Welch's
t-test cannot tell the two points apart, so a report never claims a win that
is within the noise.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from percpu._checks import check_instances
from percpu._tbench import CONTROL_2005, LAYOUT_CONTROLS, PACKET_ORDER, SEED_GAINS, seed_threads
from percpu.report import formatting as fmt
from percpu.report import stats
from percpu.report.loading import Point, ResultFile, baseline_for

#: The per-CPU flavour compared with the baseline on each workload.
PERCPU_STRATEGY = {"packet": "bigref+percpu"}
#: tbench gains the 2005 patch set reported on 8-way machines, over atomic+atomic.
PACKET_SEED_GAINS = SEED_GAINS
#: A fairness below this at some thread count is worth a finding.
UNFAIR = 0.8


def false_sharing_triples(workload: str) -> list[tuple[str, str, str]]:
    """(2005 layout, padded atomic, per-CPU) strategy triples of ``workload``:
    the false-sharing control, what it controls for, and the per-CPU flavour
    whose gain it puts in proportion."""
    percpu = PERCPU_STRATEGY.get(workload, "percpu")
    if workload == "packet":
        return [(CONTROL_2005, "+".join(LAYOUT_CONTROLS[c] for c in CONTROL_2005.split("+")), percpu)]
    return [(control, padded, percpu) for control, padded in LAYOUT_CONTROLS.items()]


def _tag(sig: bool | None) -> str:
    if sig is None:
        return " (too few values to test)"
    return "" if sig else " (not significant: within noise)"


def significant(a: Point, b: Point) -> bool | None:
    return stats.is_significant(a.throughput_samples, b.throughput_samples)


def inexact_strategies(points: Sequence[Point]) -> set[str]:
    """Strategies that lose updates: never the answer to "which is fastest"."""
    bad = {p.strategy for p in points if p.exact is False}
    bad |= {p.strategy for p in points if p.strategy == "racy"}
    return bad


def fastest(file: ResultFile, workload: str) -> str | None:
    points = file.of(workload)
    if not points:
        return None
    top = max(p.threads for p in points)
    inexact = inexact_strategies(points)
    ranked = sorted(
        (p for p in points if p.threads == top and p.strategy not in inexact),
        key=lambda p: p.ops_mean,
        reverse=True,
    )
    if not ranked:
        return None
    best = ranked[0]
    text = (
        f"`{workload}` at {fmt.plural(top, 'thread')}: `{best.strategy}` is the fastest exact strategy, "
        f"{fmt.ops(best.ops_mean)}"
    )
    if len(ranked) > 1:
        second = ranked[1]
        text += (
            f", {fmt.ratio(best.ops_mean / second.ops_mean)} the next one "
            f"(`{second.strategy}`, {fmt.ops(second.ops_mean)}){_tag(significant(best, second))}"
        )
    return text + "."


def percpu_over_baseline(file: ResultFile, workload: str) -> str | None:
    baseline = baseline_for([file], workload)
    candidate = PERCPU_STRATEGY.get(workload, "percpu")
    pairs = []
    for threads in sorted({p.threads for p in file.of(workload)}):
        base = file.get(workload, baseline, threads)
        point = file.get(workload, candidate, threads)
        if base is not None and point is not None:
            pairs.append((threads, point, base))
    if not pairs:
        return None
    parts = [
        f"{fmt.ratio(p.ops_mean / b.ops_mean)} at {fmt.plural(t, 'thread')}{_tag(significant(p, b))}"
        for t, p, b in pairs
    ]
    return f"`{workload}`: `{candidate}` over `{baseline}`: " + ", ".join(parts) + "."


def _step(a: Point, b: Point) -> str:
    """`b` over `a` in throughput, with Welch's p where there are values to test."""
    test = stats.welch_test(a.throughput_samples, b.throughput_samples)
    p = "" if test is None else f", p={test[1]:.2g}"
    return f"`{b.strategy}` {fmt.percent_change(b.ops_mean / a.ops_mean)} over `{a.strategy}`{p}"


def packet_ordering(file: ResultFile) -> str | None:
    """Whether packet shows the seed's ordering atomic+atomic < bigref+atomic < bigref+percpu."""
    counts = sorted({p.threads for p in file.of("packet")})
    verdicts: list[tuple[int, bool, list[Point]]] = []
    for threads in counts:
        line = [file.get("packet", s, threads) for s in PACKET_ORDER]
        if any(p is None for p in line):
            continue
        points = [p for p in line if p is not None]
        holds = all(a.ops_mean < b.ops_mean for a, b in zip(points, points[1:]))
        verdicts.append((threads, holds, points))
    if not verdicts:
        return None
    threads, holds, (aa, ba, bp) = verdicts[-1]
    gains = ", ".join(
        f"`{p.strategy}` {fmt.percent_change(p.ops_mean / aa.ops_mean)} over `{aa.strategy}`"
        f"{_tag(significant(p, aa))}"
        for p in (ba, bp)
    )
    order = " < ".join(f"`{s}`" for s in PACKET_ORDER)
    if holds:
        steps = [(a, b) for a, b in ((aa, ba), (ba, bp)) if significant(a, b) is not True]
        verdict = "holds"
        if steps:
            verdict += " in the means, but " + " and ".join(
                f"the step `{a.strategy}` -> `{b.strategy}` is not significant" for a, b in steps
            )
        # Each step over the one before it, then the whole way.
        gains = "; ".join(_step(a, b) for a, b in ((aa, ba), (ba, bp))) + (
            f"; `{bp.strategy}` {fmt.percent_change(bp.ops_mean / aa.ops_mean)} over "
            f"`{aa.strategy}` in all")
    else:
        broken = [f"`{a.strategy}` >= `{b.strategy}`" for a, b in ((aa, ba), (ba, bp)) if a.ops_mean >= b.ops_mean]
        verdict = "does not hold (" + ", ".join(broken) + ")"
    text = (
        f"`packet` ordering at {fmt.plural(threads, 'thread')}: the seed's {order} {verdict}: {gains}. "
        f"The 2005 patch set measured {fmt.percent_change(1 + SEED_GAINS['bigref+atomic'])} "
        f"(bigref netdev) and {fmt.percent_change(1 + SEED_GAINS['bigref+percpu'])} "
        f"(with per-CPU dst counts too) in tbench on 8-way machines."
    )
    if len(verdicts) > 1:
        held = sum(1 for _, h, _ in verdicts if h)
        text += f" The ordering holds at {held} of {len(verdicts)} thread counts."
    return text


def model_threads(file: ResultFile) -> int | None:
    """The thread count that stands for the seed's 8 clients in ``file``: 8,
    or the machine's CPU count where it has fewer; None when the packet
    points do not include it."""
    points = file.of("packet")
    cpus = [p.number("percpu_nr_cpus") for p in points]
    known = [int(c) for c in cpus if c]
    if not known:
        return None
    threads = seed_threads(min(known))
    return threads if any(p.threads == threads for p in points) else None


def model_vs_seed(file: ResultFile) -> list[tuple[str, Point, Point, float, float | None]]:
    """(strategy, point, baseline point, gain, Welch p) for the seed's
    strategies at ``model_threads``; empty when the points are missing."""
    threads = model_threads(file)
    if threads is None:
        return []
    base = file.get("packet", PACKET_ORDER[0], threads)
    if base is None:
        return []
    rows = []
    for strategy in PACKET_ORDER[1:]:
        p = file.get("packet", strategy, threads)
        if p is None:
            continue
        test = stats.welch_test(p.throughput_samples, base.throughput_samples)
        rows.append((strategy, p, base, p.ops_mean / base.ops_mean - 1, None if test is None else test[1]))
    return rows


def model_vs_seed_finding(file: ResultFile) -> str | None:
    rows = model_vs_seed(file)
    if not rows:
        return None
    threads = rows[0][1].threads
    parts = [
        f"`{s}` {fmt.percent_change(1 + g)} (seed {fmt.percent_change(1 + SEED_GAINS[s])}, "
        f"residual {100 * (g - SEED_GAINS[s]):+.1f} points){_tag(None if pv is None else pv < stats.ALPHA)}"
        for s, _, _, g, pv in rows
    ]
    params = rows[0][1].params
    shown = ", ".join(f"{k}={params[k]}" for k in ("work", "dev_holds", "dst_holds", "routes") if k in params)
    return (f"Model vs seed at {fmt.plural(threads, 'thread')} (`packet`{', ' + shown if shown else ''}): "
            + "; ".join(parts) + ".")


def false_sharing(file: ResultFile, workload: str) -> list[tuple[int, Point, Point, Point]]:
    """(threads, 2005-layout point, padded point, per-CPU point) at each
    thread count where all three were measured."""
    out = []
    for control, padded, percpu in false_sharing_triples(workload):
        for threads in sorted({p.threads for p in file.of(workload)}):
            trio = [file.get(workload, s, threads) for s in (control, padded, percpu)]
            if all(p is not None for p in trio):
                c, a, q = trio
                assert c is not None and a is not None and q is not None
                out.append((threads, c, a, q))
    return out


def padding_share(control: Point, padded: Point, percpu: Point) -> float | None:
    """How much of the per-CPU strategy's gain over the 2005 layout the
    padded atomic alone gets (1.0: all of it; None when per-CPU gains
    nothing over the 2005 layout)."""
    total = percpu.ops_mean - control.ops_mean
    if total <= 0:
        return None
    return (padded.ops_mean - control.ops_mean) / total


def false_sharing_finding(file: ResultFile, workload: str) -> str | None:
    rows = false_sharing(file, workload)
    if not rows:
        return None
    threads, c, a, q = max(rows, key=lambda r: r[0])
    share = padding_share(c, a, q)
    text = (
        f"`{workload}` false sharing vs true contention at {fmt.plural(threads, 'thread')}: "
        f"padding the atomic (`{c.strategy}` -> `{a.strategy}`) gains "
        f"{fmt.percent_change(a.ops_mean / c.ops_mean)}{_tag(significant(a, c))}, "
        f"`{q.strategy}` {fmt.percent_change(q.ops_mean / c.ops_mean)} over the 2005 layout"
        f"{_tag(significant(q, c))}"
    )
    if share is not None:
        text += f": the padded atomic alone gets {100 * share:.0f}% of the per-CPU gain"
    return text + "."


def fairness_finding(file: ResultFile) -> str | None:
    """The least fair hot-line strategy of each workload, where it falls below UNFAIR."""
    parts = []
    for workload in file.workloads():
        measured = [p for p in file.of(workload) if p.fairness is not None and p.hot_line]
        if not measured:
            continue
        worst = min(measured, key=lambda p: p.fairness or 0.0)
        if (worst.fairness or 0.0) < UNFAIR:
            parts.append(f"`{workload}/{worst.strategy}` at {fmt.plural(worst.threads, 'thread')} "
                         f"{worst.fairness:.2f}")
    measured_any = any(p.fairness is not None for p in file.points)
    if not measured_any:
        return None
    if not parts:
        return (f"Fairness (fewest / most ops per thread in a time-bounded run): every strategy with a "
                f"hot line stayed at or above {UNFAIR}.")
    return ("Fairness (fewest / most ops per thread in a time-bounded run) below "
            f"{UNFAIR} for a hot line or lock: " + "; ".join(parts) + ".")


def unregister_latency(file: ResultFile) -> str | None:
    points = [p for p in file.of("netdev") if p.number("percpu_unregister_latency_mean_us") is not None]
    if not points:
        return None
    top = max(p.threads for p in points)
    at_top = sorted(
        (p for p in points if p.threads == top),
        key=lambda p: p.number("percpu_unregister_latency_mean_us") or 0.0,
    )
    parts = []
    for p in at_top:
        mean_us = p.number("percpu_unregister_latency_mean_us") or 0.0
        max_us = p.number("percpu_unregister_latency_max_us")
        part = f"`{p.strategy}` {mean_us:.3g} us"
        if max_us is not None:
            part += f" (max {max_us:.3g} us)"
        parts.append(part)
    text = f"`netdev` unregister latency at {fmt.plural(top, 'thread')}, mean: " + ", ".join(parts) + "."
    base = next((p for p in at_top if p.strategy == "atomic"), None)
    slow = [p for p in at_top if p.strategy != "atomic"]
    if base is not None and slow:
        base_us = base.number("percpu_unregister_latency_mean_us") or 0.0
        if base_us > 0:
            worst = slow[-1]
            worst_us = worst.number("percpu_unregister_latency_mean_us") or 0.0
            text += (
                f" `{worst.strategy}` takes {fmt.ratio(worst_us / base_us)} as long as `atomic`: "
                "the price of leaving per-CPU mode (a grace period) is paid at unregister."
                if worst_us > base_us
                else " No per-CPU strategy is slower to unregister than `atomic`."
            )
    return text


def memory(file: ResultFile) -> list[str]:
    out = []
    for key, what in (("percpu_bytes_per_object", "bytes per counter"), ("percpu_bytes_per_entry", "bytes per route entry")):
        for workload in file.workloads():
            values: dict[str, float] = {}
            for p in sorted(file.of(workload), key=lambda p: p.threads):
                value = p.number(key)
                if value is not None:
                    values[p.strategy] = float(value)
            if not values:
                continue
            small = min(values, key=lambda s: values[s])
            large = max(values, key=lambda s: values[s])
            text = f"`{workload}` {what}: {values[small]:.4g} (`{small}`)"
            if large != small:
                text += f" to {values[large]:.4g} (`{large}`)"
            out.append(text + ".")
    return out


def exactness(file: ResultFile) -> str | None:
    checked = [p for p in file.points if p.exact is not None]
    if not checked:
        return None
    lossy: dict[tuple[str, str], list[Point]] = {}
    for p in checked:
        if p.exact is False:
            lossy.setdefault((p.workload, p.strategy), []).append(p)
    if not lossy:
        return f"Every one of the {len(checked)} checked points counted exactly (no lost updates)."
    parts = []
    for (workload, strategy), points in sorted(lossy.items()):
        worst = max(points, key=lambda p: p.number("percpu_lost_updates") or 0)
        lost = worst.number("percpu_lost_updates")
        detail = f"lost {int(lost)} updates at {fmt.plural(worst.threads, 'thread')}" if lost else "inexact"
        parts.append(f"`{workload}/{strategy}` {detail}")
    others = len({(p.workload, p.strategy) for p in checked}) - len(lossy)
    return "Lost updates: " + "; ".join(parts) + f". The other {others} checked strategies counted exactly."


def oversubscription(file: ResultFile) -> str | None:
    cpus = [p.number("percpu_nr_cpus") for p in file.points]
    known = [int(c) for c in cpus if c]
    if not known:
        return None
    nr = min(known)
    top = max(p.threads for p in file.points)
    if top <= nr:
        return None
    return (
        f"The machine has {fmt.plural(nr, 'CPU')} and the sweep goes up to {top} threads: points above "
        f"{nr} threads measure preemption and sharing of CPUs as much as contention."
    )


def from_python(file: ResultFile) -> str | None:
    points = file.of("pycounter")
    if not points:
        return None
    inexact = inexact_strategies(points)
    parts = []
    for threads in sorted({p.threads for p in points})[:2]:
        here = [p for p in points if p.threads == threads and p.strategy not in inexact]
        own = [p for p in here if not p.strategy.startswith("peer:")]
        peers = [p for p in here if p.strategy.startswith("peer:")]
        if not own:
            continue
        best = min(own, key=lambda p: p.time_mean)
        part = f"at {fmt.plural(threads, 'thread')} `{best.strategy}` takes {fmt.ns(best.time_mean)} per increment"
        if peers:
            peer = min(peers, key=lambda p: p.time_mean)
            part += (
                f", the best exact peer `{peer.strategy}` {fmt.ns(peer.time_mean)}"
                f"{_tag(stats.is_significant(best.values, peer.values))}"
            )
        parts.append(part)
    if not parts:
        return None
    return "From Python: " + "; ".join(parts) + "."


def comparison(reference: ResultFile, other: ResultFile) -> list[str]:
    out = []
    for workload in reference.workloads():
        ratios: list[float] = []
        faster = slower = same = 0
        for p in other.of(workload):
            ref = reference.get(workload, p.strategy, p.threads)
            if ref is None:
                continue
            ratios.append(p.ops_mean / ref.ops_mean)
            sig = significant(p, ref)
            if sig:
                if p.ops_mean > ref.ops_mean:
                    faster += 1
                else:
                    slower += 1
            else:
                same += 1
        if not ratios:
            continue
        geo = math.exp(math.fsum(math.log(r) for r in ratios) / len(ratios))
        out.append(
            f"`{other.label}` vs `{reference.label}` on `{workload}`: throughput {fmt.ratio(geo)} "
            f"(geometric mean over {fmt.plural(len(ratios), 'point')}); {faster} significantly faster, "
            f"{slower} significantly slower, {same} within noise."
        )
    return out


def compute_findings(files: Sequence[ResultFile]) -> list[str]:
    """Every finding, in reading order; file labels prefix them when there are several files."""
    files = check_instances(files, ResultFile, "files")
    out: list[str] = []
    for f in files:
        mine: list[str] = []
        for workload in f.workloads():
            for item in (fastest(f, workload), percpu_over_baseline(f, workload)):
                if item:
                    mine.append(item)
        for item in (packet_ordering(f), model_vs_seed_finding(f), unregister_latency(f)):
            if item:
                mine.append(item)
        for workload in f.workloads():
            item = false_sharing_finding(f, workload)
            if item:
                mine.append(item)
        item = fairness_finding(f)
        if item:
            mine.append(item)
        mine += memory(f)
        for item in (exactness(f), from_python(f), oversubscription(f)):
            if item:
                mine.append(item)
        if len(files) > 1:
            mine = [f"[{f.label}] {m}" for m in mine]
        out += mine
    for other in files[1:]:
        out += comparison(files[0], other)
    return out


__all__ = ["compute_findings"]
