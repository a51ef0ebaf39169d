"""LeNet with a norm slot, exactly as in d2l's batch-normalization chapter.

Dive into Deep Learning, section 8.5 "Batch Normalization" (LeNet-BN): LeNet-5 with
sigmoid activations and average pooling, no padding (so a 28x28 input leaves
``16 * 4 * 4 = 256`` features for the first linear layer), and a normalization layer
after every convolution and every hidden linear layer, before the activation. With
``norm="none"`` the norm layers are left out and the network is d2l's LeNet-BN minus
its norms. ``activation="relu"`` swaps the four sigmoids for ReLUs (everything else
unchanged), a LeNet-sized variant that trains faster. (d2l's plain LeNet section pads the first convolution by 2 and so has
``16 * 5 * 5`` features; this module follows the batch-norm chapter.) The pools are
``bnlab.nn.AvgPool2d``, torch's layer with the same outputs and gradients, on bnlab's
kernel on the CPU (a fifth of a one-thread training step less).

Paper: LeCun et al., "Gradient-Based Learning Applied to Document Recognition" (1998);
Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bnlab.models._checks import check_positive_int
from bnlab.models.mlp import ACTIVATIONS
from bnlab.models.norms import NormKind, check_norm, make_norm
from bnlab.nn.pool import AvgPool2d

__all__ = ["LeNet"]


class LeNet(nn.Sequential):
    """d2l's LeNet-BN for 1x28x28 images, with the normalization chosen by name.

    Layers, by name (``normK`` absent when ``norm="none"``)::

        conv1  Conv2d(1, 6, 5)      norm1 (6, "2d")    act1 Sigmoid  pool1 AvgPool2d(2, 2)
        conv2  Conv2d(6, 16, 5)     norm2 (16, "2d")   act2 Sigmoid  pool2 AvgPool2d(2, 2)
        flatten Flatten
        fc1    Linear(256, 120)     norm3 (120, "1d")  act3 Sigmoid
        fc2    Linear(120, 84)      norm4 (84, "1d")   act4 Sigmoid
        fc3    Linear(84, num_classes)

    Args:
        norm: one of ``bnlab.models.available_norms()``: ``"none"``, ``"textbook"``,
            ``"bnlab"``, ``"torch"``, or a later registered name.
        num_classes: outputs of the last layer (10 for Fashion-MNIST).
        activation: ``"sigmoid"`` (d2l's, the default), ``"relu"`` or ``"tanh"``; the
            layers keep their names ``act1`` to ``act4``.

    Shape:
        input: ``(N, 1, 28, 28)``; output: ``(N, num_classes)`` logits.

    Raises:
        ValueError: unknown norm name or activation, or ``num_classes`` not positive.
        TypeError: ``num_classes`` not an int.
    """

    norm: str
    num_classes: int
    activation: str

    def __init__(
        self, norm: str = "none", *, num_classes: int = 10, activation: str = "sigmoid"
    ) -> None:
        check_norm(norm)
        check_positive_int("LeNet", "num_classes", num_classes)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"LeNet: unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
            )
        act = ACTIVATIONS[activation]
        layers: list[tuple[str, nn.Module]] = []

        def add(name: str, module: nn.Module) -> None:
            layers.append((name, module))

        def add_norm(index: int, num_features: int, kind: NormKind) -> None:
            layer = make_norm(norm, num_features, kind)
            if layer is not None:
                add(f"norm{index}", layer)

        add("conv1", nn.Conv2d(1, 6, kernel_size=5))  # (N, 1, 28, 28) -> (N, 6, 24, 24)
        add_norm(1, 6, "2d")
        add("act1", act())
        add("pool1", AvgPool2d(kernel_size=2, stride=2))  # -> (N, 6, 12, 12)
        add("conv2", nn.Conv2d(6, 16, kernel_size=5))  # -> (N, 16, 8, 8)
        add_norm(2, 16, "2d")
        add("act2", act())
        add("pool2", AvgPool2d(kernel_size=2, stride=2))  # -> (N, 16, 4, 4)
        add("flatten", nn.Flatten())  # -> (N, 256)
        add("fc1", nn.Linear(16 * 4 * 4, 120))
        add_norm(3, 120, "1d")
        add("act3", act())
        add("fc2", nn.Linear(120, 84))
        add_norm(4, 84, "1d")
        add("act4", act())
        add("fc3", nn.Linear(84, num_classes))
        super().__init__(OrderedDict(layers))
        self.norm = norm
        self.num_classes = num_classes
        self.activation = activation

    def extra_repr(self) -> str:
        extra = f"norm={self.norm!r}, num_classes={self.num_classes}"
        # The default stays out so that d2l's LeNet prints as before.
        return extra if self.activation == "sigmoid" else f"{extra}, activation={self.activation!r}"
