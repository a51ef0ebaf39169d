"""``TrainConfig``: every setting of a training run, validated, and JSON-friendly.

The defaults are those of d2l's batch-norm chapter for LeNet-BN on Fashion-MNIST:
plain SGD with learning rate 1.0, 10 epochs, batches of 256.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from bnlab.train.precision import PRECISIONS

__all__ = ["INITS", "LR_SCHEDULES", "TrainConfig"]

#: Weight initialisations ``fit`` can apply on a fresh start.
INITS: tuple[str, ...] = ("xavier_uniform", "default")
#: Learning-rate schedules ``fit`` knows (set per epoch, see ``TrainConfig.lr_at``).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"TrainConfig: {name} must be an int, got {value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"TrainConfig: {name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(
            f"TrainConfig: {name} must be a number, got {value!r} of type {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"TrainConfig: {name} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (plain SGD on cross-entropy).

    Args:
        lr: learning rate, > 0.
        epochs: epochs to train in total (a resumed run continues up to this), >= 1.
        batch_size: batch size the loaders are built with, >= 1. ``fit`` does not batch
            the data itself; it checks that a loader with a ``batch_size`` attribute agrees.
        seed: seeds the weight initialisation and the global RNGs during training
            (whoever builds the loaders should pass it to them too), >= 0.
        momentum: SGD momentum (``torch.optim.SGD``), in [0, 1); 0 is plain SGD as in d2l.
        weight_decay: L2 penalty of ``torch.optim.SGD``, >= 0.
        device: where the model is trained, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        log_every_steps: also log a record every this many optimizer steps; 0 logs
            once per epoch only.
        init: ``"xavier_uniform"`` (d2l's trainer: Xavier-uniform weights of every Linear
            and Conv layer) or ``"default"`` (keep PyTorch's initialisation). Applied by
            ``fit`` on a fresh start only, never on resume.
        precision: ``"32"`` (float32), ``"bf16"`` (bfloat16 autocast) or ``"fp16"``
            (float16 autocast with loss scaling); see ``bnlab.train.precision``.
        lr_schedule: ``"constant"`` (d2l's) or ``"cosine"``: epoch ``e`` (1-based) runs
            at ``lr * (1 + cos(pi * (e - 1) / epochs)) / 2`` (Loshchilov & Hutter,
            "SGDR", arXiv 1608.03983, without restarts). The rate depends on the epoch
            and ``epochs`` only, so a resumed run with the same ``epochs`` is exact.

    Raises:
        ValueError: a value out of range or an unknown ``init`` / ``device`` /
            ``lr_schedule``.
        TypeError: a value of the wrong type.
    """

    lr: float = 1.0
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    device: str = "cpu"
    log_every_steps: int = 0
    init: str = "xavier_uniform"
    precision: str = "32"
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        lr = _check_float("lr", self.lr)
        if lr <= 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr}")
        momentum = _check_float("momentum", self.momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"TrainConfig: momentum must be in [0, 1), got {self.momentum}")
        weight_decay = _check_float("weight_decay", self.weight_decay)
        if weight_decay < 0:
            raise ValueError(f"TrainConfig: weight_decay must be >= 0, got {self.weight_decay}")
        # Stored as floats so that the JSON form and a reloaded config compare equal.
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "momentum", momentum)
        object.__setattr__(self, "weight_decay", weight_decay)
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("log_every_steps", self.log_every_steps, 0)
        if self.init not in INITS:
            raise ValueError(
                f"TrainConfig: unknown init {self.init!r}; choose one of: {', '.join(INITS)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"TrainConfig: unknown lr_schedule {self.lr_schedule!r}; choose one of: "
                f"{', '.join(LR_SCHEDULES)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig: unknown precision {self.precision!r}; choose one of: "
                f"{', '.join(PRECISIONS)}"
            )
        if not isinstance(self.device, str):
            raise TypeError(
                f"TrainConfig: device must be a string such as 'cpu' or 'cuda', got {self.device!r}"
            )
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(
                f"TrainConfig: device {self.device!r} is not a device name such as 'cpu', 'cuda' or 'cuda:0'"
            ) from exc

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 1-based ``epoch`` under ``lr_schedule``."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / self.epochs))
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``to_dict()`` output.

        Raises:
            ValueError: a key that is not a setting (listing the known ones).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"TrainConfig: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)
