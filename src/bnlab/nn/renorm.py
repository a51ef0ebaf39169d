"""``BatchRenorm1d/2d/3d``: batch norm whose training output is corrected towards the
running statistics, and the paper's warm-up of the clipping bounds.

Paper: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models", arXiv 1702.03275. The maths (and why batch norm's closed-form
backward is reused) is ``bnlab.functional.batch_renorm``.

Design decisions:
    * Signature: ``torch.nn.BatchNorm*d``'s, plus keyword-only ``r_max`` and ``d_max``;
      parameters, buffers and ``state_dict`` keys are torch's, so a ``state_dict`` loads
      into ``torch.nn.BatchNorm*d`` and back (inference is identical).
    * ``BatchRenorm2d`` subclasses bnlab's ``BatchNorm2d`` (so torch's): code that finds
      batch norms with ``isinstance`` finds it (its eval map is batch norm's);
      ``torch.jit.script`` refuses it (TorchScript would run torch's batch norm).
    * ``momentum`` defaults to 0.01, not batch norm's 0.1. In batch renorm the running
      statistics are used *in training* (``r`` and ``d`` correct towards them), so the
      noise of the average becomes training noise, and renorm is meant for small or
      non-i.i.d. batches, whose statistics are noisy: 0.01 averages over about 100
      batches, 0.1 over about 10. 0.01 is Keras's default (``renorm_momentum=0.99``).
      The paper asks for averages that move *faster* than those of its batch norm
      baseline, an Inception network (TF-slim's Inception-v3 uses a decay of 0.9997,
      momentum 3e-4), so that they follow the changing network; 0.01 is that, while
      torch's 0.1 is faster still. Pass ``momentum=0.1`` for torch's batch norm
      behaviour.
    * ``r_max``/``d_max`` default to the paper's final bounds 3 and 5; the paper reaches
      them after a warm-up from 1 and 0 (batch norm), see :func:`renorm_clipping` and
      :func:`set_renorm_clipping`. They are plain attributes, read at every call, shown
      in ``extra_repr`` and *not* saved in the ``state_dict``: they are a training
      schedule (like a learning rate) that the training loop sets from the step, saving
      them would break loading into ``torch.nn.BatchNorm*d`` and a checkpoint would
      overwrite the schedule's value on resume.
    * ``track_running_stats=False`` raises ``ValueError``: without running statistics
      there is nothing to renormalize towards, and silently training plain batch norm
      would hide the mistake. Setting it to False after construction makes training
      raise ``RuntimeError`` (eval keeps using the buffers, as batch norm does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bnlab.functional.batch_norm import BatchNormOutput
from bnlab.functional.batch_renorm import (
    batch_renorm_with,
    check_renorm_clipping,
    renorm_clipping,
)
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = [
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "renorm_clipping",
    "set_renorm_clipping",
]


class _BatchRenorm(_BatchNorm):
    """Batch renorm over dim 1 (see the module docstring for the design).

    Args:
        num_features, eps, affine, track_running_stats, device, dtype, bias: as
            ``torch.nn.BatchNorm2d`` (``track_running_stats`` must be True).
        momentum: weight of the new batch in the running statistics (default 0.01), or
            None for a cumulative average.
        r_max: ``r`` is clipped to ``[1/r_max, r_max]``; >= 1, ``math.inf`` unclipped.
        d_max: ``d`` is clipped to ``[-d_max, d_max]``; >= 0, ``math.inf`` unclipped.

    Raises:
        TypeError, ValueError: bad configuration, with the received value.
    """

    # TorchScript would compile torch's batch norm, another map in training: refused.
    _scriptable_as_torch = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.01,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
    ) -> None:
        name = type(self).__name__
        check_renorm_clipping(r_max, d_max, name)
        if not track_running_stats:
            raise ValueError(
                f"{name}: track_running_stats must be True, got {track_running_stats!r}: "
                f"batch renorm corrects the batch statistics towards the running ones; "
                f"for batch statistics alone use BatchNorm with track_running_stats=False"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.r_max = float(r_max)
        self.d_max = float(d_max)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}"

    def _variant(
        self, *, training: bool, name: str
    ) -> tuple[Callable[..., BatchNormOutput], dict[str, Any]]:
        # Batch norm's buffer handling (bnlab.nn.BatchNorm.forward), renorm's correction.
        if training and not self.track_running_stats:
            raise RuntimeError(
                f"{name}: training needs running statistics, but track_running_stats was "
                f"set to False; set it back to True, or call .eval()"
            )
        return batch_renorm_with, {"r_max": self.r_max, "d_max": self.d_max}


class BatchRenorm1d(_BatchRenorm, BatchNorm1d):
    """Batch renorm of ``(N, C)`` or ``(N, C, L)`` inputs.

    Shape:
        input: ``(N, C)`` or ``(N, C, L)``; output: the same.
    """


class BatchRenorm2d(_BatchRenorm, BatchNorm2d):
    """Batch renorm of ``(N, C, H, W)`` inputs; channels_last inputs work.

    Shape:
        input: ``(N, C, H, W)``; output: the same, in the same memory format.
    """


class BatchRenorm3d(_BatchRenorm, BatchNorm3d):
    """Batch renorm of ``(N, C, D, H, W)`` inputs.

    Shape:
        input: ``(N, C, D, H, W)``; output: the same.
    """


def set_renorm_clipping(model: nn.Module, r_max: float, d_max: float) -> int:
    """Set ``r_max`` and ``d_max`` of every batch renorm layer in ``model``.

    Call it once per training step with the schedule's values::

        set_renorm_clipping(model, *renorm_clipping(step))

    Args:
        model: any module; its batch renorm layers (itself included) are updated.
        r_max: >= 1.
        d_max: >= 0.

    Returns:
        The number of layers updated (0 when the model has none).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a non-numeric bound.
        ValueError: ``r_max < 1`` or ``d_max < 0``.
    """
    name = "set_renorm_clipping"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: model must be a torch.nn.Module, got {type(model).__name__}")
    check_renorm_clipping(r_max, d_max, name)
    count = 0
    for m in model.modules():
        if isinstance(m, _BatchRenorm):
            m.r_max, m.d_max = float(r_max), float(d_max)
            count += 1
    return count
