"""What the one-call functions return: results that show themselves in a notebook.

Each result keeps the numbers (``summary``, ``history``, ...), the folder its run wrote
(``out``), its tables as plain rows (``table()``), and its figures: ``figures`` gives
matplotlib ``Figure`` objects, ``_repr_html_`` the table, the verdicts and the figures
inline (Jupyter calls it when a result is the last expression of a cell).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from bnlab.cli._print import budget_too_small, d2l_rows, stats_cell
from bnlab.train.fit import FitResult

__all__ = ["D2LResult", "LabResult", "TrainResult"]

_MARKS = {True: "holds", False: "does not hold"}


def _html_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return (
        f"<table><caption style='text-align:left'><b>{html.escape(title)}</b></caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _verdicts_html(verdicts: Sequence[dict[str, Any]], too_small: str) -> str:
    if not verdicts:
        return ""
    items = []
    for v in verdicts:
        mark = _MARKS.get(v["holds"], "undecided")
        if too_small:
            mark = f"budget too small to decide (rule: {mark})"
        items.append(
            f"<li>{html.escape(v['claim'])}: <b>{html.escape(mark)}</b> "
            f"({html.escape(str(v['measured']))})</li>"
        )
    note = f"<p><i>The budget is too small to decide: {html.escape(too_small)}.</i></p>"
    return (note if too_small else "") + "<ul>" + "".join(items) + "</ul>"


def _png_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' style='max-width:100%'/>"


def png_figure(path: Path) -> Figure:
    """A matplotlib ``Figure`` showing the PNG at ``path`` (the figures bnlab writes)."""
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    height, width = image.shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    return fig


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class _Result:
    out: Path
    figure_paths: list[Path] = field(default_factory=list)

    @property
    def figures(self) -> list[Figure]:
        """The run's figures as matplotlib ``Figure`` objects."""
        return [png_figure(p) for p in self.figure_paths if p.is_file()]

    def _figures_html(self) -> str:
        return "".join(_png_html(p) for p in self.figure_paths if p.is_file())


@dataclass
class TrainResult(_Result):
    """One training run (``bnlab.api.train``).

    Attributes:
        config: the run's settings (the keys of ``bnlab train``'s ``config.json``).
        fit: what ``bnlab.train.fit`` returned (history, final metrics, timings).
        model: the trained model (in eval mode).
        out: the run folder (metrics, checkpoint, config, results, curves).
    """

    config: dict[str, Any] = field(default_factory=dict)
    fit: FitResult | None = None
    model: nn.Module | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.fit.history if self.fit is not None else []

    @property
    def final(self) -> dict[str, float]:
        return dict(self.fit.final) if self.fit is not None else {}

    def table(self) -> list[tuple[str, str]]:
        """(quantity, value) rows, as ``bnlab train`` prints them."""
        if self.fit is None:
            return []
        train = self.config["train"]
        return [
            ("model / norm", f"{self.config['model']} / {self.config['norm']}"),
            ("epochs", str(len(self.fit.history))),
            (
                "batch size / lr / seed",
                f"{train['batch_size']} / {train['lr']:g} / {train['seed']}",
            ),
            ("final train loss", f"{self.final['train_loss']:.4f}"),
            ("final train accuracy", f"{self.final['train_acc']:.4f}"),
            ("final test accuracy", f"{self.final['test_acc']:.4f}"),
            ("training time (s)", f"{self.fit.train_time_s:.1f}"),
            ("images/s", f"{self.fit.images_per_s:,.0f}"),
            ("results", str(self.out)),
        ]

    def _repr_html_(self) -> str:
        title = f"bnlab train: {self.config['model']} with norm {self.config['norm']}"
        return _html_table(title, ("quantity", "value"), self.table()) + self._figures_html()

    def __repr__(self) -> str:
        final = ", ".join(f"{k} {v:.4f}" for k, v in self.final.items())
        return f"TrainResult({self.config.get('model')} + {self.config.get('norm')}: {final}; {self.out})"


_D2L_COLUMNS = ("variant", "lr", "train loss", "train acc", "test", "recal", "batch", "img/s")


@dataclass
class D2LResult(_Result):
    """The chapter's experiment (``bnlab.d2l.run``): ``summary`` is ``summary.json``."""

    summary: dict[str, Any] = field(default_factory=dict)
    train_images: int = 0

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return list(self.summary.get("verdicts", []))

    @property
    def too_small(self) -> str:
        """Why the verdicts decide nothing (a tiny budget), or ``""``."""
        return budget_too_small(train_images=self.train_images)

    def table(self) -> list[tuple[str, ...]]:
        """One row per variant: lr, final train loss/acc, test accuracy (moving
        averages, recalibrated, test-batch statistics), images/s; means over seeds."""
        return d2l_rows(self.summary, stats_cell)

    def _repr_html_(self) -> str:
        title = "LeNet on Fashion-MNIST, d2l recipe (test: moving averages; recal: recalibrated; batch: test-batch statistics)"
        return (
            _html_table(title, _D2L_COLUMNS, self.table())
            + _verdicts_html(self.verdicts, self.too_small)
            + self._figures_html()
        )

    def __repr__(self) -> str:
        rows = "; ".join(f"{r[0]} test {r[4]}" for r in self.table())
        return f"D2LResult({rows}; {self.out})"


@dataclass
class LabResult(_Result):
    """One lab experiment (``bnlab.api.lab``): ``results`` is its ``results.json``."""

    results: dict[str, Any] = field(default_factory=dict)

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return list(self.results.get("verdicts", []))

    @property
    def too_small(self) -> str:
        """Why the verdicts decide nothing (a --quick run, one seed), or ``""``."""
        seeds = (self.results.get("config") or {}).get("seeds")
        return budget_too_small(
            seeds=seeds if isinstance(seeds, int) else None, quick=bool(self.results.get("quick"))
        )

    def tables(self) -> list[dict[str, Any]]:
        """The experiment's tables: ``title``, ``columns``, ``rows``."""
        return list(self.results.get("tables", []))

    def _repr_html_(self) -> str:
        parts = [f"<h4>{html.escape(self.results.get('title', ''))}</h4>"]
        for t in self.tables():
            rows = [[_cell(v, 4) for v in row] for row in t["rows"]]
            parts.append(_html_table(t["title"], [str(c) for c in t["columns"]], rows))
        parts.append(_verdicts_html(self.verdicts, self.too_small))
        parts += [f"<p>note: {html.escape(n)}</p>" for n in self.results.get("notes", [])]
        return "".join(parts) + self._figures_html()

    def __repr__(self) -> str:
        return f"LabResult({self.results.get('experiment')}: {len(self.verdicts)} verdicts; {self.out})"
