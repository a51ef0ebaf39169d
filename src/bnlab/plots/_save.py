"""Writing a figure atomically: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["save_png"]


def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Render ``fig`` to ``path`` as PNG; an interrupted write leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
