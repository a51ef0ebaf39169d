"""The file names of a run folder, as ``bnlab.train.run_dir`` writes them.

The report reads results files and imports nothing of the training code
(tests/test_layers.py), so the names are repeated here; tests/report/
test_report_readers.py checks that they are ``bnlab.train.run_dir``'s. Lab folders
written before that layout keep their environment in ``env.json``; the readers take it
where ``environment.json`` is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.report.files import Warn, image_data_uri, read_json
from bnlab.report.model import Figure, Result

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "ENVIRONMENT_NAME",
    "LEGACY_ENVIRONMENT_NAME",
    "METRICS_NAME",
    "RESULTS_NAME",
    "add_environment",
    "add_figure",
    "json_or_empty",
    "read_command_config",
    "read_environment",
]

CONFIG_NAME = "config.json"
ENVIRONMENT_NAME = "environment.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
RESULTS_NAME = "results.json"
LEGACY_ENVIRONMENT_NAME = "env.json"


def json_or_empty(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it cannot be read (what a reader's
    ``recognise`` looks at: a folder whose file is unreadable is not its folder)."""
    try:
        return read_json(path)
    except ValueError:
        return {}


def read_environment(folder: Path) -> dict[str, Any]:
    """The environment record of a run folder: ``environment.json``, else ``env.json``.

    Raises:
        ValueError: neither file is there, or the one there is not a JSON object (the
            message names ``environment.json``, or the ``env.json`` that was read).
    """
    path = folder / ENVIRONMENT_NAME
    legacy = folder / LEGACY_ENVIRONMENT_NAME
    if not path.exists() and legacy.exists():
        path = legacy
    return read_json(path)


def read_command_config(
    folder: Path, warn: Warn, fallback: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The run's ``config.json``, which its command line is rebuilt from; when it cannot
    be read, ``warn`` that the command is left out and return ``fallback`` (or ``{}``)."""
    try:
        return read_json(folder / CONFIG_NAME)
    except ValueError as exc:
        warn(f"{exc}; the command is left out")
        return {} if fallback is None else fallback


def add_figure(result: Result, folder: Path, file: str, caption: str, warn: Warn) -> None:
    """Append the image ``folder / file`` to ``result.figures``; ``warn`` instead when it
    cannot be read (missing, not a PNG)."""
    try:
        uri = image_data_uri(folder / file)
    except ValueError as exc:
        warn(str(exc))
        return
    result.figures.append(Figure(file, caption, uri))


def add_environment(result: Result, folder: Path, warn: Warn) -> None:
    """Set ``result.environment`` from :func:`read_environment`; ``warn`` when unreadable."""
    try:
        result.environment = read_environment(folder)
    except ValueError as exc:
        warn(str(exc))
