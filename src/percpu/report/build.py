"""Assembling the report and writing it, all or nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from percpu._checks import check_path, check_paths, check_str, check_strs
from percpu._tbench import SEED_GAINS, SEED_GAINS_X460, SEED_SOURCE
from percpu.report import formatting as fmt
from percpu.report import plots, stats
from percpu.report.document import Block, Bullets, Figure, Heading, Paragraph, Table, to_html, to_markdown
from percpu.report.findings import (
    compute_findings,
    false_sharing,
    false_sharing_triples,
    model_vs_seed,
    padding_share,
    significant,
)
from percpu.report.loading import (
    Point,
    ResultFile,
    baseline_for,
    load_results,
    order_strategies,
    order_workloads,
    strategy_rank,
)

#: Lists what the last run wrote, so a new run removes plots that no longer apply.
MANIFEST = ".percpu-report-files"

MACHINE_ROWS = (
    ("CPU model", "cpu_model_name"),
    ("CPUs (online, pyperf)", "cpu_count"),
    ("CPUs (possible, percpu slots)", "percpu_nr_cpus"),
    ("CPU frequency", "cpu_freq"),
    ("CPU config", "cpu_config"),
    ("kernel / platform", "platform"),
    ("percpu features", "percpu_features"),
    ("Python", "python_version"),
    ("Python implementation", "python_implementation"),
    ("Python compiler", "python_compiler"),
    ("free-threaded build", "percpu_free_threaded"),
    ("GIL enabled", "percpu_gil_enabled"),
    ("percpu version", "percpu_version"),
    ("pyperf version", "perf_version"),
    ("host", "hostname"),
    ("date", "date"),
)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _features(raw: object) -> str:
    if not isinstance(raw, str):
        return "-" if raw is None else str(raw)
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(parsed, dict):
        return ", ".join(f"{k}={v}" for k, v in parsed.items())
    return raw


def _machine(files: Sequence[ResultFile]) -> list[Block]:
    headers = ["", *(f.label for f in files)] if len(files) > 1 else ["", "value"]
    rows = []
    for title, key in MACHINE_ROWS:
        cells = []
        for f in files:
            value = f.metadata.get(key)
            if key == "percpu_features":
                cells.append(_features(value))
            elif key in ("percpu_free_threaded", "percpu_gil_enabled") and isinstance(value, int):
                cells.append("yes" if value else "no")
            elif key == "date" and isinstance(value, str):
                cells.append(value.split(".")[0])
            else:
                cells.append("-" if value is None else str(value))
        if any(c != "-" for c in cells):
            rows.append([title, *cells])
    return [Heading(2, "Machine"), Table(headers, rows)]


def _workload_params(points: Sequence[Point]) -> str:
    seen = {json.dumps(p.params, sort_keys=True) for p in points if p.params}
    if not seen:
        return "parameters: not recorded."
    if len(seen) == 1:
        return f"parameters: `{seen.pop()}`."
    return "parameters vary between points: " + "; ".join(f"`{s}`" for s in sorted(seen)) + "."


def _exact_cell(p: Point) -> str:
    if p.exact is None:
        return "-"
    if p.exact:
        return "yes"
    lost = p.number("percpu_lost_updates")
    return f"no (lost {int(lost)})" if lost else "no"


def _points_table(file: ResultFile, workload: str) -> Table:
    baseline = baseline_for([file], workload)
    points = file.of(workload)
    with_exact = any(p.exact is not None for p in points)
    with_fairness = any(p.fairness is not None for p in points)
    with_instructions = any(p.instructions is not None for p in points)
    headers = ["strategy", "threads", "time per op per thread", "throughput", f"speedup vs {baseline}", "vs baseline"]
    if with_exact:
        headers.append("exact")
    if with_fairness:
        headers.append("fairness")
    if with_instructions:
        headers.append("instr/op (1T, callgrind)")
    rows = []
    for strategy in order_strategies(p.strategy for p in points):
        for p in sorted((p for p in points if p.strategy == strategy), key=lambda p: p.threads):
            base = file.get(workload, baseline, p.threads)
            if base is None:
                speed, sig = "-", "no baseline"
            elif base is p:
                speed, sig = "1.00x", "baseline"
            else:
                ratio, err = plots.speedup(p, base)
                speed = f"{fmt.ratio(ratio)} +- {err:.2f}"
                sig = fmt.significance(significant(p, base))
            row = [
                f"`{strategy}`",
                str(p.threads),
                f"{fmt.ns(p.time_mean)} +- {fmt.ns(p.time_std, 2)}",
                f"{fmt.ops(p.ops_mean)} +- {fmt.si(p.ops_std)}",
                speed,
                sig,
            ]
            if with_exact:
                row.append(_exact_cell(p))
            if with_fairness:
                row.append("-" if p.fairness is None else f"{p.fairness:.2f}")
            if with_instructions:
                row.append("-" if p.instructions is None else f"{p.instructions:.1f}")
            rows.append(row)
    numeric = {1, 2, 3, 4}
    for title in ("fairness", "instr/op (1T, callgrind)"):
        if title in headers:
            numeric.add(headers.index(title))
    return Table(headers, rows, numeric=numeric)


def _instructions_note(files: Sequence[ResultFile]) -> Paragraph | None:
    paths = sorted({str(p.metadata.get("percpu_instructions_path")) for f in files for p in f.points
                    if p.instructions is not None and p.metadata.get("percpu_instructions_path")})
    if not paths:
        return None
    return Paragraph(
        "Instructions per op: one thread under valgrind's callgrind, the difference of two runs "
        "(N and 2N ops), so exact and free of noise, but blind to contention (a bounced line costs "
        "no extra instructions). Valgrind has no rseq: there the per-CPU strategies ran their "
        f"fallback path ({'; '.join(paths)}), not the rseq fast path the timings measure."
    )


def _seed_section(files: Sequence[ResultFile]) -> list[Block]:
    """"Model vs seed": the packet model's gains beside the 2005 figures."""
    blocks: list[Block] = []
    for f in files:
        rows_in = model_vs_seed(f)
        if not rows_in:
            continue
        threads = rows_in[0][1].threads
        rows = []
        for strategy, p, base, gain, pv in rows_in:
            _, err = plots.speedup(p, base)
            seed = SEED_GAINS.get(strategy)
            x460 = SEED_GAINS_X460.get(strategy)
            rows.append([
                f"`{strategy}`",
                "-" if seed is None else fmt.percent_change(1 + seed),
                "-" if x460 is None else fmt.percent_change(1 + x460),
                f"{fmt.percent_change(1 + gain)} +- {100 * err:.1f}",
                "-" if seed is None else f"{100 * (gain - seed):+.1f}",
                "too few values to test" if pv is None else
                f"{'significant' if pv < stats.ALPHA else 'not significant'} (p={pv:.2g})",
            ])
        params = rows_in[0][1].params
        shown = ", ".join(f"`{k}={v}`" for k, v in params.items())
        if len(files) > 1:
            blocks.append(Paragraph(f"`{f.label}`:"))
        blocks.append(Paragraph(
            f"At {fmt.plural(threads, 'thread')} (the seed's 8 clients, one per CPU, on a machine "
            f"with {fmt.plural(threads, 'CPU') if threads < 8 else '8 or more CPUs'}), gains over "
            f"`atomic+atomic`; packet parameters {shown or 'not recorded'}."
        ))
        blocks.append(Table(
            ["strategy", "seed, x445 (8-way Xeon 3.0 GHz)", "seed, x460 (8-way x86_64 3.3 GHz)",
             "model, this machine", "residual (points, vs x445)", "vs atomic+atomic"],
            rows, numeric={1, 2, 3, 4},
        ))
    if not blocks:
        return []
    return [
        Heading(2, "Model vs seed"),
        Paragraph(
            f"The 2005 figures ({SEED_SOURCE}) beside the `packet` model's on this machine. "
            "`python -m percpu.bench calibrate` fits the model's `work` and `dst_holds` (and, "
            "when asked, `dev_holds`) to them; the residual is model minus seed. The model's gains "
            "depend on what a cache-line transfer between CPUs costs on the machine at hand."
        ),
        *blocks,
    ]


