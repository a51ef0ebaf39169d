"""Models over the registry (every model x every norm), LeNet's layers, MLP's order, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnlab.nn
import bnlab.textbook
from bnlab import models
from bnlab.models import norms

ALL_NORMS = ("none", "textbook", "bnlab", "torch")
# name -> (model kwargs, input shape, output shape)
MODEL_CASES = {
    "lenet": ({}, (8, 1, 28, 28), (8, 10)),
    "mlp": ({"hidden": (32, 16)}, (8, 1, 28, 28), (8, 10)),
    "mlp-before": ({"hidden": (32,), "norm_position": "before"}, (8, 784), (8, 10)),
    "mlp-sigmoid": ({"hidden": (24,), "activation": "sigmoid", "num_classes": 3}, (8, 784), (8, 3)),
}
NORM_TYPES = {
    ("textbook", "2d"): bnlab.textbook.BatchNorm,
    ("textbook", "1d"): bnlab.textbook.BatchNorm,
    ("bnlab", "2d"): bnlab.nn.BatchNorm2d,
    ("bnlab", "1d"): bnlab.nn.BatchNorm1d,
    ("torch", "2d"): nn.BatchNorm2d,
    ("torch", "1d"): nn.BatchNorm1d,
}


def _build(case: str, norm: str) -> nn.Module:
    kwargs = MODEL_CASES[case][0]
    torch.manual_seed(0)
    return models.create(case.split("-")[0], norm=norm, **kwargs)


def test_registries_list_the_builtins() -> None:
    assert models.available()[:2] == ("lenet", "mlp")
    assert models.available_norms()[:4] == ALL_NORMS


@pytest.mark.parametrize("norm", ALL_NORMS)
@pytest.mark.parametrize("case", MODEL_CASES)
def test_forward_backward_eval(case: str, norm: str) -> None:
    _, in_shape, out_shape = MODEL_CASES[case]
    model = _build(case, norm)
    reference = copy.deepcopy(model).double()  # the same model in float64
    x = torch.randn(in_shape, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    y = model(x)
    assert y.shape == out_shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    reference(x.double()).square().mean().backward()
    exact = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        # (A bias right before a batch norm gets a zero gradient: BN removes the mean.)
        # A weight's gradient is not: the float64 run shows it clearly nonzero, and the
        # float32 one is within 1e-2 of its size (rounding: about 1e-5, measured), so it
        # cannot be all zero whatever the order of the sums.
        if p.dim() >= 2:
            want = exact[name].grad
            size = want.abs().max().item()
            assert size > 0, f"{name}: the float64 gradient is all zero"
            error = (p.grad.double() - want).abs().max().item()
            assert error <= 1e-2 * size, f"{name} grad differs from float64 by {error:.3g}"
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x[:3])
    assert torch.isfinite(first).all()
    # Eval mode: each sample's output depends on that sample only, and repeats. Not
    # bitwise: another batch size (or buffer alignment, for MKL) may change the order of
    # the float32 sums of the convolutions and matmuls, each off by a few eps of the
    # largest values (measured: at most 3 eps * max |y| against float64). A sample mixed
    # with the others, or a changed state, moves the logits far beyond this bound.
    atol = 64 * torch.finfo(torch.float32).eps * first.abs().max().item()
    torch.testing.assert_close(second, first[:3], rtol=0, atol=atol)
    with torch.no_grad():
        torch.testing.assert_close(model(x), first, rtol=0, atol=atol)


@pytest.mark.parametrize("norm", ALL_NORMS)
def test_train_mode_updates_running_statistics(norm: str) -> None:
    model = _build("lenet", norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(4, 1, 28, 28))
    after = model.state_dict()
    # Exact both ways: parameters see no arithmetic in a forward; the statistics move by
    # momentum * (batch statistic - initial value), far above rounding.
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    if norm == "none":
        assert changed == []
    else:
        # The statistics buffers of all four norm layers move; parameters do not.
        assert len(changed) >= 8
        assert all(k.startswith("norm") for k in changed)


def _signature(model: nn.Module) -> list[tuple[str, str, tuple]]:
    rows = []
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d):
            args = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.Linear):
            args = (m.in_features, m.out_features)
        elif isinstance(m, nn.AvgPool2d):
            args = (m.kernel_size, m.stride)
        elif isinstance(m, bnlab.textbook.BatchNorm):
            args = (m.num_features, m.num_dims)
        elif hasattr(m, "num_features"):
            args = (m.num_features,)
        else:
            args = ()
        rows.append((name, type(m).__name__, args))
    return rows


D2L_LENET_BN = [
    ("conv1", "Conv2d", (1, 6, (5, 5), (1, 1), (0, 0))),
    ("norm1", "NORM2", (6,)),
    ("act1", "Sigmoid", ()),
    ("pool1", "AvgPool2d", (2, 2)),
    ("conv2", "Conv2d", (6, 16, (5, 5), (1, 1), (0, 0))),
    ("norm2", "NORM2", (16,)),
    ("act2", "Sigmoid", ()),
    ("pool2", "AvgPool2d", (2, 2)),
    ("flatten", "Flatten", ()),
    ("fc1", "Linear", (256, 120)),
    ("norm3", "NORM1", (120,)),
    ("act3", "Sigmoid", ()),
    ("fc2", "Linear", (120, 84)),
    ("norm4", "NORM1", (84,)),
    ("act4", "Sigmoid", ()),
    ("fc3", "Linear", (84, 10)),
]


@pytest.mark.parametrize("norm", ALL_NORMS)
def test_lenet_layers_are_the_d2l_bn_chapter(norm: str) -> None:
    expected = []
    for name, kind, args in D2L_LENET_BN:
        if kind.startswith("NORM"):
            if norm == "none":
                continue
            dims = "2d" if kind == "NORM2" else "1d"
            cls = NORM_TYPES[(norm, dims)]
            kind = cls.__name__
            if norm == "textbook":
                args = (*args, 4 if dims == "2d" else 2)
        expected.append((name, kind, args))
    model = models.create("lenet", norm=norm)
    assert isinstance(model, models.LeNet)
    assert _signature(model) == expected
    for name, _, _ in expected:
        if name.startswith("norm"):
            assert (
                type(getattr(model, name))
                is NORM_TYPES[(norm, "2d" if name in ("norm1", "norm2") else "1d")]
            )


def test_lenet_without_norm_has_d2l_parameter_count() -> None:
    # conv1 156 + conv2 2416 + fc1 30840 + fc2 10164 + fc3 850 (d2l's LeNet-BN minus norms).
    model = models.LeNet()
    assert sum(p.numel() for p in model.parameters()) == 44426
    # Each BN layer adds gamma and beta: 2 * (6 + 16 + 120 + 84).
    bn = models.LeNet("bnlab")
    assert sum(p.numel() for p in bn.parameters()) == 44426 + 452


@pytest.mark.parametrize(("activation", "cls"), [("relu", nn.ReLU), ("tanh", nn.Tanh)])
def test_lenet_activation_swaps_only_the_four_sigmoids(activation: str, cls: type) -> None:
    default = models.LeNet("bnlab")
    swapped = models.create("lenet", norm="bnlab", activation=activation)
    assert [n for n, _ in swapped.named_children()] == [n for n, _ in default.named_children()]
    for name, module in swapped.named_children():
        expected = cls if name.startswith("act") else type(getattr(default, name))
        assert type(module) is expected, name
    assert default.activation == "sigmoid"
    assert "activation" not in repr(default)
    assert f"activation={activation!r}" in repr(swapped)
    assert swapped(torch.randn(4, 1, 28, 28)).shape == (4, 10)


@pytest.mark.parametrize(
    ("position", "order"), [("after", ["act1", "norm1"]), ("before", ["norm1", "act1"])]
)
@pytest.mark.parametrize("norm", ["textbook", "bnlab", "torch"])
def test_mlp_norm_position(norm: str, position: str, order: list[str]) -> None:
    model = models.create("mlp", norm=norm, hidden=(20, 10), norm_position=position)
    names = [name for name, _ in model.named_children()]
    second = [n.replace("1", "2") for n in order]
    assert names == ["flatten", "fc1", *order, "fc2", *second, "out"]
    assert isinstance(model.act1, nn.ReLU)
    assert type(model.norm1) is NORM_TYPES[(norm, "1d")]
    assert (model.fc1.in_features, model.fc1.out_features) == (784, 20)
    assert (model.fc2.in_features, model.fc2.out_features) == (20, 10)
    assert (model.out.in_features, model.out.out_features) == (10, 10)


def test_mlp_without_norm_and_without_hidden_layers() -> None:
    names = [n for n, _ in models.MLP(hidden=(5,)).named_children()]
    assert names == ["flatten", "fc1", "act1", "out"]
    linear = models.MLP("bnlab", hidden=(), in_features=12, num_classes=3)
    assert [n for n, _ in linear.named_children()] == ["flatten", "out"]
    assert linear(torch.randn(2, 3, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    ("kind", "expected"), [("2d", (1, 5, 1, 1)), ("1d", (1, 5))], ids=["2d", "1d"]
)
def test_make_norm_textbook_shapes(kind: str, expected: tuple[int, ...]) -> None:
    layer = models.make_norm("textbook", 5, kind)
    assert layer.gamma.shape == expected


@pytest.mark.parametrize(("norm", "kind"), list(NORM_TYPES))
def test_make_norm_builds_the_named_class(norm: str, kind: str) -> None:
    layer = models.make_norm(norm, 7, kind)
    assert type(layer) is NORM_TYPES[(norm, kind)]
    assert layer.num_features == 7
    assert models.is_norm_layer(layer)


def test_make_norm_none_is_an_empty_slot() -> None:
    assert models.make_norm("none", 7, "1d") is None


@pytest.mark.parametrize("norm", ["textbook", "bnlab", "torch"])
def test_first_norm_affine_reads_gamma_and_beta(norm: str) -> None:
    model = models.create("lenet", norm=norm)
    assert models.first_norm(model) is model.norm1
    with torch.no_grad():
        params = dict(model.norm1.named_parameters())
        scale, shift = (
            params.get("weight", params.get("gamma")),
            params.get("bias", params.get("beta")),
        )
        scale.copy_(torch.arange(6.0).reshape(scale.shape))
        shift.fill_(-2.0)
    gamma, beta = models.first_norm_affine(model)
    assert gamma.shape == beta.shape == (6,)
    # Exact: values set by assignment and read back.
    assert torch.equal(gamma, torch.arange(6.0))
    assert torch.equal(beta, torch.full((6,), -2.0))
    assert not gamma.requires_grad


def test_first_norm_of_a_model_without_norm() -> None:
    with pytest.raises(
        ValueError, match=r"^LeNet has no normalization layer \(was it built with norm='none'\?\)$"
    ):
        models.first_norm(models.LeNet())


def test_first_norm_affine_without_affine_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False))
    with pytest.raises(ValueError, match=r"\(BatchNorm1d\) has no affine parameters"):
        models.first_norm_affine(model)


# Every error message of the models package, rendered.
ERROR_CASES = [
    (
        lambda: models.create("lenet", norm="batchnrom"),
        ValueError,
        lambda: "unknown norm 'batchnrom'; choose one of: " + ", ".join(models.available_norms()),
    ),
    (
        lambda: models.create("resnet"),
        ValueError,
        lambda: f"unknown model 'resnet'; choose one of: {', '.join(models.available())}",
    ),
    (
        lambda: models.LeNet("BN"),
        ValueError,
        lambda: "unknown norm 'BN'; choose one of: " + ", ".join(models.available_norms()),
    ),
    (
        lambda: models.make_norm("bnlab", 4, "3d"),
        ValueError,
        "unknown norm kind '3d'; choose one of: 1d, 2d",
    ),
    (lambda: models.make_norm("bnlab", 0), ValueError, "num_features must be positive, got 0"),
    (
        lambda: models.make_norm("bnlab", 4.0),
        TypeError,
        "num_features must be an int, got 4.0 of type float",
    ),
    (lambda: models.LeNet(num_classes=0), ValueError, "LeNet: num_classes must be positive, got 0"),
    (
        lambda: models.LeNet(activation="gelu"),
        ValueError,
        "LeNet: unknown activation 'gelu'; choose one of: relu, sigmoid, tanh",
    ),
    (
        lambda: models.MLP(norm_position="middle"),
        ValueError,
        "MLP: unknown norm_position 'middle'; choose one of: after, before",
    ),
    (
        lambda: models.MLP(activation="gelu"),
        ValueError,
        "MLP: unknown activation 'gelu'; choose one of: relu, sigmoid, tanh",
    ),
    (
        lambda: models.MLP(hidden=100),
        TypeError,
        "MLP: hidden must be a sequence of ints such as (100,), got 100",
    ),
    (lambda: models.MLP(hidden=(10, -1)), ValueError, "MLP: hidden[1] must be positive, got -1"),
    (
        lambda: models.MLP(hidden=(10, 2.5)),
        TypeError,
        "MLP: hidden[1] must be an int, got 2.5 of type float",
    ),
    (
        lambda: models.MLP(in_features=True),
        TypeError,
        "MLP: in_features must be an int, got True of type bool",
    ),
    (
        lambda: models.register_norm("bnlab", lambda n, k: nn.Identity()),
        ValueError,
        "norm 'bnlab' is already registered; pass overwrite=True to replace it",
    ),
    (
        lambda: models.register_norm("none", lambda n, k: nn.Identity()),
        ValueError,
        "norm name must be a non-empty lower-case string other than 'none', got 'none'",
    ),
    (
        lambda: models.register_norm("GroupNorm", lambda n, k: nn.Identity()),
        ValueError,
        "norm name must be a non-empty lower-case string other than 'none', got 'GroupNorm'",
    ),
    (
        lambda: models.register_norm("x", 3),
        TypeError,
        "norm factory for 'x' must be callable, got int",
    ),
    (
        lambda: models.register_model("lenet", models.LeNet),
        ValueError,
        "model 'lenet' is already registered; pass overwrite=True to replace it",
    ),
    (
        lambda: models.register_model("", models.LeNet),
        ValueError,
        "model name must be a non-empty lower-case string, got ''",
    ),
    (
        lambda: models.register_model("y", None),
        TypeError,
        "model builder for 'y' must be callable, got NoneType",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    ERROR_CASES,
    ids=[c[2][:40] if isinstance(c[2], str) else c[2]()[:40] for c in ERROR_CASES],
)
def test_error_messages(call, error: type[Exception], message) -> None:
    # A message that lists the registered norms is built when the test runs.
    expected = message() if callable(message) else message
    with pytest.raises(error) as exc:
        call()
    assert str(exc.value) == expected


def test_create_passes_options_to_the_model() -> None:
    with pytest.raises(TypeError, match="hidden"):
        models.create("lenet", hidden=(3,))
    assert models.create("lenet", num_classes=4)(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_register_norm_extends_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norms, "_FACTORIES", dict(norms._FACTORIES))

    def groupnorm(num_features: int, kind: str) -> nn.Module:
        return nn.GroupNorm(1, num_features) if kind == "2d" else nn.LayerNorm(num_features)

    models.register_norm("groupnorm1", groupnorm)
    assert models.available_norms()[-1] == "groupnorm1"
    lenet = models.create("lenet", norm="groupnorm1")
    assert isinstance(lenet.norm1, nn.GroupNorm)
    assert isinstance(lenet.norm3, nn.LayerNorm)
    assert models.first_norm(lenet) is lenet.norm1
    assert lenet(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    mlp = models.create("mlp", norm="groupnorm1", hidden=(8,))
    assert isinstance(mlp.norm1, nn.LayerNorm)


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnlab.models import registry

    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    def tiny(norm: str, *, width: int = 4) -> nn.Module:
        layers = [nn.Flatten(), nn.Linear(784, width)]
        layer = models.make_norm(norm, width, "1d")
        if layer is not None:
            layers.append(layer)
        return nn.Sequential(*layers)

    models.register_model("tiny", tiny)
    assert "tiny" in models.available()
    model = models.create("tiny", norm="torch", width=6)
    assert isinstance(model[2], nn.BatchNorm1d)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 6)
