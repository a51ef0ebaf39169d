"""Recalibrate batch-norm statistics: replace moving averages by population statistics.

Training leaves each BN layer with an exponential moving average of batch statistics
taken while the weights were still changing, so the running mean and variance lag
behind the final weights (most with a small ``momentum`` and large learning rates). A
recalibration pass runs the trained network, weights fixed, over training data and
sets each BN layer's statistics to those of the data it actually sees
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576, section 3; the
"precise BN" of facebookresearch/fvcore).

Estimator: each layer sees batches b of ``n_b`` values per channel with mean ``m_b``
and biased variance ``v_b``. The recalibrated statistics are those of the union of
the batches, by the law of total variance:

    mean = sum(n_b * m_b) / M,             M = sum(n_b)
    var  = sum(n_b * (v_b + (m_b - mean)**2)) / M * M / (M - 1)   (unbiased, as torch)

so the first layer's statistics do not depend on how the data was split into
batches. Deeper layers see inputs normalized with batch statistics (train-mode
forward), as during training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["RecalibrationReport", "recalibrate_batchnorm"]


@dataclass
class RecalibrationReport:
    """What :func:`recalibrate_batchnorm` did.

    Attributes:
        layers: names of the recalibrated modules, in model order.
        batches: batches run through the model.
        samples: samples run through the model.
        mean_shift: per layer, the largest ``|new - old| / sqrt(new_var + eps)`` of the
            running mean: how far the moving average was from the population mean, in
            units of the population standard deviation.
        var_ratio: per layer, the largest ``max(new/old, old/new)`` of the running variance.
    """

    layers: list[str] = field(default_factory=list)
    batches: int = 0
    samples: int = 0
    mean_shift: dict[str, float] = field(default_factory=dict)
    var_ratio: dict[str, float] = field(default_factory=dict)


def _stat_buffers(module: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The (mean, var) statistics buffers of a batch-norm-like module, or None.

    Covers ``torch.nn`` and ``bnlab.nn`` BatchNorm (``running_mean``/``running_var``) and
    the textbook module (``moving_mean``/``moving_var``); a module qualifies when it also
    has a ``momentum`` attribute (the weight of the new batch).
    """
    if not hasattr(module, "momentum"):
        return None
    for mean_name, var_name in (("running_mean", "running_var"), ("moving_mean", "moving_var")):
        mean = getattr(module, mean_name, None)
        var = getattr(module, var_name, None)
        if isinstance(mean, Tensor) and isinstance(var, Tensor):
            return mean, var
    return None


class _Accumulator:
    """Running sums of ``n_b``, ``n_b * m_b`` and ``n_b * (v_b + m_b**2)`` in float64."""

    def __init__(self, like: Tensor) -> None:
        self.count = 0
        self.sum_mean = torch.zeros(like.numel(), dtype=torch.float64, device=like.device)
        self.sum_sq = torch.zeros_like(self.sum_mean)

    def add(self, count: int, mean: Tensor, unbiased_var: Tensor) -> None:
        m = mean.detach().reshape(-1).double()
        v = unbiased_var.detach().reshape(-1).double() * ((count - 1) / count)
        self.count += count
        self.sum_mean += count * m
        self.sum_sq += count * (v + m * m)

    def result(self) -> tuple[Tensor, Tensor]:
        mean = self.sum_mean / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(0.0)
        if self.count > 1:
            var = var * (self.count / (self.count - 1))
        return mean, var


@contextmanager
def _batch_stats_mode(model: nn.Module, layers: dict[str, nn.Module]) -> Iterator[None]:
    """Train mode with ``momentum=1`` (buffers = last batch), everything restored after."""
    was_training = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in layers.items()}
    counters = {
        name: m.num_batches_tracked.clone()
        for name, m in layers.items()
        if isinstance(getattr(m, "num_batches_tracked", None), Tensor)
    }
    try:
        model.eval()
        for m in layers.values():
            m.train()
            m.momentum = 1.0
        yield
    finally:
        for name, m in model.named_modules():
            m.training = was_training[name]
        for name, m in layers.items():
            m.momentum = momenta[name]
            if name in counters:
                m.num_batches_tracked.copy_(counters[name])


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]],
    *,
    num_batches: int | None = None,
) -> RecalibrationReport:
    """Set every BN layer's running statistics to population statistics of ``batches``.

    The weights are not changed, and no gradient is computed. Every other module runs
    in eval mode (dropout off); the BN layers run in train mode so that each sees the
    batch-normalized inputs it saw during training. Training flags, momenta and batch
    counters are restored afterwards, also when an exception interrupts the pass.

    Args:
        model: a network with ``torch.nn``, ``bnlab.nn`` or textbook BatchNorm layers.
        batches: an iterable of inputs, or of tuples whose first element is the input
            (a data loader's ``(x, y)``).
        num_batches: stop after this many batches (all when None).

    Returns:
        A :class:`RecalibrationReport`.

    Raises:
        ValueError: the model has no BN layer with tracked statistics, ``batches`` is
            empty, or ``num_batches`` < 1.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(
            f"recalibrate_batchnorm: num_batches must be >= 1 or None, got {num_batches}"
        )
    layers = {name: m for name, m in model.named_modules() if _stat_buffers(m) is not None}
    if not layers:
        raise ValueError(
            "recalibrate_batchnorm: the model has no BatchNorm layer with running statistics "
            "(track_running_stats=True); there is nothing to recalibrate"
        )
    accumulators = {name: _Accumulator(_stat_buffers(m)[0]) for name, m in layers.items()}
    counts: dict[str, int] = {}

    def record_count(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0]
            counts[name] = x.numel() // x.shape[1] if x.dim() > 1 else 0

        return hook

    report = RecalibrationReport(layers=list(layers))
    old = {name: tuple(t.detach().clone() for t in _stat_buffers(m)) for name, m in layers.items()}
    handles = [m.register_forward_pre_hook(record_count(name)) for name, m in layers.items()]
    try:
        with _batch_stats_mode(model, layers), torch.no_grad():
            for batch in batches:
                if num_batches is not None and report.batches >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                counts.clear()
                model(x)
                for name, m in layers.items():
                    n = counts.get(name, 0)
                    if n > 1:  # a layer the batch did not reach, or an empty batch
                        mean, var = _stat_buffers(m)
                        accumulators[name].add(n, mean, var)
                report.batches += 1
                report.samples += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        # The pass left the last batch's statistics in the buffers: put back the old
        # ones, overwritten below only for layers that saw data.
        for name, m in layers.items():
            for buf, saved in zip(_stat_buffers(m), old[name], strict=True):
                buf.copy_(saved)
    if report.batches == 0:
        raise ValueError("recalibrate_batchnorm: batches is empty; pass training data")
    for name, m in layers.items():
        acc = accumulators[name]
        if acc.count == 0:
            continue
        mean_buf, var_buf = _stat_buffers(m)
        new_mean, new_var = acc.result()
        old_mean, old_var = (t.reshape(-1).double() for t in old[name])
        eps = float(getattr(m, "eps", 1e-5))
        report.mean_shift[name] = (
            ((new_mean - old_mean).abs() / (new_var + eps).sqrt()).max().item()
        )
        ratio = (new_var + eps) / (old_var + eps)
        report.var_ratio[name] = torch.maximum(ratio, 1 / ratio).max().item()
        with torch.no_grad():
            mean_buf.copy_(new_mean.view_as(mean_buf))
            var_buf.copy_(new_var.view_as(var_buf))
    return report
