"""Figures of the depth experiment: training-loss curves, one panel per depth.

The primary metric against depth is drawn by ``bnlab.plots.sweeps.plot_sweep``.

Every function takes plain numbers read from a results file (lists and dicts), never
models, and writes a PNG atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bnlab.plots._save import save_png
from bnlab.plots._stats import band

__all__ = ["moving_average", "plot_depth_curves"]


def moving_average(values: Sequence[float | None], window: int) -> list[float]:
    """Trailing mean over the last ``window`` finite values at each step (NaN if none).

    A None/NaN/inf loss (a diverged run) is left out of the windows it falls in, and the
    steps after the run stopped simply do not exist, so a curve ends where its run did.

    Raises:
        ValueError: ``window`` < 1.
    """
    if window < 1:
        raise ValueError(f"moving_average: window must be >= 1, got {window}")
    out: list[float] = []
    for i in range(len(values)):
        chunk = [
            float(v)
            for v in values[max(0, i - window + 1) : i + 1]
            if v is not None and math.isfinite(float(v))
        ]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def plot_depth_curves(
    panels: Mapping[str, Mapping[str, Sequence[Sequence[float | None]]]],
    path: str | Path,
    *,
    smooth: int = 10,
    every: int = 1,
    reference: float | None = math.log(10),
    reference_label: str = "ln 10 (chance)",
    ymax: float | None = 3.5,
    title: str = "",
) -> Path:
    """Training loss per step, one panel per depth, one line per variant.

    Args:
        panels: ``{panel title: {line label: [[loss per step] per seed]}}``; each
            seed's curve is smoothed with ``moving_average(smooth)`` and the line is
            their mean.
        path: the PNG to write.
        smooth: the moving-average window, in points of the curves.
        every: steps per point of the curves (a curve thinned to the mean of every
            ``every`` steps); the x axis shows steps.
        reference: a horizontal line (the loss of a uniform guess over 10 classes), or None.
        ymax: the top of the y axis (a diverging run's loss leaves the panel there, so
            that it does not squash the other curves); None: matplotlib's choice.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no panels.
    """
    if not panels:
        raise ValueError("plot_depth_curves: no panels to draw")
    n = len(panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 3.2 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for k, (panel, lines) in enumerate(panels.items()):
        ax = axes[k // cols][k % cols]
        for label, runs in lines.items():
            curve, _, _ = band([moving_average(r, smooth) for r in runs])
            ax.plot([every * (i + 1) for i in range(len(curve))], curve, label=label, linewidth=1.3)
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle="--", linewidth=1, label=reference_label)
        if ymax is not None:
            ax.set_ylim(0.0, ymax)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        if k % cols == 0:
            ax.set_ylabel(f"training loss (mean of {smooth * every} steps)")
        ax.grid(True, alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
