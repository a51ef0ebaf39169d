"""Figures of ``bnlab lab ics``: the drift at matched loss, drift against the training
loss, and gradient ICS over training.

Paper: Santurkar et al., "How Does Batch Normalization Help Optimization?", arXiv
1805.11604 (figures 2 and 3 show the same two views).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from scipy import stats as st

from bnlab.plots._save import save_png

__all__ = ["plot_drift_vs_loss", "plot_grad_ics", "plot_matched"]

_VARIANT_STYLE = {"none": ("tab:gray", "-"), "bn": ("tab:blue", "--"), "bn-noise": ("tab:red", ":")}


def _value(values: Sequence[float | None], seed: int) -> float:
    v = values[seed] if seed < len(values) else None
    return math.nan if v is None else float(v)


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def _mean_or_nan(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def plot_matched(
    values: Mapping[str, Mapping[str, Sequence[float | None]]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """One panel per setting: per-seed values of paired arms (a seed's arms joined) and
    each arm's mean ± 95% t interval.

    Args:
        values: setting -> arm -> [value per seed] (None for a seed without a value).
        path: the PNG to write.
        ylabel, title: the y-axis label and the figure's title.

    Returns:
        The path written.
    """
    settings = list(values)
    fig = Figure(figsize=(4.2 * max(len(settings), 1), 3.8))
    axes = fig.subplots(1, max(len(settings), 1), squeeze=False)[0]
    for ax, setting in zip(axes, settings, strict=False):
        arms = list(values[setting])
        n_seeds = max((len(v) for v in values[setting].values()), default=0)
        for seed in range(n_seeds):
            ys = [_value(values[setting][a], seed) for a in arms]
            ax.plot(range(len(arms)), ys, color="0.75", linewidth=0.8, marker="o", markersize=3)
        for i, a in enumerate(arms):
            finite = [
                v
                for v in (_value(values[setting][a], k) for k in range(n_seeds))
                if math.isfinite(v)
            ]
            if finite:
                mean, half = _mean_ci(finite)
                color, _ = _VARIANT_STYLE.get(a, ("C0", "-"))
                ax.errorbar(i, mean, yerr=half, fmt="s", color=color, capsize=4, markersize=6)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(setting, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_drift_vs_loss(
    curves: Mapping[str, Mapping[str, Sequence[Mapping[str, Sequence[float | None]]]]],
    path: str | Path,
    *,
    level: float | None = None,
) -> Path:
    """One panel per setting: drift per probe interval against the training loss at its
    start, one thin line per seed and arm (the arms compared at equal progress).

    Args:
        curves: setting -> arm -> per-seed ``{"loss": [...], "values": [...]}`` (the
            moving-average training loss at each interval's start, and its drift).
        path: the PNG to write.
        level: the matched loss level (a dashed vertical line), or None.

    Returns:
        The path written.
    """
    settings = list(curves)
    fig = Figure(figsize=(4.8 * max(len(settings), 1), 3.8))
    axes = fig.subplots(1, max(len(settings), 1), squeeze=False)[0]
    for ax, setting in zip(axes, settings, strict=False):
        for arm, runs in curves[setting].items():
            color, style = _VARIANT_STYLE.get(arm, ("C0", "-"))
            for k, run in enumerate(runs):
                pairs = [
                    (x, y)
                    for x, y in zip(run["loss"], run["values"], strict=True)
                    if x is not None and y is not None and math.isfinite(x) and y > 0
                ]
                if pairs:
                    ax.plot(
                        [x for x, _ in pairs],
                        [y for _, y in pairs],
                        color=color,
                        linestyle=style,
                        linewidth=0.7,
                        alpha=0.7,
                        label=arm if k == 0 else None,
                    )
        if level is not None:
            ax.axvline(level, color="black", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("training loss (moving average), decreasing")
        ax.set_ylabel("drift per probe interval")
        ax.set_title(setting, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_grad_ics(
    grads: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    labels: Mapping[str, str],
    path: str | Path,
) -> Path:
    """Cosine between a layer's gradient before and after the earlier layers' step.

    Args:
        grads: setting -> variant -> per-seed ``{"steps": [...], "layers": {name:
            [{"l2", "rel", "cos"}, ...]}}``; lines are the mean over seeds.
        labels: network -> title.
        path: the PNG to write.

    Returns:
        The path written.
    """
    archs = list(grads)
    fig = Figure(figsize=(5 * max(len(archs), 1), 3.6))
    axes = fig.subplots(1, max(len(archs), 1), squeeze=False)[0]
    for ax, arch in zip(axes, archs, strict=False):
        for variant, runs in grads[arch].items():
            if not runs:
                continue
            color, style = _VARIANT_STYLE[variant]
            steps = runs[0]["steps"]
            for k, layer in enumerate(runs[0]["layers"]):
                values = [
                    _mean_or_nan([run["layers"][layer][i]["cos"] for run in runs])
                    for i in range(len(steps))
                ]
                ax.plot(
                    steps,
                    values,
                    color=color,
                    linestyle=style,
                    marker="os^vD<>"[k % 7],
                    markersize=3,
                    label=f"{variant}: {layer}",
                )
        ax.set_title(labels.get(arch, arch), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("cos(G, G')")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Gradient ICS (Santurkar et al. 2.2): 1 = no change", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
