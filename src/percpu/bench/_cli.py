"""The command line: ``python -m percpu.bench list|run|calibrate|instructions``
and the per-workload scripts in benchmarks/, the sweeps thin over one pyperf
Runner."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from percpu import workloads
from percpu._checks import check_argv, check_str, check_strs
from percpu.bench._harness import Output, Point, UsageError, plan, sweep
from percpu.bench._presets import FAIRNESS_SECONDS, PRESETS, Preset, default_threads

__all__ = ["calibrate_command", "instructions_command", "main", "run_command", "script_main"]

PROG = "python -m percpu.bench"
USAGE = f"""usage: {PROG} list
       {PROG} run [--preset {{{','.join(PRESETS)}}}] [--workloads W ...] [--strategies S ...]
              [--threads N,N,...] [--param [WORKLOAD.]NAME=VALUE] [-o FILE [--force] | --append FILE]
              [--instructions] [pyperf options: --fast, --rigorous, -p N, -n N, --affinity CPUS, ...]
       {PROG} calibrate [--threads N] [--dst-holds K,...] [--dev-holds D,...] [--seconds S]
              [--repeat R] [-o FIT.json]
       {PROG} instructions [--workloads W ...] [--strategies S ...] [--param ...] [--ops N]

run: the percpu workloads through pyperf (`{PROG} run --help` lists every option);
calibrate: fit the packet model to the 2005 tbench gains on this machine;
instructions: instructions per op at 1 thread under callgrind (noise-free)."""


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
    front.add_argument("--instructions", action="store_true")
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
    group.add_argument("--instructions", action="store_true",
                       help="also count each strategy's instructions per op at 1 thread "
                            "under valgrind's callgrind (percpu_instructions_per_op)")
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
            if mine.instructions:
                from percpu.bench import _instructions

                why = _instructions.unavailable_reason()
                if why is not None:
                    raise UsageError(f"--instructions: {why}")
    except UsageError as exc:
        return _fail(str(exc))
    extra: dict[str, dict[str, Any]] = {}
    if not args.worker:
        for note in notes:
            print(f"percpu.bench: {note}", file=sys.stderr)
        if mine.instructions:
            try:
                extra = _instruction_metadata(points)
            except RuntimeError as exc:
                print(f"percpu.bench: error: --instructions: {exc}", file=sys.stderr)
                return 1
    events = preset.probe_events if preset is not None else 4
    fairness = preset.fairness_seconds if preset is not None else FAIRNESS_SECONDS
    return sweep(runner, points, outputs, probe_events=events, fairness_seconds=fairness, extra=extra)


def _instruction_metadata(points: Sequence[Point]) -> dict[str, dict[str, Any]]:
    """Instructions per op of every (workload, strategy, params) of the
    sweep, as metadata for each of its points (all thread counts)."""
    from percpu.bench import _instructions

    specs: dict[tuple[str, str, str], tuple[str, str, dict[str, int]]] = {}
    for p in points:
        key = (p.workload, p.strategy, json.dumps(dict(p.params), sort_keys=True))
        specs.setdefault(key, (p.workload, p.strategy, dict(p.params)))
    print(f"percpu.bench: counting instructions of {len(specs)} strategies under callgrind "
          "(about a minute to start, then seconds each)", file=sys.stderr, flush=True)
    counts = _instructions.measure(list(specs.values()))
    by_key = {k: c for k, c in zip(specs, counts)}
    out: dict[str, dict[str, Any]] = {}
    for p in points:
        c = by_key[(p.workload, p.strategy, json.dumps(dict(p.params), sort_keys=True))]
        if c.per_op is not None:
            out[p.name] = {"percpu_instructions_per_op": c.per_op, "percpu_instructions_path": c.path,
                           "percpu_instructions_ops": _instructions.OPS}
    return out


def calibrate_command(argv: Sequence[str]) -> int:
    """``calibrate``: fit the packet model to the seed, print the fit and its
    residuals, optionally save it as JSON."""
    from percpu.bench import _calibrate

    parser = argparse.ArgumentParser(
        prog=f"{PROG} calibrate",
        description="Fit the packet model's work and dst_holds so that bigref+atomic and "
                    "bigref+percpu gain what the 2005 patch set measured in tbench (+6%, +55% "
                    "over atomic+atomic), at 8 threads or, on fewer CPUs, at the CPU count.")
    parser.add_argument("--threads", type=int, default=None,
                        help="thread count to fit at (default: 8, or every CPU where there are fewer)")
    parser.add_argument("--dst-holds", default="1,2,3,4,5,6,7,8", metavar="K,K,...",
                        help="route holds per packet to try (default: 1..8)")
    parser.add_argument("--dev-holds", default="1", metavar="D,D,...",
                        help="device holds per packet to try (default: 1)")
    parser.add_argument("--seconds", type=float, default=0.2,
                        help="length of each time-bounded run (default: 0.2)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per strategy and point, interleaved (default: 3)")
    parser.add_argument("--steps", type=int, default=4,
                        help="secant steps per dst_holds after bracketing (default: 4)")
    parser.add_argument("--max-work", type=int, default=1 << 16, help="largest work to try")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="fix another packet parameter (dev_holds, routes, ...)")
    parser.add_argument("-o", "--output", metavar="FIT.json", help="also write the fit as JSON")
    args = parser.parse_args(list(argv))
    try:
        holds = _ints([args.dst_holds], "--dst-holds")
        devs = _ints([args.dev_holds], "--dev-holds")
        fixed = {k.rpartition(".")[2]: v for k, v in _params(args.param).items()}
        unknown = set(fixed) - set(workloads.WORKLOADS["packet"].params)
        bad = sorted(unknown | (set(fixed) & {"work", "dst_holds", "dev_holds"}))
        if bad:
            raise UsageError(f"--param cannot set {', '.join(bad)} (unknown, or what the fit chooses)")
        fit = _calibrate.calibrate(
            threads=args.threads, dst_holds=holds, dev_holds=devs, seconds=args.seconds,
            repeat=args.repeat,
            steps=args.steps, max_work=args.max_work, params=fixed,
            log=lambda line: print(f"percpu.bench: {line}", file=sys.stderr, flush=True),
        )
    except (UsageError, ValueError) as exc:
        return _fail(str(exc))
    _calibrate.print_fit(fit)
    if args.output:
        _calibrate.save(fit, args.output)
        print(f"wrote {args.output}")
    return 0


def instructions_command(argv: Sequence[str], out: Any = None) -> int:
    """``instructions``: instructions per op at 1 thread of the selected
    points, one callgrind run, printed as a table."""
    from percpu.bench import _instructions

    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog=f"{PROG} instructions",
        description="Instructions per op at 1 thread under valgrind's callgrind: exact and "
                    "noise-free, blind to contention; per-CPU strategies run their fallback "
                    "path there (valgrind has no rseq).")
    parser.add_argument("--workloads", nargs="+", metavar="W")
    parser.add_argument("--strategies", nargs="+", metavar="S")
    parser.add_argument("--param", action="append", default=[], metavar="[WORKLOAD.]NAME=VALUE")
    parser.add_argument("--ops", type=int, default=_instructions.OPS,
                        help=f"ops per counted run (default: {_instructions.OPS})")
    args = parser.parse_args(list(argv))
    try:
        if args.ops < 1:
            raise UsageError(f"--ops must be >= 1, not {args.ops}")
        points = plan(args.workloads, args.strategies, [1], _params(args.param))
        why = _instructions.unavailable_reason()
        if why is not None:
            raise UsageError(why)
    except UsageError as exc:
        return _fail(str(exc))
    try:
        counts = _instructions.measure([(p.workload, p.strategy, dict(p.params)) for p in points],
                                       ops=args.ops)
    except RuntimeError as exc:
        print(f"percpu.bench: error: {exc}", file=sys.stderr)
        return 1
    paths = sorted({c.path for c in counts if c.path})
    print(f"instructions per op at 1 thread (callgrind; {'; '.join(paths) or 'no native kernel'})", file=out)
    for c in counts:
        value = f"{c.per_op:10.1f}" if c.per_op is not None else f"{'-':>10}  ({c.why})"
        print(f"  {c.workload + '/' + c.strategy:<48} {value}", file=out)
    return 0


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
    if command == "calibrate":
        return calibrate_command(rest)
    if command == "instructions":
        return instructions_command(rest)
    return _fail(f"unknown command {command!r} (valid: list, run, calibrate, instructions)")
