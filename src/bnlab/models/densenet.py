"""d2l's DenseNet with a norm slot (pre-activation: norm - ReLU - convolution).

Dive into Deep Learning, section "Densely Connected Networks (DenseNet)": a stem as
ResNet-18's (7x7 convolution with 64 channels and stride 2, norm, ReLU, 3x3 max pool
with stride 2); four dense blocks of four convolution blocks with growth rate 32 (each
``norm - ReLU - Conv2d(C, 32, 3, padding 1)``, its output concatenated to its input
along the channels); between dense blocks a transition layer ``norm - ReLU -
Conv2d(C, C // 2, 1) - AvgPool2d(2, stride 2)``; then norm, ReLU, global average pool
and a linear layer. Channels: 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248.

Difference from d2l, for 28x28 inputs: the transition pools round up
(``ceil_mode=True``), so the sizes after the stem, 7 -> 4 -> 2 -> 1, never reach 0 (with
d2l's floor the third transition would see 1x1 and output 0x0). For even sizes, as
d2l's 96 (24 -> 12 -> 6 -> 3), rounding up changes nothing. At 28x28 the last dense
block is 1x1, so norms that need more than one value per sample and channel
(``instancenorm``) need inputs of at least 33x33.

Convolutions have no bias when a norm is chosen (every consumer of a convolution's
output starts with a norm, whose shift absorbs it; d2l keeps them, ``conv_bias=True``
restores them) and keep it with ``norm="none"``. Weights are Kaiming-normal at
construction; ``bnlab.train.fit`` with ``init="xavier_uniform"`` (d2l's trainer) redraws
the convolution and linear weights.

Paper: Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional
Networks", arXiv 1608.06993.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnlab.models._checks import check_positive_int
from bnlab.models.norms import check_norm, make_norm
from bnlab.models.resnet import kaiming_init, resolve_conv_bias

__all__ = ["DenseBlock", "DenseNet", "densenet"]


def _pre_activation(norm: str, channels: int, conv: nn.Conv2d) -> nn.Sequential:
    """``norm - ReLU - conv`` (the norm left out with ``norm="none"``)."""
    layers: list[nn.Module] = []
    layer = make_norm(norm, channels, "2d")
    if layer is not None:
        layers.append(layer)
    layers += [nn.ReLU(), conv]
    return nn.Sequential(*layers)


class DenseBlock(nn.Module):
    """``num_convs`` blocks ``norm - ReLU - conv3x3``; each output concatenated to its input.

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        num_convs: convolution blocks.
        in_channels: channels of the input.
        growth_rate: channels each convolution block adds.
        conv_bias: whether the convolutions have a bias.

    Shape:
        ``(N, in_channels, H, W) -> (N, in_channels + num_convs * growth_rate, H, W)``.
    """

    def __init__(
        self,
        norm: str,
        num_convs: int,
        in_channels: int,
        growth_rate: int,
        *,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _pre_activation(
                norm,
                in_channels + i * growth_rate,
                nn.Conv2d(in_channels + i * growth_rate, growth_rate, 3, padding=1, bias=conv_bias),
            )
            for i in range(num_convs)
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat((x, layer(x)), dim=1)  # (N, C, H, W) -> (N, C + growth_rate, H, W)
        return x


class DenseNet(nn.Module):
    """d2l's DenseNet: ``stem``, ``features`` (dense blocks and transitions), head.

    Attributes: ``stem`` (conv, norm, ReLU, max pool), ``features`` (``block1``,
    ``transition1``, ..., ``block4``), ``final_norm`` (None with ``norm="none"``),
    ``act``, ``pool``, ``flatten``, ``fc``.

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        growth_rate: channels each convolution block adds (32 in d2l).
        block_config: convolution blocks per dense block ((4, 4, 4, 4) in d2l).
        num_init_features: channels of the stem (64 in d2l).
        num_classes: outputs (10).
        in_channels: input channels (1 for Fashion-MNIST).
        conv_bias: convolution biases; None (default) means only with ``norm="none"``.
            ``True`` with a norm gives exactly d2l's parameters.

    Shape:
        input ``(N, in_channels, H, W)``, e.g. ``(N, 1, 28, 28)`` or ``(N, 1, 96, 96)``;
        output ``(N, num_classes)`` logits.

    Raises:
        ValueError: unknown norm, an empty ``block_config``, a size that is not positive.
        TypeError: a size that is not an int, ``block_config`` not a sequence of ints,
            ``conv_bias`` neither None nor a bool.
    """

    norm: str

    def __init__(
        self,
        norm: str = "none",
        *,
        growth_rate: int = 32,
        block_config: Sequence[int] = (4, 4, 4, 4),
        num_init_features: int = 64,
        num_classes: int = 10,
        in_channels: int = 1,
        conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        owner = "DenseNet"
        check_norm(norm)
        for label, value in (
            ("growth_rate", growth_rate),
            ("num_init_features", num_init_features),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
        ):
            check_positive_int(owner, label, value)
        if isinstance(block_config, int | str) or not isinstance(block_config, Sequence):
            raise TypeError(
                f"{owner}: block_config must be a sequence of ints such as (4, 4, 4, 4), "
                f"got {block_config!r}"
            )
        block_config = tuple(block_config)
        if not block_config:
            raise ValueError(
                f"{owner}: block_config must name at least one dense block, such as "
                f"(4, 4, 4, 4), got {block_config!r}"
            )
        for i, num_convs in enumerate(block_config):
            check_positive_int(owner, f"block_config[{i}]", num_convs)
        bias = resolve_conv_bias(owner, norm, conv_bias)

        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=bias)
        ]
        layer = make_norm(norm, num_init_features, "2d")
        if layer is not None:
            stem.append(layer)
        stem += [nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        self.stem = nn.Sequential(*stem)

        features = nn.Sequential()
        channels = num_init_features
        for i, num_convs in enumerate(block_config, start=1):
            block = DenseBlock(norm, num_convs, channels, growth_rate, conv_bias=bias)
            features.add_module(f"block{i}", block)
            channels = block.out_channels
            if i < len(block_config):
                transition = _pre_activation(
                    norm, channels, nn.Conv2d(channels, channels // 2, 1, bias=bias)
                )
                # ceil_mode: 28x28 inputs reach 1x1 here and must not pool to 0x0.
                transition.append(nn.AvgPool2d(2, stride=2, ceil_mode=True))
                features.add_module(f"transition{i}", transition)
                channels //= 2
        self.features = features
        self.final_norm = make_norm(norm, channels, "2d")
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        self.norm = norm
        kaiming_init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, num_features, H', W')``, after the final norm and ReLU."""
        x = self.features(self.stem(x))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.act(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(N, num_features, H', W') -> (N, num_classes)``."""
        return self.fc(self.flatten(self.pool(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


def densenet(norm: str = "none", **kwargs: object) -> DenseNet:
    """``DenseNet(norm, **kwargs)``: d2l's DenseNet (see ``DenseNet`` for the options)."""
    return DenseNet(norm, **kwargs)  # type: ignore[arg-type]
