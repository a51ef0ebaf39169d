"""float64 ``gradcheck`` / ``gradgradcheck`` of the modules, train and eval, on the total
derivative and per input/parameter (``test/test_modules.py::test_grad``)."""

from __future__ import annotations

import pytest
import torch
from bn_module_cases import BNCase
from bn_module_cases import randomize_ as randomize
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

CASES = [
    BNCase("BatchNorm1d", (4, 2), "2d_input"),
    BNCase("BatchNorm1d", (3, 2, 3), "3d_input"),
    BNCase("BatchNorm2d", (2, 2, 3, 2), "default"),
    BNCase("BatchNorm2d", (2, 2, 3, 2), "untracked", {"track_running_stats": False}),
    BNCase("BatchNorm2d", (2, 2, 3, 2), "momentum_none", {"momentum": None}),
    BNCase("BatchNorm3d", (2, 2, 2, 2, 2), "default"),
]
WRT = ["all", "x", "weight", "bias"]


def _setup(case: BNCase, training: bool):
    gen = torch.Generator().manual_seed(0)
    m = case.ours(dtype=torch.float64).train(training)
    randomize(m, gen)
    x = torch.randn(case.shape, generator=gen, dtype=torch.float64) * 2 + 1
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    return m, x, params


def _function(m, params, wrt):
    names = list(params)

    def f(x, weight, bias):
        ps = dict(params)
        if wrt in ("all", "weight"):
            ps["weight"] = weight
        if wrt in ("all", "bias"):
            ps["bias"] = bias
        assert list(ps) == names
        return functional_call(m, ps, (x,))

    return f


def _args(x, params, wrt):
    return (
        x.clone().requires_grad_(wrt in ("all", "x")),
        params["weight"].clone().requires_grad_(wrt in ("all", "weight")),
        params["bias"].clone().requires_grad_(wrt in ("all", "bias")),
    )


@pytest.mark.parametrize("wrt", WRT)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_module_gradcheck(case, training, wrt) -> None:
    m, x, params = _setup(case, training)
    assert gradcheck(
        _function(m, params, wrt), _args(x, params, wrt), eps=1e-6, atol=1e-7, rtol=1e-5
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_module_gradgradcheck(case, training) -> None:
    m, x, params = _setup(case, training)
    assert gradgradcheck(
        _function(m, params, "all"), _args(x, params, "all"), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_gradcheck_affine_off(training) -> None:
    m = BNCase("BatchNorm2d", (2, 2, 3, 2), "affine_off", {"affine": False}).ours(
        dtype=torch.float64
    )
    randomize(m, torch.Generator().manual_seed(1))
    m.train(training)
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(m, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradgradcheck(m, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_module_gradcheck_channels_last() -> None:
    m = BNCase("BatchNorm2d", (2, 2, 3, 2), "cl").ours(dtype=torch.float64)
    randomize(m, torch.Generator().manual_seed(2))
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert gradcheck(m, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
