"""SmallReluCNN (``bnlab.models.small_cnn``): shapes, the layers each norm builds, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab.nn
from bnlab.models.small_cnn import NORMS, SmallReluCNN, norm_layer


def test_model_shapes_norms_and_errors() -> None:
    x = torch.randn(3, 1, 28, 28)
    for norm in NORMS:
        for twins in (True, False):
            model = SmallReluCNN(norm, twins=twins)
            assert model(x).shape == (3, 10)
    ghost = SmallReluCNN("ghost", ghost_virtual_batch=4)
    assert ghost.norm1.virtual_batch_size == 4
    assert SmallReluCNN("groupnorm").norm2.num_groups == 4
    with pytest.raises(ValueError, match="unknown norm 'bn' for SmallReluCNN; choose one of: none"):
        SmallReluCNN("bn")
    with pytest.raises(ValueError, match="group_size 3 does not divide 8 channels"):
        SmallReluCNN("groupnorm", group_size=3)


# The layers the lab's numbers were measured with, before the norm registry built them.
TWINS = {
    "bnlab": nn.BatchNorm2d,
    "ghost": bnlab.nn.GhostBatchNorm2d,
    "batchrenorm": bnlab.nn.BatchRenorm2d,
    "groupnorm": nn.GroupNorm,
    "layernorm": nn.GroupNorm,
    "instancenorm": nn.InstanceNorm2d,
}


@pytest.mark.parametrize("norm", NORMS)
def test_each_norm_builds_the_same_layers_as_before(norm: str) -> None:
    model = SmallReluCNN(norm)
    if norm == "none":
        assert model.norm1 is None
        assert model.norm2 is None
        return
    for layer, channels in ((model.norm1, 8), (model.norm2, 16)):
        assert type(layer) is TWINS[norm]
        assert sum(p.numel() for p in layer.parameters()) == 2 * channels  # affine
    if norm == "batchrenorm":
        assert model.norm1.momentum == 0.1  # not the layer's 0.01: few steps at large B
    if norm == "layernorm":
        assert model.norm2.num_groups == 1
    assert norm_layer(norm, 16, twins=False).__class__.__module__.startswith("bnlab")


def test_a_batch_of_one_trains_with_norms_after_convolutions_only() -> None:
    model = SmallReluCNN("bnlab").train()
    model(torch.randn(1, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
