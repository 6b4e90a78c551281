"""The command line: ``python -m percpu.bench list|run`` and the per-workload
scripts in benchmarks/, all of them thin over one pyperf Runner."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from percpu import workloads
from percpu._checks import check_argv, check_str, check_strs
from percpu.bench._harness import Output, UsageError, plan, sweep
from percpu.bench._presets import PRESETS, Preset, default_threads

__all__ = ["main", "run_command", "script_main"]

PROG = "python -m percpu.bench"
USAGE = f"""usage: {PROG} list
       {PROG} run [--preset {{{','.join(PRESETS)}}}] [--workloads W ...] [--strategies S ...]
              [--threads N,N,...] [--param [WORKLOAD.]NAME=VALUE] [-o FILE [--force] | --append FILE]
              [pyperf options: --fast, --rigorous, -p N, -n N, --affinity CPUS, ...]

Runs the percpu workloads through pyperf; `{PROG} run --help` lists every option."""


def _fail(message: str) -> int:
    print(f"percpu.bench: error: {message}", file=sys.stderr)
    return 2


def list_command(out: Any = None) -> int:
    """Print the workloads, their strategies and parameters, and the presets."""
    out = out or sys.stdout
    print("workloads:", file=out)
    for w in workloads.WORKLOADS.values():
        print(f"  {w.name}: {w.description}", file=out)
        print(f"    strategies: {', '.join(w.strategies) or '(none)'}", file=out)
        for s, why in w.unavailable.items():
            print(f"    skipped: {s} ({why})", file=out)
        params = ", ".join(f"{k}={v}" for k, v in w.params.items())
        print(f"    params: {params or '(none)'}", file=out)
        print(f"    baseline: {w.baseline}", file=out)
    print("presets:", file=out)
    for p in PRESETS.values():
        threads = ",".join(map(str, p.threads()))
        print(f"  {p.name}: {p.description}", file=out)
        print(f"    threads {threads}; {p.processes} processes x {p.values} values, "
              f"{p.warmups} warmup, min time {p.min_time * 1e3:g} ms", file=out)
    print(f"default threads: {','.join(map(str, default_threads()))}", file=out)
    return 0


def _ints(items: Sequence[str], what: str) -> list[int]:
    values = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                values.append(int(part))
            except ValueError:
                raise UsageError(f"{what} must be integers, not {part!r}") from None
    return values


def _params(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--param takes [WORKLOAD.]NAME=VALUE, not {item!r}")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise UsageError(f"--param {key.strip()} must be an integer, not {value!r}") from None
    return out


def run_command(argv: Sequence[str] | None = None, *, workload: str | None = None,
                program_args: Sequence[str] | None = None, prog: str | None = None) -> int:
    """A sweep: parse, check everything, then measure point by point.

    ``workload`` fixes the workload (the benchmarks/ scripts); ``program_args``
    is how pyperf restarts this program for its workers.
    """
    import pyperf

    argv = check_argv(argv)
    check_str(workload, "workload", optional=True)
    program_args = check_strs(program_args, "program_args", optional=True)
    check_str(prog, "prog", optional=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    # The output options are taken before pyperf sees them: the sweep writes
    # the file itself (atomically, after every point, with each point's
    # figures), so pyperf must not write it too.
    front = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    front.add_argument("-o", "--output")
    front.add_argument("--append")
    front.add_argument("--force", action="store_true")
    front.add_argument("--preset")
    mine, rest = front.parse_known_args(argv)

    preset: Preset | None = None
    if mine.preset is not None:
        preset = PRESETS.get(mine.preset)
        if preset is None:
            return _fail(f"unknown preset {mine.preset!r} (valid: {', '.join(PRESETS)})")

    state: dict[str, Any] = {}

    def add_cmdline_args(cmd: list[str], args: argparse.Namespace) -> None:
        # A worker rebuilds the same list of points to find its own by index,
        # so it gets everything that shapes the list, resolved.
        if preset is not None:
            cmd.extend(("--preset", preset.name))
        if workload is None and args.workloads:
            cmd.extend(("--workloads", ",".join(args.workloads)))
        if args.strategies:
            cmd.extend(("--strategies", ",".join(args.strategies)))
        cmd.extend(("--threads", ",".join(map(str, state["threads"]))))
        for item in args.param or ():
            cmd.extend(("--param", item))

    kwargs: dict[str, Any] = {}
    if preset is not None:
        kwargs = dict(processes=preset.processes, values=preset.values, warmups=preset.warmups,
                      min_time=preset.min_time, loops=preset.loops)
    runner = pyperf.Runner(program_args=tuple(program_args) if program_args else None,
                           add_cmdline_args=add_cmdline_args, **kwargs)
    parser = runner.argparser
    # Abbreviations would let "--out x" reach pyperf's own writer.
    parser.allow_abbrev = False
    parser.prog = prog or parser.prog
    what = f"workload {workload}" if workload else "the percpu workloads"
    parser.description = f"Benchmark {what} with pyperf: one benchmark per workload/strategy/tN."
    group = parser.add_argument_group("percpu.bench")
    group.add_argument("--preset", choices=list(PRESETS),
                       help="pyperf settings and thread counts for a time budget "
                            "(default: pyperf's own settings)")
    group.add_argument("--force", action="store_true", help="replace an existing -o file")
    if workload is None:
        group.add_argument("--workloads", nargs="+", metavar="W",
                           help=f"workloads to run (default: all of {', '.join(workloads.WORKLOADS)})")
    group.add_argument("--strategies", nargs="+", metavar="S",
                       help="strategies to run (default: all); a name applies to every "
                            "selected workload that has it")
    group.add_argument("--threads", nargs="+", metavar="N,N",
                       help="thread counts (default: 1, 2, 4, ... up to 2x the CPUs, "
                            "or the preset's)")
    group.add_argument("--param", action="append", metavar="[WORKLOAD.]NAME=VALUE",
                       help="set a workload parameter (repeatable)")
    args = runner.parse_args(rest)

    try:
        if args.threads:
            threads = _ints(args.threads, "--threads")
        else:
            threads = preset.threads() if preset is not None else default_threads()
        state["threads"] = threads
        names = [workload] if workload else args.workloads
        notes: list[str] = []
        points = plan(names, args.strategies, threads, _params(args.param or ()), notes)
        outputs = []
        if not args.worker:
            if mine.force and not mine.output:
                raise UsageError("--force needs -o FILE")
            if args.compare_to and (mine.output or mine.append):
                raise UsageError("--compare-to keeps no results: it cannot be combined with -o or --append")
            if mine.output:
                outputs.append(Output(mine.output, "force" if mine.force else "new"))
            if mine.append:
                outputs.append(Output(mine.append, "append"))
            for out in outputs:
                out.check()
    except UsageError as exc:
        return _fail(str(exc))
    if not args.worker:
        for note in notes:
            print(f"percpu.bench: {note}", file=sys.stderr)
    events = preset.probe_events if preset is not None else 4
    return sweep(runner, points, outputs, probe_events=events)


def script_main(workload: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of a benchmarks/ script: a sweep of one workload."""
    check_str(workload, "workload")
    check_argv(argv)
    if workload not in workloads.WORKLOADS:
        return _fail(f"unknown workload {workload!r} (valid: {', '.join(workloads.WORKLOADS)})")
    return run_command(argv, workload=workload)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m percpu.bench list|run ...``; returns the exit status."""
    argv = check_argv(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help"):
        print(USAGE)
        return 0
    if command == "list":
        if rest:
            return _fail(f"list takes no arguments, not {' '.join(rest)!r}")
        return list_command()
    if command == "run":
        return run_command(rest, program_args=("-m", "percpu.bench", "run"), prog=f"{PROG} run")
    return _fail(f"unknown command {command!r} (valid: list, run)")
