"""A mechanistic measure against the step and against the training loss, per arm: the
figure of the second edition's landscape and saturation experiments (issue 17), where
a measure is compared at matched step and at matched training loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnlab.plots._rows import network_rows
from bnlab.plots._save import save_png
from bnlab.plots._stats import seed_mean

__all__ = ["plot_matched"]

_COLORS = {"none": "tab:gray", "bn": "tab:blue"}


def plot_matched(
    panels: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    level: float,
    title: str,
) -> Path:
    """One row per panel: the measure against the step (left) and against the
    moving-average training loss (right), thin lines per seed, the seed mean thick on
    the left, the readout at matched loss as dots on the right.

    Args:
        panels: each ``{"title", "key", "log" (bool), "runs": {arm: [per-seed list of
            points {"step", "train_loss", KEY: value}]}, "at_level": {arm: [per-seed
            point or None]}, "level" (optional: this panel's matched loss)}``.
        path: the PNG to write.
        level: the matched training loss (a dashed line on the right).
        title: the figure's title.

    Returns:
        The path written.
    """
    fig, axes = network_rows(len(panels), 2, width=11, row_height=3.3)
    for r, panel in enumerate(panels):
        key = panel["key"]
        by_step, by_loss = axes[r][0], axes[r][1]
        for arm, runs in panel["runs"].items():
            color = _COLORS.get(arm, "tab:red")
            for k, run in enumerate(runs):
                # Each seed thin on both sides, named once (on the right) for the legend.
                for ax, x, alpha, label in (
                    (by_step, "step", 0.35, None),
                    (by_loss, "train_loss", 0.5, arm if k == 0 else None),
                ):
                    pts = [p for p in run if p.get(key) is not None and p.get(x) is not None]
                    ax.plot(
                        [p[x] for p in pts],
                        [p[key] for p in pts],
                        color=color,
                        alpha=alpha,
                        lw=0.8,
                        label=label,
                    )
            if runs:
                steps = [p["step"] for p in runs[0]]
                mean = [
                    seed_mean([run[i].get(key) if i < len(run) else None for run in runs])
                    for i in range(len(steps))
                ]
                by_step.plot(steps, mean, color=color, lw=2.0, label=f"{arm} (mean)")
            at = [p for p in panel["at_level"].get(arm, []) if p and p.get(key) is not None]
            by_loss.scatter(
                [p["train_loss"] for p in at], [p[key] for p in at], color=color, s=18, zorder=3
            )
        by_loss.axvline(panel.get("level", level), color="k", ls="--", lw=0.8)
        by_loss.invert_xaxis()
        by_step.set_title(f"{panel['title']}: at matched step", fontsize=8)
        by_loss.set_title(f"{panel['title']}: at matched training loss", fontsize=8)
        by_step.set_xlabel("step", fontsize=7)
        by_loss.set_xlabel("training loss (moving average; training runs right)", fontsize=7)
        for ax in (by_step, by_loss):
            if panel.get("log"):
                ax.set_yscale("log")
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
