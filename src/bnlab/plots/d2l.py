"""The d2l experiment's training curves: loss, train accuracy and test accuracy per epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_d2l_curves"]

_COLORS = {"none": "tab:gray", "textbook": "tab:orange", "bnlab": "tab:blue", "torch": "tab:green"}


def _band(runs: list[list[float | None]]) -> tuple[list[float], list[float], list[float]]:
    """Per-epoch mean, min and max over runs (None/NaN skipped)."""
    epochs = max((len(r) for r in runs), default=0)
    mean, low, high = [], [], []
    for i in range(epochs):
        vals = [r[i] for r in runs if i < len(r) and r[i] is not None and not math.isnan(r[i])]
        mean.append(sum(vals) / len(vals) if vals else math.nan)
        low.append(min(vals) if vals else math.nan)
        high.append(max(vals) if vals else math.nan)
    return mean, low, high


def plot_d2l_curves(summary: dict[str, Any], path: str | Path) -> Path:
    """Write the three-panel figure of ``summary["variants"][*]["curves"]`` to ``path``.

    Lines are the mean over seeds, bands the min-max range. The test-accuracy panel
    draws the moving-average evaluation solid and the recalibrated one dashed.

    Returns:
        The path written (PNG, 150 dpi).
    """
    # A bare Figure renders with Agg and touches no global pyplot state or display.
    fig = Figure(figsize=(14, 4.2))
    axes = fig.subplots(1, 3)
    panels = (
        ("train_loss", "train loss", axes[0]),
        ("train_acc", "train accuracy", axes[1]),
        ("test_acc", "test accuracy", axes[2]),
    )
    for name, entry in summary["variants"].items():
        color = _COLORS.get(name)
        for key, _, ax in panels:
            runs = entry["curves"].get(key, [])
            if not runs:
                continue
            mean, low, high = _band(runs)
            x = range(1, len(mean) + 1)
            label = entry["label"] + (
                " (moving averages)" if key == "test_acc" and name != "none" else ""
            )
            ax.plot(x, mean, color=color, label=label, marker="o", markersize=3)
            if len(runs) > 1:
                ax.fill_between(x, low, high, color=color, alpha=0.15)
        recal = entry["curves"].get("test_acc_recalibrated", [])
        if recal and any(v is not None for r in recal for v in r):
            mean, low, high = _band(recal)
            x = range(1, len(mean) + 1)
            axes[2].plot(x, mean, color=color, linestyle="--", label=f"{name}: recalibrated BN")
            if len(recal) > 1:
                axes[2].fill_between(x, low, high, color=color, alpha=0.1)
    for _, title, ax in panels:
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="lower right")
    axes[0].legend(fontsize=7, loc="upper right")
    seeds = {len(e["seeds"]) for e in summary["variants"].values()}
    fig.suptitle(
        "LeNet on Fashion-MNIST, d2l recipe (SGD, batch 256): mean over "
        f"{max(seeds) if seeds else 0} seed(s), band = min-max"
    )
    fig.tight_layout()
    return save_png(fig, path)
