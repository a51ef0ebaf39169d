"""Figures of ``bnlab lab shift-mcc``: dose-response of the shift score, MCC over training.

Every function takes plain numbers read from a results file, never models, and writes a
PNG atomically.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (internal covariate shift).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from bnlab.plots._rows import panel_row
from bnlab.plots._save import save_png
from bnlab.plots._stats import mean_min_max, seed_mean

__all__ = ["plot_dose_response", "plot_internal_mcc"]


def plot_dose_response(
    shifts: Mapping[str, Mapping[str, Sequence]],
    path: str | Path,
    *,
    threshold: float | None = None,
) -> Path:
    """One panel per shift: the shift score against the strength, mean and min..max band.

    Args:
        shifts: ``{kind: {"levels": [strength, ...], "mcc": [[score per seed] per level]}}``.
        path: the PNG to write.
        threshold: the detection threshold (a dashed line), or None.

    Returns:
        The path written.
    """
    fig, axes = panel_row(len(shifts), width=3.4, height=3.4)
    for ax, (kind, entry) in zip(axes, shifts.items(), strict=True):
        x = [float(v) for v in entry["levels"]]
        stats = [mean_min_max(r) for r in entry["mcc"]]
        ax.plot(x, [s[0] for s in stats], marker="o", markersize=4, label="mean MCC")
        ax.fill_between(x, [s[1] for s in stats], [s[2] for s in stats], alpha=0.2)
        if threshold is not None and math.isfinite(threshold):
            ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label="threshold")
        if all(v > 0 for v in x[1:]) and len(x) > 2:
            ax.set_xscale("symlog", linthresh=min(v for v in x if v > 0))
            ax.set_xlim(0, max(x) * 1.3)
        ax.set_title(kind)
        ax.set_xlabel("shift strength")
        ax.set_ylim(-0.1, 1.05)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("held-out MCC (shift score)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def plot_internal_mcc(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence]]],
    path: str | Path,
    *,
    k: int,
) -> Path:
    """One panel per network: MCC(step t, step t + k) over training, one line per layer.

    Args:
        curves: ``{network: {layer: {"steps": [t, ...], "runs": [[mcc per t] per seed]}}}``.
        path: the PNG to write.
        k: the probe interval (for the axis label).

    Returns:
        The path written.
    """
    fig, axes = panel_row(len(curves), width=4.2, height=3.6, sharey=True)
    for ax, (network, layers) in zip(axes, curves.items(), strict=True):
        for layer, entry in layers.items():
            runs = entry["runs"]
            length = min((len(r) for r in runs), default=0)
            means = [seed_mean([r[i] for r in runs]) for i in range(length)]
            ax.plot(list(entry["steps"])[:length], means, marker="o", markersize=3, label=layer)
        ax.set_title(network)
        ax.set_xlabel("training step t")
        ax.set_ylim(-0.1, 1.05)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"MCC(inputs at t, inputs at t + {k})")
    axes[0].legend(fontsize=8, title="layer input")
    fig.tight_layout()
    return save_png(fig, path)
