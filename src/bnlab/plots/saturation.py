"""Figure of ``bnlab lab saturation``: saturation or ReLU zeros, and gradient RMS, per layer.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167, section 3.3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bnlab.plots._save import save_png

__all__ = ["plot_saturation"]

_STYLE = {"none": "-", "bn": "--"}


def _avg(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def plot_saturation(
    curves: Mapping[str, Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]],
    labels: Mapping[str, str],
    threshold: float,
    path: str | Path,
) -> Path:
    """One row per network: saturated share (or ReLU zeros) and gradient RMS per layer.

    Args:
        curves: network -> variant (``"none"``, ``"bn"``) -> per-seed probe lists; a probe
            is ``{"step", "saturated": {layer: share}, "zeros": {layer: share},
            "grad_rms": {layer: rms}}``. Lines are means over seeds; colors are layers.
        labels: network -> title.
        threshold: the saturation threshold (for the title).
        path: the PNG to write.

    Returns:
        The path written.
    """
    archs = list(curves)
    fig = Figure(figsize=(11, 3.3 * max(len(archs), 1)))
    axes = fig.subplots(max(len(archs), 1), 2, squeeze=False)
    for r, arch in enumerate(archs):
        for variant, runs in curves[arch].items():
            if not runs:
                continue
            style = _STYLE.get(variant, ":")
            steps = [p["step"] for p in runs[0]]
            kind = "saturated" if runs[0][0]["saturated"] else "zeros"
            for panel, key in ((0, kind), (1, "grad_rms")):
                ax = axes[r][panel]
                for k, layer in enumerate(runs[0][0][key]):
                    values = [
                        _avg([run[i][key].get(layer) for run in runs]) for i in range(len(steps))
                    ]
                    ax.plot(
                        steps,
                        values,
                        linestyle=style,
                        color=f"C{k % 10}",
                        label=f"{variant}: {layer}",
                    )
            axes[r][0].set_title(
                f"{labels.get(arch, arch)}: "
                + (f"share with |z| > {threshold:g}" if kind == "saturated" else "ReLU zeros"),
                fontsize=8,
            )
        axes[r][1].set_title(f"{labels.get(arch, arch)}: gradient RMS per layer", fontsize=8)
        axes[r][1].set_yscale("log")
        for ax in axes[r]:
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5, ncol=2)
    fig.suptitle("Without BN solid, with BN dashed; mean over seeds", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
