"""The environment of a run in a few lines, and which runs share one.

Run folders hold ``environment.json`` (lab folders written before the one run-folder
layout: ``env.json``) and benchmarks an ``environment`` key; all come from
``bnlab.bench.timing.environment_record`` (plus device and threads for training runs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["environment_key", "environment_rows"]

# (label, keys tried in order): what identifies a machine and a code version. Load
# averages and times differ between runs on the same machine and are left out.
_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ("torch",)),
    ("python", ("python",)),
    ("bnlab", ("bnlab",)),
    ("device", ("device",)),
    ("CPU / GPU", ("device_name", "cpu_model")),
    ("logical CPUs", ("logical_cpus",)),
    ("CUDA available", ("cuda_available",)),
    ("threads", ("threads", "torch_num_threads")),
    ("platform", ("platform",)),
    ("git revision", ("git_revision",)),
    ("uncommitted changes", ("git_dirty",)),
)


def _first(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    return None


def environment_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of the known fields that the record has."""
    rows = []
    for label, keys in _FIELDS:
        value = _first(record, keys)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif label == "git revision":
            text = str(value)[:12]
        else:
            text = str(value)
        rows.append((label, text))
    return rows


def environment_key(record: Mapping[str, Any]) -> str:
    """A string equal for records of the same environment (the shown fields only)."""
    return json.dumps(environment_rows(record))
