"""Figures of ``bnlab lab gan``: Fréchet distance per discriminator variant, samples.

Every function takes plain numbers read from a results file, never models, and writes a
PNG atomically.

Paper: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium" (the Fréchet distance as a GAN score), arXiv 1706.08500.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_fd_bars", "plot_samples"]


def plot_fd_bars(
    values: Mapping[str, Sequence[float | None]],
    path: str | Path,
    *,
    floor: float | None = None,
) -> Path:
    """Bars of the Fréchet distance per variant: mean, std whiskers, one dot per seed.

    Args:
        values: ``{variant label: [FD per seed, None for a diverged run]}``.
        path: the PNG to write.
        floor: the FD of real images (a dashed line), or None.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for i, runs in enumerate(values.values()):
        vals = [float(v) for v in runs if v is not None and math.isfinite(float(v))]
        if not vals:
            ax.text(i, 0, "diverged", rotation=90, ha="center", va="bottom", fontsize=8)
            continue
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        ax.bar(i, statistics.fmean(vals), 0.6, yerr=std, color=f"C{i}", alpha=0.7)
        ax.plot([i] * len(vals), vals, "k.", markersize=5)
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1, label="real images")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(values)), [label.replace(", ", ",\n") for label in values], fontsize=8)
    ax.set_ylabel("Fréchet distance (lower is better)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def plot_samples(samples: Mapping[str, Sequence[Sequence[int]]], path: str | Path) -> Path:
    """One row of generated images per variant.

    Args:
        samples: ``{variant label: [784 uint8 values per image, 28 x 28 row-major]}``.
        path: the PNG to write.

    Returns:
        The path written.
    """
    labels = list(samples)
    cols = max((len(v) for v in samples.values()), default=1)
    # One mosaic, one imshow: far cheaper to draw than an axes per image.
    mosaic = [[0] * (29 * cols) for _ in range(29 * max(len(labels), 1))]
    for r, label in enumerate(labels):
        for c, pixels in enumerate(samples[label]):
            for i in range(28):
                row = mosaic[29 * r + i]
                row[29 * c : 29 * c + 28] = list(pixels[28 * i : 28 * (i + 1)])
    fig = Figure(figsize=(0.45 * cols + 2.2, 0.5 * max(len(labels), 1) + 0.4))
    ax = fig.subplots()
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([29 * r + 14 for r in range(len(labels))], labels, fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
