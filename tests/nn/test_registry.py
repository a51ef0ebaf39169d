"""The one norm registry: every name, alias, dim and implementation; create_norm,
get_norm_layer and convert_norm; options, errors, state carry-over."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from torch import nn

import bnlab.nn as bnn
from bnlab.nn.registry import (
    NormSpec,
    available_norm_layers,
    available_norms,
    batchnorm_dim,
    convert_norm,
    create_norm,
    get_norm_layer,
    norm_implementations,
    register_norm_layer,
    resolve_norm,
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
    # One message for every entry point: the bad value, then every canonical name.
    expected = "unknown norm 'batchnrom'; choose one of: " + ", ".join(available_norms())
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        create_norm("batchnrom", 4)
    assert "batchnorm, layernorm, groupnorm" in expected


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
    with pytest.raises(ValueError, match="unknown norm 'gm'; choose one of: none, "):
        convert_norm(nn.BatchNorm2d(4), "gm")
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


# Forgiving names (timm's get_norm_layer): case, "_" and "-" do not matter; short and
# class names; a 1d/2d/3d suffix implies the dim, an implementation name the impl.
ALIASES = {
    "batchnorm": NormSpec("batchnorm"),
    "bn": NormSpec("batchnorm"),
    "BN": NormSpec("batchnorm"),
    "batch_norm": NormSpec("batchnorm"),
    "Batch-Norm": NormSpec("batchnorm"),
    "BatchNorm1d": NormSpec("batchnorm", dim=1),
    "BatchNorm2d": NormSpec("batchnorm", dim=2),
    "batchnorm3d": NormSpec("batchnorm", dim=3),
    "bn2d": NormSpec("batchnorm", dim=2),
    "bnlab": NormSpec("batchnorm", impl="bnlab"),
    "torch": NormSpec("batchnorm", impl="torch"),
    "Torch": NormSpec("batchnorm", impl="torch"),
    "textbook": NormSpec("batchnorm", impl="textbook"),
    "layernorm": NormSpec("layernorm"),
    "ln": NormSpec("layernorm"),
    "LayerNorm": NormSpec("layernorm"),
    "layer_norm": NormSpec("layernorm"),
    "groupnorm": NormSpec("groupnorm"),
    "gn": NormSpec("groupnorm"),
    "GroupNorm": NormSpec("groupnorm"),
    "group_norm": NormSpec("groupnorm"),
    "instancenorm": NormSpec("instancenorm"),
    "in": NormSpec("instancenorm"),
    "IN": NormSpec("instancenorm"),
    "instance_norm": NormSpec("instancenorm"),
    "InstanceNorm2d": NormSpec("instancenorm", dim=2),
    "frozen": NormSpec("frozen"),
    "frozen_bn": NormSpec("frozen"),
    "FrozenBatchNorm2d": NormSpec("frozen", dim=2),
    "batchrenorm": NormSpec("batchrenorm"),
    "renorm": NormSpec("batchrenorm"),
    "BatchRenorm2d": NormSpec("batchrenorm", dim=2),
    "ghost": NormSpec("ghost"),
    "ghost_bn": NormSpec("ghost"),
    "GhostBatchNorm1d": NormSpec("ghost", dim=1),
    "sync": NormSpec("sync"),
    "syncbn": NormSpec("sync"),
    "SyncBatchNorm": NormSpec("sync"),
    "none": NormSpec("none"),
    "None": NormSpec("none"),
}


@pytest.mark.parametrize("alias", ALIASES)
def test_every_alias_resolves(alias: str) -> None:
    assert resolve_norm(alias) == ALIASES[alias]


def test_every_registered_spelling_resolves_to_its_kind() -> None:
    from bnlab.nn import registry

    for key, kind in registry._ALIASES.items():
        assert resolve_norm(key).name == kind
        assert resolve_norm(key.upper()).name == kind
    for name in available_norms():
        assert resolve_norm(name, exact=True) == resolve_norm(name)


def test_aliases_build_the_same_layers() -> None:
    assert type(create_norm("bn", 4)) is bnn.BatchNorm2d
    assert type(create_norm("BatchNorm1d", 4)) is bnn.BatchNorm1d
    assert type(create_norm("InstanceNorm1d", 4)) is bnn.InstanceNorm1d
    assert type(create_norm("GN", 8)) is bnn.GroupNorm
    assert type(create_norm("ln", 8, dim=0)) is bnn.LayerNorm
    assert type(create_norm("FrozenBatchNorm2d", 4)) is bnn.FrozenBatchNorm2d
    assert type(create_norm("torch", 4)) is nn.BatchNorm2d


def test_explicit_dim_and_impl_win_over_the_name() -> None:
    assert type(create_norm("BatchNorm1d", 4, dim=2)) is bnn.BatchNorm2d
    assert type(create_norm("torch", 4, impl="bnlab")) is bnn.BatchNorm2d
    assert type(create_norm("bnlab", 4, impl="torch")) is nn.BatchNorm2d


@pytest.mark.parametrize("alias", ["bn", "BatchNorm2d", "batch_norm", "GN", "ln", "in", "BNLAB"])
def test_exact_names_only_where_asked(alias: str) -> None:
    resolve_norm(alias)  # forgiving by default
    expected = f"unknown norm {alias!r}; choose one of: " + ", ".join(available_norms())
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        resolve_norm(alias, exact=True)


def test_unknown_names_render_the_value_and_the_choices() -> None:
    choices = ", ".join(available_norms())
    for bad in ["batchnrom", "", "gn3", "bn4d", "groupnorm1"]:
        expected = f"unknown norm {bad!r}; choose one of: {choices}"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            resolve_norm(bad)
    with pytest.raises(ValueError, match=r"^unknown norm 3; choose one of: none, "):
        create_norm(3, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"; choose one of: none, .*, sync, extra$"):
        resolve_norm("x", also=("extra",))


def test_available_norms_lists_none_the_implementations_and_the_kinds() -> None:
    names = available_norms()
    assert names[0] == "none"
    assert names[-len(available_norm_layers()) :] == available_norm_layers()
    assert {"bnlab", "torch"} <= set(names)
    assert available_norm_layers()[:3] == ("batchnorm", "layernorm", "groupnorm")


TORCH_EXPECTED = {
    ("batchnorm", 0): nn.BatchNorm1d,
    ("batchnorm", 1): nn.BatchNorm1d,
    ("batchnorm", 2): nn.BatchNorm2d,
    ("batchnorm", 3): nn.BatchNorm3d,
    ("layernorm", 0): nn.LayerNorm,
    ("layernorm", 2): nn.GroupNorm,
    ("groupnorm", 2): nn.GroupNorm,
    ("instancenorm", 1): nn.InstanceNorm1d,
    ("instancenorm", 2): nn.InstanceNorm2d,
    ("instancenorm", 3): nn.InstanceNorm3d,
}


@pytest.mark.parametrize(("name", "dim"), sorted(TORCH_EXPECTED))
def test_torch_implementation_builds_the_torch_class(name: str, dim: int) -> None:
    layer = create_norm(name, 6, dim=dim, impl="torch", dtype=torch.float64)
    assert type(layer) is TORCH_EXPECTED[(name, dim)]
    twin = create_norm(name, 6, dim=dim, dtype=torch.float64)
    twin.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(_input(dim)), twin(_input(dim)))


def test_torch_implementation_takes_the_same_options() -> None:
    assert create_norm("groupnorm", 64, impl="torch").num_groups == 32
    assert create_norm("gn", 12, impl="torch", num_groups=3).num_groups == 3
    assert create_norm("in", 4, impl="torch", affine=True).affine
    assert create_norm("layernorm", 6, dim=0, impl="torch", affine=False).weight is None
    with pytest.raises(
        TypeError, match=r"^norm layer 'groupnorm' \(dim 2, torch\) does not take momentum; "
    ):
        create_norm("groupnorm", 8, impl="torch", momentum=0.1)


def test_textbook_implementation_builds_d2l_layer() -> None:
    import bnlab.models  # registers batch norm's textbook implementation
    import bnlab.textbook

    assert norm_implementations("bn") == ("textbook", "bnlab", "torch")
    assert available_norms()[:4] == ("none", "textbook", "bnlab", "torch")
    for name, dim, num_dims in [("textbook", 2, 4), ("textbook", 0, 2), ("bn", 2, 4)]:
        layer = create_norm(name, 5, dim=dim, impl="textbook", momentum=0.2)
        assert type(layer) is bnlab.textbook.BatchNorm
        assert (layer.num_dims, layer.momentum) == (num_dims, 0.2)
    with pytest.raises(ValueError, match=r"^textbook: d2l's BatchNorm takes .* got dim 1$"):
        create_norm("textbook", 5, dim=1)
    with pytest.raises(TypeError, match=r"\(dim 2, textbook\) does not take affine; it takes: eps"):
        create_norm("textbook", 5, affine=False)


def test_missing_implementation_lists_those_there_are() -> None:
    assert norm_implementations("ghost") == ("bnlab",)
    assert norm_implementations("none") == ()
    with pytest.raises(
        ValueError, match=r"^norm layer 'ghost' has no 'torch' implementation; it has: bnlab$"
    ):
        create_norm("ghost", 4, impl="torch")


def test_get_norm_layer_fills_a_norm_layer_slot() -> None:
    def block(norm_layer) -> nn.Sequential:  # a timm-style block with a norm_layer= slot
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), norm_layer(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

    x = torch.randn(2, 3, 6, 6)
    gn = block(get_norm_layer("gn", num_groups=2))
    assert type(gn[1]) is bnn.GroupNorm
    assert gn[1].num_groups == 2
    assert gn(x).shape == (2, 4, 4, 4)
    ours, theirs = block(get_norm_layer("bn")), block(get_norm_layer("BatchNorm2d", impl="torch"))
    assert (type(ours[1]), type(theirs[1])) == (bnn.BatchNorm2d, nn.BatchNorm2d)
    torch.testing.assert_close(ours(x), theirs(x))
    factory = get_norm_layer("ghost", virtual_batch_size=2)
    assert factory(4).virtual_batch_size == 2
    assert factory(4) is not factory(4)
    # A plain value: it pickles and hashes (configs, DataLoader workers, caches).
    assert pickle.loads(pickle.dumps(factory)) == factory
    assert hash(factory) == hash(get_norm_layer("ghost", virtual_batch_size=2))


def test_get_norm_layer_passes_classes_and_none_through() -> None:
    assert get_norm_layer(None) is None
    assert get_norm_layer("none") is None
    assert get_norm_layer("None") is None
    assert get_norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d
    layer = get_norm_layer(nn.BatchNorm2d, eps=1e-3)(4)
    assert (type(layer), layer.eps) == (nn.BatchNorm2d, 1e-3)


def test_get_norm_layer_checks_everything_before_the_slot() -> None:
    with pytest.raises(ValueError, match=r"^unknown norm 'gnn'; choose one of: none, "):
        get_norm_layer("gnn")
    with pytest.raises(TypeError, match=r"norm layer 'groupnorm' \(dim 2\) does not take momentum"):
        get_norm_layer("gn", momentum=0.1)
    with pytest.raises(ValueError, match="dim is the number of spatial dims"):
        get_norm_layer("bn", dim=5)
    with pytest.raises(
        TypeError, match=r"^norm_layer must be a name, a class or a callable, got int$"
    ):
        get_norm_layer(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dim= and impl= apply to norm names only"):
        get_norm_layer(nn.BatchNorm2d, dim=2)
    with pytest.raises(TypeError, match=r"^norm 'none' is no layer and takes no options, got eps$"):
        get_norm_layer("none", eps=1e-3)
    with pytest.raises(ValueError, match="num_features must be positive, got 0"):
        get_norm_layer("bn")(0)


def test_none_is_identity_for_create_and_convert() -> None:
    assert type(create_norm("none", 4)) is nn.Identity
    model = _net(nn.BatchNorm2d, nn.BatchNorm1d)
    stripped = convert_norm(model, "none")
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in stripped.modules())
    assert type(stripped[1]) is nn.Identity
    assert stripped(torch.randn(3, 1, 6, 6)).shape == (3, 6)


def test_convert_takes_forgiving_names_and_an_implementation() -> None:
    model = _net(bnn.BatchNorm2d, bnn.BatchNorm1d)
    model(torch.randn(16, 1, 6, 6) * 2 + 1)
    model.eval()
    assert type(convert_norm(model, "gn")[1]) is bnn.GroupNorm
    as_torch = convert_norm(model, "BN", impl="torch")
    assert (type(as_torch[1]), type(as_torch[6][1])) == (nn.BatchNorm2d, nn.BatchNorm1d)
    x = torch.randn(5, 1, 6, 6)
    torch.testing.assert_close(as_torch(x), model(x))
    sync = nn.Sequential(nn.SyncBatchNorm(4))
    assert type(convert_norm(sync, "InstanceNorm2d")[0]) is bnn.InstanceNorm2d


def test_register_checks_aliases_and_implementations() -> None:
    with pytest.raises(ValueError, match=r"^norm name 'gn' already stands for 'groupnorm'"):
        register_norm_layer(
            "mynorm", lambda c, d: nn.Identity(), lambda d: nn.Identity, aliases=("GN",)
        )
    with pytest.raises(ValueError, match=r"^norm name 'torch' is reserved"):
        register_norm_layer(
            "mynorm", lambda c, d: nn.Identity(), lambda d: nn.Identity, aliases=("torch",)
        )
    with pytest.raises(ValueError, match="unknown implementation 'jax'; choose one of: textbook"):
        register_norm_layer("mynorm", lambda c, d: nn.Identity(), lambda d: nn.Identity, impl="jax")
    with pytest.raises(ValueError, match=r"^torch 'batchnorm' is already registered"):
        register_norm_layer(
            "batchnorm", lambda c, d: nn.Identity(), lambda d: nn.Identity, impl="torch"
        )
    with pytest.raises(ValueError, match="lower-case"):
        register_norm_layer("none", lambda c, d: nn.Identity(), lambda d: nn.Identity)
    assert "mynorm" not in available_norm_layers()


def test_register_adds_a_kind_with_its_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnlab.nn import registry

    for table in ("_BUILDERS", "_TARGETS", "_ALIASES"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    register_norm_layer(
        "rmsish",
        lambda c, dim, **kw: nn.GroupNorm(1, c, **kw),
        lambda dim: nn.GroupNorm,
        aliases=("rms",),
    )
    assert available_norm_layers()[-1] == "rmsish"
    assert available_norms()[-1] == "rmsish"
    assert type(get_norm_layer("RMS", eps=1e-3)(4)) is nn.GroupNorm


def test_add_a_norm_in_one_line_reaches_every_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # CONTRIBUTING's "add a norm": one class, one register_norm_class line; the models,
    # create_norm, get_norm_layer and the model registry's norm names then know it.
    from torch import nn

    from bnlab import models
    from bnlab.nn import registry

    class ScaleOnly(nn.Module):
        def __init__(self, num_features: int, *, init: float = 1.0) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.full((num_features,), init))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))

    # The registration is undone afterwards: the registry's tables are copies here.
    for table in ("_BUILDERS", "_TARGETS", "_ALIASES"):
        monkeypatch.setattr(registry, table, copy.deepcopy(getattr(registry, table)))
    registry.register_norm_class("scaleonly", lambda dim: ScaleOnly, aliases=("so",))
    layer = registry.create_norm("SO", 4, init=2.0)
    assert isinstance(layer, ScaleOnly)
    torch.testing.assert_close(layer.weight, torch.full((4,), 2.0))
    assert isinstance(registry.get_norm_layer("scaleonly")(3), ScaleOnly)
    with pytest.raises(TypeError, match="init"):
        registry.create_norm("scaleonly", 4, momentum=0.1)
    assert "scaleonly" in models.available_norms()
    net = models.create("lenet", norm="scaleonly")
    assert any(isinstance(m, ScaleOnly) for m in net.modules())
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