def _false_sharing_section(files: Sequence[ResultFile]) -> list[Block]:
    """The skeptic's control: the 2005 layout beside the padded atomic."""
    blocks: list[Block] = []
    for f in files:
        for workload in f.workloads():
            rows = []
            for threads, c, a, q in false_sharing(f, workload):
                share = padding_share(c, a, q)
                rows.append([
                    f"`{workload}`", str(threads), fmt.ops(c.ops_mean),
                    f"{fmt.ops(a.ops_mean)} ({fmt.percent_change(a.ops_mean / c.ops_mean)}, "
                    f"{fmt.significance(significant(a, c))})",
                    f"{fmt.ops(q.ops_mean)} ({fmt.percent_change(q.ops_mean / c.ops_mean)}, "
                    f"{fmt.significance(significant(q, c))})",
                    "-" if share is None else f"{100 * share:.0f}%",
                ])
            if not rows:
                continue
            control, padded, percpu = false_sharing_triples(workload)[0]
            if len(files) > 1:
                blocks.append(Paragraph(f"`{f.label}`:"))
            blocks.append(Table(
                ["workload", "threads", f"`{control}` (2005 layout)", f"`{padded}` (padded)",
                 f"`{percpu}` (per-CPU)", "share of the per-CPU gain that padding gets"],
                rows, numeric={1, 2, 5},
            ))
    if not blocks:
        return []
    return [
        Heading(2, "False sharing vs true contention"),
        Paragraph(
            "In 2005 a shared count sat on the cache line that every lookup reads (`atomic-sharedline`: "
            "the object's read-mostly fields beside the count), so every write of the count also took "
            "those fields from the other CPUs' caches: false sharing. Padding the count onto a line of "
            "its own (`atomic`) removes that and leaves the true contention on the count, which only a "
            "per-CPU count removes. The last column is (padded - 2005) / (per-CPU - 2005) in throughput."
        ),
        *blocks,
    ]


