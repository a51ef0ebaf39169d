"""Figures of the second-edition experiments: paired arms and curves to a target.

Every function takes plain numbers read from a results file, never models, and writes
a PNG atomically. ``plot_arms`` draws per-seed values of paired arms (a line joins a
seed's arms) with each arm's mean and 95% t interval (the ``batch-size`` figure);
``plot_to_target`` draws a metric against training steps per arm, with the target as a
horizontal line (the ``convergence`` figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bnlab.plots._arms import draw_arms
from bnlab.plots._rows import panel_row
from bnlab.plots._save import save_png
from bnlab.plots._stats import seed_mean

__all__ = ["plot_arms", "plot_to_target"]


def plot_arms(
    arms: Mapping[str, Sequence[float | None]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """Per-seed values of paired arms, a seed's arms joined, mean ± 95% t interval.

    Args:
        arms: ``{arm: [value per seed]}``, the same seed order in every arm (None/NaN
            for a missing value).
        path: the PNG to write.
        ylabel, title: the y-axis label and the title.
    """
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.subplots()
    draw_arms(ax, arms)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def plot_to_target(
    panels: Mapping[str, Mapping[str, Mapping[str, Sequence]]],
    path: str | Path,
    *,
    targets: Mapping[str, float],
    xlabel: str = "training step",
    title: str = "",
) -> Path:
    """A metric against the step per arm, one panel per metric, the target dashed.

    Args:
        panels: ``{metric: {arm: {"steps": [step], "runs": [[value per step] per
            seed]}}}``; each seed is a thin line, the mean over seeds a thick one.
        path: the PNG to write.
        targets: ``{metric: target}``, drawn as a dashed horizontal line.
        xlabel, title: the x-axis label and the title.
    """
    fig, axes = panel_row(len(panels), width=5.0, height=4.0)
    for ax, (metric, arms) in zip(axes, panels.items(), strict=False):
        for k, (arm, series) in enumerate(arms.items()):
            steps = list(series["steps"])
            runs = [list(r) for r in series["runs"]]
            for r in runs:
                ax.plot(steps[: len(r)], r, color=f"C{k}", alpha=0.25, linewidth=0.7)
            mean = [seed_mean([r[i] for r in runs if i < len(r)]) for i in range(len(steps))]
            ax.plot(steps, mean, color=f"C{k}", linewidth=1.8, label=arm)
        if metric in targets:
            ax.axhline(targets[metric], color="k", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
