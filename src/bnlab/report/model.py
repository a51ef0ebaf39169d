"""What the readers return and the page shows: results as plain, already-read values.

A :class:`Result` is one results folder (or one benchmark) turned into printable
parts: tables, verdicts, figures (inlined as data URIs), the command that reproduces
it and its environment. Nothing here reads files or renders HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Result", "Table", "Verdict"]


@dataclass(frozen=True)
class Table:
    """Column names and rows of values (str, int, float, bool, None, short lists)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Verdict:
    """A claim, whether the numbers support it (None: undecided), and the numbers."""

    claim: str
    holds: bool | None
    measured: str


@dataclass(frozen=True)
class Figure:
    """An image of the results folder, inlined: its file name, caption and data URI."""

    name: str
    caption: str
    data_uri: str


@dataclass
class Result:
    """One result as the page shows it.

    Args:
        kind: which reader made it (``"train"``, ``"d2l"``, ``"lab"``, ``"claims"``,
            ``"benchmark"``).
        title: the heading.
        source: the folder or file it was read from (shown, escaped).
        summary: a sentence or two saying what was measured.
        command: the command line that reproduces it (None when unknown).
        facts: (label, value) pairs shown under the heading.
        tables, verdicts, figures, notes: the content.
        environment: the environment record of the run (None when absent).
        claims: the rows of a claims table (``kind == "claims"`` only).
    """

    kind: str
    title: str
    source: str
    summary: str = ""
    command: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] | None = None
    claims: list[dict[str, Any]] | None = None

    @classmethod
    def from_path(cls, kind: str, heading: str, path: Path, **fields: Any) -> Result:
        """The result of a reader ``kind`` read from ``path`` (a folder or a file): titled
        ``"heading (path's name)"``, its source the path; ``fields`` are the others."""
        return cls(kind=kind, title=f"{heading} ({path.name})", source=str(path), **fields)
