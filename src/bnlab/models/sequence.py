"""Networks that read a 28x28 image as a sequence of 28 rows: a GRU and a Transformer.

Each takes ``(N, 1, 28, 28)`` images and returns ``(N, 10)`` logits; the norm is chosen
by name (``SEQUENCE_NORMS``):

- :class:`GRUClassifier`: a GRU written out step by step so that a norm can sit on both
  of its summed inputs, the input-to-hidden ``W_x x_t`` and the hidden-to-hidden
  ``W_h h_{t-1}`` (each ``(N, 3H)``), normalized separately before they are added, as
  the recurrent batch normalization of Cooijmans et al., "Recurrent Batch
  Normalization" (arXiv 1603.09025), does for the LSTM. ``bn``: :class:`StepBatchNorm`,
  BatchNorm over the batch with *separate statistics (and affine parameters) for each
  time step*, its weight (gamma) initialised to 0.1 (Cooijmans et al. section 4: gamma 1
  saturates the gates and the gradient through time vanishes); ``ln``: LayerNorm over
  the ``3H`` summed inputs of each (example, step), weight initialised to 1 (Ba, Kiros &
  Hinton, "Layer Normalization", arXiv 1607.06450, section 3.1); ``none``: nothing. It
  classifies from the last hidden state.
- :class:`TransformerClassifier`: a pre-norm encoder (Vaswani et al., arXiv
  1706.03762) with learned positions, mean-pooled over steps. ``bn``: BatchNorm1d over
  (batch, time) for each of the ``d_model`` features (the "naive BN" of Shen et al.,
  "PowerNorm: Rethinking Batch Normalization in Transformers", arXiv 2003.07845);
  ``ln``: LayerNorm over ``d_model`` (the Transformer's own); ``none``: identity.

The per-step BN of the GRU cannot train at batch size 1 (one value per channel: torch
raises); the Transformer's BN over (batch, time) can, with the statistics of one image's
28 rows.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.nn.registry import NONE, get_norm_layer

__all__ = [
    "BN_GRU_WEIGHT",
    "SEQUENCE_ARCHS",
    "SEQUENCE_NORMS",
    "GRUClassifier",
    "SequenceNorm",
    "StepBatchNorm",
    "TransformerClassifier",
    "build_sequence_model",
]

#: The networks, by name, with their labels.
SEQUENCE_ARCHS: dict[str, str] = {"gru": "GRU", "transformer": "Transformer"}
#: The norms of the networks, by name, with their labels.
SEQUENCE_NORMS: dict[str, str] = {"none": "no norm", "bn": "BatchNorm", "ln": "LayerNorm"}
#: The initial weight (gamma) of the GRU's batch norms (Cooijmans et al. 2016).
BN_GRU_WEIGHT = 0.1


class StepBatchNorm(nn.Module):
    """BatchNorm over the batch with separate statistics and affine parameters for each
    time step (Cooijmans et al., arXiv 1603.09025, section 3).

    ``running_mean``, ``running_var``, ``weight`` and ``bias`` have shape ``(steps,
    num_features)``; in training each step's batch statistics (biased variance) normalize
    it and update its row of the running statistics (``momentum`` is PyTorch's weight of
    the new batch, the running variance unbiased), in evaluation the rows normalize.
    Equal to ``BatchNorm1d(steps * num_features)`` on ``(N, steps * num_features)``.

    Args:
        steps: ``T``, the number of time steps.
        num_features: ``F``, features per step.
        eps, momentum: as ``torch.nn.BatchNorm1d``.
        weight: the initial weight (gamma) of every (step, feature).

    Shape:
        ``forward(x)``: ``(N, T, F) -> (N, T, F)``, every step at once;
        ``forward(x, step)``: ``(N, F) -> (N, F)``, one step.

    Raises:
        ValueError: ``steps`` or ``num_features`` < 1.
    """

    def __init__(
        self,
        steps: int,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        weight: float = BN_GRU_WEIGHT,
    ) -> None:
        super().__init__()
        if steps < 1 or num_features < 1:
            raise ValueError(
                f"StepBatchNorm: steps and num_features must be >= 1, got {steps} and "
                f"{num_features}"
            )
        self.steps, self.num_features = steps, num_features
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.full((steps, num_features), float(weight)))
        self.bias = nn.Parameter(torch.zeros(steps, num_features))
        self.register_buffer("running_mean", torch.zeros(steps, num_features))
        self.register_buffer("running_var", torch.ones(steps, num_features))

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        if step is None:
            n = x.shape[0]
            flat = F.batch_norm(  # (N, T * F): one channel per (step, feature)
                x.reshape(n, -1),
                self.running_mean.view(-1),
                self.running_var.view(-1),
                self.weight.view(-1),
                self.bias.view(-1),
                self.training,
                self.momentum,
                self.eps,
            )
            return flat.view_as(x)
        # row views: the update of the running statistics lands in the buffers
        return F.batch_norm(
            x,
            self.running_mean[step],
            self.running_var[step],
            self.weight[step],
            self.bias[step],
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"steps={self.steps}, num_features={self.num_features}, eps={self.eps}"


class SequenceNorm(nn.Module):
    """A norm over the features ``F`` of ``(N, T, F)`` sequences, or of one step ``(N, F)``.

    Args:
        kind: ``"none"``; ``"ln"`` (LayerNorm over ``F``); ``"bn"`` (BatchNorm over batch
            and time, one set of statistics per feature); ``"bn-step"``
            (:class:`StepBatchNorm`: statistics and affine parameters per (step, feature)).
        num_features: ``F``.
        steps: ``T`` (used by ``"bn-step"``).
        weight: the initial affine weight (gamma); None: 1.

    Shape:
        ``forward(x)``: ``(N, T, F) -> (N, T, F)``; ``forward(x, step)``: ``(N, F) ->
        (N, F)`` at time ``step`` (every kind but ``"bn"``).

    Raises:
        ValueError: an unknown kind.
    """

    #: kind -> (norm registry name, its dim).
    KINDS: ClassVar[dict[str, tuple[str, int]]] = {
        "none": ("none", 0),  # Identity
        "ln": ("layernorm", 0),  # LayerNorm(F) on the last dim
        "bn": ("batchnorm", 1),  # BatchNorm1d(F) on (N, F, T)
        "bn-step": ("batchnorm", 0),  # StepBatchNorm(T, F)
    }

    def __init__(
        self, kind: str, num_features: int, steps: int, *, weight: float | None = None
    ) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(
                f"unknown sequence norm {kind!r}; choose one of: {', '.join(self.KINDS)}"
            )
        self.kind = kind
        if kind == "bn-step":
            self.layer: nn.Module = StepBatchNorm(
                steps, num_features, weight=1.0 if weight is None else weight
            )
            return
        name, dim = self.KINDS[kind]
        make = None if name == NONE else get_norm_layer(name, dim=dim, impl="torch")
        self.layer = nn.Identity() if make is None else make(num_features)
        if weight is not None and make is not None:
            nn.init.constant_(self.layer.weight, weight)

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        if self.kind == "bn-step":
            return self.layer(x, step)
        if self.kind == "bn":
            if step is not None:
                raise ValueError("SequenceNorm('bn') normalizes over time: call it without step")
            return self.layer(x.transpose(1, 2)).transpose(1, 2)  # (N, F, T): stats over N, T
        return self.layer(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def _rows(x: Tensor) -> Tensor:
    """``(N, 1, 28, 28)`` images -> ``(N, 28, 28)`` sequences of rows."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (N, 1, H, W), got shape {tuple(x.shape)}")
    return x[:, 0]


