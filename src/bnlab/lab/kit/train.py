"""One training run with ``bnlab.train.fit``, as the lab's sweep experiments repeat it.

:func:`train_variant` builds ``DeviceLoader``s over fixed subsets of ``ctx.data``,
trains with ``fit`` and returns JSON-ready final metrics, a per-epoch history and a
divergence flag. A run whose loss becomes NaN or infinite does not raise: it is
recorded as diverged, with the epochs trained before it and the accuracy of the model
as it stopped.

Paper: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab.kit.data import take
from bnlab.train import TrainConfig, evaluate, fit
from bnlab.train.fit import NonFiniteLossError, StepInfo

__all__ = ["DIVERGENCE_RULE", "json_float", "train_variant"]

#: When a run counts as diverged (``train_variant``'s ``diverged``).
DIVERGENCE_RULE = (
    "a run diverges when its training loss becomes NaN or infinite, or when the mean "
    "training loss of its last epoch is above the loss of its first batch by more than "
    "{margin:.0%}"
)


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
        "final": {k: json_float(v) for k, v in final.items()},
        "history": [{k: json_float(v) for k, v in r.items()} for r in history],
        "initial_loss": json_float(initial),
        "nonfinite": nonfinite,
        "diverged": bool(diverged),
        "error": error,
        "epochs_done": len(history),
        "wall_time_s": time.perf_counter() - started,
    }


def json_float(value: Any) -> Any:
    """Floats as JSON can hold them: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
