"""Writing a figure atomically: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["save_panels", "save_png"]


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


def save_panels(fig: Figure, path: str | os.PathLike[str], title: str = "") -> Path:
    """Finish a figure of panels and write it: the ``title`` (when given) above them all,
    a tight layout, then :func:`save_png`."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
