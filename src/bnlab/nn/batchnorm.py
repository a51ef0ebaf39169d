"""``BatchNorm1d/2d/3d``: drop-in twins of ``torch.nn.BatchNorm1d/2d/3d``.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167. The maths is
``bnlab.functional.batch_norm`` (conventions documented there) with the closed-form
backward of ``bnlab.autograd``. Subclasses differ only in the input ranks they accept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnlab import kernels
from bnlab.autograd.batch_norm import batch_norm, fast_batch_norm_train
from bnlab.functional.batch_norm import BatchNormOutput, check_input
from bnlab.nn._base import _NormBase

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

_FAST_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _fits(t: Tensor | None, x: Tensor, c: int) -> bool:
    """A per-channel tensor the CPU kernels take for input ``x`` with ``c`` channels."""
    return t is None or (t.dtype == x.dtype and t.is_cpu and t.shape == (c,) and t.is_contiguous())


def _fits_cuda(t: Tensor | None, x: Tensor, c: int) -> bool:
    """A per-channel tensor the Triton kernels take for CUDA input ``x``."""
    return t is None or (
        t.dtype in _CUDA_DTYPES and t.device == x.device and t.shape == (c,) and t.is_contiguous()
    )


class _BatchNorm(_NormBase):
    """Batch norm over dim 1; train mode uses batch statistics, eval mode running ones.

    Train mode with ``track_running_stats=True`` updates ``running_mean``,
    ``running_var`` and ``num_batches_tracked``; an empty batch updates nothing.
    With ``track_running_stats=False`` batch statistics are used in both modes.
    """

    _ranks: tuple[int, ...] = ()
    _layout: str = ""

    def _check_input_dim(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__}: expected a torch.Tensor input, got {type(x).__name__}"
            )
        if x.dim() not in self._ranks:
            ranks = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {ranks} input {self._layout}, "
                f"got {x.dim()}D input of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor):
            y = self._fast_forward(x)
            if y is not None:
                return y
        name = type(self).__name__
        self._check_input_dim(x)
        check_input(x, self.num_features, name)
        # As torch.nn: the attributes are read at every call, so changing
        # track_running_stats after construction takes effect. Training updates the
        # buffers only while tracking; eval uses them whenever they exist.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_buffers else None
        running_var = self.running_var if use_buffers else None
        num_batches_tracked = (
            self.num_batches_tracked if self.training and self.track_running_stats else None
        )
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

    def _fast_forward(self, x: Tensor) -> Tensor | None:
        """The common case on the kernels of ``bnlab.kernels``, or None.

        CPU: the fused C++ kernels (float32/float64 input, per-channel tensors of its
        dtype, at least ``MIN_NUMEL`` elements). CUDA: the Triton kernels
        (float16/bfloat16/float32 input, per-channel tensors of any of these dtypes on
        its device).

        Small inputs are bound by Python overhead, so this path checks only attribute
        reads and hands the running statistics to the kernel, which updates the buffers
        in place. Anything unusual (another rank, channel count, dtype, device or layout,
        bad eps or momentum, missing buffers, a subclass that overrides ``_normalize``,
        recorded eval calls, the fast path off or not built yet) returns None, and
        :meth:`forward` takes the general path, which checks, raises and computes it.
        Same results as the general path (``tests/functional/test_fast_path.py``,
        ``tests/functional/test_triton_bn.py``).
        """
        if not kernels._enabled or type(self)._normalize is not _BatchNorm._normalize:
            return None
        dtype, device = x.dtype, x.device
        c = self.num_features
        cuda = x.is_cuda
        if cuda:
            if dtype not in _CUDA_DTYPES or kernels._cuda_kernels() is None:
                return None
            min_numel = 1
        else:
            if kernels._lib is None or dtype not in _FAST_DTYPES or not x.is_cpu:
                return None
            min_numel = kernels.MIN_NUMEL
        numel = x.numel()
        eps = self.eps
        if (
            x.dim() not in self._ranks
            or not x.is_contiguous()
            or x.shape[1] != c
            or numel < min_numel
            or type(eps) is not float
            or not 0.0 < eps < math.inf
        ):
            return None
        params, buffers = self._parameters, self._buffers
        weight, bias = params.get("weight"), params.get("bias")
        running_mean, running_var = buffers.get("running_mean"), buffers.get("running_var")
        fits = _fits_cuda if cuda else _fits
        if not (
            fits(weight, x, c)
            and fits(bias, x, c)
            and fits(running_mean, x, c)
            and fits(running_var, x, c)
        ):
            return None
        if not self.training:
            if running_mean is None or running_var is None:
                return None  # eval with batch statistics
            if torch.is_grad_enabled() and (
                x.requires_grad
                or (weight is not None and weight.requires_grad)
                or (bias is not None and bias.requires_grad)
                or running_mean.requires_grad
                or running_var.requires_grad
            ):
                return None  # recorded: torch ops, differentiable
            return kernels.eval_forward(x, running_mean, running_var, weight, bias, eps)
        if numel // c < 2:
            return None  # one value per channel: the general path raises
        running = None
        if self.track_running_stats:
            counter = buffers.get("num_batches_tracked")
            momentum = self.momentum
            if (
                running_mean is None
                or running_var is None
                or counter is None
                or counter.dtype != torch.int64
                or counter.device != device
                or counter.dim() != 0
                or not (momentum is None or (type(momentum) is float and 0.0 <= momentum <= 1.0))
            ):
                return None
            running = (running_mean, running_var, counter, momentum)
        if torch.is_grad_enabled():
            return fast_batch_norm_train(x, weight, bias, eps, running)
        return kernels.train_forward(x, weight, bias, eps, running)[0]

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
        """The functional call on the buffers ``forward`` chose; variants of batch norm
        (ghost, renorm) override only this, and keep the buffer handling above."""
        return batch_norm(
            x,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            training=training,
            momentum=self.momentum,
            eps=self.eps,
            num_batches_tracked=num_batches_tracked,
            name=name,
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm of ``(N, C)`` or ``(N, C, L)`` inputs (after Linear or Conv1d).

    Shape:
        input: ``(N, C)`` or ``(N, C, L)``; output: the same.
    """

    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm of ``(N, C, H, W)`` inputs (after Conv2d); channels_last inputs work.

    Shape:
        input: ``(N, C, H, W)``; output: the same, in the same memory format.
    """

    _ranks = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch norm of ``(N, C, D, H, W)`` inputs (after Conv3d).

    Shape:
        input: ``(N, C, D, H, W)``; output: the same.
    """

    _ranks = (5,)
    _layout = "(N, C, D, H, W)"
