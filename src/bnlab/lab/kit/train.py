"""Shared helpers of the lab's training experiments: data subsets, one training run, ranges.

:func:`train_variant` is the unit of work most experiments repeat: build
``DeviceLoader``s over fixed subsets of ``ctx.data``, train with ``bnlab.train.fit``,
and return JSON-ready final metrics, a per-epoch history and a divergence flag. A run
whose loss becomes NaN or infinite does not raise: it is recorded as diverged, with the
epochs trained before it and the accuracy of the model as it stopped.

:func:`trainable_values` turns per-seed accuracies over a grid (learning rates, weight
scales) into the grid values that "train" by a stated rule.

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab.claims import holds_of
from bnlab.lab.experiment import Verdict, describe
from bnlab.train import TrainConfig, evaluate, fit
from bnlab.train.fit import NonFiniteLossError, StepInfo

__all__ = [
    "DIVERGENCE_RULE",
    "TRAINS_RULE",
    "mean_std",
    "pick",
    "take",
    "train_variant",
    "trainable_values",
]

#: When a run counts as diverged (``train_variant``'s ``diverged``).
DIVERGENCE_RULE = (
    "a run diverges when its training loss becomes NaN or infinite, or when the mean "
    "training loss of its last epoch is above the loss of its first batch by more than "
    "{margin:.0%}"
)

#: When a grid value counts as training (``trainable_values``).
TRAINS_RULE = (
    "a setting trains when no seed diverged and its mean final test accuracy is at least "
    "{fraction:.0%} of the best mean test accuracy of {reference}"
)


def take(
    data: Mapping[str, Tensor], split: str, count: int | None, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``count`` images and labels of ``split`` ("train" or "test"), a fixed random subset.

    The subset depends on ``seed`` only, so every variant and training seed of an
    experiment sees the same images. ``count`` None (or more than there are) takes all.

    Raises:
        ValueError: an unknown split, or ``data`` without it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"take: split must be 'train' or 'test', got {split!r}")
    key = f"{split}_images"
    if key not in data or f"{split}_labels" not in data:
        raise ValueError(
            f"take: data has no {key!r}/{split}_labels; it holds {', '.join(sorted(data))}"
        )
    images, labels = data[key], data[f"{split}_labels"]
    n = images.shape[0]
    if count is None or count >= n:
        return images, labels
    if count < 1:
        raise ValueError(f"take: count must be >= 1 or None, got {count}")
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
    index, _ = index.sort()
    return images[index], labels[index]


def train_variant(
    model: nn.Module,
    data: Mapping[str, Tensor],
    config: TrainConfig,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    subset_seed: int = 0,
    normalize: tuple[float, float] | None = None,
    eval_train: bool = False,
    eval_train_each_epoch: bool = False,
    divergence_margin: float = 0.01,
    on_step: Callable[[StepInfo], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on subsets of ``data`` with ``fit`` and report what happened.

    Every training batch is full: the last, smaller batch of an epoch is dropped (unless
    the subset is smaller than one batch).

    Args:
        model: the classifier (initialised by ``fit`` when ``config.init`` says so; pass
            ``init="default"`` to keep an initialisation made by the caller).
        data: ``ctx.data`` (uint8 images, int64 labels, "train_*" and "test_*").
        config: the training settings (``seed`` also seeds the shuffling).
        train_size, test_size: subset sizes (None: the whole split), see :func:`take`.
        subset_seed: which subsets.
        normalize: ``(mean, std)`` applied to the images by the loaders.
        eval_train: also evaluate the final model in eval mode on the training subset
            (``train_eval_loss``, ``train_eval_acc``): fit's ``train_acc`` is measured
            during the epoch in train mode (with dropout active, on moving weights).
        eval_train_each_epoch: evaluate the training subset in eval mode after every
            epoch too (``train_eval_loss``, ``train_eval_acc`` in each history record).
        divergence_margin: see ``DIVERGENCE_RULE``.
        on_step: called after every optimizer step.

    Returns:
        A JSON-ready dict: ``final`` (``train_loss``, ``train_acc``, ``test_loss``,
        ``test_acc`` and, with ``eval_train``, ``train_eval_loss``/``train_eval_acc``;
        after a NaN loss: the last finished epoch's train numbers, NaN if none, and the
        test numbers of the model as it stopped), ``history`` (per epoch: ``epoch``,
        ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``), ``initial_loss``
        (the first batch's loss), ``nonfinite`` (the loss became NaN/inf; the error
        text in ``error``), ``diverged`` (``DIVERGENCE_RULE``), ``epochs_done`` and
        ``wall_time_s``.
    """
    device = torch.device(config.device)
    train_x, train_y = take(data, "train", train_size, seed=subset_seed)
    test_x, test_y = take(data, "test", test_size, seed=subset_seed)
    # drop_last: a short last batch (8 images of 5000 at batch 64) takes a full-size
    # step on a noisy gradient, and for BN also moves the running statistics with 8
    # images' moments, right before the evaluation that is reported.
    train_loader = DeviceLoader(
        train_x,
        train_y,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        device=device,
        normalize=normalize,
        drop_last=train_x.shape[0] >= config.batch_size,
    )
    test_loader = DeviceLoader(
        test_x, test_y, 512, shuffle=False, device=device, normalize=normalize
    )
    history: list[dict[str, Any]] = []
    first: list[float] = []
    train_eval_loader = (
        DeviceLoader(train_x, train_y, 512, shuffle=False, device=device, normalize=normalize)
        if eval_train or eval_train_each_epoch
        else None
    )

    def step(info: StepInfo) -> None:
        if not first:
            first.append(info.loss)
        if on_step is not None:
            on_step(info)

    def epoch(record: dict[str, Any]) -> None:
        entry = {
            k: record[k] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
        }
        if eval_train_each_epoch and train_eval_loader is not None:
            on_train = evaluate(model, train_eval_loader, device)
            entry["train_eval_loss"] = on_train["loss"]
            entry["train_eval_acc"] = on_train["acc"]
        history.append(entry)

    started = time.perf_counter()
    error: str | None = None
    try:
        fit(model, train_loader, test_loader, config, on_step=step, on_epoch=epoch)
    except NonFiniteLossError as exc:
        error = str(exc)
        if not first:
            first.append(exc.loss)
    final: dict[str, Any]
    if error is None:
        final = {k: history[-1][k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    else:
        last = history[-1] if history else {}
        tested = evaluate(model, test_loader, device)
        final = {
            "train_loss": last.get("train_loss", math.nan),
            "train_acc": last.get("train_acc", math.nan),
            "test_loss": tested["loss"],
            "test_acc": tested["acc"],
        }
    if eval_train and train_eval_loader is not None:
        on_train = evaluate(model, train_eval_loader, device)
        final["train_eval_loss"] = on_train["loss"]
        final["train_eval_acc"] = on_train["acc"]
    initial = float(first[0]) if first else math.nan
    last_loss = final["train_loss"]
    nonfinite = error is not None or not math.isfinite(last_loss)
    diverged = nonfinite or (
        math.isfinite(initial) and last_loss > initial * (1.0 + divergence_margin)
    )
    return {
        "final": {k: _json_float(v) for k, v in final.items()},
        "history": [{k: _json_float(v) for k, v in r.items()} for r in history],
        "initial_loss": _json_float(initial),
        "nonfinite": nonfinite,
        "diverged": bool(diverged),
        "error": error,
        "epochs_done": len(history),
        "wall_time_s": time.perf_counter() - started,
    }


def _json_float(value: Any) -> Any:
    """Floats as JSON can hold them: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pick(cells: Iterable[Mapping[str, Any]], metric: str, **where: Any) -> list[float]:
    """``metric`` of the cells matching every ``key=value`` in ``where`` (None -> NaN).

    Grid values are compared as floats when both sides are numbers.
    """
    out: list[float] = []
    for cell in cells:
        if all(_same(cell.get(k), v) for k, v in where.items()):
            value = cell.get(metric)
            out.append(math.nan if value is None else float(value))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (None when unknown)."""
    stats = describe(values)
    return stats["mean"], stats["std"]


def trainable_values(
    cells: Sequence[Mapping[str, Any]],
    *,
    group_key: str,
    grid_key: str,
    fraction: float,
    metric: str = "test_acc",
    per_group: bool = False,
    min_value: float = -math.inf,
) -> dict[str, Any]:
    """Which grid values train, per group, by ``TRAINS_RULE``.

    Args:
        cells: one dict per run with ``group_key`` (e.g. "variant"), ``grid_key`` (e.g.
            "lr"), ``metric`` and ``diverged``.
        fraction: a grid value trains when no seed diverged and its mean ``metric`` is
            at least ``fraction`` times the best mean over all groups and values (with
            ``per_group``: the best mean of its own group), and at least ``min_value``.

    Returns:
        ``{"best": best mean, "threshold": fraction * best, "groups": {group: {"trains":
        [values, ascending], "mean": {repr(value): mean}, "diverged": {repr(value):
        count}, "best": ..., "threshold": ...}}}`` (the top-level best and threshold are
        over all groups; each group's own are beside its values).
    """
    groups: dict[str, dict[float, list[Mapping[str, Any]]]] = {}
    for cell in cells:
        groups.setdefault(str(cell[group_key]), {}).setdefault(float(cell[grid_key]), []).append(
            cell
        )
    means: dict[str, dict[float, float | None]] = {}
    best = -math.inf
    for group, by_value in groups.items():
        means[group] = {}
        for value, runs in by_value.items():
            mean = describe([math.nan if r.get(metric) is None else r[metric] for r in runs])[
                "mean"
            ]
            means[group][value] = mean
            if mean is not None:
                best = max(best, mean)
    threshold = fraction * best if math.isfinite(best) else math.inf
    out: dict[str, Any] = {
        "best": best if math.isfinite(best) else None,
        "threshold": threshold if math.isfinite(threshold) else None,
        "groups": {},
    }
    for group, by_value in groups.items():
        group_means = [m for m in means[group].values() if m is not None]
        group_best = max(group_means) if group_means else None
        if per_group:
            limit = fraction * group_best if group_best is not None else math.inf
        else:
            limit = threshold
        limit = max(limit, min_value)
        trains, diverged = [], {}
        for value in sorted(by_value):
            runs = by_value[value]
            n_div = sum(1 for r in runs if r.get("diverged"))
            diverged[repr(value)] = n_div
            mean = means[group][value]
            if n_div == 0 and mean is not None and mean >= limit:
                trains.append(value)
        out["groups"][group] = {
            "trains": trains,
            "best": group_best,
            "threshold": limit if math.isfinite(limit) else None,
            "mean": {repr(v): means[group][v] for v in sorted(by_value)},
            "diverged": diverged,
        }
    return out


Rule = Callable[[Mapping[str, Any]], tuple[Any, str]]


def apply_rules(
    results: Mapping[str, Any], rules: Iterable[tuple[str, Rule, Callable[[Any], str]]]
) -> tuple[list[Verdict], dict[str, Any]]:
    """Each claim's verdict from its claims-table rule: ``(claim, rule, measured)`` gives
    ``Verdict(claim, holds_of(verdict), "<verdict>: <measured(evidence)>")``.

    Returns:
        ``(verdicts, evidences)``: the verdicts in order, and each claim's evidence.
    """
    verdicts, evidences = [], {}
    for claim, rule, measured in rules:
        evidence, verdict = rule(results)
        evidences[claim] = evidence
        verdicts.append(Verdict(claim, holds_of(verdict), f"{verdict}: {measured(evidence)}"))
    return verdicts, evidences
