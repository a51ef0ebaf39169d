"""bnlab's results as one self-contained HTML page (``bnlab report``).

Reads results folders written by ``bnlab train``, ``bnlab d2l``, ``bnlab lab`` (and its
claims table) and ``benchmarks/bench_*.py``; each kind is recognised by its files (see
:mod:`bnlab.report.readers`). Reads files only: never imports models, train or lab.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bnlab.report.files import write_text_atomic
from bnlab.report.html import render_page
from bnlab.report.model import Figure, Result, Table, Verdict
from bnlab.report.readers import read_folder

__all__ = [
    "Figure",
    "Report",
    "Result",
    "Table",
    "Verdict",
    "build_report",
    "collect_results",
    "write_report",
]


@dataclass
class Report:
    """A rendered page, what went into it and what was skipped."""

    html: str
    results: list[Result] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None


def collect_results(paths: Iterable[str | Path]) -> tuple[list[Result], list[str]]:
    """Read every folder (or benchmark file); return the results and the warnings.

    A path that does not exist, or that no reader recognises, is skipped with a
    warning; so is a recognised folder whose main file is missing or malformed.
    """
    results: list[Result] = []
    warnings: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            warnings.append(f"skipped {path}: no such file or folder")
            continue
        found = read_folder(path, warnings.append)
        if found is None:
            warnings.append(
                f"skipped {path}: not a bnlab results folder (expected the files of "
                "bnlab train, d2l, lab, lab claims or a benchmark's bench_*.json)"
            )
            continue
        results += found
    return results, warnings


def build_report(
    paths: Iterable[str | Path], *, title: str = "bnlab report", generated: str = ""
) -> Report:
    """Read the folders and render the page (nothing is written)."""
    results, warnings = collect_results(paths)
    page = render_page(results, warnings, title=title, generated=generated)
    return Report(html=page, results=results, warnings=warnings)


def write_report(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    title: str = "bnlab report",
    generated: str = "",
) -> Report:
    """Read the folders and write the page to ``out`` atomically.

    Raises:
        ValueError: no results could be read from any of the paths (nothing is
            written; the message lists the warnings).
    """
    report = build_report(paths, title=title, generated=generated)
    if not report.results:
        details = "; ".join(report.warnings) or "no folders given"
        raise ValueError(f"no results could be read, so no report was written ({details})")
    report.path = write_text_atomic(Path(out), report.html)
    return report
