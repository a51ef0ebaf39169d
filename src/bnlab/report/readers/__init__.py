"""Readers of bnlab's results folders, one per kind, each recognising its folder by its
files: d2l (summary.json), train (metrics.jsonl / checkpoint.pt), lab (units/, an older
folder's env.json, results.json with ``experiment``), claims (claims.json), benchmarks
(bench_*.json). Run folders share one layout (``_layout``: ``bnlab.train.run_dir``'s
file names).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from bnlab.report.files import Warn
from bnlab.report.model import Result
from bnlab.report.readers import bench, claims, d2l, lab, train

__all__ = ["READERS", "read_folder", "recognise"]

#: Every reader, in the order they are tried.
READERS: tuple[ModuleType, ...] = (d2l, train, lab, claims, bench)


def _recognises(reader: ModuleType, path: Path) -> bool:
    try:
        return bool(reader.recognise(path))
    except (ValueError, OSError):
        return False  # a file it looks at is not readable: not its folder


def recognise(path: Path) -> list[ModuleType]:
    """The readers that recognise ``path`` (a folder, or a benchmark file)."""
    return [reader for reader in READERS if _recognises(reader, path)]


def _problem(exc: Exception) -> str:
    """A reader's ``ValueError`` names the file; anything else is a malformed value."""
    if isinstance(exc, ValueError):
        return str(exc)
    return f"malformed results ({type(exc).__name__}: {exc})"


def read_folder(path: Path, warn: Warn) -> list[Result] | None:
    """The results in ``path``; None when no reader recognises it.

    A folder that fails to read (a missing, unreadable or malformed file; a value of
    the wrong type or a missing key anywhere in it) gives one warning naming the folder
    and no results from that reader, so the rest of the report is still written.
    """
    readers = recognise(path)
    if not readers:
        return None
    results: list[Result] = []
    for reader in readers:
        try:
            results += reader.read(path, warn)
        except Exception as exc:  # one malformed folder must not cost the whole page
            warn(f"skipped {path} ({reader.NAME} results): {_problem(exc)}")
    return results
