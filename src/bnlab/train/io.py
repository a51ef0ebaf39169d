"""Files of a run: atomic writes, the metrics log and the checkpoint.

Every whole-file write goes to a temporary file in the destination's folder, is flushed
and fsynced, and then renamed over the destination with ``os.replace`` (atomic on POSIX
and Windows), so a reader or a crash sees either the old file or the new one, never a
torn one; the temporary file is removed if anything fails. The metrics log is the one
file that grows by appending (a line per record, flushed and fsynced).

Checkpoints are written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: they may hold only tensors and plain containers of
primitives (dict, list, tuple, str, int, float, bool, None).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "append_jsonl",
    "atomic_write",
    "finite_or_none",
    "load_checkpoint",
    "read_jsonl",
    "save_checkpoint",
    "write_json",
    "write_jsonl",
]

#: File names inside a run folder.
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary binary file that replaces ``path``.

    Args:
        path: destination; its folder must exist.
        write: called once with the open temporary file.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the folder is missing or not writable; nothing is left behind.
    """
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse a file; mode 0o666 lets the umask decide, as open() would.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to JSON: {value!r}")


def _dumps(obj: Any, *, indent: int | None) -> str:
    # allow_nan=False: NaN and Infinity are not JSON; callers store None instead.
    return json.dumps(obj, indent=indent, allow_nan=False, default=_json_default)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent.
        ValueError: ``obj`` holds a NaN or an infinity.
    """
    text = _dumps(obj, indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line, atomically, replacing the file."""
    text = "".join(_dumps(dict(r), indent=None) + "\n" for r in records)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line, flushed and fsynced."""
    line = _dumps(dict(record), indent=None) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (a crash mid-append) is skipped.

    Raises:
        ValueError: a line other than the last is not valid JSON.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(
                f"{path}: line {number} is not valid JSON ({exc}): {line[:80]!r}"
            ) from exc
    return records


def finite_or_none(value: float) -> float | None:
    """``value``, or None where it is NaN or infinite (JSON has no such numbers)."""
    return value if math.isfinite(value) else None


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """``torch.save(state)`` atomically (temporary file, fsync, ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state
