"""d2l's DenseNet: parameter count, channels, sizes at 28x28, options and errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bnlab import models
from bnlab.models.densenet import DenseBlock, DenseNet, densenet

# d2l's DenseNet at 1 input channel and 10 classes, torch's BatchNorm, conv biases kept:
#   stem     1*64*49 + 64 + 2*64                                          =   3_328
#   block k  4 conv blocks on C, C+32, C+64, C+96 channels: each 2*c (norm)
#            + c*32*9 + 32 (conv), with C = 64, 96, 112, 120
#   transition k on C' = C + 128 channels: 2*C' + C'*(C'//2) + C'//2
#   final norm 2*248, fc 248*10 + 10
#   total                                                                 = 758_226
# Channels: 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248. Conv biases: 64 (stem)
# + 16 * 32 (dense) + 96 + 112 + 120 (transitions) = 904, left out by default with a
# norm. Norm parameters, 2 per normalized channel: 2 * (64 stem + 2_336 dense + 656
# transition + 248 final) = 6_608, left out with norm="none" (which keeps the biases).
D2L_DENSENET = 758_226


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_matches_d2l_parameter_count() -> None:
    assert _count(densenet("torch", conv_bias=True)) == D2L_DENSENET
    assert _count(densenet("torch")) == D2L_DENSENET - 904
    assert _count(densenet("none")) == D2L_DENSENET - 6_608
    assert _count(models.create("densenet", norm="bnlab", conv_bias=True)) == D2L_DENSENET


def test_channels_and_sizes_at_28() -> None:
    torch.manual_seed(0)
    model = densenet("bnlab")
    assert model.num_features == 248
    x = model.stem(torch.rand(2, 1, 28, 28))
    assert x.shape == (2, 64, 7, 7)
    shapes = []
    for name, layer in model.features.named_children():
        x = layer(x)
        shapes.append((name, tuple(x.shape[1:])))
    # Transitions round up, so 7 -> 4 -> 2 -> 1 instead of 7 -> 3 -> 1 -> 0.
    assert shapes == [
        ("block1", (192, 7, 7)),
        ("transition1", (96, 4, 4)),
        ("block2", (224, 4, 4)),
        ("transition2", (112, 2, 2)),
        ("block3", (240, 2, 2)),
        ("transition3", (120, 1, 1)),
        ("block4", (248, 1, 1)),
    ]
    assert model.forward_head(model.forward_features(torch.rand(2, 1, 28, 28))).shape == (2, 10)


def test_dense_block_concatenates_its_input() -> None:
    torch.manual_seed(0)
    block = DenseBlock("bnlab", 2, 3, 10)
    x = torch.rand(4, 3, 8, 8)
    y = block(x)
    assert y.shape == (4, 23, 8, 8)
    torch.testing.assert_close(y[:, :3], x)


def test_custom_blocks_and_no_norm_layout() -> None:
    model = DenseNet("none", growth_rate=8, block_config=(2, 2), num_init_features=16)
    assert model.num_features == (16 + 16) // 2 + 16
    assert model.final_norm is None
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_instancenorm_needs_inputs_above_32() -> None:
    if "instancenorm" not in models.available_norms():
        pytest.skip("instancenorm is not registered")
    model = densenet("instancenorm", growth_rate=4, num_init_features=8)
    with pytest.raises(ValueError, match="spatial element"):
        model(torch.rand(2, 1, 28, 28))
    assert model(torch.rand(2, 1, 33, 33)).shape == (2, 10)


ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (
        lambda: DenseNet("bnlab", block_config=()),
        ValueError,
        "DenseNet: block_config must name at least one dense block, such as (4, 4, 4, 4), got ()",
    ),
    (
        lambda: DenseNet("bnlab", block_config=4),  # type: ignore[arg-type]
        TypeError,
        "DenseNet: block_config must be a sequence of ints such as (4, 4, 4, 4), got 4",
    ),
    (
        lambda: DenseNet("bnlab", block_config=(4, 0)),
        ValueError,
        "DenseNet: block_config[1] must be positive, got 0",
    ),
    (
        lambda: DenseNet("bnlab", growth_rate=2.5),  # type: ignore[arg-type]
        TypeError,
        "DenseNet: growth_rate must be an int, got 2.5 of type float",
    ),
    (
        lambda: densenet("bnlab", conv_bias=0),
        TypeError,
        "DenseNet: conv_bias must be True or False, got 0 of type int",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_error_messages(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as exc:
        call()
    assert str(exc.value) == message
