"""A multilayer perceptron with a norm slot in each hidden layer.

The network of the Keras and PyTorch batch-norm examples: ``Linear - ReLU - BatchNorm``
per hidden layer (the norm after the activation, as those examples place it), then the
output ``Linear``, e.g. 784 -> 100 -> 10. ``norm_position="before"`` puts the norm
between the linear layer and the activation instead, as the original paper does.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.2 normalizes
``Wu + b`` before the nonlinearity).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from bnlab.models._checks import check_positive_int
from bnlab.models.norms import check_norm, make_norm

__all__ = ["ACTIVATIONS", "MLP", "NORM_POSITIONS"]

#: Where the norm goes relative to the activation.
NORM_POSITIONS: tuple[str, ...] = ("after", "before")
#: Hidden activations by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Flatten, then ``Linear - activation - norm`` per hidden layer, then ``Linear``.

    Layers, by name, for hidden layer ``k`` (1-based; ``normk`` absent when
    ``norm="none"``)::

        flatten
        fck  Linear(previous, hidden[k-1])
        actk, normk     when norm_position="after"  (Keras/PyTorch examples)
        normk, actk     when norm_position="before" (the paper)
        out  Linear(hidden[-1], num_classes)

    Args:
        norm: one of ``bnlab.models.available_norms()``.
        in_features: flattened input size (784 for 28x28 images).
        hidden: sizes of the hidden layers, e.g. ``(100,)``; empty for a linear model.
        num_classes: outputs of the last layer.
        norm_position: ``"after"`` or ``"before"`` the activation.
        activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"``.

    Shape:
        input: ``(N, *)`` with ``in_features`` elements per sample, e.g.
        ``(N, 1, 28, 28)``; output: ``(N, num_classes)`` logits.

    Raises:
        ValueError: unknown norm, position or activation, or a size that is not positive.
        TypeError: a size that is not an int.
    """

    norm: str
    norm_position: str
    activation: str

    def __init__(
        self,
        norm: str = "none",
        *,
        in_features: int = 784,
        hidden: Sequence[int] = (100,),
        num_classes: int = 10,
        norm_position: str = "after",
        activation: str = "relu",
    ) -> None:
        check_norm(norm)
        if norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"MLP: unknown norm_position {norm_position!r}; "
                f"choose one of: {', '.join(NORM_POSITIONS)}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"MLP: unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
            )
        if isinstance(hidden, int | str):
            raise TypeError(
                f"MLP: hidden must be a sequence of ints such as (100,), got {hidden!r}"
            )
        hidden = tuple(hidden)
        check_positive_int("MLP", "in_features", in_features)
        check_positive_int("MLP", "num_classes", num_classes)
        for i, size in enumerate(hidden):
            check_positive_int("MLP", f"hidden[{i}]", size)

        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = in_features
        for k, size in enumerate(hidden, start=1):
            layers.append((f"fc{k}", nn.Linear(width, size)))
            act = (f"act{k}", ACTIVATIONS[activation]())
            norm_layer = make_norm(norm, size, "1d")
            block = [act] if norm_layer is None else [act, (f"norm{k}", norm_layer)]
            if norm_position == "before":
                block.reverse()
            layers.extend(block)
            width = size
        layers.append(("out", nn.Linear(width, num_classes)))
        super().__init__(OrderedDict(layers))
        self.norm = norm
        self.norm_position = norm_position
        self.activation = activation

    def extra_repr(self) -> str:
        return (
            f"norm={self.norm!r}, norm_position={self.norm_position!r}, "
            f"activation={self.activation!r}"
        )
