"""Reading results files for the report: JSON with messages that name the file, images
as data URIs, and an atomic write for the page.

Every failure is a ``ValueError`` whose message names the file and what is wrong with
it, so the report can show it as a warning and go on with the other folders.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Warn", "image_data_uri", "read_json", "read_jsonl", "write_text_atomic"]

#: Where readers send what they could not read but could do without.
Warn = Callable[[str], None]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Figures larger than this are refused: a page that embeds them would be unwieldy.
_MAX_IMAGE_BYTES = 20 * 1024 * 1024


def read_json(path: Path, *, expect: type = dict) -> Any:
    """The JSON value in ``path``, which must be an ``expect`` (dict or list).

    Raises:
        ValueError: the file is missing, unreadable, not JSON, or of another type.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, expect):
        raise ValueError(
            f"{path}: expected a JSON {'object' if expect is dict else 'array'}, "
            f"got {type(value).__name__}"
        )
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-empty line.

    Raises:
        ValueError: the file is unreadable or a line is not a JSON object (names the line).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def image_data_uri(path: Path) -> str:
    """A ``data:`` URI holding the PNG or SVG file ``path``.

    Raises:
        ValueError: missing, unreadable, too large, or neither a PNG nor an SVG.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: figure file not found") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the figure ({exc})") from exc
    if len(data) > _MAX_IMAGE_BYTES:
        raise ValueError(
            f"{path}: figure of {len(data)} bytes is larger than the "
            f"{_MAX_IMAGE_BYTES} bytes a page embeds"
        )
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
