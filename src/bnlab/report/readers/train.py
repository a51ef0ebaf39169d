"""A ``bnlab train`` results folder: config.json, environment.json, metrics.jsonl,
checkpoint.pt, results.json, curves.png.

Recognised by ``metrics.jsonl`` or ``checkpoint.pt``, or a ``config.json`` whose
``command`` is ``"train"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.report.commands import train_command
from bnlab.report.files import Warn, read_json
from bnlab.report.model import Result, Table
from bnlab.report.readers._layout import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    RESULTS_NAME,
    add_environment,
    add_figure,
    json_or_empty,
    read_command_config,
)

__all__ = ["read", "recognise"]

NAME = "train"


def recognise(folder: Path) -> bool:
    return (
        (folder / METRICS_NAME).is_file()
        or (folder / CHECKPOINT_NAME).is_file()
        or json_or_empty(folder / CONFIG_NAME).get("command") == "train"
    )


def _history_table(history: list[dict[str, Any]]) -> Table:
    columns = ("epoch", "train_loss", "train_acc", "test_acc", "images_per_s")
    rows = tuple(tuple(record.get(c) for c in columns) for record in history)
    return Table("per epoch", ("epoch", "train loss", "train acc", "test acc", "images/s"), rows)


def read(folder: Path, warn: Warn) -> list[Result]:
    """The run as a result: final numbers, per-epoch table, curves, command."""
    results = read_json(folder / RESULTS_NAME)
    stored = results.get("config")
    config = read_command_config(folder, warn, stored if isinstance(stored, dict) else None)
    final = results.get("final") or {}
    model = config.get("model", "?")
    norm = config.get("norm", "?")
    train = config.get("train") or {}
    data = config.get("data") or {}
    result = Result.from_path(
        NAME,
        f"Training run: {model} + {norm}",
        folder,
        summary=(
            f"{model} with normalization {norm!s} trained on "
            f"{data.get('dataset', 'Fashion-MNIST')} by SGD."
        ),
        command=train_command(config, str(folder)),
    )
    result.facts = [
        ("epochs", str(results.get("epochs_run", len(results.get("history") or [])))),
        (
            "batch size / lr / seed",
            f"{train.get('batch_size')} / {train.get('lr')} / {train.get('seed')}",
        ),
        ("training / test images", f"{data.get('train_samples')} / {data.get('test_samples')}"),
    ]
    summary_rows = [
        ("final train loss", final.get("train_loss")),
        ("final train accuracy", final.get("train_acc")),
        ("final test accuracy", final.get("test_acc")),
        ("images/s (training steps)", results.get("images_per_s")),
        ("training time (s)", results.get("train_time_s")),
        ("wall time (s)", results.get("wall_time_s")),
    ]
    model_info = results.get("model") or {}
    if model_info.get("num_parameters") is not None:
        summary_rows.append(("parameters", model_info["num_parameters"]))
    result.tables.append(Table("results", ("quantity", "value"), tuple(summary_rows)))
    history = results.get("history")
    if isinstance(history, list) and history:
        result.tables.append(_history_table([h for h in history if isinstance(h, dict)]))
    add_figure(result, folder, "curves.png", "loss and accuracy per epoch", warn)
    add_environment(result, folder, warn)
    return [result]
