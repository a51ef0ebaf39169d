"""A small MLP GAN for 28x28 images: a generator without norm, a discriminator with one.

The discriminator's norm is chosen by name (``"none"``, ``"bn"``, ``"ln"``) and built by
the one norm registry (``bnlab.nn.get_norm_layer``, the ``torch.nn`` layers). The lab's
``gan`` experiment trains them with Adam (betas 0.5, 0.999) as in DCGAN.

Papers: Goodfellow et al., "Generative Adversarial Networks", arXiv 1406.2661; Radford
et al., "Unsupervised Representation Learning with Deep Convolutional GANs" (DCGAN),
arXiv 1511.06434.
"""

from __future__ import annotations

from torch import Tensor, nn

from bnlab.nn.registry import get_norm_layer

__all__ = ["DISCRIMINATOR_NORMS", "Discriminator", "Generator"]

#: The discriminator's norms: none, BatchNorm1d, LayerNorm after each hidden layer.
DISCRIMINATOR_NORMS: tuple[str, ...] = ("none", "bn", "ln")


class Generator(nn.Module):
    """An MLP generator: ``z (N, latent)`` -> images ``(N, 1, 28, 28)`` in [-1, 1]; no norm.

    Args:
        latent: the noise size.
        hidden: the hidden layer's width.
    """

    def __init__(self, latent: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.latent = latent
        self.net = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 784),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(-1, 1, 28, 28)


class Discriminator(nn.Module):
    """An MLP discriminator ``(N, 1, 28, 28)`` -> logits ``(N,)``, a norm after each hidden layer.

    Args:
        norm: ``"none"`` (``nn.Identity``), ``"bn"`` (``BatchNorm1d``) or ``"ln"``
            (``LayerNorm``).
        hidden: widths of the two hidden layers.

    Raises:
        ValueError: an unknown norm.
    """

    def __init__(self, norm: str, hidden: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(
                f"unknown discriminator norm {norm!r}; choose one of: "
                f"{', '.join(DISCRIMINATOR_NORMS)}"
            )
        make = None if norm == "none" else get_norm_layer(norm, dim=0, impl="torch")

        def norm_layer(channels: int) -> nn.Module:
            return nn.Identity() if make is None else make(channels)

        h1, h2 = hidden
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, h1),
            norm_layer(h1),
            nn.LeakyReLU(0.2),
            nn.Linear(h1, h2),
            norm_layer(h2),
            nn.LeakyReLU(0.2),
            nn.Linear(h2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
