"""A small ReLU CNN with a norm slot after each convolution, for batch-size sweeps.

Two convolutions and a linear head, cheap enough to train at every batch size from 1 on
a CPU. Each norm follows a convolution, so even a batch of one has ``H * W`` values per
channel: BN can train on it (Ioffe & Szegedy, arXiv 1502.03167), and GroupNorm (Wu &
He, arXiv 1803.08494), ghost BN and Batch Renorm (Ioffe, arXiv 1702.03275) compare on
the same network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bnlab.nn

__all__ = ["NORMS", "SmallReluCNN", "norm_layer"]

#: The norms of the slot, by their registry names.
NORMS: tuple[str, ...] = (
    "none",
    "bnlab",
    "ghost",
    "batchrenorm",
    "groupnorm",
    "layernorm",
    "instancenorm",
)


def norm_layer(
    norm: str,
    num_features: int,
    *,
    ghost_virtual_batch: int = 8,
    group_size: int = 4,
    twins: bool = True,
) -> nn.Module | None:
    """One normalization layer for ``(N, C, H, W)`` inputs, by model-registry name.

    Args:
        norm: one of ``NORMS``.
        num_features: channels ``C``.
        ghost_virtual_batch: ghost BN's virtual batch size.
        group_size: channels per group of GroupNorm (``C // group_size`` groups).
        twins: build BN, GroupNorm, LayerNorm, InstanceNorm from ``torch.nn``.

    Returns:
        The layer, or None for ``"none"``.

    Raises:
        ValueError: an unknown norm, or a ``group_size`` that does not divide ``C``.
    """
    if norm not in NORMS:
        raise ValueError(
            f"unknown norm {norm!r} for SmallReluCNN; choose one of: {', '.join(NORMS)}"
        )
    if norm == "groupnorm" and (group_size < 1 or num_features % group_size):
        raise ValueError(
            f"group_size {group_size} does not divide {num_features} channels; pick a divisor"
        )
    options = {
        "ghost": {"virtual_batch_size": ghost_virtual_batch},
        "batchrenorm": {"momentum": 0.1},
        "groupnorm": {"num_groups": num_features // max(group_size, 1)},
        "instancenorm": {"affine": True},
    }.get(norm, {})
    # The torch.nn twin where the registry has one (BN, GN, LN, IN), else bnlab's layer.
    impl = "torch" if twins and "torch" in bnlab.nn.norm_implementations(norm) else None
    make = bnlab.nn.get_norm_layer(norm, dim=2, impl=impl, **options)
    return None if make is None else make(num_features)


class SmallReluCNN(nn.Module):
    """A small ReLU CNN for 1x28x28 images, cheap enough for batch-size sweeps on a CPU.

    Layers: ``conv1 Conv2d(1, 8, 5, stride 2) -> norm1 -> ReLU`` (12x12),
    ``conv2 Conv2d(8, 16, 3, stride 2) -> norm2 -> ReLU`` (5x5), ``fc Linear(400, 10)``.
    Every norm sits after a convolution, so a batch of one still has 144 or 25 values
    per channel (BN can train on it, unlike BN after a linear layer).

    Args:
        norm: one of ``NORMS``; the options are :func:`norm_layer`'s.

    Shape:
        ``(N, 1, 28, 28) -> (N, 10)``.
    """

    def __init__(
        self,
        norm: str = "none",
        *,
        ghost_virtual_batch: int = 8,
        group_size: int = 4,
        twins: bool = True,
    ) -> None:
        super().__init__()
        options = {
            "ghost_virtual_batch": ghost_virtual_batch,
            "group_size": group_size,
            "twins": twins,
        }
        self.norm = norm
        self.conv1 = nn.Conv2d(1, 8, 5, stride=2)
        self.norm1 = norm_layer(norm, 8, **options)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.norm2 = norm_layer(norm, 16, **options)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        if self.norm1 is not None:
            y = self.norm1(y)
        y = self.conv2(torch.relu(y))
        if self.norm2 is not None:
            y = self.norm2(y)
        return self.fc(torch.relu(y).flatten(1))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"
