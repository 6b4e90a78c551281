"""Reports from ``percpu.bench`` results: plots, report.md and index.html.

``python -m percpu.report results.json [other.json ...] -o reports/NAME/``.
Needs pyperf and matplotlib (``pip install 'percpu[report]'``), not the
compiled core: it reads only the JSON.
"""
from __future__ import annotations

from percpu.report.build import write_report
from percpu.report.findings import compute_findings
from percpu.report.loading import Point, ReportError, ResultFile, load_file, load_results

__all__ = [
    "Point",
    "ReportError",
    "ResultFile",
    "compute_findings",
    "load_file",
    "load_results",
    "main",
    "write_report",
]


def main(argv: list[str] | None = None) -> int:
    from percpu.report.__main__ import main as _main

    return _main(argv)
