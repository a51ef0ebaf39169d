"""Figure of ``bnlab lab saturation``: saturation or ReLU zeros, and gradient RMS, per layer.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167, section 3.3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnlab.plots._rows import network_rows, variant_runs
from bnlab.plots._save import save_png
from bnlab.plots._stats import seed_mean

__all__ = ["plot_saturation"]

_STYLE = {"none": "-", "bn": "--"}


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
    fig, axes = network_rows(len(curves), 2, width=11, row_height=3.3)
    for r, arch in enumerate(curves):
        for variant, runs, steps in variant_runs(curves[arch]):
            style = _STYLE.get(variant, ":")
            kind = "saturated" if runs[0][0]["saturated"] else "zeros"
            for panel, key in ((0, kind), (1, "grad_rms")):
                ax = axes[r][panel]
                for k, layer in enumerate(runs[0][0][key]):
                    values = [
                        seed_mean([run[i][key].get(layer) for run in runs])
                        for i in range(len(steps))
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
