"""Residual networks with a norm slot: d2l's ResNet-18 and the CIFAR ResNets of He et al.

Two families share one straight-line ``BasicBlock`` (two 3x3 convolutions, each
followed by its norm slot, the first by a ReLU; the shortcut added before the last
ReLU) and one ``ResNet`` container (``stem``, ``stages``, then ``pool``, ``flatten``,
``fc``; ``forward_features`` / ``forward_head`` as timm's models):

* ``resnet18``: Dive into Deep Learning, section "Residual Networks (ResNet)": a 7x7
  convolution with 64 channels and stride 2, norm, ReLU, 3x3 max pool with stride 2;
  four stages of two blocks with 64, 128, 256, 512 channels (stages 2-4 halve the size
  in their first block, whose shortcut is a 1x1 convolution with that stride, as d2l's
  ``use_1x1conv``; d2l puts no norm on it); global average pool; linear layer.
  With one input channel and 10 classes. On 28x28 inputs the last stage is 1x1 (28 ->
  14 -> 7 -> 7 -> 4 -> 2 -> 1), so per-sample norms that need more than one value per
  channel (``instancenorm``) need inputs of at least 33x33 (d2l resizes to 96).
* ``cifar_resnet(depth)``, ``resnet20``, ``resnet56``: He et al. section 4.2: a 3x3
  convolution with 16 channels, three stages of ``n`` blocks with 16, 32, 64 channels
  (stages 2 and 3 halve the size), global average pool, linear; ``6n + 2`` weight
  layers. On 28x28 inputs the stages see 28, 14 and 7 pixels. Shortcuts that change
  the shape use option A by default (``shortcut="pad"``: take every second pixel and
  pad the new channels with zeros, no parameters, as the paper does for CIFAR), or
  ``shortcut="conv"`` (a 1x1 convolution with the stride, no norm, as in ``resnet18``).

Convolutions followed by a norm have no bias when a norm is chosen (the norm's shift
absorbs it; d2l keeps them, ``conv_bias=True`` restores them) and keep their bias with
``norm="none"``, where nothing else would provide one.

Weights are drawn Kaiming-normal (fan-out, ReLU) for convolutions at construction;
``bnlab.train.fit`` with ``init="xavier_uniform"`` (d2l's trainer) redraws every
convolution and linear weight and leaves the norms alone, so ``zero_init_residual``
survives it.

Without a norm, ``cifar_resnet(..., fixup_init=True)`` starts the network as Fixup's
first two rules do (Zhang, Dauphin & Ma 2019): the last convolution of every residual
branch and the linear layer start at zero, and the branch's other convolution is scaled
by ``L ** -0.5`` (``L`` residual branches of two layers each), so every block starts as
``relu(shortcut(x))`` and the output's variance does not grow with depth. Fixup's scalar
multipliers and scalar biases are not added (the convolutions keep their own biases).

Papers: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", arXiv
1512.03385; Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
arXiv 1706.02677 (zero-initialised last norm of each residual block); Zhang, Dauphin &
Ma, "Fixup Initialization: Residual Learning Without Normalization", arXiv 1901.09321.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models._checks import check_positive_int
from bnlab.models.norms import NONE, check_norm, make_norm

__all__ = [
    "SHORTCUTS",
    "BasicBlock",
    "ResNet",
    "apply_fixup_init",
    "cifar_resnet",
    "resnet18",
    "resnet20",
    "resnet56",
]

#: How a block whose shape changes forms its shortcut: option A of He et al. ("pad":
#: subsample and zero-pad channels) or a 1x1 convolution ("conv", d2l's ``use_1x1conv``).
SHORTCUTS: tuple[str, ...] = ("pad", "conv")

# ``block_factory(in_channels, out_channels, stride) -> nn.Module``.
BlockFactory = Callable[[int, int, int], nn.Module]


def _check_bool(owner: str, label: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"{owner}: {label} must be True or False, got {value!r} of type {type(value).__name__}"
        )
    return value


def resolve_conv_bias(owner: str, norm: str, conv_bias: bool | None) -> bool:
    """``conv_bias`` if given, else True exactly when ``norm`` is ``"none"``.

    Raises:
        TypeError: ``conv_bias`` neither None nor a bool.
    """
    if conv_bias is None:
        return norm == NONE
    return _check_bool(owner, "conv_bias", conv_bias)


def zero_norm_weight(layer: nn.Module | None) -> bool:
    """Set the trainable scale of a norm layer to 0; False when it has none.

    Reads ``weight`` (torch and bnlab layers) or ``gamma`` (the textbook layer); a
    buffer (``frozen``) or a missing affine is left alone, since a zero that cannot be
    trained would cut the branch off for good.
    """
    if layer is None:
        return False
    for name in ("weight", "gamma"):
        param = getattr(layer, name, None)
        if isinstance(param, nn.Parameter):
            nn.init.zeros_(param)
            return True
    return False


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolution weights, zero biases (He et al.)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class _PadShortcut(nn.Module):
    """Option A of He et al.: every ``stride``-th pixel, new channels zero-padded."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C, H, W) -> (N, C, H', W')
        # Pad dim 1 (channels) at the end; the pad tuple runs from the last dim backwards.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    """``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``.

    Attributes ``conv1, norm1, act1, conv2, norm2, shortcut, act2``; ``norm1`` and
    ``norm2`` are None with ``norm="none"``, ``shortcut`` is ``nn.Identity`` when the
    shape does not change.

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        in_channels, out_channels: channels of the input and of the output.
        stride: stride of ``conv1`` (and of the shortcut), 1 or 2.
        shortcut: ``"pad"`` or ``"conv"`` (see ``SHORTCUTS``), used when the shape changes.
        conv_bias: whether the convolutions have a bias.

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
        shortcut: str = "conv",
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(
                f"BasicBlock: unknown shortcut {shortcut!r}; choose one of: {', '.join(SHORTCUTS)}"
            )
        if shortcut == "pad" and out_channels < in_channels:
            raise ValueError(
                f"BasicBlock: shortcut 'pad' cannot reduce channels ({in_channels} -> "
                f"{out_channels}); use shortcut='conv'"
            )
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, bias=conv_bias
        )
        self.norm1 = make_norm(norm, out_channels, "2d")
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=conv_bias)
        self.norm2 = make_norm(norm, out_channels, "2d")
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "pad":
            self.shortcut = _PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=conv_bias)
        self.act2 = nn.ReLU()

    def residual(self, x: Tensor) -> Tensor:
        """The branch without the shortcut and the last ReLU."""
        y = self.conv1(x)
        if self.norm1 is not None:
            y = self.norm1(y)
        y = self.act1(y)
        y = self.conv2(y)
        if self.norm2 is not None:
            y = self.norm2(y)
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.residual(x) + self.shortcut(x))

    def zero_init_last_norm(self) -> bool:
        """Zero the scale of ``norm2`` so the block starts as ``relu(shortcut(x))``."""
        return zero_norm_weight(self.norm2)


