"""The claims table of ``bnlab lab claims ... --out DIR``: ``DIR/claims.json``, a list
of {claim, source, experiment, evidence, summary, figure, rule, verdict, literature}
(``{"claims": [...]}`` is read too). Recognised by ``claims.json``. A row's figure (a
path relative to ``DIR``) is inlined as ``figure_uri``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.report.files import Warn, image_data_uri, read_json
from bnlab.report.model import Result

__all__ = ["read", "recognise"]

NAME = "claims"


def _with_figure(row: dict[str, Any], folder: Path, warn: Warn) -> dict[str, Any]:
    """``row`` with its experiment's figure (a path relative to ``folder``) inlined as
    ``figure_uri``; ``warn`` when the figure cannot be read."""
    figure = row.get("figure")
    if not isinstance(figure, dict) or not isinstance(figure.get("path"), str):
        return row
    try:
        return {**row, "figure_uri": image_data_uri(folder / figure["path"])}
    except ValueError as exc:
        warn(f"claim {row.get('key', row['claim'])!r}: {exc}")
        return row


def recognise(folder: Path) -> bool:
    return (folder / "claims.json").is_file()


def read(folder: Path, warn: Warn) -> list[Result]:
    """The claims as one result whose ``claims`` are the table's rows."""
    path = folder / "claims.json"
    try:
        value = read_json(path, expect=list)
    except ValueError:
        value = read_json(path).get("claims")
        if not isinstance(value, list):
            raise ValueError(
                f"{path}: expected a list of claims (or {{'claims': [...]}})"
            ) from None
    rows = []
    for i, row in enumerate(value):
        if isinstance(row, dict) and "claim" in row:
            rows.append(_with_figure(row, folder, warn))
        else:
            warn(f"{path}: entry {i} is not a claim (no 'claim' key) and is left out")
    return [Result.from_path(NAME, "Claims table", folder, claims=rows)]