def _latency_table(files: Sequence[ResultFile]) -> Table | None:
    rows = []
    for f in files:
        for p in sorted(f.of("netdev"), key=lambda p: (strategy_rank(p.strategy), p.threads)):
            mean_us = p.number("percpu_unregister_latency_mean_us")
            if mean_us is None:
                continue
            max_us = p.number("percpu_unregister_latency_max_us")
            count = p.number("percpu_unregisters")
            rows.append([
                f.label, f"`{p.strategy}`", str(p.threads), f"{mean_us:.3g}",
                "-" if max_us is None else f"{max_us:.3g}", "-" if count is None else str(int(count)),
            ])
    if not rows:
        return None
    headers = ["file", "strategy", "threads", "mean (us)", "max (us)", "unregisters"]
    if len(files) == 1:
        headers, rows = headers[1:], [r[1:] for r in rows]
        return Table(headers, rows, numeric={1, 2, 3, 4})
    return Table(headers, rows, numeric={2, 3, 4, 5})


def _dst_table(files: Sequence[ResultFile]) -> Table | None:
    rows = []
    for f in files:
        for p in sorted(f.of("dst"), key=lambda p: p.threads):
            churns = p.number("percpu_churns")
            failures = p.number("percpu_churn_failures")
            if churns is None and failures is None:
                continue
            rows.append([
                f.label, f"`{p.strategy}`", str(p.threads),
                "-" if churns is None else str(int(churns)), "-" if failures is None else str(int(failures)),
            ])
    if not rows:
        return None
    return Table(["file", "strategy", "threads", "churns", "churn failures (atomic alloc)"], rows, numeric={2, 3, 4})


def build_of(file: ResultFile) -> str:
    """Which kind of CPython ran a file: ``GIL build``, ``free-threaded, GIL
    off``, ``free-threaded, GIL on`` (or ``mixed``, ``not recorded``)."""
    kinds = set()
    for p in file.points:
        ft, gil = p.number("percpu_free_threaded"), p.number("percpu_gil_enabled")
        if ft is None:
            kinds.add("not recorded")
        elif not ft:
            kinds.add("GIL build")
        else:
            kinds.add("free-threaded, GIL " + ("on" if gil is None or gil else "off"))
    if not kinds:
        return "not recorded"
    return kinds.pop() if len(kinds) == 1 else "mixed: " + ", ".join(sorted(kinds))


