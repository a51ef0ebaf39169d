"""ResNet-18 (d2l) and the CIFAR ResNets: sizes, parameter counts, zero-init, shortcuts, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bnlab import models
from bnlab.models.resnet import BasicBlock, ResNet, cifar_resnet, resnet18, resnet20, resnet56

# Parameter counts at 1 input channel and 10 classes, with torch's BatchNorm (2 affine
# parameters per channel). d2l's ResNet-18 keeps the convolution biases:
#   stem     1*64*49 + 64 (bias) + 2*64                                 =     3_328
#   stage 1  4 x (64*64*9 + 64 + 2*64)                                  =   148_224
#   stage 2  64*128*9 + 3 x 128*128*9 + 1x1 64*128 + 5*128 (biases)
#            + 4 x 2*128 (norms)                                        =   525_952
#   stage 3 (256 channels, same pattern)                                = 2_100_480
#   stage 4 (512 channels)                                              = 8_395_264
#   fc       512*10 + 10                                                =     5_130
#   total                                                               = 11_178_378
# Conv biases: 3_904 normalized channels + 896 shortcut channels = 4_800, which our
# default with a norm leaves out; norm parameters: 2 * 3_904 = 7_808, which
# norm="none" leaves out (keeping the biases).
D2L_RESNET18 = 11_178_378
# He et al.: ResNet-20 has 0.27M parameters, ResNet-56 0.85M (option A: no shortcut
# parameters, no conv biases).
RESNET20 = 269_434
RESNET56 = 852_730


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks(model: nn.Module) -> list[BasicBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


def test_resnet18_matches_d2l_parameter_count() -> None:
    assert _count(resnet18("torch", conv_bias=True)) == D2L_RESNET18
    assert _count(resnet18("torch")) == D2L_RESNET18 - 4_800
    assert _count(resnet18("none")) == D2L_RESNET18 - 7_808
    model = resnet18("torch")
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_cifar_resnets_match_the_paper_parameter_counts() -> None:
    assert _count(resnet20("torch")) == RESNET20
    assert _count(resnet56("torch")) == RESNET56
    # 6n + 2 weight layers: convolutions (no shortcut convs with option A) plus the fc.
    for depth, model in ((20, resnet20("torch")), (32, cifar_resnet("torch", depth=32))):
        layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        assert len(layers) == depth


def test_resnet18_sizes_at_28_and_96() -> None:
    torch.manual_seed(0)
    model = resnet18("bnlab").eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(2, 1, 28, 28)).shape == (2, 512, 1, 1)
        features = model.forward_features(torch.rand(2, 1, 96, 96))
        assert features.shape == (2, 512, 3, 3)  # d2l: 96 -> 48 -> 24 -> 24 -> 12 -> 6 -> 3
        assert model.forward_head(features).shape == (2, 10)


def test_cifar_resnet_stage_sizes_at_28() -> None:
    model = resnet20("bnlab")
    x = model.stem(torch.rand(2, 1, 28, 28))
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]


def _zero_init_norms() -> list[str]:
    return [n for n in models.available_norms() if n not in {"none", "frozen"}]


@pytest.mark.parametrize("norm", _zero_init_norms())
def test_zero_init_residual_makes_every_block_relu_of_its_shortcut(norm: str) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(norm, depth=8, shortcut="conv", zero_init_residual=True)
    x = model.stem(torch.rand(2, 1, 28, 28))
    for block in _blocks(model):
        # The scale is zeroed and the shift starts at 0, so the branch adds nothing.
        bias = getattr(block.norm2, "bias", getattr(block.norm2, "beta", None))
        if isinstance(bias, nn.Parameter):
            assert torch.count_nonzero(bias) == 0
        y = block(x)
        torch.testing.assert_close(y, torch.relu(block.shortcut(x)))
        x = y


def test_zero_init_residual_on_resnet18_and_not_by_default() -> None:
    zeroed = resnet18("bnlab", width=8, zero_init_residual=True)
    assert all(torch.count_nonzero(b.norm2.weight) == 0 for b in _blocks(zeroed))
    assert all(torch.count_nonzero(b.norm1.weight) > 0 for b in _blocks(zeroed))
    default = resnet18("bnlab", width=8)
    assert all(torch.count_nonzero(b.norm2.weight) > 0 for b in _blocks(default))


def test_fixup_init_zeroes_the_branch_ends_and_scales_the_branch_starts() -> None:
    torch.manual_seed(0)
    reference = cifar_resnet("none", depth=20)
    torch.manual_seed(0)
    model = cifar_resnet("none", depth=20, fixup_init=True)
    blocks, ref_blocks = _blocks(model), _blocks(reference)
    assert len(blocks) == 9  # L = 3n residual branches
    for block, ref in zip(blocks, ref_blocks, strict=True):
        assert torch.count_nonzero(block.conv2.weight) == 0
        assert torch.count_nonzero(block.conv2.bias) == 0
        torch.testing.assert_close(block.conv1.weight, ref.conv1.weight * 9**-0.5)
    assert torch.count_nonzero(model.fc.weight) == 0
    torch.testing.assert_close(model.stem[0].weight, reference.stem[0].weight)
    # Every block starts as relu(shortcut(x)); the logits start at zero.
    x = model.stem(torch.rand(2, 1, 28, 28))
    for block in blocks:
        y = block(x)
        torch.testing.assert_close(y, torch.relu(block.shortcut(x)))
        x = y
    assert torch.count_nonzero(model(torch.rand(2, 1, 28, 28))) == 0
    with pytest.raises(ValueError, match="fixup_init=True is the initialisation of a ResNet"):
        cifar_resnet("bnlab", depth=20, fixup_init=True)


def test_zero_init_survives_fit_initialisation() -> None:
    from bnlab.train.fit import init_weights  # test-only: train sits above models

    model = resnet20("bnlab", zero_init_residual=True)
    init_weights(model, seed=0)
    assert all(torch.count_nonzero(b.norm2.weight) == 0 for b in _blocks(model))


def test_pad_shortcut_subsamples_and_zero_pads() -> None:
    block = BasicBlock("bnlab", 4, 8, stride=2, shortcut="pad")
    x = torch.rand(2, 4, 7, 7)
    y = block.shortcut(x)
    assert y.shape == (2, 8, 4, 4)
    torch.testing.assert_close(y[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 4:]) == 0
    assert block(x).shape == (2, 8, 4, 4)


def test_conv_shortcut_adds_the_1x1_convolutions() -> None:
    extra = _count(resnet20("bnlab", shortcut="conv")) - _count(resnet20("bnlab"))
    assert extra == 16 * 32 + 32 * 64


def test_resnet18_with_instancenorm_needs_inputs_above_32() -> None:
    if "instancenorm" not in models.available_norms():
        pytest.skip("instancenorm is not registered")
    model = resnet18("instancenorm", width=8)
    with pytest.raises(ValueError, match="spatial element"):
        model(torch.rand(2, 1, 28, 28))
    assert model(torch.rand(2, 1, 33, 33)).shape == (2, 10)


def test_registry_builds_the_same_models() -> None:
    assert isinstance(models.create("resnet18", norm="torch", width=8), ResNet)
    assert _count(models.create("resnet56", norm="torch")) == RESNET56


ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (
        lambda: cifar_resnet("bnlab", depth=21),
        ValueError,
        "resnet21: depth must be 6n + 2 (8, 14, 20, 26, 32, 44, 56, ...), got 21; "
        "the nearest are 20 and 26",
    ),
    (
        lambda: cifar_resnet("bnlab", depth=2),
        ValueError,
        "resnet2: depth must be at least 8 (6n + 2 layers with n >= 1), got 2",
    ),
    (
        lambda: cifar_resnet("bnlab", depth="20"),  # type: ignore[arg-type]
        TypeError,
        "cifar_resnet: depth must be an int, got '20' of type str",
    ),
    (
        lambda: cifar_resnet("bnlab", shortcut="B"),
        ValueError,
        "resnet20: unknown shortcut 'B'; choose one of: pad, conv",
    ),
    (
        lambda: resnet18("none", zero_init_residual=True),
        ValueError,
        "resnet18: zero_init_residual=True needs a norm with a trainable scale, but norm "
        "'none' has none; pass zero_init_residual=False",
    ),
    (
        lambda: resnet18("bnlab", zero_init_residual=1),  # type: ignore[arg-type]
        TypeError,
        "resnet18: zero_init_residual must be True or False, got 1 of type int",
    ),
    (
        lambda: resnet56("bnlab", conv_bias="yes"),
        TypeError,
        "resnet56: conv_bias must be True or False, got 'yes' of type str",
    ),
    (
        lambda: resnet18("bnlab", width=0),
        ValueError,
        "resnet18: width must be positive, got 0",
    ),
    (
        lambda: resnet20("bnlab", depth=32),
        TypeError,
        "resnet20: depth is fixed at 20; use cifar_resnet(norm, depth=...)",
    ),
    (
        lambda: BasicBlock("bnlab", 8, 4, stride=2, shortcut="pad"),
        ValueError,
        "BasicBlock: shortcut 'pad' cannot reduce channels (8 -> 4); use shortcut='conv'",
    ),
    (
        lambda: BasicBlock("bnlab", 4, 8, shortcut="A"),
        ValueError,
        "BasicBlock: unknown shortcut 'A'; choose one of: pad, conv",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_error_messages(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as exc:
        call()
    assert str(exc.value) == message


def test_unknown_norm_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown norm 'BN'; choose one of: none"):
        resnet18("BN")
