"""Figures of ``bnlab lab gan``: generated samples per arm (its Fréchet distances are drawn
by ``bnlab.plots.effects.plot_arms``).

Every function takes plain numbers read from a results file, never models, and writes a
PNG atomically.

Paper: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium" (the Fréchet distance as a GAN score), arXiv 1706.08500.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_samples"]


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
