"""FrozenBatchNorm1d/2d and freeze_batchnorm: twin of eval-mode BN, buffers only, errors."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import bnlab.nn
from bnlab.functional.batch_norm import batch_norm_eval
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, freeze_batchnorm

CASES = [
    (FrozenBatchNorm1d, nn.BatchNorm1d, (6, 3)),
    (FrozenBatchNorm1d, bnlab.nn.BatchNorm1d, (6, 3, 5)),
    (FrozenBatchNorm2d, nn.BatchNorm2d, (4, 3, 5, 5)),
    (FrozenBatchNorm2d, bnlab.nn.BatchNorm2d, (4, 3, 5, 5)),
]


def _trained_bn(bn_cls: type[nn.Module], shape: tuple[int, ...], **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    bn = bn_cls(shape[1], dtype=torch.float64, **kwargs)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            if bn.bias is not None:
                bn.bias.uniform_(-1.0, 1.0)
    bn.train()
    for _ in range(3):
        bn(torch.randn(*shape, dtype=torch.float64) * 3 + 2)
    return bn.eval()


@pytest.mark.parametrize(("frozen_cls", "bn_cls", "shape"), CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_from_batchnorm_equals_eval_bn_in_train_and_eval(
    frozen_cls: type, bn_cls: type, shape: tuple[int, ...], affine: bool
) -> None:
    bn = _trained_bn(bn_cls, shape, affine=affine)
    frozen = frozen_cls.from_batchnorm(bn)
    x = torch.randn(*shape, dtype=torch.float64)
    expected = bn(x)
    torch.testing.assert_close(frozen.eval()(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(frozen.train()(x), expected, rtol=0, atol=1e-12)
    assert list(frozen.parameters()) == []
    assert sorted(n for n, _ in frozen.named_buffers()) == [
        "bias",
        "running_mean",
        "running_var",
        "weight",
    ]
    assert frozen.eps == bn.eps
    assert frozen.running_mean.dtype == torch.float64


def test_from_batchnorm_without_bias() -> None:
    bn = _trained_bn(bnlab.nn.BatchNorm2d, (4, 3, 2, 2), bias=False)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=1e-12)
    # Exact: a missing bias is stored as zeros, set by assignment.
    assert torch.equal(frozen.bias, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(("frozen_cls", "bn_cls", "shape"), CASES)
def test_loads_a_batchnorm_state_dict(frozen_cls: type, bn_cls: type, shape: tuple) -> None:
    bn = _trained_bn(bn_cls, shape)
    frozen = frozen_cls(shape[1], dtype=torch.float64)
    state = bn.state_dict()
    assert "num_batches_tracked" in state
    frozen.load_state_dict(state)  # strict: num_batches_tracked is dropped
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=1e-12)
    assert "num_batches_tracked" in state  # the caller's dict is not changed


def test_no_gradient_to_buffers_and_buffers_never_change() -> None:
    frozen = FrozenBatchNorm2d.from_batchnorm(_trained_bn(nn.BatchNorm2d, (4, 3, 2, 2)))
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    frozen.train()(x).sum().backward()
    assert x.grad is not None
    for name, buf in frozen.named_buffers():
        assert buf.grad is None
        assert not buf.requires_grad
        # Exact: nothing may write the buffers.
        assert torch.equal(buf, before[name])


def test_uses_batch_norm_eval_precision_with_a_large_offset() -> None:
    frozen = FrozenBatchNorm1d(2)
    with torch.no_grad():
        frozen.running_mean.fill_(1e4)
        frozen.running_var.fill_(1e-6)
    x = 1e4 + 1e-3 * torch.randn(64, 2)
    expected = batch_norm_eval(x, frozen.running_mean, frozen.running_var, None, None, 1e-5)
    # Exact: the module's forward is this very call on the same bits.
    torch.testing.assert_close(frozen(x), expected, rtol=0, atol=0)
    exact = ((x.double() - 1e4) / (1e-6 + 1e-5) ** 0.5).float()
    torch.testing.assert_close(frozen(x), exact, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    ("frozen_cls", "shape"), [(FrozenBatchNorm1d, (3, 2)), (FrozenBatchNorm2d, (2, 3, 2, 2))]
)
def test_gradcheck_float64_wrt_input(frozen_cls: type, shape: tuple, train: bool) -> None:
    torch.manual_seed(0)
    frozen = frozen_cls(shape[1], dtype=torch.float64)
    with torch.no_grad():
        frozen.weight.uniform_(0.5, 2)
        frozen.bias.uniform_(-1, 1)
        frozen.running_mean.uniform_(-1, 1)
        frozen.running_var.uniform_(0.5, 2)
    frozen.train(train)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(frozen, (x,))
    assert torch.autograd.gradgradcheck(frozen, (x,))


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"num_features": 3.0},
            TypeError,
            "FrozenBatchNorm2d: num_features must be an int (the number of channels), got 3.0 of type float",
        ),
        ({"num_features": True}, TypeError, "got True of type bool"),
        (
            {"num_features": 0},
            ValueError,
            "FrozenBatchNorm2d: num_features must be > 0 (the number of channels), got 0",
        ),
        (
            {"num_features": 3, "eps": 0.0},
            ValueError,
            "FrozenBatchNorm2d: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got 0.0",
        ),
        (
            {"num_features": 3, "eps": "1"},
            TypeError,
            "FrozenBatchNorm2d: eps must be a float > 0, got '1' of type str",
        ),
    ],
)
def test_constructor_errors(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        FrozenBatchNorm2d(**kwargs)


@pytest.mark.parametrize(
    ("module", "x", "error", "message"),
    [
        (
            FrozenBatchNorm2d(3),
            torch.zeros(2, 3, 4),
            ValueError,
            "FrozenBatchNorm2d: expected 4D input (N, C, H, W), got 3D input of shape (2, 3, 4)",
        ),
        (
            FrozenBatchNorm1d(3),
            torch.zeros(2, 3, 4, 4),
            ValueError,
            "FrozenBatchNorm1d: expected 2D or 3D input (N, C) or (N, C, L), got 4D input of shape (2, 3, 4, 4)",
        ),
        (
            FrozenBatchNorm2d(3),
            torch.zeros(2, 4, 5, 5),
            ValueError,
            "FrozenBatchNorm2d: expected 3 channels in dim 1, got 4 (input of shape (2, 4, 5, 5)); the layer was built with num_features=3",
        ),
        (
            FrozenBatchNorm1d(3),
            torch.zeros(2, 3, dtype=torch.long),
            TypeError,
            "FrozenBatchNorm1d: expected a floating-point input (float16, bfloat16, float32 or float64), got dtype torch.int64; convert it first, for example with x.float()",
        ),
        (
            FrozenBatchNorm1d(3),
            [[0.0, 1.0, 2.0]],
            TypeError,
            "FrozenBatchNorm1d: expected a torch.Tensor input, got list",
        ),
    ],
)
def test_forward_errors(module: nn.Module, x: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        module(x)


def test_from_batchnorm_errors() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "FrozenBatchNorm2d.from_batchnorm: expected one of torch.nn.modules.batchnorm."
            "BatchNorm2d, bnlab.nn.batchnorm.BatchNorm2d, got BatchNorm1d; freeze a "
            "BatchNorm1d with FrozenBatchNorm1d and a BatchNorm2d with FrozenBatchNorm2d"
        ),
    ):
        FrozenBatchNorm2d.from_batchnorm(nn.BatchNorm1d(3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "FrozenBatchNorm1d.from_batchnorm: BatchNorm1d was built with "
            "track_running_stats=False and has no running statistics to freeze; train it "
            "with track_running_stats=True or recalibrate it first"
        ),
    ):
        FrozenBatchNorm1d.from_batchnorm(bnlab.nn.BatchNorm1d(3, track_running_stats=False))


def test_extra_repr() -> None:
    assert repr(FrozenBatchNorm2d(3, eps=1e-3)) == "FrozenBatchNorm2d(3, eps=0.001)"


# ------------------------------------------------------------------ freeze_batchnorm


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Sequential(bnlab.nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4)),
        bnlab.nn.BatchNorm1d(4),
    )
    model.train()
    for _ in range(3):
        model(torch.randn(8, 2, 4, 4) * 2 + 1)
    return model


def test_freeze_replaces_bn1d_bn2d_and_keeps_the_original() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = freeze_batchnorm(model)
    assert type(frozen[1]) is FrozenBatchNorm2d
    assert type(frozen[3][0]) is FrozenBatchNorm2d
    assert type(frozen[4]) is FrozenBatchNorm1d
    assert frozen.training  # mode kept
    assert type(model[1]) is nn.BatchNorm2d
    assert model.training
    x = torch.randn(8, 2, 4, 4)
    frozen(x)  # train-mode forward changes nothing
    for k, v in model.state_dict().items():
        # Exact: freezing copies; the original's state is never written.
        assert torch.equal(v, before[k])
    torch.testing.assert_close(frozen(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    assert not any("running" in n for n, _ in frozen.named_parameters())


def test_freeze_leaves_3d_and_untracked_and_warns() -> None:
    model = nn.Sequential(nn.BatchNorm3d(2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.warns(
        UserWarning,
        match=re.escape(
            "freeze_batchnorm: left 2 batch norm(s) as they are: 0 (BatchNorm3d: no frozen "
            "twin), 1 (no running statistics)"
        ),
    ):
        frozen = freeze_batchnorm(model)
    assert type(frozen[0]) is nn.BatchNorm3d
    assert type(frozen[1]) is nn.BatchNorm1d


def test_freeze_a_bare_batchnorm_and_no_warning_when_all_frozen() -> None:
    bn = nn.BatchNorm1d(3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frozen = freeze_batchnorm(bn)
    assert type(frozen) is FrozenBatchNorm1d
    assert not frozen.training
    assert type(bn) is nn.BatchNorm1d


def test_freeze_type_error() -> None:
    with pytest.raises(
        TypeError, match=re.escape("freeze_batchnorm: expected an nn.Module, got dict")
    ):
        freeze_batchnorm({})
