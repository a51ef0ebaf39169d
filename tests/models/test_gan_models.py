"""The MLP GAN's networks (``bnlab.models.gan``): shapes, the discriminator's norm layers, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.models.gan import Discriminator, Generator


def test_networks_shapes() -> None:
    g = Generator(latent=8, hidden=16)
    images = g(torch.randn(5, 8))
    assert images.shape == (5, 1, 28, 28)
    assert images.abs().max() <= 1
    for norm in ("none", "bn", "ln"):
        assert Discriminator(norm, hidden=(16, 8))(images).shape == (5,)


@pytest.mark.parametrize(
    ("norm", "layer"), [("none", nn.Identity), ("bn", nn.BatchNorm1d), ("ln", nn.LayerNorm)]
)
def test_the_registry_builds_the_torch_layers_of_before(norm: str, layer: type) -> None:
    """The numbers of ``bnlab lab gan`` were measured with these torch.nn layers, at
    positions 2 and 5 of the discriminator's ``net``."""
    d = Discriminator(norm, hidden=(16, 8))
    assert [type(d.net[i]) for i in (2, 5)] == [layer, layer]
    assert sum(p.numel() for p in d.net[2].parameters()) == (0 if norm == "none" else 2 * 16)


def test_unknown_norm_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown discriminator norm 'gn'; choose one of"):
        Discriminator("gn")
