"""One progress bar for notebooks and terminals, without ipywidgets.

In a Jupyter kernel the bar is an HTML ``<progress>`` element in one output, updated in
place through IPython's display handle (every front end shows it; rich's live display
would need ipywidgets there). Elsewhere it is a rich progress bar on stderr, as the CLI
draws. Updates are throttled to a few per second.
"""

from __future__ import annotations

import html
import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Bar", "in_notebook"]

_EVERY_S = 0.25


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


class Bar:
    """A progress bar with ``start(total, description)``, ``update(completed, loss)``,
    ``advance(steps)`` (the lab's progress protocol) and ``close()``; ``enabled=False``
    draws nothing."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._notebook = enabled and in_notebook()
        self._handle: Any = None
        self._rich: Progress | None = None
        self._task: Any = None
        self._total = 0
        self._done = 0
        self._description = ""
        self._loss = math.nan
        self._started = time.perf_counter()
        self._shown = 0.0

    def start(self, total: int, description: str) -> None:
        self._total, self._done, self._description = int(total), 0, description
        self._loss = math.nan
        if not self._enabled:
            return
        if self._notebook:
            self._show(force=True)
            return
        if self._rich is None:
            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._rich.start()
            self._task = self._rich.add_task(description, total=total, loss="")
        else:
            self._rich.reset(self._task, total=total, description=description, loss="")

    def update(self, completed: int, loss: float | None = None) -> None:
        self._done = completed
        if loss is not None:
            self._loss = loss
        self._refresh()

    def advance(self, steps: int = 1) -> None:
        self.update(self._done + steps)

    def close(self) -> None:
        if self._notebook:
            self._show(force=True)
        elif self._rich is not None:
            self._rich.stop()
            self._rich = None

    def _loss_text(self) -> str:
        return "" if math.isnan(self._loss) else f"loss {self._loss:.3f}"

    def _refresh(self) -> None:
        if not self._enabled:
            return
        if self._notebook:
            self._show(force=self._done >= self._total)
        elif self._rich is not None:
            self._rich.update(self._task, completed=self._done, loss=self._loss_text())

    def _show(self, *, force: bool) -> None:
        now = time.perf_counter()
        if not force and now - self._shown < _EVERY_S:
            return
        self._shown = now
        from IPython.display import HTML, display

        elapsed = now - self._started
        text = (
            f"<progress value='{self._done}' max='{max(self._total, 1)}' "
            f"style='width:40%'></progress> <code>{html.escape(self._description)} "
            f"{self._done}/{self._total} {self._loss_text()} {elapsed:.0f} s</code>"
        )
        if self._handle is None:
            self._handle = display(HTML(text), display_id=True)
        else:
            self._handle.update(HTML(text))
