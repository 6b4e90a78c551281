"""PNG plots, drawn with matplotlib's Agg canvas.

matplotlib is imported here, lazily, and only through ``Figure`` +
``FigureCanvasAgg``: no pyplot, so no global backend is chosen, no screen is
needed, and a host program's own matplotlib state is left alone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from percpu.report.loading import (
    Point,
    ResultFile,
    baseline_for,
    order_strategies,
    order_workloads,
)

#: Every plot is this size in pixels (FIGSIZE inches at DPI).
DPI = 100
FIGSIZE = (9.0, 5.5)
PLOT_SIZE_PX = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))

#: A ratio of largest to smallest plotted value from which a log axis reads better.
LOG_SCALE_RATIO = 10.0

_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f",
    "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173",
)
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


class StrategyColors:
    """The same strategy gets the same colour in every plot of a report."""

    def __init__(self, files: Sequence[ResultFile]) -> None:
        names = order_strategies(p.strategy for f in files for p in f.points)
        self._colors = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}

    def __getitem__(self, strategy: str) -> str:
        return self._colors.get(strategy, "#000000")


def _new_figure() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the report needs matplotlib: pip install 'percpu[report]'") from exc
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure() -> tuple[Any, Any]:
    fig = _new_figure()
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> None:
    # No bbox_inches="tight": it would change the pixel size from plot to plot.
    fig.savefig(str(path), dpi=DPI, format="png")


def _thread_axis(ax: Any, threads: Sequence[int], nr_cpus: int | None) -> None:
    ticks = sorted(set(threads))
    if ticks and ticks[-1] / ticks[0] >= 4:
        # Thread counts double from point to point: equal steps on a log2 axis.
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("threads")
    if nr_cpus and ticks and ticks[-1] > nr_cpus:
        ax.axvline(nr_cpus, color="#999999", linestyle=":", linewidth=1,
                   label=f"{nr_cpus} CPUs: more threads share them")


def _value_axis(ax: Any, values: Sequence[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= LOG_SCALE_RATIO:
        ax.set_yscale("log")
    elif positive:
        ax.set_ylim(bottom=0)


def _legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _nr_cpus(files: Sequence[ResultFile]) -> int | None:
    counts = [p.number("percpu_nr_cpus") for f in files for p in f.points]
    known = [int(c) for c in counts if c]
    return min(known) if known else None


def _series(files: Sequence[ResultFile], workload: str) -> list[tuple[int, ResultFile, str, list[Point]]]:
    """(file index, file, strategy, points sorted by threads) for every line."""
    out = []
    for i, f in enumerate(files):
        points = f.of(workload)
        for strategy in order_strategies(p.strategy for p in points):
            line = sorted((p for p in points if p.strategy == strategy), key=lambda p: p.threads)
            out.append((i, f, strategy, line))
    return out


def _line_label(files: Sequence[ResultFile], f: ResultFile, strategy: str) -> str:
    return strategy if len(files) == 1 else f"{f.label}: {strategy}"


def plot_throughput(files: Sequence[ResultFile], workload: str, colors: StrategyColors, path: Path) -> bool:
    series = _series(files, workload)
    if not series:
        return False
    fig, ax = _figure()
    plotted: list[float] = []
    threads: list[int] = []
    for i, f, strategy, line in series:
        xs = [p.threads for p in line]
        ys = [p.ops_mean for p in line]
        ax.errorbar(
            xs, ys, yerr=[p.ops_std for p in line], label=_line_label(files, f, strategy),
            color=colors[strategy], linestyle=_LINESTYLES[i % len(_LINESTYLES)],
            marker=_MARKERS[i % len(_MARKERS)], markersize=5, capsize=3, linewidth=1.6,
        )
        plotted += ys
        threads += xs
    _thread_axis(ax, threads, _nr_cpus(files))
    _value_axis(ax, plotted)
    from matplotlib.ticker import EngFormatter

    # 25 M rather than 2.5 with a "1e7" offset in the corner.
    ax.yaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("throughput (ops/s, all threads together)")
    ax.set_title(f"{workload}: throughput vs threads (higher is better; bars: ±1 std)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return True


def speedup(point: Point, base: Point) -> tuple[float, float]:
    """Throughput ratio point/base and its standard deviation (first-order propagation)."""
    ratio = point.ops_mean / base.ops_mean
    rel = math.hypot(point.ops_std / point.ops_mean, base.ops_std / base.ops_mean)
    return ratio, ratio * rel


def plot_speedup(files: Sequence[ResultFile], workload: str, colors: StrategyColors, path: Path) -> bool:
    baseline = baseline_for(files, workload)
    fig, ax = _figure()
    plotted: list[float] = [1.0]
    threads: list[int] = []
    drawn = False
    for i, f, strategy, line in _series(files, workload):
        if strategy == baseline:
            continue
        pairs = [(p, f.get(workload, baseline, p.threads)) for p in line]
        usable = [(p, b) for p, b in pairs if b is not None]
        if not usable:
            continue
        ratios = [speedup(p, b) for p, b in usable]
        xs = [p.threads for p, _ in usable]
        ys = [r for r, _ in ratios]
        ax.errorbar(
            xs, ys, yerr=[e for _, e in ratios], label=_line_label(files, f, strategy),
            color=colors[strategy], linestyle=_LINESTYLES[i % len(_LINESTYLES)],
            marker=_MARKERS[i % len(_MARKERS)], markersize=5, capsize=3, linewidth=1.6,
        )
        plotted += ys
        threads += xs
        drawn = True
    if not drawn:
        return False
    ax.axhline(1.0, color="#444444", linewidth=1, linestyle="--", label=f"{baseline} (baseline = 1)")
    _thread_axis(ax, threads, _nr_cpus(files))
    _value_axis(ax, plotted)
    ax.set_ylabel(f"speedup over {baseline} (x, throughput ratio)")
    ax.set_title(f"{workload}: speedup over {baseline} at each thread count (higher is better)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return True


def plot_fairness(files: Sequence[ResultFile], workload: str, colors: StrategyColors, path: Path) -> bool:
    """Fairness vs threads for the strategies with a hot line or a lock (the
    ones that can starve a thread); False when no such point has it."""
    fig, ax = _figure()
    threads: list[int] = []
    drawn = False
    for i, f, strategy, line in _series(files, workload):
        usable = [p for p in line if p.fairness is not None and p.hot_line]
        if not usable:
            continue
        xs = [p.threads for p in usable]
        ax.plot(xs, [p.fairness for p in usable], label=_line_label(files, f, strategy),
                color=colors[strategy], linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                marker=_MARKERS[i % len(_MARKERS)], markersize=5, linewidth=1.6)
        threads += xs
        drawn = True
    if not drawn:
        return False
    ax.axhline(1.0, color="#444444", linewidth=1, linestyle="--", label="perfectly fair")
    _thread_axis(ax, threads, _nr_cpus(files))
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("fairness (fewest / most ops of a thread, same deadline)")
    ax.set_title(f"{workload}: fairness of the strategies with a hot line or lock (1 = fair)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return True


#: Which metadata gives the memory cost on each workload.
BYTES_KEYS = (("percpu_bytes_per_object", "bytes per counter"), ("percpu_bytes_per_entry", "bytes per route entry"))


def bytes_table(files: Sequence[ResultFile]) -> list[tuple[str, str, str, str, float]]:
    """(file label, workload, strategy + pool, what, bytes) at each line's highest thread count."""
    rows = []
    for f in files:
        for workload in f.workloads():
            points = f.of(workload)
            for strategy in order_strategies(p.strategy for p in points):
                top = max((p for p in points if p.strategy == strategy), key=lambda p: p.threads)
                for key, what in BYTES_KEYS:
                    value = top.number(key)
                    if value is None:
                        continue
                    pool = top.params.get("pool")
                    name = f"{strategy} ({pool})" if isinstance(pool, str) and pool else strategy
                    rows.append((f.label, workload, name, what, float(value)))
    return rows