def _form(p: Point) -> str:
    """How the threads reached the counter, from the point's parameters."""
    params = p.params
    counter = "own" if params.get("own") else "shared"
    if params.get("bound"):
        counter += ", bound"
    idiom = p.metadata.get("percpu_idiom")
    return f"{counter}: `{idiom}`" if isinstance(idiom, str) else counter


def _scaling(first: Point | None, last: Point | None) -> str:
    # Total ns per increment (all threads) at the second count over the first:
    # 0.5 is perfect scaling from 1 to 2 threads, 1.0 none.
    if first is None or last is None or first is last:
        return "-"
    return f"{(last.time_mean / last.threads) / (first.time_mean / first.threads):.2f}"


def _exact_summary(cells: Sequence[tuple[str, Point]]) -> str:
    known = [(t, p) for t, p in cells if p.exact is not None]
    if not known:
        return "-"
    if all(p.exact for _, p in known):
        return "yes"
    return "; ".join(f"{t}: {_exact_cell(p)}" for t, p in known if not p.exact)


def _python_tables(files: Sequence[ResultFile]) -> list[Block]:
    with_points = [f for f in files if f.of("pycounter")]
    if not with_points:
        return []
    counts = sorted({p.threads for f in with_points for p in f.of("pycounter")})[:2]
    names = [fmt.plural(t, "thread") for t in counts]
    scale = f"{counts[-1]}T/{counts[0]}T" if len(counts) > 1 else None
    strategies = order_strategies(p.strategy for f in with_points for p in f.of("pycounter"))
    blocks: list[Block] = [
        Heading(2, "From Python"),
        Paragraph(
            "The `pycounter` workload increments from Python code (one call per increment), "
            "against counters from other packages (`peer:` strategies). "
            "Time per increment as seen by one thread, mean +- std; lower is better."
            + (f" {scale}: total ns per increment (all threads) at {names[-1]} over {names[0]}; "
               "0.5 is perfect scaling, 1.0 none. Under a GIL only one thread runs Python code "
               "at a time; a free-threaded build with the GIL off runs them at once."
               if scale else "")
        ),
    ]
    if len(with_points) == 1:
        f = with_points[0]
        headers = ["strategy", "form", *(f"ns per increment, {n}" for n in names)]
        headers += [scale] if scale else []
        headers.append("exact")
        rows = []
        for strategy in strategies:
            points = [f.get("pycounter", strategy, t) for t in counts]
            present = [p for p in points if p is not None]
            if not present:
                continue
            row = [f"`{strategy}`", _form(present[0])]
            row += ["-" if p is None else f"{p.time_mean * 1e9:.3g} +- {p.time_std * 1e9:.2g}"
                    for p in points]
            if scale:
                row.append(_scaling(points[0], points[-1]))
            row.append(_exact_summary([(f"{t}T", p) for t, p in zip(counts, points) if p is not None]))
            rows.append(row)
        blocks.append(Paragraph(f"Build: {build_of(f)}."))
        blocks.append(Table(headers, rows, numeric=set(range(2, 2 + len(counts) + (1 if scale else 0)))))
        return blocks
    # Several files (a GIL and a free-threaded run, say): side by side.
    blocks.append(Bullets([
        f"`{f.label}`: {build_of(f)}; " + "; ".join(sorted({_form(p) for p in f.of("pycounter")}))
        for f in with_points
    ]))
    headers = ["strategy"]
    for f in with_points:
        headers += [f"{f.label}, {n}" for n in names]
        headers += [f"{f.label}, {scale}"] if scale else []
    headers.append("exact")
    rows = []
    per_file = len(counts) + (1 if scale else 0)
    for strategy in strategies:
        row = [f"`{strategy}`"]
        exact_cells = []
        for f in with_points:
            points = [f.get("pycounter", strategy, t) for t in counts]
            row += ["-" if p is None else f"{p.time_mean * 1e9:.3g}" for p in points]
            if scale:
                row.append(_scaling(points[0], points[-1]))
            exact_cells += [(f"{f.label} {t}T", p) for t, p in zip(counts, points) if p is not None]
        row.append(_exact_summary(exact_cells))
        rows.append(row)
    blocks.append(Table(headers, rows, numeric=set(range(1, 1 + per_file * len(with_points)))))
    return blocks


