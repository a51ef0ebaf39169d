"""Reading results files for the report: JSON with messages that name the file, images
as data URIs, and an atomic write for the page.

Every failure is a ``ValueError`` whose message names the file and what is wrong with
it, so the report can show it as a warning and go on with the other folders. Only
regular files are read (``os.stat`` first, then opened without blocking and checked
again): a FIFO, a device such as ``/dev/zero`` or a symlink to one is refused, never
waited on or read without end; and each kind of file has a size limit (``MAX_BYTES``).
JSON's missing NaN and infinities, which bnlab writes as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``, come back as floats.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnlab.nonfinite import decoded

__all__ = [
    "MAX_BYTES",
    "Warn",
    "image_data_uri",
    "read_bytes",
    "read_json",
    "read_jsonl",
    "write_text_atomic",
]

#: Where readers send what they could not read but could do without.
Warn = Callable[[str], None]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The largest file of each kind the report reads: figures larger than this would make
#: an unwieldy page; results files larger than this are not bnlab's.
MAX_BYTES: dict[str, int] = {
    "figure": 20 * 1024 * 1024,
    "JSON file": 64 * 1024 * 1024,
    "JSON-lines file": 256 * 1024 * 1024,
}
_MAX_IMAGE_BYTES = MAX_BYTES["figure"]


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_bytes(path: Path, kind: str) -> bytes:
    """The content of the regular file ``path``, at most ``MAX_BYTES[kind]`` bytes.

    Raises:
        ValueError: missing ("file not found"), not a regular file (a FIFO, a device,
            a folder; symlinks are followed), larger than the limit, or unreadable.
    """
    limit = MAX_BYTES[kind]
    try:
        before = os.stat(path)
    except FileNotFoundError:
        what = "figure file" if kind == "figure" else "file"
        raise ValueError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from exc

    def refuse(info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{path}: {_kind(info.st_mode)}, not a regular file; only regular files are read"
            )
        if info.st_size > limit:
            raise ValueError(
                f"{path}: {kind} of {info.st_size} bytes is larger than the {limit} bytes "
                "the report reads"
            )

    refuse(before)
    try:
        # O_NONBLOCK: should it have become a FIFO since, opening it does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        refuse(os.fstat(fd))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"{path}: {kind} grew past the {limit} bytes the report reads")
    return b"".join(chunks)


def _text(path: Path, kind: str) -> str:
    try:
        return read_bytes(path, kind).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from exc


def read_json(path: Path, *, expect: type = dict) -> Any:
    """The JSON value in ``path``, which must be an ``expect`` (dict or list).

    Raises:
        ValueError: the file is missing, unreadable, not a regular file, too large, not
            JSON, or of another type.
    """
    text = _text(path, "JSON file")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, expect):
        raise ValueError(
            f"{path}: expected a JSON {'object' if expect is dict else 'array'}, "
            f"got {type(value).__name__}"
        )
    return decoded(value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-empty line.

    Raises:
        ValueError: the file is unreadable, not a regular file, too large, or a line is
            not a JSON object (names the line).
    """
    lines = _text(path, "JSON-lines file").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        records.append(decoded(record))
    return records


def image_data_uri(path: Path) -> str:
    """A ``data:`` URI holding the PNG or SVG file ``path``.

    Raises:
        ValueError: missing, unreadable, not a regular file, too large, or neither a
            PNG nor an SVG.
    """
    data = read_bytes(path, "figure")
    suffix = path.suffix.lower()
    if suffix == ".png" and data.startswith(_PNG_SIGNATURE):
        mime = "image/png"
    elif suffix == ".svg" and b"<svg" in data[:4096]:
        mime = "image/svg+xml"
    else:
        raise ValueError(f"{path}: not a PNG or SVG image (only those are embedded)")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` by a temporary file beside it and a rename, so
    an interrupted write never leaves a half-written page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
