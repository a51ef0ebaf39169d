"""``bnlab report``: results folders -> one self-contained HTML page.

Reads any mix of results folders that bnlab writes (``bnlab train``, ``bnlab d2l``,
``bnlab lab``, the claims table of ``bnlab lab claims`` and folders of benchmark
records ``bench_*.json``) and writes one page with, for each result, its figures,
tables, verdicts and the command that reproduces it, plus the claims table and the
environments. The page opens offline: CSS inline, figures embedded, nothing loaded.

Folders that are missing, unrecognised or malformed are skipped with a warning; the
page is written for the rest. Only regular files are read, each kind with a size limit
(a FIFO or a device is refused, not waited on). A page path that would replace an input
(``-o RUN/results.json``) is refused. Exit status 0 when the page was written, 1 when
nothing could be read or the page path was refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from bnlab.cli._args import add_command
from bnlab.report import write_report

__all__ = ["add_parser", "run"]

HELP = "write one offline HTML page from results folders (train, d2l, lab, benchmarks)"
EXAMPLES = """examples:
  bnlab report runs/d2l runs/bench -o report.html
  bnlab report runs/lenet-bn runs/lab/* runs/claims -o runs/report.html --title "BN, measured"
"""


def add_parser(subparsers: Any) -> None:
    p = add_command(subparsers, "report", run, HELP, __doc__, EXAMPLES, as_written=True)
    p.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="results folders (or bench_*.json files)",
    )
    p.add_argument(
        "-o", "--out", type=Path, required=True, metavar="REPORT_HTML", help="the page to write"
    )
    p.add_argument("--title", default="bnlab report", help="the page's title")


def run(args: argparse.Namespace) -> int:
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        report = write_report(args.run_dirs, args.out, title=args.title, generated=generated)
    except ValueError as exc:
        print(f"bnlab report: error: {exc}", file=sys.stderr)
        return 1
    for warning in report.warnings:
        print(f"bnlab report: warning: {warning}", file=sys.stderr)
    count = len(report.results)
    print(f"wrote {report.path} ({count} result{'' if count == 1 else 's'})")
    return 0
