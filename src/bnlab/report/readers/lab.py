"""A ``bnlab lab NAME`` results folder: config.json, environment.json (``env.json`` in
folders written before the one run-folder layout), units/, results.json (experiment,
title, summary, command, quick, config, elapsed_s, tables, verdicts, figures, notes, raw;
the schema of ``bnlab.lab.experiment``) and its figures.

Recognised by ``units/`` or an older folder's ``env.json``, or a ``results.json`` /
``config.json`` with an ``experiment`` key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.report.files import Warn, read_json
from bnlab.report.model import Result, Table, Verdict
from bnlab.report.readers._layout import (
    CONFIG_NAME,
    LEGACY_ENVIRONMENT_NAME,
    RESULTS_NAME,
    add_environment,
    add_figure,
    json_or_empty,
)

__all__ = ["read", "recognise"]

NAME = "lab"


def recognise(folder: Path) -> bool:
    return (
        (folder / LEGACY_ENVIRONMENT_NAME).is_file()
        or (folder / "units").is_dir()
        or any("experiment" in json_or_empty(folder / name) for name in (RESULTS_NAME, CONFIG_NAME))
    )


def _table(raw: Any, path: Path, warn: Warn) -> Table | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("columns"), list):
        warn(f"{path}: a table without 'columns' is left out")
        return None
    columns = tuple(str(c) for c in raw["columns"])
    rows = []
    for row in raw.get("rows") or []:
        if isinstance(row, list) and len(row) == len(columns):
            rows.append(tuple(row))
        else:
            warn(
                f"{path}: table {raw.get('title')!r}: a row that does not fit its columns is left out"
            )
    return Table(str(raw.get("title", "")), columns, tuple(rows))


def read(folder: Path, warn: Warn) -> list[Result]:
    """The experiment as a result: its tables, verdicts, figures, notes and command."""
    path = folder / RESULTS_NAME
    results = read_json(path)
    if "experiment" not in results:
        raise ValueError(f"{path}: not a 'bnlab lab' results file (no 'experiment' key)")
    name = str(results["experiment"])
    result = Result.from_path(
        NAME,
        str(results.get("title") or name),
        folder,
        summary=str(results.get("summary") or ""),
        command=str(results["command"]) if results.get("command") else None,
    )
    result.facts.append(("experiment", name))
    if results.get("quick"):
        result.facts.append(("configuration", "quick (small; the full run may differ)"))
    if isinstance(results.get("elapsed_s"), int | float):
        result.facts.append(("elapsed", f"{results['elapsed_s']:.1f} s"))
    for raw in results.get("tables") or []:
        table = _table(raw, path, warn)
        if table is not None:
            result.tables.append(table)
    for raw in results.get("verdicts") or []:
        if isinstance(raw, dict):
            holds = raw.get("holds")
            result.verdicts.append(
                Verdict(
                    str(raw.get("claim", "")),
                    holds if isinstance(holds, bool) else None,
                    str(raw.get("measured", "")),
                )
            )
    for raw in results.get("figures") or []:
        if not isinstance(raw, dict) or not raw.get("file"):
            continue
        file = Path(str(raw["file"])).name  # a name in the folder, never a path out of it
        add_figure(result, folder, file, str(raw.get("caption", "")), warn)
    result.notes = [str(n) for n in results.get("notes") or []]
    add_environment(result, folder, warn)
    return [result]
