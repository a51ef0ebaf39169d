"""What the paired, stats-decided experiments with tuned arms share (input-norm,
placement, batch-of-one, predict-mode): each arm's learning rate chosen on a separate
tuning seed before the measured runs, the claims table of ``bnlab.lab.stats``'
evaluations, and a claim's measured text.

The tuning rule (:data:`TUNE_RULE`): per (setting, arm), the grid value with the lowest
tuning criterion (a final training loss) on the tuning seed; a non-finite value (a
diverged run) is never chosen; a choice at either end of the grid is flagged
(:func:`at_edge`), since the best lr may lie beyond it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import stats
from bnlab.lab.experiment import LabContext, Table
from bnlab.lab.kit.data import batches
from bnlab.lab.runner import Bench, Grid, GridRun, run_grid
from bnlab.train.steps import run_steps

__all__ = [
    "TUNE_RULE",
    "at_edge",
    "choose_lrs",
    "claim_spec",
    "claims_table",
    "lr_schedule",
    "measured_text",
    "train_decayed",
    "tune_grid",
    "tuned_runs",
]

TUNE_RULE = (
    "each arm's lr (per setting): the grid value {grid} with the lowest {criterion} on the "
    "separate tuning seed {seed}, same budget as the measured runs; a non-finite value is "
    "never chosen; a choice at the grid's edge is flagged"
)


def claim_spec(
    config: Any,
    name: str,
    metric: str,
    direction: stats.Direction,
    arm: str,
    reference: str,
    settings: Sequence[str],
    *,
    chance_metric: str,
    margin: float | None = None,
) -> stats.ClaimSpec:
    """A claim of a ten-class experiment: ``config``'s margin (or ``margin``) and
    min_seeds, and the chance rule "``chance_metric`` (a percentage) within 2 points of
    10"."""
    return stats.ClaimSpec(
        name=name,
        metric=metric,
        direction=direction,
        arm=arm,
        reference=reference,
        margin=config.margin if margin is None else margin,
        min_seeds=config.min_seeds,
        settings=tuple(settings),
        chance=stats.ChanceRule(chance_metric, level=10.0, tolerance=2.0),
    )


def tune_grid(
    settings: Sequence[Any], arms: Sequence[str], lrs: Sequence[float], seed: int
) -> Grid:
    """(setting, lr) x arm on the tuning seed; units ``tune-SETTING-lrLR-ARM`` (no
    ``SETTING-`` for the setting ``""``)."""
    return Grid(
        variants=tuple(arms),
        seeds=(seed,),
        settings=[(s, float(lr)) for s in settings for lr in lrs],
        key=lambda c: "-".join(
            [p for p in ("tune", str(c.setting[0]), f"lr{c.setting[1]:g}", c.variant) if p]
        ),
        order=("setting", "variant", "seed"),
    )


def choose_lrs(tuning: Mapping[str, Mapping[str, Mapping[float, float | None]]]) -> dict:
    """``{setting: {arm: lr or None}}`` from ``{setting: {arm: {lr: criterion}}}``: the
    lowest finite criterion (ties: the smaller lr); None when every lr diverged."""
    chosen: dict[str, dict[str, float | None]] = {}
    for setting, arms in tuning.items():
        chosen[setting] = {}
        for arm, by_lr in arms.items():
            finite = {
                float(lr): float(v)
                for lr, v in by_lr.items()
                if v is not None and math.isfinite(float(v))
            }
            chosen[setting][arm] = min(finite, key=lambda lr: (finite[lr], lr)) if finite else None
    return chosen


