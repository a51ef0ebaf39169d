"""Named training recipes: the model, norm and SGD settings of the d2l sections.

A preset fills the defaults of a training run (``bnlab train --preset d2l-resnet18``);
every setting given explicitly overrides it (``--norm groupnorm``). Presets live with
training rather than with the models because they are recipes: learning rate, epochs,
batch size and input resize belong to a run, not to a network.

The numbers are those of Dive into Deep Learning on Fashion-MNIST, each trained with
``train_ch6`` (Xavier-uniform initialisation, plain SGD, cross-entropy):

* ``d2l-lenet``: lenet, norm none, lr 0.9, 10 epochs, batch 256 (the LeNet section's
  learning rate).
* ``d2l-lenet-bn``: lenet, norm bnlab, lr 1.0, 10 epochs, batch 256 (section "Batch
  Normalization").
* ``d2l-resnet18``: resnet18, norm bnlab, lr 0.05, 10 epochs, batch 256, inputs resized
  to 96 (section "Residual Networks (ResNet)").
* ``d2l-densenet``: densenet, norm bnlab, lr 0.1, 10 epochs, batch 256, inputs resized
  to 96 (section "Densely Connected Networks (DenseNet)").

``d2l-lenet`` uses bnlab's LeNet (the batch-norm chapter's, unpadded) without norms and
the LeNet section's learning rate; d2l's LeNet section pads its first convolution.

Papers: He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385;
Huang et al., "Densely Connected Convolutional Networks", arXiv 1608.06993; Ioffe &
Szegedy, "Batch Normalization", arXiv 1502.03167.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PRESETS", "Preset", "available_presets", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One named recipe.

    Args:
        name: the name used on the command line.
        model: a ``bnlab.models.available()`` name.
        norm: a ``bnlab.models.available_norms()`` name.
        lr: SGD learning rate.
        epochs: epochs.
        batch_size: batch size.
        resize: square input size the loaders resize to, or None to keep 28x28.
        description: one line for ``--help``.
        model_kwargs: options passed to ``bnlab.models.create``.
    """

    name: str
    model: str
    norm: str
    lr: float
    epochs: int
    batch_size: int
    resize: int | None
    description: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a JSON-ready dict: every field but the ``--help`` line."""
        return {k: v for k, v in asdict(self).items() if k != "description"}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "d2l-lenet",
            "lenet",
            "none",
            lr=0.9,
            epochs=10,
            batch_size=256,
            resize=None,
            description="sigmoid LeNet without norms, lr 0.9 (d2l LeNet section)",
        ),
        Preset(
            "d2l-lenet-bn",
            "lenet",
            "bnlab",
            lr=1.0,
            epochs=10,
            batch_size=256,
            resize=None,
            description="LeNet-BN, lr 1.0 (d2l batch-norm section)",
        ),
        Preset(
            "d2l-resnet18",
            "resnet18",
            "bnlab",
            lr=0.05,
            epochs=10,
            batch_size=256,
            resize=96,
            description="ResNet-18, lr 0.05, inputs resized to 96 (d2l ResNet section)",
        ),
        Preset(
            "d2l-densenet",
            "densenet",
            "bnlab",
            lr=0.1,
            epochs=10,
            batch_size=256,
            resize=96,
            description="DenseNet, lr 0.1, inputs resized to 96 (d2l DenseNet section)",
        ),
    )
}


def available_presets() -> tuple[str, ...]:
    """Names accepted by ``get_preset``."""
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset ``name``.

    Raises:
        ValueError: unknown name, with the choices.
    """
    if name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}; choose one of: {', '.join(available_presets())}"
        )
    return PRESETS[name]
