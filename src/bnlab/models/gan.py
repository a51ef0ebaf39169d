"""A small MLP GAN for 28x28 images, with a norm of choice in each network.

The generator takes ``"none"`` or ``"bn"`` (``BatchNorm1d`` after each hidden linear
layer, as DCGAN, SNGAN and BigGAN do in their generators); the discriminator takes
``"none"``, ``"bn"``, ``"ln"`` (``LayerNorm``) after each hidden linear layer, or
``"sn"``: spectral normalization of every linear layer's weight
(``torch.nn.utils.parametrizations.spectral_norm``, one power iteration per training
forward, as Miyato et al.). The norm layers come from the one norm registry
(``bnlab.nn.get_norm_layer``, the ``torch.nn`` layers). The lab's ``gan`` experiment
trains them with Adam (betas 0.5, 0.999) as in DCGAN.

Papers: Goodfellow et al., "Generative Adversarial Networks", arXiv 1406.2661; Radford
et al., "Unsupervised Representation Learning with Deep Convolutional GANs" (DCGAN),
arXiv 1511.06434; Miyato et al., "Spectral Normalization for Generative Adversarial
Networks" (SNGAN), arXiv 1802.05957.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from bnlab.nn.registry import get_norm_layer

__all__ = ["DISCRIMINATOR_NORMS", "GENERATOR_NORMS", "Discriminator", "Generator"]

#: The generator's norms: none, BatchNorm1d after each hidden layer.
GENERATOR_NORMS: tuple[str, ...] = ("none", "bn")
#: The discriminator's norms: none, BatchNorm1d, LayerNorm after each hidden layer, or
#: spectral normalization of every linear layer.
DISCRIMINATOR_NORMS: tuple[str, ...] = ("none", "bn", "ln", "sn")


def _norm_factory(owner: str, norm: str, choices: Sequence[str]) -> Callable[[int], nn.Module]:
    """``channels -> layer`` for a norm placed after a hidden linear layer."""
    if norm not in choices:
        raise ValueError(f"unknown {owner} norm {norm!r}; choose one of: {', '.join(choices)}")
    if norm in ("none", "sn"):  # spectral norm acts on the weights, not after the layer
        return lambda channels: nn.Identity()
    return get_norm_layer(norm, dim=0, impl="torch")


class Generator(nn.Module):
    """An MLP generator: ``z (N, latent)`` -> images ``(N, 1, 28, 28)`` in [-1, 1].

    ``Linear - norm - ReLU`` per hidden layer, then ``Linear - Tanh`` (no norm on the
    output layer, as DCGAN).

    Args:
        latent: the noise size.
        hidden: the hidden layers' widths (one int: one hidden layer).
        norm: ``"none"`` (``nn.Identity``) or ``"bn"`` (``BatchNorm1d``).

    Raises:
        ValueError: an unknown norm.
    """

    def __init__(
        self, latent: int = 32, hidden: int | Sequence[int] = 128, norm: str = "none"
    ) -> None:
        super().__init__()
        make = _norm_factory("generator", norm, GENERATOR_NORMS)
        self.latent = latent
        self.norm = norm
        widths = [latent, *([hidden] if isinstance(hidden, int) else hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), make(b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 784), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(-1, 1, 28, 28)


class Discriminator(nn.Module):
    """An MLP discriminator ``(N, 1, 28, 28)`` -> logits ``(N,)``.

    ``Linear - norm - LeakyReLU(0.2)`` per hidden layer, then ``Linear`` to one logit;
    with ``"sn"`` every ``Linear`` is spectrally normalized instead.

    Args:
        norm: ``"none"`` (``nn.Identity``), ``"bn"`` (``BatchNorm1d``), ``"ln"``
            (``LayerNorm``) or ``"sn"`` (spectral norm of every weight).
        hidden: widths of the hidden layers.

    Raises:
        ValueError: an unknown norm.
    """

    def __init__(self, norm: str, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        make = _norm_factory("discriminator", norm, DISCRIMINATOR_NORMS)
        self.norm = norm
        widths = [784, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), make(b), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
        if norm == "sn":
            # after every weight is drawn: spectral_norm draws its power-iteration vectors
            # from the same generator, so the weights equal those of the other norms
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    spectral_norm(layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
