"""Figures of ``bnlab lab ics``: layer-input distributions and gradient ICS over training.

Paper: Santurkar et al., "How Does Batch Normalization Help Optimization?", arXiv
1805.11604 (figures 2 and 3 show the same two views).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_grad_ics", "plot_ics_trajectories"]

_VARIANT_STYLE = {"none": ("tab:gray", "-"), "bn": ("tab:blue", "--"), "bn-noise": ("tab:red", ":")}


def _mean_or_nan(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def plot_ics_trajectories(
    curves: Mapping[str, Mapping[str, Sequence[Mapping[str, Sequence[Mapping[str, float]]]]]],
    labels: Mapping[str, str],
    path: str | Path,
) -> Path:
    """One panel per (network, variant) row and layer column: quantile bands over steps.

    Args:
        curves: network -> variant -> per-seed trajectories; a trajectory maps a layer
            name to records ``{"step", "mean", "var", "q05", "q25", "q50", "q75", "q95"}``.
            The first seed is drawn (quantiles of one probe batch do not average).
        labels: network -> title.
        path: the PNG to write.

    Returns:
        The path written.
    """
    rows = [
        (arch, variant)
        for arch, variants in curves.items()
        for variant in ("none", "bn")
        if variants.get(variant)
    ]
    cols = max((len(curves[a][v][0]) for a, v in rows), default=1)
    fig = Figure(figsize=(3.2 * cols, 2.4 * max(len(rows), 1)))
    axes = fig.subplots(max(len(rows), 1), cols, squeeze=False)
    for r, (arch, variant) in enumerate(rows):
        color, _ = _VARIANT_STYLE[variant]
        trajectory = curves[arch][variant][0]
        for c, (layer, records) in enumerate(trajectory.items()):
            ax = axes[r][c]
            steps = [p["step"] for p in records]
            ax.fill_between(
                steps,
                [p["q05"] for p in records],
                [p["q95"] for p in records],
                color=color,
                alpha=0.15,
            )
            ax.fill_between(
                steps,
                [p["q25"] for p in records],
                [p["q75"] for p in records],
                color=color,
                alpha=0.3,
            )
            ax.plot(steps, [p["q50"] for p in records], color=color, label="median")
            ax.plot(steps, [p["mean"] for p in records], color="black", linestyle=":", label="mean")
            ax.set_title(f"{labels.get(arch, arch)}, {variant}: input of {layer}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel("step", fontsize=7)
        for c in range(len(trajectory), cols):
            axes[r][c].axis("off")
    if rows:
        axes[0][0].legend(fontsize=6)
    fig.suptitle(
        "Layer inputs on a fixed probe batch: 5-95 % and 25-75 % bands, seed 0", fontsize=9
    )
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_grad_ics(
    grads: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    labels: Mapping[str, str],
    path: str | Path,
) -> Path:
    """Cosine between a layer's gradient before and after the earlier layers' step.

    Args:
        grads: network -> variant -> per-seed ``{"steps": [...], "layers": {name:
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
