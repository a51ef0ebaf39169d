"""``GhostBatchNorm1d/2d/3d``: batch norm with statistics per virtual batch.

Paper: Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
generalization gap in large batch training of neural networks", arXiv 1705.08741. The
maths and its rules (chunks, the last chunk, the running-statistics update) are
``bnlab.functional.ghost``.

Design decisions:
    * Signature: ``torch.nn.BatchNorm*d``'s plus keyword-only ``virtual_batch_size``,
      default 128 (the ghost batch size of the paper's experiments); parameters,
      buffers and ``state_dict`` keys are torch's. ``virtual_batch_size`` is
      configuration (like ``eps``), not state: it is not in the ``state_dict``.
    * ``GhostBatchNorm2d`` subclasses bnlab's ``BatchNorm2d`` (so torch's): code that
      finds batch norms with ``isinstance`` finds it (its eval map is batch norm's);
      ``torch.jit.script`` refuses it (TorchScript would run torch's batch norm).
    * ``momentum`` (default 0.1) is batch norm's: one update per call, whatever the
      number of virtual batches.
    * ``track_running_stats=False``: per-virtual-batch statistics in both modes, as
      batch norm uses batch statistics in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bnlab.functional.batch_norm import BatchNormOutput
from bnlab.functional.ghost import check_virtual_batch_size, ghost_batch_norm_with
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d"]


class _GhostBatchNorm(_BatchNorm):
    """Ghost batch norm over dim 1 (see the module docstring for the design).

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype, bias:
            as ``torch.nn.BatchNorm2d``.
        virtual_batch_size: samples per virtual batch (an int >= 1, default 128); a
            batch of at most this many samples is normalized exactly as by batch norm.

    Raises:
        TypeError, ValueError: bad configuration, with the received value.
    """

    # TorchScript would compile torch's batch norm, another map in training: refused.
    _scriptable_as_torch = False

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
        virtual_batch_size: int = 128,
    ) -> None:
        check_virtual_batch_size(virtual_batch_size, type(self).__name__)
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def _variant(
        self, *, training: bool, name: str
    ) -> tuple[Callable[..., BatchNormOutput], dict[str, Any]]:
        # Batch norm's buffer handling (bnlab.nn.BatchNorm.forward), ghost statistics.
        return ghost_batch_norm_with, {"virtual_batch_size": self.virtual_batch_size}


class GhostBatchNorm1d(_GhostBatchNorm, BatchNorm1d):
    """Ghost batch norm of ``(N, C)`` or ``(N, C, L)`` inputs.

    Shape:
        input: ``(N, C)`` or ``(N, C, L)``; output: the same.
    """


class GhostBatchNorm2d(_GhostBatchNorm, BatchNorm2d):
    """Ghost batch norm of ``(N, C, H, W)`` inputs; channels_last inputs keep their format.

    Shape:
        input: ``(N, C, H, W)``; output: the same.
    """


class GhostBatchNorm3d(_GhostBatchNorm, BatchNorm3d):
    """Ghost batch norm of ``(N, C, D, H, W)`` inputs.

    Shape:
        input: ``(N, C, D, H, W)``; output: the same.
    """
