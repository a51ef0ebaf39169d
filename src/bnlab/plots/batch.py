"""Figures of the batch experiments (``batch-size``, ``batch-of-one``, ``predict-mode``).

Every function takes plain numbers read from a results file (lists and dicts), never
models, and writes a PNG atomically. Grouped bars come from ``bnlab.plots.sweeps``.

Paper: Wu & He, "Group Normalization", arXiv 1803.08494 (figure 1: error against the
batch size per norm, which ``plot_vs_batch`` redraws at small scale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from bnlab.plots._rows import panel_row
from bnlab.plots._save import save_panels
from bnlab.plots._stats import finite, mean_std
from bnlab.plots.sweeps import plot_grouped_bars

__all__ = ["plot_grouped_bars", "plot_vs_batch"]


def _stats(runs: Sequence[Sequence[float | None]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, mean - std and mean + std over runs at each position (None/NaN left out)."""
    length = max((len(r) for r in runs), default=0)
    mean, low, high = [], [], []
    for i in range(length):
        vals = finite([r[i] for r in runs if i < len(r)])
        if not vals:
            mean.append(math.nan)
            low.append(math.nan)
            high.append(math.nan)
            continue
        m, s = mean_std(vals)
        mean.append(m)
        low.append(m - s)
        high.append(m + s)
    return mean, low, high


def plot_vs_batch(
    panels: Mapping[str, Mapping[str, Mapping[str, Sequence[float | None]]]],
    path: str | Path,
    *,
    ylabel: str,
    xlabel: str = "batch size",
    title: str = "",
) -> Path:
    """A metric against the batch size (log2 axis), one panel per view, one line per norm.

    Args:
        panels: ``{panel title: {series label: {"x": batch sizes, "runs": [[value per
            batch size] per seed]}}}``; lines are the mean over seeds, bands mean +- std.
        path: the PNG to write.
        ylabel: the metric (for example "test error").
        xlabel, title: axis label and figure title.

    Returns:
        The path written.
    """
    fig, axes = panel_row(len(panels), width=5.2, height=4.2)
    # One colour per label across panels, so a norm looks the same everywhere.
    labels: list[str] = []
    for series in panels.values():
        labels += [label for label in series if label not in labels]
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for ax, (panel, series) in zip(axes, panels.items(), strict=False):
        for label, data in series.items():
            x = [float(v) for v in data["x"]]
            mean, low, high = _stats(data["runs"])
            ax.plot(x, mean, marker="o", markersize=3, label=label, color=colors[label])
            ax.fill_between(x, low, high, color=colors[label], alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_panels(fig, path, title)
