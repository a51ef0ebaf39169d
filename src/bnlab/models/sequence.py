"""Networks that read a 28x28 image as a sequence of 28 rows: a GRU and a Transformer.

Each takes ``(N, 1, 28, 28)`` images and returns ``(N, 10)`` logits; the norm is chosen
by name (``SEQUENCE_NORMS``) and built by the one norm registry
(``bnlab.nn.get_norm_layer``, the ``torch.nn`` layers):

- :class:`GRUClassifier`: a GRU written out step by step, so that a norm can sit on the
  input-to-hidden pre-activations ``W_i x_t`` (shape ``(N, T, 3H)``) before the
  recurrence, the simple form of Laurent et al., "Batch Normalized Recurrent Neural
  Networks" (arXiv 1510.01378). ``bn``: BatchNorm over the batch *per time step*, with
  separate statistics (and affine parameters) for each step, as Cooijmans et al.,
  "Recurrent Batch Normalization" (arXiv 1603.09025) keep per-step statistics; ``ln``:
  LayerNorm over the ``3H`` features of each (example, step) (Ba et al., "Layer
  Normalization", arXiv 1607.06450); ``none``: nothing. It classifies from the last
  hidden state.
- :class:`TransformerClassifier`: a pre-norm encoder (Vaswani et al., arXiv
  1706.03762) with learned positions, mean-pooled over steps. ``bn``: BatchNorm1d over
  (batch, time) for each of the ``d_model`` features; ``ln``: LayerNorm over
  ``d_model``; ``none``: identity.

The per-step BN of the GRU cannot train at batch size 1 (one value per channel: torch
raises); the Transformer's BN over (batch, time) can, with the statistics of one image's
28 rows.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from bnlab.nn.registry import NONE, get_norm_layer

__all__ = [
    "SEQUENCE_ARCHS",
    "SEQUENCE_NORMS",
    "GRUClassifier",
    "SequenceNorm",
    "TransformerClassifier",
    "build_sequence_model",
]

#: The networks, by name, with their labels.
SEQUENCE_ARCHS: dict[str, str] = {"gru": "GRU", "transformer": "Transformer"}
#: The norms of the networks, by name, with their labels.
SEQUENCE_NORMS: dict[str, str] = {"none": "no norm", "bn": "BatchNorm", "ln": "LayerNorm"}


class SequenceNorm(nn.Module):
    """A norm over the features ``F`` of ``(N, T, F)`` sequences.

    Args:
        kind: ``"none"``; ``"ln"`` (LayerNorm over ``F``); ``"bn"`` (BatchNorm over batch
            and time, one set of statistics per feature); ``"bn-step"`` (BatchNorm over the
            batch, separate statistics and affine parameters per (step, feature)).
        num_features: ``F``.
        steps: ``T`` (needed by ``"bn-step"``).

    Shape:
        input and output ``(N, T, F)``.

    Raises:
        ValueError: an unknown kind.
    """

    #: kind -> (norm registry name, its dim, one channel per (step, feature)).
    KINDS: ClassVar[dict[str, tuple[str, int, bool]]] = {
        "none": ("none", 0, False),  # Identity
        "ln": ("layernorm", 0, False),  # LayerNorm(F) on the last dim
        "bn": ("batchnorm", 1, False),  # BatchNorm1d(F) on (N, F, T)
        "bn-step": ("batchnorm", 0, True),  # BatchNorm1d(T * F) on (N, T * F)
    }

    def __init__(self, kind: str, num_features: int, steps: int) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(
                f"unknown sequence norm {kind!r}; choose one of: {', '.join(self.KINDS)}"
            )
        self.kind = kind
        name, dim, per_step = self.KINDS[kind]
        make = None if name == NONE else get_norm_layer(name, dim=dim, impl="torch")
        channels = steps * num_features if per_step else num_features
        self.layer: nn.Module = nn.Identity() if make is None else make(channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "bn":
            return self.layer(x.transpose(1, 2)).transpose(1, 2)  # (N, F, T): stats over N, T
        if self.kind == "bn-step":
            n, t, f = x.shape
            return self.layer(x.reshape(n, t * f)).reshape(n, t, f)
        return self.layer(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def _rows(x: Tensor) -> Tensor:
    """``(N, 1, 28, 28)`` images -> ``(N, 28, 28)`` sequences of rows."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (N, 1, H, W), got shape {tuple(x.shape)}")
    return x[:, 0]


class GRUClassifier(nn.Module):
    """A GRU over image rows with a norm on the input-to-hidden pre-activations.

    ``r, z, n`` gates as in ``torch.nn.GRU``: ``r = s(a_r + W_hr h + b_hr)``,
    ``z = s(a_z + W_hz h + b_hz)``, ``n = tanh(a_n + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) n + z h`` with ``a = norm(W_i x_t + b_i)``.

    Args:
        norm: ``"none"``, ``"bn"`` (per-step BatchNorm) or ``"ln"``.
        hidden: hidden size ``H``.
        steps, features: rows and row length (28, 28).

    Shape:
        input ``(N, 1, steps, features)``; output ``(N, 10)``.
    """

    def __init__(self, norm: str, *, hidden: int = 64, steps: int = 28, features: int = 28) -> None:
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(features, 3 * hidden)
        self.norm = SequenceNorm("bn-step" if norm == "bn" else norm, 3 * hidden, steps)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        seq = _rows(x)
        a = self.norm(self.input(seq))  # (N, T, 3H)
        h = seq.new_zeros(seq.shape[0], self.hidden)
        for t in range(seq.shape[1]):
            ar, az, an = a[:, t].chunk(3, dim=1)
            hr, hz, hn = self.recurrent(h).chunk(3, dim=1)
            r = torch.sigmoid(ar + hr)
            z = torch.sigmoid(az + hz)
            n = torch.tanh(an + r * hn)
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
    arch: str, norm: str, *, hidden: int = 64, d_model: int = 64, layers: int = 2
) -> nn.Module:
    """The network ``arch`` (``SEQUENCE_ARCHS``) with ``norm`` (``SEQUENCE_NORMS``).

    Args:
        arch: ``"gru"`` or ``"transformer"``.
        norm: ``"none"``, ``"bn"`` or ``"ln"``.
        hidden: the GRU's hidden size.
        d_model, layers: the Transformer's width and depth.

    Raises:
        ValueError: an unknown arch or norm.
    """
    if norm not in SEQUENCE_NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(SEQUENCE_NORMS)}")
    if arch == "gru":
        return GRUClassifier(norm, hidden=hidden)
    if arch == "transformer":
        return TransformerClassifier(norm, d_model=d_model, layers=layers)
    raise ValueError(
        f"unknown sequence network {arch!r}; choose one of: {', '.join(SEQUENCE_ARCHS)}"
    )
