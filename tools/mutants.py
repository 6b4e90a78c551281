#!/usr/bin/env python3
"""Mutation testing: the suite must fail on the core's known-bad variants.

    python tools/mutants.py [--repeat N] [--only NAME ...] [--no-build] [--list]

Builds the extensions in a copy of the tree (build/mutants, or
$PERCPU_MUTANT_DIR; the normal build stays untouched) with PERCPU_MUTANTS=1,
which compiles every variant of pyx/include/percpu/mutant.h in beside the
correct code, then:

1. the control: every test named below, with no mutant selected, must pass
   (so that a failure in step 2 is the mutant's doing, not the build's);
2. for each mutant, PERCPU_MUTANT=<name> and the tests named for it: it is
   killed when at least one of them fails. A failure that says
   "inconclusive" (a canary that saw no interleaving) does not count, and
   neither does an error in setup.

Exit status 0 only when every mutant is killed in every one of --repeat runs.
Each mutant's tests are a small subset chosen to kill it fast; a new fast path
adds its mutant to mutant.h and its tests here (a mutant without tests fails
the run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = Path(os.environ.get("PERCPU_MUTANT_DIR", ROOT / "build" / "mutants"))

C = "tests/test_counters.py"
R = "tests/test_refs.py"
A = "tests/test_alloc.py"

#: Each mutant of percpu/mutant.h, what it breaks, and the tests that must catch it.
MUTANTS: dict[str, tuple[str, list[str]]] = {
    "fallback_add_plain": (
        "the no-rseq per-CPU add as a plain load and store",
        [f"{C}::test_fallback_concurrency_in_subprocess", f"{A}::test_fallback_without_rseq"],
    ),
    "rseq_abort_drops": (
        "an aborted rseq add is dropped instead of retried",
        [f"{C}::test_nogil_threads_exact[{t}-percpu]" for t in (1, 2, 4, 8)]
        + [f"{A}::test_percpu_add_on_pool_memory_is_exact[{t}]" for t in (1, 4)],
    ),
    "no_grace_period": (
        "a reference leaves per-CPU mode and folds without a grace period",
        [f"{R}::test_fallback_concurrency_in_subprocess",
         f"{R}::test_no_rseq_membarrier_means_no_rseq_refs",
         f"{R}::test_no_membarrier_means_a_fences_only_grace_period"],
    ),
    "section_skipped": (
        "the no-rseq reference slot add runs outside a read-side section",
        [f"{R}::test_fallback_concurrency_in_subprocess",
         f"{R}::test_no_rseq_membarrier_means_no_rseq_refs",
         f"{R}::test_no_membarrier_means_a_fences_only_grace_period"],
    ),
    "approx_fold_unlocked": (
        "ApproxCounter folds a CPU's delta into the shared count without the lock",
        [f"{C}::test_approx_folds_exact_under_threads[{b}]" for b in (1, 4)],
    ),
    "release_keeps_count": (
        "the last put releases without marking the count released (a misused get revives it)",
        [f"tests/test_ref_lifetimes.py::test_misused_get_never_lets_tryget_succeed[{k}]"
         for k in ("atomic", "bigref", "percpu")],
    ),
    "perthread_shared_slot": (
        "PerThreadCounter indexes its slots by CPU: two writers per plain add",
        [f"{C}::test_nogil_threads_exact[{t}-perthread]" for t in (2, 4, 8)],
    ),
    "tryget_live_after_kill": (
        "tryget_live on the shared count ignores the kill",
        [f"{R}::test_percpu_tryget_live",
         f"{R}::test_threads_release_exactly_once_under_kill[percpu-2]",
         "tests/test_fuzz_refs.py::test_reference_call_sequences[percpu]"],
    ),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def copy_tree() -> None:
    """The tree into DEST, as tools/sanitize.sh does: generated C travels with
    its sources (and their mtimes), compiled modules never do."""
    shutil.copytree(ROOT, DEST, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".tox", "build", ".hypothesis", "__pycache__", ".mypy_cache", ".pytest_cache",
        ".venv", "*.so"))


def build() -> None:
    env = dict(os.environ, PERCPU_MUTANTS="1")
    env.pop("PERCPU_MUTANT", None)
    # --force: build_ext does not see the headers as dependencies.
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"],
                   cwd=DEST, env=env, check=True, stdout=subprocess.DEVNULL)


def test_env(mutant: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(DEST / "src"))
    env.pop("PERCPU_MUTANT", None)
    if mutant:
        env["PERCPU_MUTANT"] = mutant
    return env


def compiled_mutants() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", "import json; from percpu import _lab; print(json.dumps(_lab._mutants()))"],
        cwd=DEST, env=test_env(None), check=True, capture_output=True, text=True)
    info = json.loads(out.stdout)
    if not info["built"]:
        raise SystemExit("mutants: the build in %s has no mutants compiled in" % DEST)
    return list(info["names"])


def run_tests(tests: list[str], mutant: str | None, report: Path,
              extra: tuple[str, ...] = ()) -> tuple[int, dict[str, str]]:
    """pytest on tests; returns its exit status and each test's outcome
    ("passed", "killed", "inconclusive", "error", "skipped")."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junit-xml={report}",
         *extra, *tests],
        cwd=DEST, env=test_env(mutant), capture_output=True, text=True, timeout=1800)
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            # classname "tests.test_refs" -> the node id's "tests/test_refs.py"
            name = f"{(case.get('classname') or '').replace('.', '/')}.py::{case.get('name')}"
            failure = case.find("failure")
            if failure is not None:
                why = failure.get("message") or ""
                outcomes[name] = "inconclusive" if why.startswith("Failed: inconclusive:") else "killed"
            elif case.find("error") is not None:
                outcomes[name] = "error"
            elif case.find("skipped") is not None:
                outcomes[name] = "skipped"
            else:
                outcomes[name] = "passed"
        report.unlink()
    if proc.returncode not in (0, 1):
        tail = (proc.stdout + proc.stderr)[-3000:]
        log(f"    pytest exited {proc.returncode}:\n{tail}")
    return proc.returncode, outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mutant's tests (default 1)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these mutants only")
    ap.add_argument("--no-build", action="store_true", help=f"reuse the build in {DEST}")
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests")
    ap.add_argument("--first", action="store_true",
                    help="stop each run at its first failing test (a kill is a kill; "
                         "the table then shows the tests after it as not run)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="mutants tried at once (default: the CPUs)")
    args = ap.parse_args()
    if args.list:
        for name, (what, tests) in MUTANTS.items():
            log(f"{name}: {what}")
            for t in tests:
                log(f"    {t}")
        return 0
    chosen = args.only or list(MUTANTS)
    unknown = sorted(set(chosen) - set(MUTANTS))
    if unknown:
        ap.error(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(MUTANTS)}")

    t0 = time.monotonic()
    if not args.no_build:
        log(f"mutants: building in {DEST} with PERCPU_MUTANTS=1 ...")
        copy_tree()
        build()
    t_built = time.monotonic()
    compiled = compiled_mutants()
    if sorted(compiled) != sorted(MUTANTS):
        log(f"mutants: mutant.h has {sorted(compiled)}, this script names tests for {sorted(MUTANTS)}")
        return 1

    report = DEST / "mutants-junit.xml"
    control = sorted({t for name in chosen for t in MUTANTS[name][1]})
    log(f"mutants: control run, no mutant, {len(control)} tests ...")
    # The control is every test once: one pytest process per job (xdist).
    spread = ("-n", str(args.jobs)) if args.jobs > 1 and find_spec("xdist") else ()
    rc, outcomes = run_tests(control, None, report, spread)
    bad = {t: o for t, o in outcomes.items() if o != "passed"}
    if rc != 0 or bad or len(outcomes) < len(control):
        log(f"mutants: the control run must pass; it did not (exit {rc}): {bad or outcomes}")
        return 1
    t_control = time.monotonic()

    def trial(name: str) -> tuple[str, list[tuple[int, dict[str, str]]], float]:
        started = time.monotonic()
        stop = ("-x",) if args.first else ()
        runs = []
        for i in range(args.repeat):
            runs.append(run_tests(MUTANTS[name][1], name, DEST / f"mutants-junit-{name}.xml", stop))
            kills = sum("killed" in o.values() or (rc not in (0, 1) and not o) for rc, o in runs)
            log(f"  {name}: run {i + 1} of {args.repeat} done, killed in {kills}")
        return name, runs, (time.monotonic() - started) / args.repeat

    # Mutants run side by side, --jobs at a time (each one's runs in order):
    # their tests are short and mostly wait on subprocesses and threads that
    # are preempted on purpose. Reported in the order of MUTANTS.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = {name: (runs, took) for name, runs, took in pool.map(trial, chosen)}

    survivors = []
    for name in chosen:
        what, tests = MUTANTS[name]
        seen: dict[str, Counter[str]] = {t: Counter() for t in tests}
        killed_runs = 0
        runs, took = results[name]
        for i, (rc, outcomes) in enumerate(runs):
            crashed = rc not in (0, 1) and not outcomes
            for t, o in outcomes.items():
                seen.setdefault(t, Counter())[o] += 1
            if crashed or "killed" in outcomes.values():
                killed_runs += 1
            else:
                log(f"    run {i + 1}: survived: {outcomes}")
        verdict = "killed" if killed_runs == args.repeat else "SURVIVED"
        log(f"{name} ({what}): {verdict} in {killed_runs} of {args.repeat} runs, {took:.0f} s a run")
        for t in tests:
            counts = seen[t]
            missing = args.repeat - sum(counts.values())
            if missing:
                counts["not run"] += missing
            others = ", ".join(f"{o} {n}" for o, n in sorted(counts.items()) if o != "killed")
            log(f"    killed {counts['killed']:>2} of {args.repeat}: {t}"
                + (f" ({others})" if others else ""))
        if killed_runs != args.repeat:
            survivors.append(name)
    t_end = time.monotonic()
    log(f"mutants: build {t_built - t0:.0f} s, control {t_control - t_built:.0f} s, "
        f"mutants {t_end - t_control:.0f} s; "
        + (f"SURVIVED: {', '.join(survivors)}" if survivors else f"all {len(chosen)} killed"))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
