"""One panel of paired arms: per-seed values (a line joins a seed's arms) and each arm's
mean with its 95% t interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bnlab.plots._stats import finite, mean_ci

__all__ = ["draw_arms"]


def _value(values: Sequence[float | None], seed: int) -> float:
    v = values[seed] if seed < len(values) else None
    return math.nan if v is None else float(v)


def draw_arms(
    ax: Any, arms: Mapping[str, Sequence[float | None]], *, colors: Mapping[str, str] | None = None
) -> None:
    """Draw ``{arm: [value per seed]}`` (the same seed order in every arm, None/NaN for a
    missing value) on ``ax``, the arms along x; an arm's mean is drawn in its colour from
    ``colors`` (``"C0"`` where it has none)."""
    names = list(arms)
    n_seeds = max((len(v) for v in arms.values()), default=0)
    for seed in range(n_seeds):
        ys = [_value(arms[a], seed) for a in names]
        ax.plot(range(len(names)), ys, color="0.75", linewidth=0.8, marker="o", markersize=3)
    for i, a in enumerate(names):
        vals = finite(arms[a])
        if vals:
            mean, half = mean_ci(vals)
            color = (colors or {}).get(a, "C0")
            ax.errorbar(i, mean, yerr=half, fmt="s", color=color, capsize=4, markersize=6)
    ax.set_xticks(range(len(names)), names)
    ax.grid(True, axis="y", alpha=0.3)
