"""The plain deep CNN: resnet20's layers without the shortcuts, depth as a parameter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bnlab import models
from bnlab.models.plain import PlainBlock, plain
from bnlab.models.resnet import BasicBlock, resnet20


def _weight_shapes(model: nn.Module, *, skip_1x1: bool = False) -> list[tuple[int, ...]]:
    return [
        tuple(m.weight.shape)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
        and not (skip_1x1 and isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
    ]


@pytest.mark.parametrize("norm", ["bnlab", "none"])
def test_plain20_is_resnet20_without_shortcuts(norm: str) -> None:
    net = plain(norm, depth=20)
    assert _weight_shapes(net) == _weight_shapes(resnet20(norm))
    assert _weight_shapes(net) == _weight_shapes(resnet20(norm, shortcut="conv"), skip_1x1=True)
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in resnet20(norm).parameters()
    )
    assert not any(isinstance(m, BasicBlock) for m in net.modules())
    assert sum(isinstance(m, PlainBlock) for m in net.modules()) == 9


@pytest.mark.parametrize("depth", [8, 20, 32, 56])
def test_depth_counts_the_weight_layers(depth: int) -> None:
    net = plain("bnlab", depth=depth)
    assert len(_weight_shapes(net)) == depth
    assert models.create("plain", norm="bnlab", depth=depth).stages[0][0].conv1.bias is None


def test_plain_without_shortcut_equals_the_resnet_branch() -> None:
    # With the same weights, a plain block is the residual branch followed by a ReLU.
    torch.manual_seed(0)
    block, residual = PlainBlock("none", 4, 4), BasicBlock("none", 4, 4)
    residual.load_state_dict(block.state_dict())
    x = torch.rand(2, 4, 7, 7)
    torch.testing.assert_close(block(x), torch.relu(residual.residual(x)))


def test_forward_at_depth_8() -> None:
    torch.manual_seed(0)
    net = plain("bnlab", depth=8, width=4)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (
        lambda: plain("bnlab", depth=6),
        ValueError,
        "plain: depth must be at least 8 (6n + 2 layers with n >= 1), got 6",
    ),
    (
        lambda: plain("bnlab", depth=10),
        ValueError,
        "plain: depth must be 6n + 2 (8, 14, 20, 26, 32, 44, 56, ...), got 10; "
        "the nearest are 8 and 14",
    ),
    (
        lambda: plain("bnlab", depth=True),  # type: ignore[arg-type]
        TypeError,
        "plain: depth must be an int, got True of type bool",
    ),
    (
        lambda: plain("bnlab", width=-1),
        ValueError,
        "plain: width must be positive, got -1",
    ),
    (
        lambda: plain("bnlab", zero_init_residual=True),  # type: ignore[call-arg]
        TypeError,
        "plain() got an unexpected keyword argument 'zero_init_residual'",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_error_messages(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as exc:
        call()
    assert str(exc.value) == message
