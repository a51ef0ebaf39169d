"""Training with probes at matched step and at matched training loss (the second
edition's mechanistic experiments, landscape and saturation; issue 17).

A mechanistic measure (smoothness, saturation, gradient norms) of a network that
learns fast and one that learns slowly differs at the same step only because one is
further along. :func:`train_probed` therefore calls a probe at fixed steps (matched
step) and once more right after the first step at which the moving average of the
training mini-batch losses reaches a stated level (matched training loss).
Each arm's learning rate comes from ``bnlab.lab.kit.paired`` (tuning runs on a
separate seed).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import stats
from bnlab.models.lenet import LeNet
from bnlab.train import init_weights
from bnlab.train.steps import StepState, run_steps

__all__ = ["lenet", "log10_or_none", "shown_differences", "train_probed"]


def lenet(activation: str, norm: str, seed: int) -> nn.Module:
    """d2l's LeNet (``bnlab.models.lenet.LeNet``) with ``activation`` and ``norm`` before
    each activation, d2l's Xavier init from ``seed`` (the same weights for every norm)."""
    model = LeNet(norm, activation=activation)
    init_weights(model, seed)
    return model


class _Diverged(Exception):
    pass


def train_probed(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    opt: torch.optim.Optimizer,
    *,
    steps: int,
    window: int,
    level: float | None = None,
    probe: Callable[[], dict[str, Any]] | None = None,
    probe_every: int | None = None,
    on_step: Callable[[StepState], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (train mode, cross-entropy) for ``steps`` steps, probing it.

    ``probe()`` looks at the model's current weights and must leave them (and its
    buffers) unchanged. It is called before the first step and after every
    ``probe_every`` finished steps and after the last (matched step), and after the
    first step at which ``train_loss``, the mean of the last ``window`` mini-batch
    losses (fewer at the start), is ``<= level`` (matched training loss). A
    non-finite loss stops the run (diverged).

    Returns:
        ``{"points": [{"step", "train_loss", **probe()}], "at_level": {"step",
        "train_loss", **probe()} or None (never reached), "final_train_loss" (the last
        moving average, None if diverged), "diverged", "steps_done", "loss_ma": the moving
        average after every step}``.
    """
    recent: deque[float] = deque(maxlen=window)
    loss_ma: list[float] = []
    points: list[dict[str, Any]] = []
    found: dict[str, Any] = {}

    def record(step: int, train_loss: float | None) -> dict[str, Any]:
        return {"step": step, "train_loss": train_loss, **(probe() if probe else {})}

    def after(s: StepState) -> None:
        value = s.loss_value
        if not math.isfinite(value):
            raise _Diverged
        recent.append(value)
        loss_ma.append(sum(recent) / len(recent))
        if probe is not None:
            if level is not None and "at" not in found and loss_ma[-1] <= level:
                found["at"] = record(s.done, loss_ma[-1])
            if probe_every and (s.done % probe_every == 0 or s.done == steps):
                points.append(record(s.done, loss_ma[-1]))
        if on_step is not None:
            on_step(s)

    model.train()
    if probe is not None and probe_every:
        points.append(record(0, None))
    diverged = False
    try:
        run_steps(model, batches, opt, steps=steps, loss_fn=F.cross_entropy, on_step=after)
    except _Diverged:
        diverged = True
    return {
        "points": points,
        "at_level": found.get("at"),
        "final_train_loss": None if diverged or not loss_ma else loss_ma[-1],
        "diverged": diverged,
        "steps_done": len(loss_ma),
        "loss_ma": loss_ma,
    }


def shown_differences(
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    rows: Sequence[tuple[str, str, str]],
    *,
    arm: str = "bn",
    reference: str = "none",
    digits: int = 3,
) -> list[list[Any]]:
    """Secondary comparisons, shown and not voted: per ``(label, setting, metric)`` the
    paired difference ``arm - reference`` over the seeds where both are finite, with its
    unadjusted 95% t interval: rows ``[label, n, diff, "[low, high]"]``."""
    out = []
    for label, setting, metric in rows:
        arms = per_seed.get(setting, {})
        a, r = arms.get(arm, {}).get(metric, []), arms.get(reference, {}).get(metric, [])
        pairs = [
            (float(x), float(y))
            for x, y in zip(a, r, strict=False)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
        ]
        row: list[Any] = [label, len(pairs), None, None]
        if len(pairs) >= 2:
            d = stats.paired_difference([x for x, _ in pairs], [y for _, y in pairs], margin=1.0)
            row[2:] = [f"{d.diff:+.{digits}g}", f"[{d.ci_low:.{digits}g}, {d.ci_high:.{digits}g}]"]
        out.append(row)
    return out


def log10_or_none(value: float | None) -> float | None:
    """``log10(value)`` for a finite positive value, else None."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return math.log10(value)
