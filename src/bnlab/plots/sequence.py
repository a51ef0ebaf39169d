"""Figures of ``bnlab lab sequence``: accuracy against batch size, streaming accuracy.

Every function takes plain numbers read from a results file, never models, and writes a
PNG atomically.

Paper: Ba et al., "Layer Normalization", arXiv 1607.06450; Cooijmans et al., "Recurrent
Batch Normalization", arXiv 1603.09025.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_batch_sizes", "plot_streaming"]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def plot_batch_sizes(series: Mapping[str, Mapping[str, Sequence]], path: str | Path) -> Path:
    """Test accuracy against the batch size, one line per (network, norm).

    Args:
        series: ``{label: {"x": batch sizes, "runs": [[acc per batch size] per seed]}}``;
            labels start with the network's name, which picks the panel.
        path: the PNG to write.

    Returns:
        The path written.
    """
    networks = sorted({label.split(" ")[0] for label in series})
    fig = Figure(figsize=(4.4 * max(len(networks), 1), 3.6))
    axes = fig.subplots(1, max(len(networks), 1), squeeze=False, sharey=True)[0]
    for ax, network in zip(axes, networks, strict=False):
        for label, entry in series.items():
            if label.split(" ")[0] != network:
                continue
            x = [float(v) for v in entry["x"]]
            cols = [_finite([r[i] for r in entry["runs"]]) for i in range(len(x))]
            mean = [statistics.fmean(c) if c else math.nan for c in cols]
            low = [min(c) if c else math.nan for c in cols]
            high = [max(c) if c else math.nan for c in cols]
            ax.plot(x, mean, marker="o", markersize=4, label=label[len(network) + 1 :])
            ax.fill_between(x, low, high, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_title(network)
        ax.set_xlabel("batch size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    return save_png(fig, path)


def plot_streaming(
    groups: Mapping[str, Mapping[str, Sequence[float | None]]], path: str | Path
) -> Path:
    """Grouped bars of streaming (batch size 1) test accuracy: networks x norms.

    Args:
        groups: ``{network: {norm: [acc per seed, None where training failed]}}``.
        path: the PNG to write.

    Returns:
        The path written.
    """
    networks = list(groups)
    norms: list[str] = []
    for by_norm in groups.values():
        norms += [n for n in by_norm if n not in norms]
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.subplots()
    width = 0.8 / max(len(norms), 1)
    for j, norm in enumerate(norms):
        for i, network in enumerate(networks):
            vals = _finite(groups[network].get(norm, []))
            x = i + (j - (len(norms) - 1) / 2) * width
            if vals:
                mean = statistics.fmean(vals)
                std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                ax.bar(x, mean, width, yerr=std, color=f"C{j}", label=norm if i == 0 else None)
            else:
                ax.bar(x, 0.0, width, color=f"C{j}", label=norm if i == 0 else None)
                ax.text(x, 0.02, "failed", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(networks)), networks)
    ax.set_ylabel("test accuracy after one pass, B=1")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