def _comparison(files: Sequence[ResultFile]) -> list[Block]:
    if len(files) < 2:
        return []
    reference = files[0]
    blocks: list[Block] = [
        Heading(2, "Comparison"),
        Paragraph(
            f"Each file against `{reference.label}`: ratio of throughputs (above 1: faster than "
            f"`{reference.label}`) and Welch's t-test on pyperf's values (p < {stats.ALPHA})."
        ),
    ]
    for other in files[1:]:
        rows = []
        for workload in order_workloads(p.workload for p in other.points):
            for p in sorted(other.of(workload), key=lambda p: (strategy_rank(p.strategy), p.threads)):
                ref = reference.get(workload, p.strategy, p.threads)
                if ref is None:
                    continue
                test = stats.welch_test(ref.throughput_samples, p.throughput_samples)
                verdict = "too few values" if test is None else (
                    f"{'significant' if test[1] < stats.ALPHA else 'not significant'} (p={test[1]:.2g})"
                )
                rows.append([
                    f"`{workload}`", f"`{p.strategy}`", str(p.threads),
                    fmt.ops(ref.ops_mean), fmt.ops(p.ops_mean), fmt.ratio(p.ops_mean / ref.ops_mean), verdict,
                ])
        blocks.append(Heading(3, f"{other.label} vs {reference.label}"))
        if rows:
            blocks.append(Table(
                ["workload", "strategy", "threads", reference.label, other.label, "ratio", "difference"],
                rows, numeric={2, 3, 4, 5},
            ))
        else:
            blocks.append(Paragraph("No point appears in both files."))
    return blocks


