"""A folder of benchmark records (``benchmarks/bench_*.py``): ``bench_<name>_<UTC>.json``
files with ``benchmark``, ``schema_version``, ``config``, ``environment`` and the
numbers (``results`` rows, ``ratios_of_medians``, ``summary``...).

Recognised by ``bench_*.json`` files in the folder (or such a file given directly).
One result per benchmark: of several runs of the same benchmark, the newest (by its
``started_utc``, else the time in its name, else the file's modification time). Rows
of flat values become a table as they are; timing records (``median_time_ms`` and
friends) are shown as median and IQR; every ``*ratio*`` entry is shown as well.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bnlab.report.commands import bench_command
from bnlab.report.files import Warn, read_json
from bnlab.report.model import Result, Table

__all__ = ["read", "recognise"]

NAME = "benchmark"

_PATTERN = "bench_*.json"
_STAMP = re.compile(r"_(\d{8}T\d{6}Z)\.json$")
# The raw samples and the spread beyond the IQR stay in the JSON file.
_HIDDEN = frozenset(
    {
        "samples_time_ms",
        "q1_time_ms",
        "q3_time_ms",
        "min_time_ms",
        "max_time_ms",
        "calls_per_sample",
        "repeats",
    }
)
_SKIPPED_TOP = frozenset({"benchmark", "schema_version", "config", "environment", "runs"})
# Settings worth a line under the heading, when a config has them.
_CONFIG_FACTS = (
    "threads",
    "repeats",
    "dtype",
    "device",
    "step",
    "train_step",
    "timing",
    "started_utc",
)


def recognise(path: Path) -> bool:
    if path.is_file():
        return path.match(_PATTERN)
    return any(path.glob(_PATTERN))


def _is_timing(value: Any) -> bool:
    return isinstance(value, dict) and "median_time_ms" in value


def _timing_text(value: dict[str, Any]) -> str:
    median, iqr = value.get("median_time_ms"), value.get("iqr_time_ms")
    if not isinstance(median, int | float):
        return str(median)
    return f"{median:.4g} ({iqr:.2g})" if isinstance(iqr, int | float) else f"{median:.4g}"


def _flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """A row of printable values: timings as median (IQR), shapes as 8x4x6x6."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key in _HIDDEN:
            continue
        if _is_timing(value):
            row[f"{key}: median ms (IQR)"] = _timing_text(value)
        elif key == "shape" and isinstance(value, list):
            row[key] = "x".join(str(v) for v in value)
        elif isinstance(value, dict | list):
            continue  # nested data is in the file; the table stays flat
        else:
            row[key] = value
    return row


def _rows_table(title: str, records: list[dict[str, Any]]) -> Table:
    rows = [_flat_row(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return Table(title, tuple(columns), tuple(tuple(row.get(c) for c in columns) for row in rows))


def _named_table(title: str, entries: dict[str, Any], name_column: str) -> Table:
    records = [
        {name_column: name, **(value if isinstance(value, dict) else {"value": value})}
        for name, value in entries.items()
    ]
    return _rows_table(title, records)


def _tables(record: dict[str, Any], facts: list[tuple[str, str]]) -> list[Table]:
    tables = []
    for key, value in record.items():
        if key in _SKIPPED_TOP:
            continue
        title = key.replace("_", " ")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append(_rows_table(title, value))
        elif isinstance(value, dict) and value:
            tables.append(_named_table(title, value, "variant" if "ratio" not in key else "name"))
        elif isinstance(value, int | float | str | bool) or value is None:
            facts.append((title, value if isinstance(value, str) else _number(value)))
    return tables


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _started(path: Path, record: dict[str, Any]) -> str:
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    if isinstance(config.get("started_utc"), str):
        return config["started_utc"]
    match = _STAMP.search(path.name)
    if match:
        stamp = match.group(1)
        return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    return ""


def _result(path: Path, record: dict[str, Any], older: int) -> Result:
    name = str(record["benchmark"])
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    script = re.sub(r"_\d{8}T\d{6}Z(?=\.json$)", "", path.name).removesuffix(".json") + ".py"
    result = Result.from_path(
        NAME, f"Benchmark: {name}", path, command=bench_command(config, script)
    )
    for key in _CONFIG_FACTS:
        if config.get(key) is not None:
            result.facts.append((key.replace("_", " "), str(config[key])))
    if older:
        result.facts.append(("older runs in the folder", f"{older} (not shown)"))
    result.tables = _tables(record, result.facts)
    if isinstance(record.get("environment"), dict):
        result.environment = record["environment"]
    return result


def read(path: Path, warn: Warn) -> list[Result]:
    """One result per benchmark found, the newest run of each."""
    files = [path] if path.is_file() else sorted(path.glob(_PATTERN))
    newest: dict[str, list[tuple[str, float, Path, dict[str, Any]]]] = {}
    for file in files:
        try:
            record = read_json(file)
        except ValueError as exc:
            warn(str(exc))
            continue
        if "benchmark" not in record:
            warn(f"{file}: not a benchmark record (no 'benchmark' key); left out")
            continue
        entry = (_started(file, record), file.stat().st_mtime, file, record)
        newest.setdefault(str(record["benchmark"]), []).append(entry)
    if not newest:
        raise ValueError(
            f"{path}: no readable benchmark record among {len(files)} bench_*.json file(s)"
        )
    results = []
    for name in sorted(newest):
        runs = sorted(newest[name], key=lambda e: (e[0], e[1], e[2].name))
        _, _, file, record = runs[-1]
        results.append(_result(file, record, older=len(runs) - 1))
    return results
