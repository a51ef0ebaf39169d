"""File writers of a run: atomic writes, the metrics log and the checkpoint.

What the files are called and where they go is ``bnlab.train.run_dir``'s business.

Every whole-file write goes to a temporary file in the destination's folder, is flushed
and fsynced, and then renamed over the destination with ``os.replace`` (atomic on POSIX
and Windows), so a reader or a crash sees either the old file or the new one, never a
torn one; the temporary file is removed if anything fails. The metrics log is the one
file that grows by appending (a line per record, flushed and fsynced).

JSON has no NaN or infinity: a non-finite float is written as the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"`` (``NON_FINITE``), and ``read_json`` and ``read_jsonl``
turn those strings back into floats (an infinite test loss is a result, not a crash);
the codec is ``bnlab.nonfinite``, which the report's readers use too.

A write that fails because the disk is full (or the quota, or the folder is read-only)
raises ``OSError`` whose message names the file and says "disk full" (or what else it
was), ``torch.save``'s own error included.

Checkpoints are written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: they may hold only tensors and plain containers of
primitives (dict, list, tuple, str, int, float, bool, None).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from bnlab.nonfinite import NON_FINITE, decoded, encodable

__all__ = [
    "NON_FINITE",
    "append_jsonl",
    "atomic_write",
    "finite_or_none",
    "load_checkpoint",
    "read_json",
    "read_jsonl",
    "remove_stale_temporaries",
    "save_checkpoint",
    "write_json",
    "write_jsonl",
]


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
        OSError: the folder is missing or not writable, or the disk is full: the message
            names ``path`` and says that its previous content is unchanged; nothing is
            left behind.
    """
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_replace(path, tmp_name, write)
    except OSError as exc:
        if exc.errno not in _RESOURCE_ERRORS:
            raise
        kept = "is unchanged" if path.exists() else "was not created"
        raise _resource_error(exc, path, f"{path.name} {kept}") from exc
    _fsync_dir(path.parent)
    return path


def _resource_error(exc: OSError, path: Path, what_happened: str) -> OSError:
    """One line: the file, what the medium said ("disk full" for ENOSPC), what is kept."""
    problem = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        problem += " (disk full)"
    return OSError(
        exc.errno,
        f"cannot write {path}: {problem}; {what_happened}. Free some space or make the "
        "folder writable, or choose another output folder",
    )


_DISK_FULL = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)
)


# Errors of the medium rather than of the caller: a full disk, a read-only folder.
_RESOURCE_ERRORS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG")
    if hasattr(errno, name)
)


def _write_replace(path: Path, tmp_name: Path, write: Callable[[IO[bytes]], None]) -> None:
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


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return encodable(value.tolist())
    raise TypeError(f"cannot write a {type(value).__name__} to JSON: {value!r}")


def _dumps(obj: Any, *, indent: int | None) -> str:
    # NaN and Infinity are not JSON: written as strings (allow_nan=False checks that
    # none is left).
    return json.dumps(encodable(obj), indent=indent, allow_nan=False, default=_json_default)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (non-finite floats as strings).

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent.
    """
    text = _dumps(obj, indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line, atomically, replacing the file."""
    text = "".join(_dumps(dict(r), indent=None) + "\n" for r in records)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line, flushed and fsynced.

    Raises:
        OSError: the disk is full or the folder read-only (names the file; a torn last
            line is what ``read_jsonl`` skips).
    """
    line = _dumps(dict(record), indent=None) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno not in _RESOURCE_ERRORS:
            raise
        raise _resource_error(exc, Path(path), "the record was not added") from exc


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``, with the strings of non-finite floats as floats."""
    return decoded(json.loads(Path(path).read_text(encoding="utf-8")))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (a crash mid-append) is skipped.

    Non-finite floats, written as strings, come back as floats.

    Raises:
        ValueError: a line other than the last is not valid JSON.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(decoded(json.loads(line)))
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


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    *,
    keep_previous: str | os.PathLike[str] | None = None,
) -> Path:
    """``torch.save(state)`` atomically (temporary file, fsync, ``os.replace``).

    Args:
        path: the checkpoint file.
        state: what to save (tensors and plain containers of primitives).
        keep_previous: where the checkpoint being replaced is kept (a hard link, or a
            copy where links are not possible), so that there are two good checkpoints
            whenever there have been two; at every moment ``path`` is a whole file.
    """
    path = Path(path)
    if keep_previous is not None and path.is_file():
        previous = Path(keep_previous)
        link = previous.with_name(f".{previous.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.link(path, link)
            os.replace(link, previous)
            # rename() between two links of one file (previous is already path, as after
            # a resume) does nothing and keeps both names: drop the temporary one.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(link)
            data = path.read_bytes()
            atomic_write(previous, lambda f: f.write(data))
    return atomic_write(path, lambda f: _torch_save(dict(state), f))


class _WriteErrors:
    """A file that remembers the ``OSError`` of its last failed write: ``torch.save``
    turns it into "[enforce fail at inline_container.cc] unexpected pos"."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def _torch_save(state: dict[str, Any], f: IO[bytes]) -> None:
    """``torch.save``, raising the ``OSError`` of a failed write (a full disk) as such."""
    recorder = _WriteErrors(f)
    try:
        torch.save(state, recorder)  # type: ignore[arg-type]
    except RuntimeError:
        if recorder.error is not None:
            raise recorder.error from None
        raise


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files ``atomic_write`` leaves when its process is killed.

    Returns:
        The files removed (``.<name>.<hex>.tmp`` in ``folder``).
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.split(".")
        # Only our own pattern: "", name..., 12 hex digits, "tmp".
        if (
            len(parts) >= 4
            and len(parts[-2]) == 12
            and all(c in "0123456789abcdef" for c in parts[-2])
        ):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


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
        # One line: torch's own message spans many (weights_only's explains pickling).
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RuntimeError(
            f"cannot read checkpoint {path}: it is truncated, corrupted, or not a checkpoint "
            f"written by bnlab (files that need pickled code to load are refused) ({first})"
        ) from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state
