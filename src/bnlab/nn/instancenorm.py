"""``InstanceNorm1d/2d/3d``: drop-in twins of ``torch.nn.InstanceNorm1d/2d/3d``.

Paper: Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for
Fast Stylization", arXiv 1607.08022. The maths is
``bnlab.functional.norms.instance_norm`` (conventions and the running-statistics rule
documented there). As in torch: ``affine=False`` and ``track_running_stats=False`` by
default; ``momentum=None`` means 0 (torch passes ``momentum or 0.0``), not a cumulative
average; ``num_batches_tracked`` exists when tracking but is never incremented;
unbatched inputs (no ``N`` dim) are accepted.

The maths is called through ``bnlab.autograd.group_norm.instance_norm``: calls that
normalize with the instance statistics and update no running statistics
(``track_running_stats=False``, the default) run there, when eligible, on the fused
group-norm kernels with one group per channel; the others (running statistics updated
or used) take ``bnlab.functional.norms.instance_norm``.

Each class is a subclass of its torch twin (``InstanceNorm2d`` of
``torch.nn.InstanceNorm2d``, so of ``torch.nn.modules.instancenorm._InstanceNorm`` and
``_NormBase``, but not of ``_BatchNorm``, as in torch); ``forward``,
``_check_input_dim`` and the old-checkpoint message are bnlab's.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.instancenorm import _InstanceNorm as _TorchInstanceNorm

from bnlab.autograd.group_norm import instance_norm
from bnlab.functional.norms import check_floating_input
from bnlab.nn._base import _NormBase, non_tensor_call
from bnlab.nn._loading import DropsStateKeys
from bnlab.nn._twin import ScriptedAsTorchTwin

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(DropsStateKeys, ScriptedAsTorchTwin, _TorchInstanceNorm, _NormBase):
    """Instance norm over the spatial dims of each ``(sample, channel)``.

    The constructor is torch's (its defaults), whose ``super().__init__`` reaches
    bnlab's ``_NormBase`` next in the MRO: bnlab's checks, then torch's ``_NormBase``.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, > 0.
        momentum: weight of the new batch in the running statistics, in [0, 1] (None: 0).
        affine: learn a per-channel ``weight`` and ``bias`` (default False, as torch).
        track_running_stats: keep running statistics, update them in training and
            normalize with them in eval mode (default False, as torch).
        device, dtype: where and in which dtype to create parameters and buffers.
        bias: with ``affine``, also learn the shift (keyword-only).
    """

    _no_batch_dim: int = 0
    _layout: str = ""

    def _check_input_dim(self, x: Tensor) -> None:
        name = type(self).__name__
        check_floating_input(x, 1, self._layout, name)
        if x.dim() not in (self._no_batch_dim, self._no_batch_dim + 1):
            raise ValueError(
                f"{name}: expected {self._no_batch_dim}D (unbatched) or "
                f"{self._no_batch_dim + 1}D input {self._layout}, "
                f"got {x.dim()}D input of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            return non_tensor_call(self, x)  # torch.fx tracing: one call_module node
        name = type(self).__name__
        self._check_input_dim(x)
        feature_dim = x.dim() - self._no_batch_dim
        if x.shape[feature_dim] != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(
                    f"{name}: expected {self.num_features} channels in dim {feature_dim}, got "
                    f"{x.shape[feature_dim]} (input of shape {tuple(x.shape)}); the layer was "
                    f"built with num_features={self.num_features}"
                )
            warnings.warn(
                f"{name}: input's size at dim={feature_dim} ({x.shape[feature_dim]}) does not "
                f"match num_features ({self.num_features}); it is unused because affine=False "
                f"and track_running_stats=False",
                stacklevel=2,
            )
        unbatched = x.dim() == self._no_batch_dim
        batched = x.unsqueeze(0) if unbatched else x
        use_input_stats = self.training or not self.track_running_stats
        result = instance_norm(
            batched,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats=use_input_stats,
            momentum=self.momentum if self.momentum is not None else 0.0,
            eps=self.eps,
            name=name,
        )
        if self.running_mean is not None and result.running_mean is not self.running_mean:
            with torch.no_grad():
                self.running_mean.copy_(result.running_mean)
                self.running_var.copy_(result.running_var)
        return result.output.squeeze(0) if unbatched else result.output

    def _drop_state_keys(
        self, state_dict: dict[str, Any], prefix: str, version: int | None, errors: list[str]
    ) -> None:
        if version is None and not self.track_running_stats:
            # Checkpoints before torch 0.4 carried running stats even when untracked.
            keys = [prefix + k for k in ("running_mean", "running_var") if prefix + k in state_dict]
            if keys:
                names = " and ".join(f'"{k}"' for k in keys)
                errors.append(
                    f"Unexpected running stats buffer(s) {names} for {type(self).__name__} "
                    f"with track_running_stats=False; remove these keys from the state_dict, "
                    f"or build the layer with track_running_stats=True"
                )
                for key in keys:
                    state_dict.pop(key)


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    """Instance norm of ``(N, C, L)`` or unbatched ``(C, L)`` inputs.

    Shape:
        input: ``(N, C, L)`` or ``(C, L)``; output: like the input.
    """

    _no_batch_dim = 2
    _layout = "(N, C, L) or (C, L)"


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    """Instance norm of ``(N, C, H, W)`` or unbatched ``(C, H, W)`` inputs.

    Shape:
        input: ``(N, C, H, W)`` or ``(C, H, W)``; output: like the input.
    """

    _no_batch_dim = 3
    _layout = "(N, C, H, W) or (C, H, W)"


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    """Instance norm of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` inputs.

    Shape:
        input: ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output: like the input.
    """

    _no_batch_dim = 4
    _layout = "(N, C, D, H, W) or (C, D, H, W)"