class ResNet(nn.Module):
    """``stem``, then ``stages`` of blocks, then ``pool``, ``flatten`` and ``fc``.

    Build it through ``resnet18``, ``cifar_resnet``, ``resnet20``, ``resnet56`` or
    ``bnlab.models.plain.plain``; this class only wires given parts together.

    Args:
        stem: the layers before the first stage.
        stem_channels: channels the stem outputs.
        stages: ``(channels, blocks, stride)`` per stage; the first block of a stage
            has the stage's stride.
        block_factory: ``block_factory(in_channels, out_channels, stride)``.
        num_classes: outputs of the linear layer.
        norm: the norm name (kept for ``extra_repr``).

    Shape:
        input ``(N, C_in, H, W)``; output ``(N, num_classes)`` logits.
    """

    norm: str

    def __init__(
        self,
        stem: nn.Module,
        stem_channels: int,
        stages: Sequence[tuple[int, int, int]],
        block_factory: BlockFactory,
        *,
        num_classes: int,
        norm: str,
    ) -> None:
        super().__init__()
        self.stem = stem
        channels = stem_channels
        stage_modules = []
        for out_channels, blocks, stride in stages:
            stage = []
            for i in range(blocks):
                stage.append(block_factory(channels, out_channels, stride if i == 0 else 1))
                channels = out_channels
            stage_modules.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stage_modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        self.norm = norm

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, num_features, H', W')``, before the pool."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """``(N, num_features, H', W') -> (N, num_classes)``."""
        return self.fc(self.flatten(self.pool(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


def _stem_conv(norm: str, conv: nn.Conv2d, pool: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [conv]
    layer = make_norm(norm, conv.out_channels, "2d")
    if layer is not None:
        layers.append(layer)
    layers.append(nn.ReLU())
    if pool is not None:
        layers.append(pool)
    return nn.Sequential(*layers)


def _zero_init(owner: str, norm: str, model: nn.Module) -> None:
    zeroed = [m.zero_init_last_norm() for m in model.modules() if isinstance(m, BasicBlock)]
    if not any(zeroed):
        raise ValueError(
            f"{owner}: zero_init_residual=True needs a norm with a trainable scale, but norm "
            f"{norm!r} has none; pass zero_init_residual=False"
        )


def apply_fixup_init(model: ResNet) -> int:
    """Fixup's initialisation rules 1 and 2 (Zhang et al. 2019) on a ResNet of ``BasicBlock``.

    The linear layer and the last convolution of every residual branch (weights and
    biases) are set to zero; the branch's first convolution is multiplied by
    ``L ** (-1 / (2m - 2)) = L ** -0.5`` (``m = 2`` layers per branch, ``L`` branches).
    Other layers keep their (Kaiming) weights.

    Returns:
        ``L``, the number of residual branches.

    Raises:
        ValueError: the model has no ``BasicBlock``.
    """
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise ValueError("apply_fixup_init: the model has no BasicBlock (residual branch)")
    scale = len(blocks) ** -0.5
    with torch.no_grad():
        for block in blocks:
            block.conv1.weight.mul_(scale)
            nn.init.zeros_(block.conv2.weight)
            if block.conv2.bias is not None:
                nn.init.zeros_(block.conv2.bias)
        nn.init.zeros_(model.fc.weight)
        nn.init.zeros_(model.fc.bias)
    return len(blocks)


def resnet18(
    norm: str = "none",
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 64,
    zero_init_residual: bool = False,
    conv_bias: bool | None = None,
) -> ResNet:
    """d2l's ResNet-18 (4 stages of 2 blocks, ``width * (1, 2, 4, 8)`` channels).

    Layers: ``stem`` (Conv2d(in_channels, width, 7, stride 2, padding 3), norm, ReLU,
    MaxPool2d(3, stride 2, padding 1)), ``stages`` (4 x 2 ``BasicBlock``, 1x1
    convolution shortcuts where the shape changes), ``pool``, ``flatten``, ``fc``.

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        num_classes: outputs (10 for Fashion-MNIST).
        in_channels: input channels (1 for Fashion-MNIST).
        width: channels of the stem and the first stage (64 in d2l).
        zero_init_residual: start each block's last norm with scale 0, so every block
            is ``relu(shortcut(x))`` at initialisation (Goyal et al.).
        conv_bias: convolution biases; None (default) means only with ``norm="none"``.
            ``True`` with a norm gives exactly d2l's parameters.

    Shape:
        input ``(N, in_channels, H, W)``, e.g. ``(N, 1, 28, 28)`` or ``(N, 1, 96, 96)``;
        output ``(N, num_classes)`` logits.

    Raises:
        ValueError: unknown norm, a size that is not positive, or
            ``zero_init_residual=True`` with a norm that has no trainable scale.
        TypeError: a size that is not an int, a flag that is not a bool.
    """
    owner = "resnet18"
    check_norm(norm)
    for label, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("width", width),
    ):
        check_positive_int(owner, label, value)
    _check_bool(owner, "zero_init_residual", zero_init_residual)
    bias = resolve_conv_bias(owner, norm, conv_bias)
    stem = _stem_conv(
        norm,
        nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=bias),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    stages = [(width * k, 2, 1 if k == 1 else 2) for k in (1, 2, 4, 8)]

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return BasicBlock(norm, cin, cout, stride, shortcut="conv", conv_bias=bias)

    model = ResNet(stem, width, stages, block, num_classes=num_classes, norm=norm)
    kaiming_init(model)
    if zero_init_residual:
        _zero_init(owner, norm, model)
    return model


def check_cifar_depth(owner: str, depth: object) -> int:
    """Return ``n`` for a depth ``6n + 2`` with ``n >= 1``.

    Raises:
        TypeError: ``depth`` not an int.
        ValueError: ``depth`` not of the form ``6n + 2`` or below 8.
    """
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise TypeError(
            f"{owner}: depth must be an int, got {depth!r} of type {type(depth).__name__}"
        )
    if depth < 8:
        raise ValueError(
            f"{owner}: depth must be at least 8 (6n + 2 layers with n >= 1), got {depth}"
        )
    if (depth - 2) % 6:
        below = depth - (depth - 2) % 6
        raise ValueError(
            f"{owner}: depth must be 6n + 2 (8, 14, 20, 26, 32, 44, 56, ...), got {depth}; "
            f"the nearest are {below} and {below + 6}"
        )
    return (depth - 2) // 6


def cifar_stem(norm: str, in_channels: int, width: int, bias: bool) -> nn.Sequential:
    """``Conv2d(in_channels, width, 3, padding 1)``, norm, ReLU (He et al. section 4.2)."""
    return _stem_conv(norm, nn.Conv2d(in_channels, width, 3, padding=1, bias=bias))


def cifar_resnet(
    norm: str = "none",
    *,
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 16,
    shortcut: str = "pad",
    zero_init_residual: bool = False,
    conv_bias: bool | None = None,
    fixup_init: bool = False,
) -> ResNet:
    """The CIFAR ResNet of He et al. (section 4.2) with ``depth = 6n + 2`` weight layers.

    Layers: ``stem`` (3x3 convolution with ``width`` channels, norm, ReLU), ``stages``
    (3 stages of ``n`` ``BasicBlock`` with ``width * (1, 2, 4)`` channels, strides 1, 2,
    2), ``pool``, ``flatten``, ``fc``. ``depth`` counts the convolutions of the stem and
    the blocks plus the linear layer (shortcut convolutions not counted, as the paper).

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        depth: 20, 32, 44, 56, 110, ... (any ``6n + 2`` with ``n >= 1``).
        num_classes: outputs (10).
        in_channels: input channels (1 for Fashion-MNIST; the paper's CIFAR has 3).
        width: channels of the first stage (16 in the paper).
        shortcut: ``"pad"`` (option A, the paper's CIFAR choice, no parameters) or
            ``"conv"`` (1x1 convolution) where the shape changes.
        zero_init_residual: start each block's last norm with scale 0.
        conv_bias: convolution biases; None (default) means only with ``norm="none"``.
        fixup_init: with ``norm="none"`` only, Fixup's zero initialisation
            (:func:`apply_fixup_init`): the no-norm ResNet that trains at depth.

    Shape:
        input ``(N, in_channels, H, W)``, e.g. ``(N, 1, 28, 28)``; output
        ``(N, num_classes)`` logits.

    Raises:
        ValueError: unknown norm or shortcut, depth not ``6n + 2`` or below 8, a size
            that is not positive, ``zero_init_residual=True`` with a norm without a
            trainable scale, ``fixup_init=True`` with a norm.
        TypeError: a size that is not an int, a flag that is not a bool.
    """
    owner = f"resnet{depth}" if isinstance(depth, int) else "cifar_resnet"
    check_norm(norm)
    n = check_cifar_depth(owner, depth)
    for label, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("width", width),
    ):
        check_positive_int(owner, label, value)
    if shortcut not in SHORTCUTS:
        raise ValueError(
            f"{owner}: unknown shortcut {shortcut!r}; choose one of: {', '.join(SHORTCUTS)}"
        )
    _check_bool(owner, "zero_init_residual", zero_init_residual)
    if _check_bool(owner, "fixup_init", fixup_init) and norm != NONE:
        raise ValueError(
            f"{owner}: fixup_init=True is the initialisation of a ResNet without a norm, "
            f"got norm {norm!r}; use norm='none', or zero_init_residual=True with a norm"
        )
    bias = resolve_conv_bias(owner, norm, conv_bias)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return BasicBlock(norm, cin, cout, stride, shortcut=shortcut, conv_bias=bias)

    stages = [(width, n, 1), (2 * width, n, 2), (4 * width, n, 2)]
    stem = cifar_stem(norm, in_channels, width, bias)
    model = ResNet(stem, width, stages, block, num_classes=num_classes, norm=norm)
    kaiming_init(model)
    if zero_init_residual:
        _zero_init(owner, norm, model)
    if fixup_init:
        apply_fixup_init(model)
    return model


def resnet20(norm: str = "none", **kwargs: object) -> ResNet:
    """``cifar_resnet(norm, depth=20, ...)``: 3 stages of 3 blocks (0.27M parameters)."""
    if "depth" in kwargs:
        raise TypeError("resnet20: depth is fixed at 20; use cifar_resnet(norm, depth=...)")
    return cifar_resnet(norm, depth=20, **kwargs)  # type: ignore[arg-type]


def resnet56(norm: str = "none", **kwargs: object) -> ResNet:
    """``cifar_resnet(norm, depth=56, ...)``: 3 stages of 9 blocks (0.85M parameters)."""
    if "depth" in kwargs:
        raise TypeError("resnet56: depth is fixed at 56; use cifar_resnet(norm, depth=...)")
    return cifar_resnet(norm, depth=56, **kwargs)  # type: ignore[arg-type]
