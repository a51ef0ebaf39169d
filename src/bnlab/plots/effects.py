"""Figures of the second-edition experiments: paired arms and curves to a target.

Every function takes plain numbers read from a results file, never models, and writes
a PNG atomically. ``plot_arms`` draws per-seed values of paired arms (a line joins a
seed's arms) with each arm's mean and 95% t interval (the ``batch-size`` figure);
``plot_to_target`` draws a metric against training steps per arm, with the target as a
horizontal line (the ``convergence`` figure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from scipy import stats as st

from bnlab.plots._save import save_png

__all__ = ["plot_arms", "plot_to_target"]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


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
    names = list(arms)
    n_seeds = max((len(v) for v in arms.values()), default=0)
    for seed in range(n_seeds):
        ys = [
            float(arms[a][seed]) if seed < len(arms[a]) and arms[a][seed] is not None else math.nan
            for a in names
        ]
        ax.plot(range(len(names)), ys, color="0.75", linewidth=0.8, marker="o", markersize=3)
    for i, a in enumerate(names):
        vals = _finite(arms[a])
        if vals:
            mean, half = _mean_ci(vals)
            ax.errorbar(i, mean, yerr=half, fmt="s", color="C0", capsize=4, markersize=6)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
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
    fig = Figure(figsize=(5.0 * max(1, len(panels)), 4.0))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (metric, arms) in zip(axes, panels.items(), strict=False):
        for k, (arm, series) in enumerate(arms.items()):
            steps = list(series["steps"])
            runs = [list(r) for r in series["runs"]]
            for r in runs:
                ax.plot(steps[: len(r)], r, color=f"C{k}", alpha=0.25, linewidth=0.7)
            mean = []
            for i in range(len(steps)):
                vals = _finite([r[i] for r in runs if i < len(r)])
                mean.append(sum(vals) / len(vals) if vals else math.nan)
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
