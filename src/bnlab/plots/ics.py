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

from bnlab.plots._arms import draw_arms
from bnlab.plots._rows import panel_row
from bnlab.plots._save import save_png
from bnlab.plots._stats import seed_mean

__all__ = ["plot_drift_vs_loss", "plot_grad_ics", "plot_matched"]

_VARIANT_STYLE = {"none": ("tab:gray", "-"), "bn": ("tab:blue", "--"), "bn-noise": ("tab:red", ":")}
_VARIANT_COLOR = {variant: color for variant, (color, _) in _VARIANT_STYLE.items()}


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
    fig, axes = panel_row(len(values), width=4.2, height=3.8)
    for ax, setting in zip(axes, values, strict=False):
        draw_arms(ax, values[setting], colors=_VARIANT_COLOR)
        ax.set_title(setting, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
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
    fig, axes = panel_row(len(curves), width=4.8, height=3.8)
    for ax, setting in zip(axes, curves, strict=False):
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
    fig, axes = panel_row(len(grads), width=5, height=3.6)
    for ax, arch in zip(axes, grads, strict=False):
        for variant, runs in grads[arch].items():
            if not runs:
                continue
            color, style = _VARIANT_STYLE[variant]
            steps = runs[0]["steps"]
            for k, layer in enumerate(runs[0]["layers"]):
                values = [
                    seed_mean([run["layers"][layer][i]["cos"] for run in runs])
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