def at_edge(lrs: Sequence[float], chosen: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """``"SETTING/ARM"`` for every choice at the smallest or largest grid value."""
    edges = {min(lrs), max(lrs)} if len(lrs) > 1 else set()
    return [
        f"{s}/{a}" if s else a
        for s, arms in chosen.items()
        for a, lr in arms.items()
        if lr is not None and lr in edges
    ]


def tuned_runs(
    ctx: LabContext,
    config: Any,
    data: Any,
    *,
    tune: Grid,
    main: Grid,
    cells: tuple[Callable[..., Mapping[str, Any]], Callable[..., Any]],
    criterion: str,
    steps: int,
    label: str,
) -> tuple[dict, dict, GridRun]:
    """Run the tuning grid, choose each arm's lr, then the measured grid.

    Args:
        ctx: the experiment's context.
        config: the experiment's config, bound as the cells' first argument.
        data: ``bench.data``.
        tune: :func:`tune_grid`'s grid (settings ``(setting, lr)``).
        main: the measured grid (settings as the tuning grid's first elements).
        cells: ``(tune_cell, main_cell)``, module-level functions (so that ``--workers``
            can run them in a pool): ``tune_cell(config, cell, bench) -> {criterion:
            value, ...}`` and ``main_cell(config, lrs, cell, bench) -> result``, ``lrs`` the
            chosen ``{setting: {arm: lr}}``.
        criterion: the key of ``tune_cell``'s result that the rule minimizes.
        steps: progress per cell.
        label: the progress bar's text.

    Returns:
        ``(tuning, lrs, measured)``: ``{setting: {arm: {lr: criterion}}}``, the chosen lrs
        and the measured grid's run.
    """
    tune_cell, main_cell = cells
    ctx.progress.start((len(tune.cells()) + len(main.cells())) * steps, label)
    tuned = run_grid(ctx, tune, functools.partial(tune_cell, config), data=data, steps=steps)
    tuning: dict[str, dict[str, dict[float, Any]]] = {}
    for cell, result in tuned:
        setting, lr = cell.setting
        tuning.setdefault(str(setting), {}).setdefault(cell.variant, {})[lr] = result[criterion]
    lrs = choose_lrs(tuning)
    measured = run_grid(
        ctx, main, functools.partial(main_cell, config, lrs), data=data, steps=steps
    )
    return tuning, lrs, measured


def lr_schedule(steps: int) -> Callable[[int], float]:
    """The linear decay to 0 over ``steps`` (a ``LambdaLR`` factor): every measured
    metric is read at a settled point."""
    return lambda k: max(0.0, 1.0 - k / steps)


def train_decayed(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    bench: Bench,
    *,
    lr: float,
    batch: int,
    steps: int,
    seed: int,
    momentum: float = 0.0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> list[float]:
    """``steps`` SGD steps (``momentum``) in train mode at ``lr`` decayed linearly to 0,
    on endless batches of ``images`` drawn with ``seed``; one progress step per step;
    ``loss_fn(logits, labels)`` (cross-entropy by default; a wrapper may also record).

    Returns:
        The mini-batch losses.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(steps))
    model.train()
    return run_steps(
        model,
        batches(images, labels, batch, seed, bench.device),
        opt,
        steps=steps,
        loss_fn=loss_fn,
        on_step=[lambda s: schedule.step(), lambda s: bench.advance(1)],
    )


def _fmt(x: Any, digits: int) -> str | None:
    return None if x is None else f"{x:+.{digits}f}"


def claims_table(evaluated: Sequence[Mapping[str, Any]], unit: str, digits: int = 2) -> Table:
    """One row per claim and setting of ``stats.evaluate_experiment``'s output: the
    difference with its 95% t interval, Holm's p, the TOST p, the seeds and the status."""
    rows = []
    for e in evaluated:
        for row in e["settings"]:
            low, high = row.get("ci_low"), row.get("ci_high")
            rows.append(
                [
                    e["claim"],
                    row["setting"] or "-",
                    f"{e['arm']} - {e['reference']}",
                    _fmt(row.get("diff"), digits),
                    None if low is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]",
                    None if row.get("p_holm") is None else f"{row['p_holm']:.3g}",
                    None if row.get("tost_p_holm") is None else f"{row['tost_p_holm']:.3g}",
                    row["n"],
                    row["status"],
                    e["verdict"],
                ]
            )
    margins = ", ".join(sorted({f"±{e['margin']:g}" for e in evaluated}))
    return Table(
        f"Claims (declared before the run; paired t by seed, Holm over the experiment, TOST "
        f"margin {margins} {unit})",
        [
            "claim",
            "setting",
            "arm - reference",
            "diff",
            "95% CI",
            "p (Holm)",
            "TOST p (Holm)",
            "n",
            "status",
            "verdict",
        ],
        rows,
    )


def measured_text(evidence: Mapping[str, Any]) -> str:
    """A ``stats`` evaluation's one-line text without its leading verdict (``apply_rules``
    puts the verdict in front)."""
    return evidence["text"].removeprefix(f"{evidence['verdict']}: ")
