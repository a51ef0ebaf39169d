"""Figure of ``bnlab lab landscape``: loss variation, gradient predictiveness, beta.

Paper: Santurkar et al., "How Does Batch Normalization Help Optimization?", arXiv
1805.11604, figure 4 (the same three panels with the band over step sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnlab.plots._rows import network_rows, variant_runs
from bnlab.plots._save import save_png
from bnlab.plots._stats import seed_mean

__all__ = ["plot_landscape"]

_COLORS = {"none": "tab:gray", "bn": "tab:blue"}
_PANELS = (
    ("losses", "loss variation: loss at w - eta g"),
    ("grad_changes", "gradient predictiveness: ||grad(w - eta g) - g||"),
    ("betas", "effective beta: change / distance"),
)


def plot_landscape(
    curves: Mapping[str, Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]],
    labels: Mapping[str, str],
    path: str | Path,
) -> Path:
    """One row per network, three panels; bands are min-max over step sizes.

    Args:
        curves: network -> variant (``"none"``, ``"bn"``) -> per-seed lists of checkpoint
            records ``{"step", "losses", "grad_changes", "betas"}`` (one value per step
            size). At each checkpoint the band's lower and upper edges are the minimum and
            maximum over step sizes, averaged over seeds.
        labels: network -> title.
        path: the PNG to write.

    Returns:
        The path written.
    """
    fig, axes = network_rows(len(curves), 3, width=14, row_height=3.4)
    for r, arch in enumerate(curves):
        for variant, runs, steps in variant_runs(curves[arch]):
            color = _COLORS.get(variant, "tab:red")
            for c, (key, title) in enumerate(_PANELS):
                ax = axes[r][c]
                low = [seed_mean([min(run[i][key]) for run in runs]) for i in range(len(steps))]
                high = [seed_mean([max(run[i][key]) for run in runs]) for i in range(len(steps))]
                ax.fill_between(steps, low, high, color=color, alpha=0.3, label=variant)
                ax.plot(steps, high, color=color, linewidth=0.8)
                ax.plot(steps, low, color=color, linewidth=0.8)
                ax.set_title(f"{labels.get(arch, arch)}: {title}", fontsize=8)
                ax.set_xlabel("step", fontsize=7)
                ax.tick_params(labelsize=6)
                ax.grid(alpha=0.3)
                if key != "losses":
                    ax.set_yscale("log")
        axes[r][0].legend(fontsize=7)
    fig.suptitle(
        "Loss landscape along the gradient, band = min-max over step sizes (mean over seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
