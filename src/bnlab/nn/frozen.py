"""Frozen batch norm: a fixed per-channel affine map, and ``freeze_batchnorm``.

``FrozenBatchNorm1d/2d`` hold ``weight``, ``bias``, ``running_mean`` and
``running_var`` as *buffers* (no parameters, no gradient to them) and apply the
eval-mode batch-norm map in train and eval mode alike, as detection models do when
their batches are too small for batch statistics (torchvision's ``FrozenBatchNorm2d``;
Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576, section 5).
The maths is ``bnlab.functional.batch_norm.batch_norm_eval`` (the mean is subtracted
before scaling); conventions are documented in ``bnlab.functional.batch_norm``.

They are plain modules, not torch ``_BatchNorm`` subclasses (torch core has no frozen
batch norm, and torchvision's ``FrozenBatchNorm2d`` is a plain module too): utilities
that find batch norms with ``isinstance`` (``swa_utils.update_bn``,
``convert_sync_batchnorm``, freezing or weight-decay patterns) leave their fixed
statistics alone.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.autograd.batch_norm import batch_norm_eval
from bnlab.functional.batch_norm import check_eps, check_input
from bnlab.nn._base import check_num_features
from bnlab.nn._loading import DropsStateKeys
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["FrozenBatchNorm1d", "FrozenBatchNorm2d", "freeze_batchnorm"]


class _FrozenBatchNorm(DropsStateKeys, nn.Module):
    """Batch norm with fixed statistics and affine parameters, all of them buffers.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, in
    train and eval mode. Gradients flow to the input only.

    Args:
        num_features: number of channels ``C`` (dim 1 of the input).
        eps: added to the variance, > 0.
        device, dtype: where and in which dtype to create the buffers.

    Raises:
        TypeError: ``num_features`` is not an int, or ``eps`` is not a number.
        ValueError: ``num_features`` <= 0 or ``eps`` <= 0.
    """

    _ranks: tuple[int, ...] = ()
    _layout: str = ""
    # The batch-norm classes whose statistics this class takes over (same ranks).
    _twins: tuple[type[nn.Module], ...] = ()

    num_features: int
    eps: float
    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_num_features(num_features, name)
        check_eps(eps, name)
        self.num_features = num_features
        self.eps = eps
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> _FrozenBatchNorm:
        """A frozen copy of ``bn``'s running statistics, affine parameters and ``eps``.

        ``affine=False`` (or ``bias=False``) gives weight 1 (bias 0). The buffers are
        detached copies in ``bn``'s dtype and device; ``bn`` is not changed.

        Args:
            bn: a ``torch.nn`` or ``bnlab.nn`` BatchNorm of the same rank.

        Returns:
            The frozen module.

        Raises:
            TypeError: ``bn`` is not a batch norm of this rank.
            ValueError: ``bn`` does not track running statistics.
        """
        name = cls.__name__
        if not isinstance(bn, cls._twins):
            twins = ", ".join(f"{t.__module__}.{t.__name__}" for t in cls._twins)
            raise TypeError(
                f"{name}.from_batchnorm: expected one of {twins}, got {type(bn).__name__}; "
                f"freeze a BatchNorm1d with FrozenBatchNorm1d and a BatchNorm2d with "
                f"FrozenBatchNorm2d"
            )
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"{name}.from_batchnorm: {type(bn).__name__} was built with "
                f"track_running_stats=False and has no running statistics to freeze; "
                f"train it with track_running_stats=True or recalibrate it first"
            )
        mean = bn.running_mean.detach()
        frozen = cls(bn.num_features, eps=bn.eps, device=mean.device, dtype=mean.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(mean)
            frozen.running_var.copy_(bn.running_var.detach())
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight.detach())
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias.detach())
        return frozen

    def _drop_state_keys(
        self, state_dict: dict[str, Any], prefix: str, version: int | None, errors: list[str]
    ) -> None:
        # A BatchNorm's state_dict loads as is: its batch counter has no use here.
        state_dict.pop(prefix + "num_batches_tracked", None)

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if isinstance(x, Tensor) and x.dim() not in self._ranks:
            ranks = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{name}: expected {ranks} input {self._layout}, "
                f"got {x.dim()}D input of shape {tuple(x.shape)}"
            )
        check_input(x, self.num_features, name)
        return batch_norm_eval(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class FrozenBatchNorm1d(_FrozenBatchNorm):
    """Frozen batch norm of ``(N, C)`` or ``(N, C, L)`` inputs; twin of ``BatchNorm1d``.

    Shape:
        input: ``(N, C)`` or ``(N, C, L)``; output: the same.
    """

    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"
    _twins = (nn.BatchNorm1d, BatchNorm1d)


class FrozenBatchNorm2d(_FrozenBatchNorm):
    """Frozen batch norm of ``(N, C, H, W)`` inputs; twin of ``BatchNorm2d``.

    Shape:
        input: ``(N, C, H, W)``; output: the same.
    """

    _ranks = (4,)
    _layout = "(N, C, H, W)"
    _twins = (nn.BatchNorm2d, BatchNorm2d)


_FROZEN_FOR: tuple[tuple[tuple[type[nn.Module], ...], type[_FrozenBatchNorm]], ...] = (
    (FrozenBatchNorm1d._twins, FrozenBatchNorm1d),
    (FrozenBatchNorm2d._twins, FrozenBatchNorm2d),
)
_NOT_FROZEN = (nn.BatchNorm3d, BatchNorm3d)


def _frozen_class(module: nn.Module) -> type[_FrozenBatchNorm] | None:
    for twins, frozen in _FROZEN_FOR:
        if type(module) in twins:
            return frozen
    return None


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm1d/2d replaced by its frozen twin.

    Replaced: modules whose type is exactly ``torch.nn`` or ``bnlab.nn``
    ``BatchNorm1d``/``BatchNorm2d`` and that track running statistics. Left as they
    are, and named in one ``UserWarning``: BatchNorm3d (there is no frozen 3d twin) and
    batch norms without running statistics. Subclasses (SyncBatchNorm, ghost or renorm
    variants) are not touched. The copy keeps ``model``'s train/eval mode; ``model``
    itself is not changed.

    Args:
        model: any module; a batch norm itself is returned frozen.

    Returns:
        The frozen copy.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze_batchnorm: expected an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    left: list[str] = []
    replacements: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        frozen = _frozen_class(module)
        if frozen is not None and module.running_mean is not None:
            replacements[name] = frozen.from_batchnorm(module)
        elif frozen is not None:
            left.append(f"{name or '<model>'} (no running statistics)")
        elif type(module) in _NOT_FROZEN:
            left.append(f"{name or '<model>'} ({type(module).__name__}: no frozen twin)")
    if left:
        warnings.warn(
            f"freeze_batchnorm: left {len(left)} batch norm(s) as they are: {', '.join(left)}",
            UserWarning,
            stacklevel=2,
        )
    for name, frozen_module in replacements.items():
        if name == "":
            return frozen_module.train(model.training)
        model.set_submodule(name, frozen_module.train(model.training))
    return model