def plot_bytes(files: Sequence[ResultFile], colors: StrategyColors, path: Path) -> bool:
    rows = bytes_table(files)
    if not rows:
        return False
    workloads = order_workloads(r[1] for r in rows)
    labels = [f.label for f in files]
    fig = _new_figure()
    axes = fig.subplots(1, len(workloads), squeeze=False)[0]
    for ax, workload in zip(axes, workloads):
        mine = [r for r in rows if r[1] == workload]
        names = list(dict.fromkeys(r[2] for r in mine))
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            xs, hs, cs = [], [], []
            for k, name in enumerate(names):
                for r in mine:
                    if r[0] == label and r[2] == name:
                        xs.append(k + (j - (len(labels) - 1) / 2) * width)
                        hs.append(r[4])
                        cs.append(colors[name.split(" (")[0]])
            bars = ax.bar(xs, hs, width=width * 0.95, color=cs,
                          hatch=["", "//", "..", "xx"][j % 4], edgecolor="#333333",
                          label=label if len(labels) > 1 else None)
            ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
        what = mine[0][3]
        ax.set_ylabel(f"{what} (bytes, all CPUs' copies)")
        ax.set_title(f"{workload}: {what} (lower is better)", fontsize=10)
        values = [r[4] for r in mine]
        if max(values) / max(min(values), 1e-9) >= LOG_SCALE_RATIO:
            ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
        if len(labels) > 1:
            ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Memory per object by strategy (at each strategy's highest thread count)")
    _save(fig, path)
    return True


def plot_latency(files: Sequence[ResultFile], colors: StrategyColors, path: Path) -> bool:
    fig, ax = _figure()
    plotted: list[float] = []
    threads: list[int] = []
    drawn = False
    for i, f, strategy, line in _series(files, "netdev"):
        usable = [p for p in line if p.number("percpu_unregister_latency_mean_us") is not None]
        if not usable:
            continue
        xs = [p.threads for p in usable]
        means = [float(p.number("percpu_unregister_latency_mean_us") or 0.0) for p in usable]
        maxes = [p.number("percpu_unregister_latency_max_us") for p in usable]
        upper = [max(0.0, float(mx) - m) if mx is not None else 0.0 for m, mx in zip(means, maxes)]
        ax.errorbar(
            xs, means, yerr=[[0.0] * len(means), upper], label=_line_label(files, f, strategy),
            color=colors[strategy], linestyle=_LINESTYLES[i % len(_LINESTYLES)],
            marker=_MARKERS[i % len(_MARKERS)], markersize=5, capsize=3, linewidth=1.6,
        )
        plotted += means + [float(m) for m in maxes if m is not None]
        threads += xs
        drawn = True
    if not drawn:
        return False
    _thread_axis(ax, threads, _nr_cpus(files))
    _value_axis(ax, plotted)
    ax.set_ylabel("unregister latency (us; point: mean, bar top: max)")
    ax.set_title("netdev: time to unregister a device while others hold it (lower is better)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return True
