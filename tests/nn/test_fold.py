"""fold_batchnorm: eval outputs unchanged, original untouched, and the report."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bnlab.nn
from bnlab.models import create
from bnlab.nn.fold import FoldResult, fold_batchnorm

BN = {
    ("torch", 1): nn.BatchNorm1d,
    ("torch", 2): nn.BatchNorm2d,
    ("torch", 3): nn.BatchNorm3d,
    ("bnlab", 1): bnlab.nn.BatchNorm1d,
    ("bnlab", 2): bnlab.nn.BatchNorm2d,
    ("bnlab", 3): bnlab.nn.BatchNorm3d,
}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _randomize_bn(bn: nn.Module, gen: torch.Generator, scale: float) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * scale)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 4 + 0.05)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(c, generator=gen))
        if bn.bias is not None:
            bn.bias.copy_(torch.randn(c, generator=gen))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@settings(max_examples=40, deadline=None)
@given(
    dims=st.sampled_from([0, 1, 2, 3]),  # 0: Linear
    groups=st.sampled_from([1, 2, "depthwise"]),
    bias=st.booleans(),
    affine=st.booleans(),
    kind=st.sampled_from(["torch", "bnlab"]),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    stats_scale=st.sampled_from([0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_folded_model_matches_original_in_eval(
    dims: int,
    groups: int | str,
    bias: bool,
    affine: bool,
    kind: str,
    padding_mode: str,
    stats_scale: float,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out = 4, 6
    if dims == 0:
        layer: nn.Module = nn.Linear(c_in, c_out, bias=bias)
        x = torch.randn(5, c_in)
    else:
        g = c_in if groups == "depthwise" else groups
        if groups == "depthwise":
            c_out = c_in * 2
        layer = CONV[dims](
            c_in, c_out, 3, padding=1, groups=g, bias=bias, padding_mode=padding_mode
        )
        x = torch.randn(2, c_in, *([5] * dims))
    bn = BN[(kind, max(dims, 1))](c_out, affine=affine)
    _randomize_bn(bn, gen, stats_scale)
    model = nn.Sequential(layer, bn, nn.Tanh()).train()
    before = _state(model)
    result = fold_batchnorm(model)
    assert result.folded == ["1"]
    assert result.skipped == {}
    assert result.fed_by == {"1": "0"}
    assert type(result.model[1]) is nn.Identity
    assert not result.model.training
    assert result.model[0].bias is not None
    assert model.training
    assert type(model[1]) is type(bn)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # exact: folding works on copies
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(result.model(x), expected, rtol=1e-5, atol=1e-5)


def _warm(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(*shape) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "kwargs", "folded", "fed_by"),
    [
        (
            "lenet",
            {"norm": "bnlab"},
            ["norm1", "norm2", "norm3", "norm4"],
            ["conv1", "conv2", "fc1", "fc2"],
        ),
        ("mlp", {"norm": "torch", "norm_position": "before"}, ["norm1"], ["fc1"]),
    ],
)
def test_models_fold_and_match(name: str, kwargs: dict, folded: list, fed_by: list) -> None:
    model = _warm(create(name, **kwargs), (16, 1, 28, 28))
    before = _state(model)
    result = fold_batchnorm(model)
    assert result.folded == folded
    assert list(result.fed_by.values()) == fed_by
    assert result.skipped == {}
    assert result.method == "fx"
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(
        isinstance(m, (nn.BatchNorm1d, bnlab.nn.BatchNorm1d, bnlab.nn.BatchNorm2d))
        for m in result.model.modules()
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # exact: folding works on copies


def test_mlp_with_norm_after_activation_is_reported() -> None:
    result = fold_batchnorm(create("mlp", norm="torch"))
    assert result.folded == []
    assert result.skipped == {
        "norm1": "not fed directly by a Conv1d/2d/3d or Linear (input: call_module act1)"
    }


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _InOrder(nn.Module):
    """Not a Sequential: forward calls its children in order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = bnlab.nn.BatchNorm2d(4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.conv(x)))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.sum() > 0:  # data-dependent: torch.fx cannot trace it
            return self.bn(y)
        return -self.bn(y)


def test_module_calling_children_in_order_folds() -> None:
    model = _warm(_InOrder(), (4, 3, 6, 6))
    result = fold_batchnorm(model)
    assert result.folded == ["bn"]
    assert result.fed_by == {"bn": "conv"}
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_report_reasons() -> None:
    residual = fold_batchnorm(_Residual())
    assert residual.skipped == {
        "bn": "the output of 'conv' is also used by add; folding would change what they see"
    }
    twice = fold_batchnorm(_Twice())
    assert twice.skipped == {"bn": "fed by 'conv', which is called 2 times in forward"}
    untracked = fold_batchnorm(
        nn.Sequential(nn.Conv1d(2, 2, 1), nn.BatchNorm1d(2, track_running_stats=False))
    )
    assert untracked.skipped == {
        "1": "track_running_stats=False: it normalizes with batch statistics in eval mode "
        "too, which is not a fixed affine map"
    }
    mismatch = fold_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5)))
    assert mismatch.skipped == {
        "1": "fed by '0' with 4 output channels, but '1' has num_features=5"
    }
    linear_2d = fold_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4)))
    assert linear_2d.skipped == {"1": "a Linear ('0') feeding a BatchNorm2d is not folded"}
    first = fold_batchnorm(nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2)))
    assert first.skipped == {
        "0": "not fed directly by a Conv1d/2d/3d or Linear (input: placeholder input)"
    }
    shared_bn = nn.BatchNorm1d(2)
    twice_bn = fold_batchnorm(nn.Sequential(nn.Linear(2, 2), shared_bn, nn.Linear(2, 2), shared_bn))
    assert twice_bn.skipped == {"1": "called 2 times in forward; folding would change every call"}
    unused = _InOrder()
    unused.extra = nn.BatchNorm2d(4)
    assert fold_batchnorm(unused).skipped == {"extra": "not called in the traced forward"}
    weight_normed = nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 3, 1))
    parametrized = fold_batchnorm(nn.Sequential(weight_normed, nn.BatchNorm2d(3)))
    assert parametrized.skipped == {
        "1": "'0' has a parametrized weight (e.g. spectral norm); not folded"
    }
    root = fold_batchnorm(nn.BatchNorm1d(2))
    assert root.skipped == {"<model>": "the model itself is a batch norm; nothing feeds it"}
    assert isinstance(root, FoldResult)
    assert type(root.model) is nn.BatchNorm1d


def test_untraceable_model_falls_back_to_sequential_children() -> None:
    model = _warm(_Untraceable(), (4, 3, 6, 6))
    result = fold_batchnorm(model)
    assert result.method == "sequential"
    assert result.folded == ["body.1"]
    assert result.fed_by == {"body.1": "body.0"}
    assert list(result.skipped) == ["bn"]
    assert re.fullmatch(
        r"torch\.fx could not trace the model \(TraceError: .+\); outside a Sequential, "
        r"right after a Conv1d/2d/3d or Linear registered once, the layer feeding it is unknown",
        result.skipped["bn"],
    )
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_type_error() -> None:
    with pytest.raises(
        TypeError, match=re.escape("fold_batchnorm: expected an nn.Module, got int")
    ):
        fold_batchnorm(3)