class GRUClassifier(nn.Module):
    """A GRU over image rows with a norm on each of its two summed inputs.

    ``r, z, n`` gates as in ``torch.nn.GRU``, with ``a = norm_x(W_x x_t + b_x)`` and
    ``c = norm_h(W_h h + b_h)`` (each ``(N, 3H)``, split into r, z, n parts):
    ``r = s(a_r + c_r)``, ``z = s(a_z + c_z)``, ``n = tanh(a_n + r * c_n)``,
    ``h' = (1 - z) n + z h``, ``h_0 = 0``.

    Args:
        norm: ``"none"``, ``"bn"`` (per-step BatchNorm, :class:`StepBatchNorm`) or ``"ln"``.
        hidden: hidden size ``H``.
        steps, features: rows and row length (28, 28).
        norm_weight: the initial weight (gamma) of both norms; None: ``BN_GRU_WEIGHT``
            (0.1) for BN, 1 for LayerNorm.

    Shape:
        input ``(N, 1, steps, features)``; output ``(N, 10)``.
    """

    def __init__(
        self,
        norm: str,
        *,
        hidden: int = 64,
        steps: int = 28,
        features: int = 28,
        norm_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        kind = "bn-step" if norm == "bn" else norm
        if norm_weight is None and norm == "bn":
            norm_weight = BN_GRU_WEIGHT
        self.input = nn.Linear(features, 3 * hidden)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.norm_x = SequenceNorm(kind, 3 * hidden, steps, weight=norm_weight)
        self.norm_h = SequenceNorm(kind, 3 * hidden, steps, weight=norm_weight)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        seq = _rows(x)
        a = self.norm_x(self.input(seq))  # (N, T, 3H), every step at once
        h = seq.new_zeros(seq.shape[0], self.hidden)
        for t in range(seq.shape[1]):
            ar, az, an = a[:, t].chunk(3, dim=1)
            cr, cz, cn = self.norm_h(self.recurrent(h), t).chunk(3, dim=1)
            r = torch.sigmoid(ar + cr)
            z = torch.sigmoid(az + cz)
            n = torch.tanh(an + r * cn)
            h = (1 - z) * n + z * h
        return self.head(h)


class _Block(nn.Module):
    def __init__(self, norm: str, d_model: int, heads: int, steps: int) -> None:
        super().__init__()
        self.norm1 = SequenceNorm(norm, d_model, steps)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = SequenceNorm(norm, d_model, steps)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class TransformerClassifier(nn.Module):
    """A small pre-norm Transformer encoder over image rows, mean-pooled.

    Args:
        norm: ``"none"``, ``"bn"`` (BatchNorm over batch and time) or ``"ln"``.
        d_model, layers, heads: the encoder's width, depth, attention heads (a
            feed-forward of ``2 d_model``).
        steps, features: rows and row length (28, 28).

    Shape:
        input ``(N, 1, steps, features)``; output ``(N, 10)``.
    """

    def __init__(
        self,
        norm: str,
        *,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        steps: int = 28,
        features: int = 28,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(1, steps, d_model))
        self.blocks = nn.ModuleList(_Block(norm, d_model, heads, steps) for _ in range(layers))
        self.final = SequenceNorm(norm, d_model, steps)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(_rows(x)) + self.position
        for block in self.blocks:
            h = block(h)
        return self.head(self.final(h).mean(dim=1))


def build_sequence_model(
    arch: str,
    norm: str,
    *,
    hidden: int = 64,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    norm_weight: float | None = None,
) -> nn.Module:
    """The network ``arch`` (``SEQUENCE_ARCHS``) with ``norm`` (``SEQUENCE_NORMS``).

    Args:
        arch: ``"gru"`` or ``"transformer"``.
        norm: ``"none"``, ``"bn"`` or ``"ln"``.
        hidden: the GRU's hidden size.
        d_model, layers, heads: the Transformer's width, depth and attention heads.
        norm_weight: the GRU norms' initial weight (None: 0.1 for BN, 1 for LayerNorm).

    Raises:
        ValueError: an unknown arch or norm.
    """
    if norm not in SEQUENCE_NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(SEQUENCE_NORMS)}")
    if arch == "gru":
        return GRUClassifier(norm, hidden=hidden, norm_weight=norm_weight)
    if arch == "transformer":
        return TransformerClassifier(norm, d_model=d_model, layers=layers, heads=heads)
    raise ValueError(
        f"unknown sequence network {arch!r}; choose one of: {', '.join(SEQUENCE_ARCHS)}"
    )
