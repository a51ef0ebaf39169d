"""create_norm / convert_norm: every name and dim, options, errors, state carry-over."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab.nn as bnn
from bnlab.nn.registry import (
    available_norm_layers,
    batchnorm_dim,
    convert_norm,
    create_norm,
    register_norm_layer,
)

EXPECTED = {
    ("batchnorm", 0): bnn.BatchNorm1d,
    ("batchnorm", 1): bnn.BatchNorm1d,
    ("batchnorm", 2): bnn.BatchNorm2d,
    ("batchnorm", 3): bnn.BatchNorm3d,
    ("layernorm", 0): bnn.LayerNorm,
    ("layernorm", 1): bnn.GroupNorm,
    ("layernorm", 2): bnn.GroupNorm,
    ("layernorm", 3): bnn.GroupNorm,
    ("groupnorm", 2): bnn.GroupNorm,
    ("instancenorm", 1): bnn.InstanceNorm1d,
    ("instancenorm", 2): bnn.InstanceNorm2d,
    ("instancenorm", 3): bnn.InstanceNorm3d,
    ("frozen", 0): bnn.FrozenBatchNorm1d,
    ("frozen", 2): bnn.FrozenBatchNorm2d,
    ("batchrenorm", 0): bnn.BatchRenorm1d,
    ("batchrenorm", 2): bnn.BatchRenorm2d,
    ("batchrenorm", 3): bnn.BatchRenorm3d,
    ("ghost", 1): bnn.GhostBatchNorm1d,
    ("ghost", 2): bnn.GhostBatchNorm2d,
    ("ghost", 3): bnn.GhostBatchNorm3d,
    ("sync", 0): bnn.SyncBatchNorm,
    ("sync", 2): bnn.SyncBatchNorm,
}


def _input(dim: int, c: int = 6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    torch.manual_seed(dim)
    return torch.randn(4, c, *([5] * dim), dtype=dtype) * 3 + 1


@pytest.mark.parametrize(("name", "dim"), sorted(EXPECTED))
def test_create_builds_the_class_and_runs(name: str, dim: int) -> None:
    layer = create_norm(name, 6, dim=dim, dtype=torch.float64)
    assert type(layer) is EXPECTED[(name, dim)]
    y = layer(_input(dim))
    assert y.shape == _input(dim).shape
    assert torch.isfinite(y).all()


def test_every_registered_name_builds_for_2d() -> None:
    for name in available_norm_layers():
        layer = create_norm(name, 8, dim=2)
        assert layer(torch.randn(3, 8, 4, 4)).shape == (3, 8, 4, 4)


def test_layernorm_is_layer_norm_over_all_features() -> None:
    x = _input(2)
    ours = create_norm("layernorm", 6, dim=2, dtype=torch.float64)
    ref = nn.functional.layer_norm(x, x.shape[1:], eps=1e-5)
    torch.testing.assert_close(ours(x), ref)
    x0 = _input(0)
    ref0 = nn.functional.layer_norm(x0, (6,), eps=1e-5)
    torch.testing.assert_close(create_norm("layernorm", 6, dim=0, dtype=torch.float64)(x0), ref0)


def test_layernorm_affine_option_maps_to_each_class() -> None:
    assert create_norm("layernorm", 6, dim=0, affine=False).weight is None
    assert create_norm("layernorm", 6, dim=2, affine=False).weight is None


@pytest.mark.parametrize(("channels", "groups"), [(6, 2), (16, 16), (64, 32), (120, 8), (7, 1)])
def test_groupnorm_default_groups_divide_channels(channels: int, groups: int) -> None:
    assert create_norm("groupnorm", channels).num_groups == groups


def test_groupnorm_explicit_groups() -> None:
    assert create_norm("groupnorm", 12, num_groups=3).num_groups == 3
    with pytest.raises(ValueError, match="num_groups"):
        create_norm("groupnorm", 12, num_groups=5)


def test_options_reach_the_layer() -> None:
    layer = create_norm("batchnorm", 5, dim=2, eps=1e-3, momentum=None, affine=False)
    assert (layer.eps, layer.momentum, layer.affine) == (1e-3, None, False)
    inst = create_norm("instancenorm", 5, dim=2, affine=True, track_running_stats=True)
    assert inst.affine
    assert inst.track_running_stats


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown norm layer 'batchnrom'; choose one of: batchnorm, "
    ):
        create_norm("batchnrom", 4)


def test_unknown_option_lists_accepted() -> None:
    with pytest.raises(
        TypeError,
        match=r"norm layer 'groupnorm' \(dim 2\) does not take momentum; it takes: num_groups, eps, affine",
    ):
        create_norm("groupnorm", 8, momentum=0.1)


def test_channel_count_is_not_an_option() -> None:
    with pytest.raises(TypeError, match="does not take num_channels"):
        create_norm("groupnorm", 8, num_channels=8)


@pytest.mark.parametrize("dim", [-1, 4, 2.0, True, "2"])
def test_bad_dim(dim: object) -> None:
    with pytest.raises(
        ValueError, match=r"dim is the number of spatial dims of the input, one of \(0, 1, 2, 3\)"
    ):
        create_norm("batchnorm", 4, dim=dim)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "exc"), [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_num_features(value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="num_features must be"):
        create_norm("batchnorm", value)  # type: ignore[arg-type]


def test_instancenorm_without_spatial_dims_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"instancenorm needs spatial dims \(dim >= 1\)"):
        create_norm("instancenorm", 4, dim=0)


def test_frozen_3d_is_an_error() -> None:
    with pytest.raises(ValueError, match="there is no FrozenBatchNorm3d"):
        create_norm("frozen", 4, dim=3)


def test_register_checks() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_norm_layer("batchnorm", lambda c, d: nn.Identity(), lambda d: nn.Identity)
    with pytest.raises(ValueError, match="lower-case"):
        register_norm_layer("BN", lambda c, d: nn.Identity(), lambda d: nn.Identity)
    with pytest.raises(TypeError, match="builder for 'x' must be callable"):
        register_norm_layer("x", 3, lambda d: nn.Identity)  # type: ignore[arg-type]


def _net(bn2d: type[nn.Module], bn1d: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        bn2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 6),
        bn1d(6),
        nn.Sequential(nn.Linear(6, 6), bn1d(6)),
    )


@pytest.mark.parametrize("family", ["torch", "bnlab"])
@pytest.mark.parametrize(
    "name", ["groupnorm", "layernorm", "batchnorm", "frozen", "batchrenorm", "ghost", "sync"]
)
def test_convert_replaces_every_batchnorm(family: str, name: str) -> None:
    ns = nn if family == "torch" else bnn
    model = _net(ns.BatchNorm2d, ns.BatchNorm1d)
    converted = convert_norm(model, name)
    kinds = [type(m) for m in converted.modules()]
    assert not any(k in (nn.BatchNorm1d, nn.BatchNorm2d) for k in kinds)
    if name != "batchnorm":
        assert not any(k in (bnn.BatchNorm1d, bnn.BatchNorm2d) for k in kinds)
    assert type(converted[1]) is type(create_norm(name, 8, dim=2))
    assert type(converted[6][1]) is type(create_norm(name, 6, dim=1))
    assert converted(torch.randn(3, 1, 6, 6)).shape == (3, 6)
    # The original is untouched.
    assert type(model[1]) is ns.BatchNorm2d


def test_convert_carries_state_between_batchnorm_kinds() -> None:
    model = _net(nn.BatchNorm2d, nn.BatchNorm1d)
    model(torch.randn(16, 1, 6, 6) * 2 + 1)  # move the running statistics
    with torch.no_grad():
        model[1].weight.mul_(1.5)
    model.eval()
    x = torch.randn(5, 1, 6, 6)
    frozen = convert_norm(model, "frozen")
    assert not frozen.training
    torch.testing.assert_close(frozen(x), model(x))
    as_bnlab = convert_norm(model, "batchnorm")
    torch.testing.assert_close(as_bnlab(x), model(x))
    assert int(as_bnlab[1].num_batches_tracked) == 1


def test_convert_does_not_carry_affine_into_other_norms() -> None:
    model = _net(nn.BatchNorm2d, nn.BatchNorm1d)
    with torch.no_grad():
        model[1].weight.fill_(3.0)
    gn = convert_norm(model, "groupnorm")
    assert torch.equal(gn[1].weight, torch.ones(8))


def test_convert_keeps_dtype_device_mode_and_requires_grad() -> None:
    model = _net(bnn.BatchNorm2d, bnn.BatchNorm1d).double().eval()
    model[1].weight.requires_grad_(False)
    out = convert_norm(model, "batchnorm")
    assert out[1].weight.dtype == torch.float64
    assert not out[1].weight.requires_grad
    assert not out[1].training
    gn = convert_norm(model, "groupnorm", num_groups=2)
    assert gn[1].weight.dtype == torch.float64
    assert gn[1].num_groups == 2
    assert gn(torch.randn(2, 1, 6, 6, dtype=torch.float64)).dtype == torch.float64


def test_convert_a_bare_layer_and_a_model_without_bn() -> None:
    assert type(convert_norm(nn.BatchNorm2d(4), "groupnorm")) is bnn.GroupNorm
    plain = nn.Sequential(nn.Linear(3, 3))
    assert type(convert_norm(plain, "groupnorm")[0]) is nn.Linear


def test_convert_syncbatchnorm_needs_dim() -> None:
    model = nn.Sequential(nn.SyncBatchNorm(4))
    with pytest.raises(
        ValueError, match=r"0 is a SyncBatchNorm, which takes inputs of any rank; pass dim="
    ):
        convert_norm(model, "groupnorm")
    assert type(convert_norm(model, "instancenorm", dim=2)[0]) is bnn.InstanceNorm2d
    assert batchnorm_dim(nn.SyncBatchNorm(4)) is None


def test_convert_errors() -> None:
    with pytest.raises(TypeError, match=r"convert_norm: expected an nn\.Module, got int"):
        convert_norm(3, "groupnorm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown norm layer 'gn'"):
        convert_norm(nn.BatchNorm2d(4), "gn")
    with pytest.raises(TypeError, match="does not take momentum"):
        convert_norm(nn.BatchNorm2d(4), "groupnorm", momentum=0.1)
    with pytest.raises(ValueError, match="is not a batch-norm layer convert_norm knows"):
        batchnorm_dim(nn.ReLU())


@pytest.mark.parametrize("name", ["batchrenorm", "ghost", "sync"])
def test_convert_between_batchnorm_kinds_keeps_eval_outputs(name: str) -> None:
    model = _net(bnn.BatchNorm2d, bnn.BatchNorm1d)
    model(torch.randn(16, 1, 6, 6) * 2 + 1)
    model.eval()
    x = torch.randn(5, 1, 6, 6)
    converted = convert_norm(model, name)
    torch.testing.assert_close(converted(x), model(x))
    if name != "sync":  # SyncBatchNorm takes any rank: a round trip needs a dim per layer
        back = convert_norm(converted, "batchnorm")
        torch.testing.assert_close(back(x), model(x))


def test_kind_specific_options() -> None:
    assert create_norm("ghost", 4, virtual_batch_size=8).virtual_batch_size == 8
    layer = create_norm("batchrenorm", 4, r_max=2.0, d_max=1.0)
    assert (layer.r_max, layer.d_max) == (2.0, 1.0)
    with pytest.raises(TypeError, match="does not take virtual_batch_size"):
        create_norm("batchrenorm", 4, virtual_batch_size=8)
