"""The MLP GAN's networks (``bnlab.models.gan``): shapes, the norm layers of both
networks, spectral norm, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.models.gan import DISCRIMINATOR_NORMS, Discriminator, Generator


def test_networks_shapes() -> None:
    g = Generator(latent=8, hidden=16)
    images = g(torch.randn(5, 8))
    assert images.shape == (5, 1, 28, 28)
    assert images.abs().max() <= 1
    for norm in DISCRIMINATOR_NORMS:
        assert Discriminator(norm, hidden=(16, 8))(images).shape == (5,)
    g_bn = Generator(latent=8, hidden=(16, 32), norm="bn")
    assert g_bn(torch.randn(5, 8)).shape == (5, 1, 28, 28)
    assert [type(m) for m in g_bn.net if isinstance(m, nn.BatchNorm1d)] == [nn.BatchNorm1d] * 2


@pytest.mark.parametrize(
    ("norm", "layer"), [("none", nn.Identity), ("bn", nn.BatchNorm1d), ("ln", nn.LayerNorm)]
)
def test_the_registry_builds_the_torch_layers_of_before(norm: str, layer: type) -> None:
    """The numbers of ``bnlab lab gan``'s first edition were measured with these torch.nn
    layers, at positions 2 and 5 of the discriminator's ``net``."""
    d = Discriminator(norm, hidden=(16, 8))
    assert [type(d.net[i]) for i in (2, 5)] == [layer, layer]
    assert sum(p.numel() for p in d.net[2].parameters()) == (0 if norm == "none" else 2 * 16)


def test_spectral_norm_bounds_every_weight() -> None:
    d = Discriminator("sn", hidden=(16, 8))
    linears = [m for m in d.net if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    assert all(hasattr(m, "parametrizations") for m in linears)
    assert [type(d.net[i]) for i in (2, 5)] == [nn.Identity, nn.Identity]
    d.train()
    for _ in range(30):  # power iterations converge during training forwards
        d(torch.rand(4, 1, 28, 28))
    d.eval()
    for m in linears:
        assert float(torch.linalg.matrix_norm(m.weight, ord=2)) == pytest.approx(1.0, rel=1e-2)


def test_unknown_norm_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown discriminator norm 'gn'; choose one of"):
        Discriminator("gn")
    with pytest.raises(ValueError, match="unknown generator norm 'ln'; choose one of: none, bn"):
        Generator(norm="ln")
