"""``python -m percpu.report results.json [other.json ...] -o reports/NAME/``."""
from __future__ import annotations

import argparse
import sys

from percpu._checks import check_argv
from percpu.report.build import write_report
from percpu.report.loading import ReportError

PROG = "python -m percpu.report"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Turn percpu.bench pyperf JSON into PNG plots, report.md and index.html. "
            "With two or more files, compare them against the first."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="results.json", help="pyperf JSON written by percpu.bench")
    parser.add_argument("-o", "--output", default="reports/latest", metavar="DIR",
                        help="folder to write the report into (default: reports/latest)")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--labels", default=None, metavar="A,B,...",
                        help="comma-separated names for the files (default: derived from the paths)")
    return parser.parse_args(check_argv(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels = None if args.labels is None else [s.strip() for s in args.labels.split(",")]
    try:
        written = write_report(args.files, args.output, title=args.title, labels=labels)
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        # The output folder cannot be written, or matplotlib is missing.
        target = getattr(exc, "filename", None) or args.output
        print(f"{PROG}: error: {target}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    plots = sum(1 for p in written if p.suffix == ".png")
    index = next(p for p in written if p.name == "index.html")
    print(f"wrote {index} and report.md with {plots} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