def build_document(files: Sequence[ResultFile], folder: Path, title: str) -> list[Block]:
    """Draw the plots into folder and return the report's blocks."""
    from percpu import __version__

    colors = plots.StrategyColors(files)
    blocks: list[Block] = [
        Heading(1, title),
        Paragraph(
            f"Written by `percpu.report` {__version__} from "
            + ", ".join(f"`{f.label}` ({f.path.name}, {fmt.plural(len(f.points), 'point')})" for f in files)
            + "."
        ),
        Heading(2, "Findings"),
    ]
    findings = compute_findings(files)
    blocks.append(Bullets(findings) if findings else Paragraph("No findings: too little data."))
    blocks += _machine(files)

    blocks.append(Heading(2, "Workloads"))
    blocks.append(Paragraph(
        "Throughput is all threads' operations per second: pyperf's value is the time of one "
        "operation as seen by one thread, so throughput = threads / value. Mean +- standard "
        "deviation over pyperf's values; speedups are throughput ratios at the same thread count, "
        f"tested with Welch's t-test (p < {stats.ALPHA})."
    ))
    workloads = order_workloads(p.workload for f in files for p in f.points)
    for workload in workloads:
        blocks.append(Heading(3, workload))
        blocks.append(Paragraph(_workload_params([p for f in files for p in f.of(workload)])))
        name = f"throughput_{_safe(workload)}.png"
        if plots.plot_throughput(files, workload, colors, folder / name):
            what = "one line per (file, strategy)" if len(files) > 1 else "one line per strategy"
            blocks.append(Figure(name, f"{workload}: throughput vs threads, {what}"))
        name = f"speedup_{_safe(workload)}.png"
        if plots.plot_speedup(files, workload, colors, folder / name):
            blocks.append(Figure(name, f"{workload}: speedup over {baseline_for(files, workload)}"))
        name = f"fairness_{_safe(workload)}.png"
        if plots.plot_fairness(files, workload, colors, folder / name):
            blocks.append(Figure(name, f"{workload}: fairness of the strategies with a hot line or lock"))
        for f in files:
            if f.of(workload):
                if len(files) > 1:
                    blocks.append(Paragraph(f"`{f.label}`:"))
                blocks.append(_points_table(f, workload))
    note = _instructions_note(files)
    if note is not None:
        blocks.append(note)
    if any(p.fairness is not None for f in files for p in f.points):
        blocks.append(Paragraph(
            "Fairness: each point of 2 or more threads also ran to a deadline (every thread the same "
            "time, not the same count); fairness is the fewest ops any thread did over the most "
            "(1.00: perfectly fair). Plotted for the strategies whose every op writes a line all "
            "threads write (a shared count or a lock), where one thread can starve the others; above "
            "the CPU count it measures the scheduler as much as the strategy."
        ))
    blocks += _seed_section(files)
    blocks += _false_sharing_section(files)

    blocks.append(Heading(2, "Memory per object"))
    if plots.plot_bytes(files, colors, folder / "bytes_per_object.png"):
        blocks.append(Figure("bytes_per_object.png", "bytes per object by strategy"))
        rows = [[label, f"`{w}`", f"`{s}`", what, f"{v:.4g}"] for label, w, s, what, v in plots.bytes_table(files)]
        headers = ["file", "workload", "strategy", "measure", "bytes"]
        if len(files) == 1:
            headers, rows = headers[1:], [r[1:] for r in rows]
        blocks.append(Table(headers, rows, numeric={len(headers) - 1}))
    else:
        blocks.append(Paragraph(
            "No data: no point carries `percpu_bytes_per_object` or `percpu_bytes_per_entry`."
        ))
    dst = _dst_table(files)
    if dst is not None:
        blocks += [Paragraph("Route cache churn (`dst`):"), dst]

    latency = _latency_table(files)
    blocks.append(Heading(2, "netdev unregister latency"))
    if latency is not None and plots.plot_latency(files, colors, folder / "netdev_unregister_latency.png"):
        blocks.append(Figure("netdev_unregister_latency.png", "netdev: unregister latency (mean, bar to max)"))
        blocks.append(latency)
    else:
        blocks.append(Paragraph("No data: no `netdev` point carries `percpu_unregister_latency_mean_us`."))

    blocks += _python_tables(files)
    blocks += _comparison(files)
    return blocks


def render(files: Sequence[ResultFile], folder: Path, title: str) -> list[str]:
    """Write plots, report.md and index.html into folder; return the file names."""
    blocks = build_document(files, folder, title)
    (folder / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (folder / "index.html").write_text(to_html(blocks, title, folder), encoding="utf-8")
    return sorted(p.name for p in folder.iterdir())


def _previous(out: Path) -> set[str]:
    try:
        lines = (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    # Only plain names: a manifest must never make us delete outside the folder.
    return {n for n in lines if n and "/" not in n and n not in (".", "..")}


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    title: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """Read the results, then write the whole report into out; return the files written.

    Every input is validated before anything is written, the report is drawn in a
    temporary folder inside out, and the files are moved into place only once all
    of them exist, index.html last: a failure leaves out as it was.
    """
    # Every argument is checked before anything is read or written.
    check_paths(paths, "paths")
    check_path(out, "out")
    check_str(title, "title", optional=True)
    check_strs(labels, "labels", optional=True)
    files = load_results(paths, labels)
    out = Path(out)
    if title is None:
        title = "percpu benchmark report" + (": " + " vs ".join(f.label for f in files) if len(files) > 1 else "")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".percpu-report-", dir=out))
    done = False
    try:
        names = render(files, tmp, title)
        stale = _previous(out) - set(names)
        (tmp / MANIFEST).write_text("\n".join(names) + "\n", encoding="utf-8")
        for name in sorted(names, key=lambda n: n == "index.html"):
            os.replace(tmp / name, out / name)
        os.replace(tmp / MANIFEST, out / MANIFEST)
        for name in stale:
            try:
                (out / name).unlink()
            except FileNotFoundError:
                pass
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not done:
            # A folder made for a report that failed (matplotlib missing, a
            # full disk) goes too: no empty or partial report is left behind.
            shutil.rmtree(out, ignore_errors=True)
    return [out / n for n in names]
