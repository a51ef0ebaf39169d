"""bnlab's results as one self-contained HTML page (``bnlab report``).

Reads results folders written by ``bnlab train``, ``bnlab d2l``, ``bnlab lab`` (and its
claims table) and ``benchmarks/bench_*.py``; each kind is recognised by its files (see
:mod:`bnlab.report.readers`). Reads files only: never imports models, train or lab.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
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
    "check_output",
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
        results += _renderable(found, path, warnings.append)
    return results, warnings


def _renderable(found: list[Result], path: Path, warn: Callable[[str], None]) -> list[Result]:
    """The results that render; one whose values the page cannot show is left out."""
    kept = []
    for result in found:
        try:
            render_page([result], [], title="")
        except Exception as exc:  # malformed values from a damaged folder
            warn(f"skipped {path} ({result.kind} results): malformed ({type(exc).__name__}: {exc})")
            continue
        kept.append(result)
    return kept


# Names inside a results folder the page may take: any other would replace one of the
# folder's own files.
_PAGE_SUFFIXES = (".html", ".htm")


def check_output(paths: Iterable[str | Path], out: str | Path) -> None:
    """Refuse a page path that would replace an input of the same report.

    Raises:
        ValueError: ``out`` is one of ``paths`` (a benchmark file, say), or lies inside
            an input folder without an ``.html`` name (``RUN/results.json``).
    """
    target = Path(os.path.realpath(out))
    for raw in paths:
        source = Path(os.path.realpath(raw))
        if target == source:
            raise ValueError(
                f"-o {out} is also an input of this report ({raw}); write the page elsewhere, "
                "e.g. report.html beside the folders"
            )
        inside = source.is_dir() and target.is_relative_to(source)
        if inside and target.suffix.lower() not in _PAGE_SUFFIXES:
            raise ValueError(
                f"-o {out} lies in the input folder {raw} and would replace one of its files; "
                "write the page elsewhere, or under a name ending in .html"
            )


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
        ValueError: ``out`` would replace an input (``check_output``), or no results
            could be read from any of the paths (nothing is written; the message lists
            the warnings).
    """
    paths = list(paths)
    check_output(paths, out)
    report = build_report(paths, title=title, generated=generated)
    if not report.results:
        details = "; ".join(report.warnings) or "no folders given"
        raise ValueError(f"no results could be read, so no report was written ({details})")
    report.path = write_text_atomic(Path(out), report.html)
    return report
