"""A plain deep CNN without skip connections, with its depth as a parameter.

He et al.'s "plain" baselines (section 4.2): the CIFAR ResNet of
``bnlab.models.resnet.cifar_resnet`` with every shortcut removed, so ``plain(norm,
depth=20)`` has exactly the convolutions and the linear layer of ``resnet20`` (whose
option-A shortcuts have no parameters). Each ``PlainBlock`` is ``conv - norm - ReLU -
conv - norm - ReLU``. For the depth experiment: without a norm, training deep plain
networks stalls; batch normalization makes them trainable, and the skip connections
are what keeps the deepest ones improving with depth.

Convolutions have no bias when a norm is chosen and keep it with ``norm="none"``
(``conv_bias`` overrides); weights are Kaiming-normal at construction and are redrawn
by ``bnlab.train.fit`` with ``init="xavier_uniform"``.

Paper: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", arXiv
1512.03385 (section 4.2, figure 6: plain-20/32/44/56 against ResNet-20/32/44/56).
"""

from __future__ import annotations

from torch import Tensor, nn

from bnlab.models._checks import check_positive_int
from bnlab.models.norms import check_norm, make_norm
from bnlab.models.resnet import (
    BasicBlock,
    ResNet,
    check_cifar_depth,
    cifar_stem,
    kaiming_init,
    resolve_conv_bias,
)

__all__ = ["PlainBlock", "plain"]


class PlainBlock(nn.Module):
    """``relu(norm2(conv2(relu(norm1(conv1(x))))))``: a ``BasicBlock`` without shortcut.

    Attributes ``conv1, norm1, act1, conv2, norm2, act2`` as ``BasicBlock`` (norms None
    with ``norm="none"``).

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        norm: str,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, bias=conv_bias
        )
        self.norm1 = make_norm(norm, out_channels, "2d")
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=conv_bias)
        self.norm2 = make_norm(norm, out_channels, "2d")
        self.act2 = nn.ReLU()

    # BasicBlock's residual branch: the same layers, called in the same order.
    residual = BasicBlock.residual

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.residual(x))


def plain(
    norm: str = "none",
    *,
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 16,
    conv_bias: bool | None = None,
) -> ResNet:
    """A plain CNN with ``depth = 6n + 2`` weight layers, the layout of ``cifar_resnet``.

    Layers: ``stem`` (3x3 convolution with ``width`` channels, norm, ReLU), ``stages``
    (3 stages of ``n`` ``PlainBlock`` with ``width * (1, 2, 4)`` channels, strides 1, 2,
    2), ``pool``, ``flatten``, ``fc`` (the ``ResNet`` container, without shortcuts).

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        depth: weight layers (convolutions plus the linear layer): 8, 14, 20, 26, 32,
            44, 56, ... (``6n + 2`` with ``n >= 1``).
        num_classes: outputs (10).
        in_channels: input channels (1).
        width: channels of the first stage (16).
        conv_bias: convolution biases; None (default) means only with ``norm="none"``.

    Shape:
        input ``(N, in_channels, H, W)``, e.g. ``(N, 1, 28, 28)``; output
        ``(N, num_classes)`` logits.

    Raises:
        ValueError: unknown norm, depth not ``6n + 2`` or below 8, a size that is not
            positive.
        TypeError: depth or a size that is not an int, ``conv_bias`` not a bool or None.
    """
    owner = "plain"
    check_norm(norm)
    n = check_cifar_depth(owner, depth)
    for label, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("width", width),
    ):
        check_positive_int(owner, label, value)
    bias = resolve_conv_bias(owner, norm, conv_bias)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return PlainBlock(norm, cin, cout, stride, conv_bias=bias)

    stages = [(width, n, 1), (2 * width, n, 2), (4 * width, n, 2)]
    stem = cifar_stem(norm, in_channels, width, bias)
    model = ResNet(stem, width, stages, block, num_classes=num_classes, norm=norm)
    kaiming_init(model)
    return model
