"""A ``bnlab d2l`` results folder: config.json, environment.json, summary.json
(variants with per-seed statistics, the book's numbers, verdicts), d2l_curves.png and
``runs/VARIANT/seedK/``.

Recognised by ``summary.json``, or a ``config.json`` whose ``command`` is ``"d2l"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.report.commands import d2l_command
from bnlab.report.files import Warn, read_json
from bnlab.report.model import Result, Table, Verdict
from bnlab.report.readers._layout import (
    CONFIG_NAME,
    add_environment,
    add_figure,
    json_or_empty,
    read_command_config,
)

__all__ = ["read", "recognise"]

NAME = "d2l"

_METRICS = (
    ("train loss", "train_loss"),
    ("train acc", "train_acc"),
    ("test acc", "test_acc"),
    ("test acc, recalibrated", "test_acc_recalibrated"),
    ("test acc, batch statistics", "test_acc_batch_stats"),
    ("images/s", "images_per_s"),
)


def recognise(folder: Path) -> bool:
    return (folder / "summary.json").is_file() or json_or_empty(folder / CONFIG_NAME).get(
        "command"
    ) == "d2l"


def _stat(stats: Any, digits: int = 3) -> str | None:
    """``mean ± std`` over seeds (the mean alone for one seed)."""
    if not isinstance(stats, dict) or not stats.get("n") or stats.get("mean") is None:
        return None
    if stats["n"] > 1 and stats.get("std") is not None:
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}"


def _tables(variants: dict[str, Any]) -> list[Table]:
    rows, book_rows = [], []
    for name, entry in variants.items():
        if not isinstance(entry, dict):
            continue
        metrics = entry.get("metrics") or {}
        rows.append(
            (
                name,
                entry.get("lr"),
                len(entry.get("seeds") or []),
                *(
                    _stat(metrics.get(key), 0 if key == "images_per_s" else 3)
                    for _, key in _METRICS
                ),
            )
        )
        book = entry.get("book")
        if isinstance(book, dict):
            book_rows.append(
                (name, book.get("train_loss"), book.get("train_acc"), book.get("test_acc"))
            )
    tables = [
        Table(
            "LeNet on Fashion-MNIST, the d2l recipe (mean ± std over seeds)",
            ("variant", "lr", "seeds", *(label for label, _ in _METRICS)),
            tuple(rows),
            caption="test acc: eval with moving averages, as the book; recalibrated: BN "
            "statistics recomputed on training batches; batch statistics: each test "
            "batch's own; images/s: training steps only",
        )
    ]
    if book_rows:
        tables.append(
            Table(
                "The book's printed results (d2l-zh 2.0, PyTorch, GPU, one build)",
                ("variant", "train loss", "train acc", "test acc"),
                tuple(book_rows),
            )
        )
    return tables


def read(folder: Path, warn: Warn) -> list[Result]:
    """The experiment as a result: per-variant table, the book's, verdicts, curves."""
    summary = read_json(folder / "summary.json")
    variants = summary.get("variants")
    if not isinstance(variants, dict):
        raise ValueError(f"{folder / 'summary.json'}: no 'variants' object")
    config = read_command_config(folder, warn)
    d2l = summary.get("config") or {}
    result = Result.from_path(
        NAME,
        "The d2l batch-norm chapter, reproduced",
        folder,
        summary=(
            "d2l's LeNet on Fashion-MNIST without BN, with the textbook's scratch BN, with "
            f"bnlab's and with torch's BN; {d2l.get('epochs', '?')} epochs, batch "
            f"{d2l.get('batch_size', '?')}."
        ),
        command=d2l_command(config),
        tables=_tables(variants),
    )
    for verdict in summary.get("verdicts") or []:
        if isinstance(verdict, dict):
            result.verdicts.append(
                Verdict(
                    str(verdict.get("claim", "")),
                    verdict.get("holds") if isinstance(verdict.get("holds"), bool) else None,
                    str(verdict.get("measured", "")),
                )
            )
    for name, entry in variants.items():
        if isinstance(entry, dict) and entry.get("first_bn_gamma"):
            gamma = ", ".join(f"{v:.3f}" for v in entry["first_bn_gamma"])
            beta = ", ".join(f"{v:.3f}" for v in entry.get("first_bn_beta") or [])
            result.notes.append(f"{name}: first BN layer gamma = [{gamma}], beta = [{beta}]")
    add_figure(result, folder, "d2l_curves.png", "training curves of every variant", warn)
    add_environment(result, folder, warn)
    return [result]
