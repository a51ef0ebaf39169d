"""Figures of the lab's sweeps and comparisons: a metric against a grid, grouped bars, curves.

Every function takes plain numbers read from a results file (lists and dicts), never
models, and writes a PNG atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bnlab.plots._rows import panel_row
from bnlab.plots._save import save_panels, save_png
from bnlab.plots._stats import band, finite, mean_std

__all__ = ["plot_grouped_bars", "plot_metric_curves", "plot_sweep"]


def plot_sweep(
    series: Mapping[str, Mapping[str, Sequence[float | None]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = True,
    hline: float | None = None,
    hline_label: str = "",
) -> Path:
    """A metric against a grid, one line per series: mean over seeds, band = min..max.

    Args:
        series: ``{label: {"x": grid values, "runs": [[value per grid point] per seed]}}``.
        path: the PNG to write.
        xlabel, ylabel, title: axis labels and title.
        log_x: logarithmic x axis.
        hline: an optional horizontal reference line (e.g. the "trains" threshold).

    Returns:
        The path written.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for label, entry in series.items():
        x = [float(v) for v in entry["x"]]
        mean, low, high = band(entry["runs"])
        ax.plot(x, mean, marker="o", markersize=4, label=label)
        if len(entry["runs"]) > 1:
            ax.fill_between(x, low, high, alpha=0.2)
    if hline is not None and math.isfinite(hline):
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1, label=hline_label or None)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def plot_grouped_bars(
    groups: Mapping[str, Mapping[str, Sequence[float | None]]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """Grouped bars: for each category (x), one bar per series; height mean, whisker std.

    Args:
        groups: ``{series label: {category: [value per seed]}}``; every series should
            name the same categories (a missing one is left blank).
        path: the PNG to write.

    Returns:
        The path written.
    """
    categories: list[str] = []
    for per_category in groups.values():
        for category in per_category:
            if category not in categories:
                categories.append(category)
    fig = Figure(figsize=(max(6.4, 1.2 * len(categories) + 2), 4.2))
    ax = fig.subplots()
    n = max(len(groups), 1)
    width = 0.8 / n
    for i, (label, per_category) in enumerate(groups.items()):
        xs, heights, errors = [], [], []
        for j, category in enumerate(categories):
            vals = finite(per_category.get(category, []))
            if not vals:
                continue
            mean, std = mean_std(vals)
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(mean)
            errors.append(std)
        ax.bar(xs, heights, width=width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def plot_metric_curves(
    panels: Mapping[str, Mapping[str, Sequence[Sequence[float | None]]]],
    path: str | Path,
    *,
    xlabel: str = "epoch",
    title: str = "",
) -> Path:
    """Per-epoch curves in side-by-side panels: mean over seeds, band = min..max.

    Args:
        panels: ``{panel title (the y label): {series label: [[value per epoch] per seed]}}``.
        path: the PNG to write.

    Returns:
        The path written.
    """
    fig, axes = panel_row(len(panels), width=4.6, height=4.0)
    for ax, (ylabel, series) in zip(axes, panels.items(), strict=False):
        for label, runs in series.items():
            mean, low, high = band(runs)
            x = range(1, len(mean) + 1)
            ax.plot(x, mean, marker="o", markersize=3, label=label)
            if len(runs) > 1:
                ax.fill_between(x, low, high, alpha=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_panels(fig, path, title)
