"""``_NormBase``: parameters, buffers and bookkeeping shared by the batch-norm family.

Mirrors ``torch.nn.modules.batchnorm._NormBase`` so that ``state_dict`` keys, buffer
registration (``None`` when statistics are not tracked), ``reset_*`` methods,
``extra_repr`` and the version-1 checkpoint upgrade match ``torch.nn``.
Conventions are documented once, in ``bnlab.functional.batch_norm``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnlab.functional.batch_norm import check_eps, check_momentum

__all__ = ["_NormBase", "check_num_features", "register_affine", "reset_affine"]


def check_num_features(num_features: object, name: str) -> int:
    """Return ``num_features`` if it is an int > 0, else raise with the received value."""
    if not isinstance(num_features, int) or isinstance(num_features, bool):
        raise TypeError(
            f"{name}: num_features must be an int (the number of channels), "
            f"got {num_features!r} of type {type(num_features).__name__}"
        )
    if num_features <= 0:
        raise ValueError(
            f"{name}: num_features must be > 0 (the number of channels), got {num_features}"
        )
    return num_features


def register_affine(
    module: nn.Module,
    shape: int | tuple[int, ...],
    affine: bool,
    bias: bool,
    factory: dict[str, Any],
) -> None:
    """Register ``weight`` (and ``bias`` unless ``bias=False``) of ``shape``, or None, as torch.nn."""
    if affine:
        module.weight = nn.Parameter(torch.empty(shape, **factory))
        if bias:
            module.bias = nn.Parameter(torch.empty(shape, **factory))
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def reset_affine(module: nn.Module) -> None:
    """Weight 1 and bias 0, where they exist."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class _NormBase(nn.Module):
    """Common base of the batch-norm modules.

    Args:
        num_features: number of channels ``C`` (dim 1 of the input).
        eps: added to the variance, > 0.
        momentum: weight of the new batch in the running statistics, in [0, 1], or None
            for a cumulative average.
        affine: learn a per-channel scale (``weight``, gamma) and shift (``bias``, beta).
        track_running_stats: keep ``running_mean``/``running_var``/``num_batches_tracked``
            buffers and normalize with them in eval mode; when False the buffers are
            ``None`` and batch statistics are used in both modes.
        device, dtype: where and in which dtype to create parameters and buffers.
        bias: with ``affine``, also learn the shift (keyword-only, as in torch 2.13).
    """

    _version = 2
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_num_features(num_features, name)
        check_eps(eps, name)
        check_momentum(momentum, name)
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        register_affine(self, num_features, affine, bias, factory)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, device=device),
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, batch counter 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, then weight 1 and bias 0."""
        self.reset_running_stats()
        reset_affine(self)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        if (version is None or version < 2) and self.track_running_stats:
            # Checkpoints before version 2 have no batch counter: keep the current one.
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                current = self.num_batches_tracked
                keep = current is not None and current.device != torch.device("meta")
                state_dict[key] = current if keep else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
