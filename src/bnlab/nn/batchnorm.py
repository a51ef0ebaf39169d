"""``BatchNorm1d/2d/3d``: drop-in twins of ``torch.nn.BatchNorm1d/2d/3d``.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167. The maths is
``bnlab.functional.batch_norm`` (conventions documented there) with the closed-form
backward of ``bnlab.autograd``; one forward, through
``bnlab.autograd.batch_norm_inplace``, which also decides when a call runs on the fused
kernels of ``bnlab.kernels``. Subclasses differ only in the input ranks they accept.

``LazyBatchNorm1d/2d/3d`` infer ``num_features`` from their first input, as torch's (d2l
builds its batch-norm LeNet with ``nn.LazyBatchNorm2d``), and then become bnlab's
``BatchNorm1d/2d/3d``.

Each class is a subclass of its torch twin (``BatchNorm2d`` of ``torch.nn.BatchNorm2d``,
so of ``torch.nn.modules.batchnorm._BatchNorm`` and ``_NormBase``): torch's constructor,
buffers, ``reset_*`` methods, ``extra_repr`` and ``state_dict`` loading are inherited,
and utilities that find batch norms with ``isinstance`` (``swa_utils.update_bn``,
``convert_sync_batchnorm``, fusion, freezing and weight-decay patterns) find these. Only
``forward`` and ``_check_input_dim`` (with bnlab's messages) are bnlab's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import is_scripting
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm

from bnlab.autograd.batch_norm import (
    BatchNormFunction,
    batch_norm_eval_forward,
    batch_norm_inplace,
)
from bnlab.functional.batch_norm import BatchNormOutput, check_input
from bnlab.nn._base import _NormBase, non_tensor_call

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
]


class _BatchNorm(_NormBase, _TorchBatchNorm):
    """Batch norm over dim 1; train mode uses batch statistics, eval mode running ones.

    Train mode with ``track_running_stats=True`` updates ``running_mean``,
    ``running_var`` and ``num_batches_tracked``; an empty batch updates nothing.
    With ``track_running_stats=False`` batch statistics are used in both modes.
    """

    _ranks: tuple[int, ...] = ()
    _layout: str = ""
    # Whether torch.jit.script may compile this class with torch's batch norm (the same
    # map); subclasses that compute other maths say False.
    _scriptable_as_torch: bool = True

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in self._ranks:
            ranks = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {ranks} input {self._layout}, "
                f"got {x.dim()}D input of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        if is_scripting():
            return self._scripted_forward(x)  # TorchScript compiles this branch only
        if not isinstance(x, Tensor):
            return non_tensor_call(self, x)  # torch.fx tracing: one call_module node
        name = type(self).__name__
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            check_input(x, self.num_features, name)  # raises, with the layer's channel count
        # As torch.nn: the attributes are read at every call, so changing
        # track_running_stats after construction takes effect. Training updates the
        # buffers only while tracking; eval uses them whenever they exist. (The
        # dictionaries, not the attributes: nn.Module.__getattr__ costs about 0.3 us a
        # read, which shows on small inputs.)
        buffers = self._buffers
        running_mean, running_var = buffers.get("running_mean"), buffers.get("running_var")
        training = self.training
        use_batch_stats = training or (running_mean is None and running_var is None)
        tracking = self.track_running_stats
        if training and not tracking:
            running_mean = running_var = None
        num_batches_tracked = buffers.get("num_batches_tracked") if training and tracking else None
        result = self._normalize(
            x,
            running_mean,
            running_var,
            num_batches_tracked,
            training=use_batch_stats,
            name=name,
        )
        if use_batch_stats and running_mean is not None and result.running_mean is not running_mean:
            with torch.no_grad():
                running_mean.copy_(result.running_mean)
                running_var.copy_(result.running_var)
                if num_batches_tracked is not None:
                    num_batches_tracked.copy_(result.num_batches_tracked)
        return result.output

    def __prepare_scriptable__(self) -> _BatchNorm:
        # torch.jit.script calls this on every submodule before compiling.
        if not self._scriptable_as_torch:
            name = type(self).__name__
            raise TypeError(
                f"torch.jit.script: {name} cannot be compiled: TorchScript would run "
                f"torch's batch norm, and {name} computes other maths in training; use "
                f"torch.export.export, or script the model in eval mode after "
                f"bnlab.nn.fold_batchnorm"
            )
        return self

    def _scripted_forward(self, x: Tensor) -> Tensor:
        """What TorchScript compiles for ``forward``: torch's ``_BatchNorm.forward``, in
        short (``torch.nn.functional.batch_norm``; the same map and running-statistics
        update, without bnlab's closed-form backward and kernels)."""
        momentum = 0.0 if self.momentum is None else self.momentum
        counter = self.num_batches_tracked
        if self.training and self.track_running_stats and counter is not None:
            counter.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(counter)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if keep else None,
            self.running_var if keep else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )

    def _variant(
        self, *, training: bool, name: str
    ) -> tuple[Callable[..., BatchNormOutput], dict[str, Any]] | None:
        """A variant of batch norm (ghost, renorm) overrides only this: the
        ``bnlab.functional`` ``*_with`` function that computes it around the batch norm
        Function, and its own keyword options; None for batch norm itself."""
        return None

    def _normalize(
        self,
        x: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        num_batches_tracked: Tensor | None,
        *,
        training: bool,
        name: str,
    ) -> BatchNormOutput:
        """The call on the buffers ``forward`` chose. Batch norm's own updates the buffers
        in place; a variant's (``_variant``) returns new statistics, which ``forward``
        copies into the buffers."""
        variant = self._variant(training=training, name=name)
        if variant is not None:
            norm_with, options = variant
            return norm_with(
                BatchNormFunction.apply,
                x,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                training=training,
                momentum=self.momentum,
                eps=self.eps,
                num_batches_tracked=num_batches_tracked,
                eval_forward=batch_norm_eval_forward,
                name=name,
                **options,
            )
        params = self._parameters
        return batch_norm_inplace(
            x,
            running_mean,
            running_var,
            params.get("weight"),
            params.get("bias"),
            training,
            self.momentum,
            self.eps,
            num_batches_tracked,
            name=name,
        )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch norm of ``(N, C)`` or ``(N, C, L)`` inputs (after Linear or Conv1d).

    Shape:
        input: ``(N, C)`` or ``(N, C, L)``; output: the same.
    """

    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Batch norm of ``(N, C, H, W)`` inputs (after Conv2d); channels_last inputs work.

    Shape:
        input: ``(N, C, H, W)``; output: the same, in the same memory format.
    """

    _ranks = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch norm of ``(N, C, D, H, W)`` inputs (after Conv3d).

    Shape:
        input: ``(N, C, D, H, W)``; output: the same.
    """

    _ranks = (5,)
    _layout = "(N, C, D, H, W)"


class _LazyNumFeatures:
    """What bnlab's lazy batch norms add to torch's: ``num_features`` after loading."""

    num_features: int
    weight: Tensor | None
    running_mean: Tensor | None

    def initialize_parameters(self, x: Tensor) -> None:
        super().initialize_parameters(x)  # type: ignore[misc]
        if self.num_features == 0:
            # Materialized by load_state_dict, which torch's lazy norm leaves at 0: the
            # loaded tensors' size, so that forward checks the input against it.
            loaded = self.weight if self.weight is not None else self.running_mean
            self.num_features = x.shape[1] if loaded is None else loaded.shape[0]


class LazyBatchNorm1d(_LazyNumFeatures, nn.LazyBatchNorm1d, BatchNorm1d):
    """``BatchNorm1d`` whose ``num_features`` is ``input.shape[1]`` of its first input.

    A subclass of ``torch.nn.LazyBatchNorm1d`` (torch's ``LazyModuleMixin``: parameters
    and buffers materialize at the first call or when a ``state_dict`` is loaded); it
    then becomes a bnlab :class:`BatchNorm1d`. Arguments: those of ``BatchNorm1d``
    without ``num_features``.
    """

    cls_to_become = BatchNorm1d  # type: ignore[assignment]
    _check_input_dim = BatchNorm1d._check_input_dim


class LazyBatchNorm2d(_LazyNumFeatures, nn.LazyBatchNorm2d, BatchNorm2d):
    """``BatchNorm2d`` whose ``num_features`` is ``input.shape[1]`` of its first input.

    As :class:`LazyBatchNorm1d`; becomes a bnlab :class:`BatchNorm2d`.
    """

    cls_to_become = BatchNorm2d  # type: ignore[assignment]
    _check_input_dim = BatchNorm2d._check_input_dim


class LazyBatchNorm3d(_LazyNumFeatures, nn.LazyBatchNorm3d, BatchNorm3d):
    """``BatchNorm3d`` whose ``num_features`` is ``input.shape[1]`` of its first input.

    As :class:`LazyBatchNorm1d`; becomes a bnlab :class:`BatchNorm3d`.
    """

    cls_to_become = BatchNorm3d  # type: ignore[assignment]
    _check_input_dim = BatchNorm3d._check_input_dim
