"""Tests of ``bnlab.textbook``: the d2l scratch batch norm, with the book's bugs fixed.

The module is compared with its twins ``torch.nn.BatchNorm1d/2d`` and
``bnlab.nn.BatchNorm1d/2d`` (same initial state, several train steps, then eval), and
each difference from the book listed in the module docstring has a test here.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import bnlab.nn
from bnlab.textbook import BatchNorm, batch_norm

# (num_dims, input shape, torch twin, bnlab twin, desc)
CASES = [
    pytest.param(2, (16, 5), nn.BatchNorm1d, bnlab.nn.BatchNorm1d, id="linear-(N,C)"),
    pytest.param(4, (6, 3, 5, 4), nn.BatchNorm2d, bnlab.nn.BatchNorm2d, id="conv-(N,C,H,W)"),
]


def _random_input(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    # A per-channel offset and scale, so that the statistics are far from (0, 1).
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    offset = torch.randn(view, generator=gen, dtype=dtype) * 3
    scale = torch.rand(view, generator=gen, dtype=dtype) * 2 + 0.5
    return torch.randn(shape, generator=gen, dtype=dtype) * scale + offset


def _make_twins(
    num_dims: int,
    shape: tuple[int, ...],
    torch_cls: type[nn.Module],
    bnlab_cls: type[nn.Module],
    dtype: torch.dtype,
    **kwargs: Any,
) -> tuple[BatchNorm, nn.Module, nn.Module]:
    """Three modules in the same, non-default, state (random gamma, beta and statistics)."""
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    book = BatchNorm(c, num_dims, **kwargs).to(dtype)
    with torch.no_grad():
        book.gamma.copy_(torch.rand(book.gamma.shape, generator=gen) + 0.5)
        book.beta.copy_(torch.randn(book.beta.shape, generator=gen))
        book.moving_mean.copy_(torch.randn(book.moving_mean.shape, generator=gen))
        book.moving_var.copy_(torch.rand(book.moving_var.shape, generator=gen) + 0.5)
    twin_state = {
        "weight": book.gamma.detach().reshape(c).clone(),
        "bias": book.beta.detach().reshape(c).clone(),
        "running_mean": book.moving_mean.reshape(c).clone(),
        "running_var": book.moving_var.reshape(c).clone(),
        "num_batches_tracked": torch.tensor(0),
    }
    twins = []
    for cls in (torch_cls, bnlab_cls):
        twin = cls(c, **kwargs).to(dtype)
        twin.load_state_dict(twin_state)
        twins.append(twin)
    return book, twins[0], twins[1]


def _step(module: nn.Module, x: Tensor, grad_y: Tensor) -> tuple[Tensor, Tensor]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(grad_y)
    return y.detach(), x.grad


def _assert_same_state(book: BatchNorm, twin: nn.Module, **tol: float) -> None:
    c = book.num_features
    torch.testing.assert_close(book.moving_mean.reshape(c), twin.running_mean, **tol)
    torch.testing.assert_close(book.moving_var.reshape(c), twin.running_var, **tol)


def _assert_same_grads(book: BatchNorm, twin: nn.Module, **tol: float) -> None:
    c = book.num_features
    torch.testing.assert_close(book.gamma.grad.reshape(c), twin.weight.grad, **tol)
    torch.testing.assert_close(book.beta.grad.reshape(c), twin.bias.grad, **tol)


# ------------------------------------------------------------------ twins


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [
        pytest.param(torch.float64, {"rtol": 1e-10, "atol": 1e-10}, id="float64"),
        pytest.param(torch.float32, {"rtol": 1e-4, "atol": 1e-5}, id="float32"),
    ],
)
@pytest.mark.parametrize(("num_dims", "shape", "torch_cls", "bnlab_cls"), CASES)
@pytest.mark.parametrize("twin_name", ["torch.nn", "bnlab.nn"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"eps": 1e-3, "momentum": 0.3}], ids=["defaults", "eps1e-3-momentum0.3"]
)
def test_agrees_with_twins_in_train_then_eval(
    num_dims: int,
    shape: tuple[int, ...],
    torch_cls: type[nn.Module],
    bnlab_cls: type[nn.Module],
    twin_name: str,
    kwargs: dict[str, float],
    dtype: torch.dtype,
    tol: dict[str, float],
) -> None:
    book, torch_twin, bnlab_twin = _make_twins(
        num_dims, shape, torch_cls, bnlab_cls, dtype, **kwargs
    )
    twin = torch_twin if twin_name == "torch.nn" else bnlab_twin
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = _random_input(shape, dtype, gen)
        grad_y = torch.randn(shape, generator=gen, dtype=dtype)
        y_book, gx_book = _step(book, x, grad_y)
        y_twin, gx_twin = _step(twin, x, grad_y)
        torch.testing.assert_close(y_book, y_twin, **tol)
        torch.testing.assert_close(gx_book, gx_twin, **tol)
        _assert_same_grads(book, twin, **tol)
        _assert_same_state(book, twin, **tol)
    book.eval()
    twin.eval()
    x = _random_input(shape, dtype, gen)
    grad_y = torch.randn(shape, generator=gen, dtype=dtype)
    y_book, gx_book = _step(book, x, grad_y)
    y_twin, gx_twin = _step(twin, x, grad_y)
    torch.testing.assert_close(y_book, y_twin, **tol)
    torch.testing.assert_close(gx_book, gx_twin, **tol)
    _assert_same_grads(book, twin, **tol)
    _assert_same_state(book, twin, **tol)


@pytest.mark.parametrize(("num_dims", "shape", "torch_cls", "bnlab_cls"), CASES)
def test_moving_var_uses_unbiased_batch_variance(
    num_dims: int, shape: tuple[int, ...], torch_cls: type, bnlab_cls: type
) -> None:
    # One step from (mean 0, var 1) with momentum 1 leaves exactly the batch statistics.
    book = BatchNorm(shape[1], num_dims, momentum=1.0).double()
    x = _random_input(shape, torch.float64, torch.Generator().manual_seed(2))
    book(x)
    dims = (0,) if num_dims == 2 else (0, 2, 3)
    torch.testing.assert_close(book.moving_mean.flatten(), x.mean(dim=dims))
    torch.testing.assert_close(book.moving_var.flatten(), x.var(dim=dims, unbiased=True))


def test_momentum_is_the_weight_of_the_new_batch() -> None:
    # The book's decay 0.9 (0.9 * old + 0.1 * new) is momentum=0.1 here.
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    ones = torch.ones(1, 4, dtype=torch.float64)
    old_mean = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    _, new_mean, _ = batch_norm(X, ones, 0 * ones, old_mean, ones, 1e-5, 0.1, training=True)
    torch.testing.assert_close(new_mean, 0.9 * old_mean + 0.1 * X.mean(dim=0, keepdim=True))


def test_initial_state_matches_torch_nn() -> None:
    book = BatchNorm(3, 4)
    twin = nn.BatchNorm2d(3)
    assert book.gamma.shape == (1, 3, 1, 1)
    assert book.beta.shape == (1, 3, 1, 1)
    torch.testing.assert_close(book.gamma.flatten(), twin.weight.detach())
    torch.testing.assert_close(book.beta.flatten(), twin.bias.detach())
    torch.testing.assert_close(book.moving_mean.flatten(), twin.running_mean)
    torch.testing.assert_close(book.moving_var.flatten(), twin.running_var)  # ones, not zeros
    assert BatchNorm(7, 2).gamma.shape == (1, 7)
    assert (book.eps, book.momentum) == (twin.eps, twin.momentum)


# ------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 2)], ids=["2D", "4D"])
def test_function_gradcheck_float64(training: bool, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(4)
    stat_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    X = _random_input(shape, torch.float64, gen).requires_grad_(True)
    gamma = (torch.rand(stat_shape, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(stat_shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    moving_mean = torch.randn(stat_shape, generator=gen, dtype=torch.float64)
    moving_var = torch.rand(stat_shape, generator=gen, dtype=torch.float64) + 0.5

    def fn(X: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        Y, _, _ = batch_norm(X, gamma, beta, moving_mean, moving_var, 1e-5, 0.1, training=training)
        return Y

    assert torch.autograd.gradcheck(fn, (X, gamma, beta))
    assert torch.autograd.gradgradcheck(fn, (X, gamma, beta))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("num_dims", "shape"), [(2, (5, 3)), (4, (3, 2, 3, 2))], ids=["2D", "4D"])
def test_module_gradcheck_float64(training: bool, num_dims: int, shape: tuple[int, ...]) -> None:
    book, _, _ = _make_twins(num_dims, shape, nn.BatchNorm1d, bnlab.nn.BatchNorm1d, torch.float64)
    book.train(training)
    X = _random_input(shape, torch.float64, torch.Generator().manual_seed(5))
    X.requires_grad_(True)
    # Total derivative and per parameter, through the module's own forward.
    assert torch.autograd.gradcheck(book, (X,))
    params = {name: p.detach() for name, p in book.named_parameters()}
    for name in ("gamma", "beta"):

        def fn(p: Tensor, name: str = name) -> Tensor:
            return torch.func.functional_call(book, {**params, name: p}, (X.detach(),))

        assert torch.autograd.gradcheck(fn, (params[name].clone().requires_grad_(True),))


# ------------------------------------------------------------------ the mode


def _trained(num_dims: int, shape: tuple[int, ...]) -> tuple[BatchNorm, Tensor]:
    book, _, _ = _make_twins(num_dims, shape, nn.BatchNorm1d, bnlab.nn.BatchNorm1d, torch.float64)
    gen = torch.Generator().manual_seed(6)
    for _ in range(2):
        book(_random_input(shape, torch.float64, gen))
    return book, _random_input(shape, torch.float64, gen)


def _with_moving_stats(book: BatchNorm, X: Tensor) -> Tensor:
    X_hat = (X - book.moving_mean) / torch.sqrt(book.moving_var + book.eps)
    return (book.gamma * X_hat + book.beta).detach()


@pytest.mark.parametrize("grad_enabled", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize(("num_dims", "shape"), [(2, (8, 3)), (4, (4, 3, 2, 5))], ids=["2D", "4D"])
def test_eval_uses_moving_stats_with_or_without_grad(
    grad_enabled: bool, num_dims: int, shape: tuple[int, ...]
) -> None:
    # The book picks the mode with torch.is_grad_enabled(): eval with grad enabled would
    # normalize with the batch statistics and update the moving ones.
    book, X = _trained(num_dims, shape)
    book.eval()
    before = {k: v.clone() for k, v in book.state_dict().items()}
    with torch.set_grad_enabled(grad_enabled):
        Y = book(X.requires_grad_(grad_enabled))
    torch.testing.assert_close(Y.detach(), _with_moving_stats(book, X.detach()))
    assert Y.requires_grad == grad_enabled
    for key, value in book.state_dict().items():
        assert torch.equal(value, before[key]), key  # exact: eval must not write the buffers


@pytest.mark.parametrize(("num_dims", "shape"), [(2, (8, 3)), (4, (4, 3, 2, 5))], ids=["2D", "4D"])
def test_train_under_no_grad_uses_batch_stats(num_dims: int, shape: tuple[int, ...]) -> None:
    # The book would switch to the moving statistics under torch.no_grad().
    book, X = _trained(num_dims, shape)
    twin = nn.BatchNorm1d(3) if num_dims == 2 else nn.BatchNorm2d(3)
    twin = twin.double()
    twin.load_state_dict(
        {
            "weight": book.gamma.detach().flatten(),
            "bias": book.beta.detach().flatten(),
            "running_mean": book.moving_mean.flatten(),
            "running_var": book.moving_var.flatten(),
            "num_batches_tracked": torch.tensor(2),
        }
    )
    book.train()
    with torch.no_grad():
        Y = book(X)
        Y_twin = twin(X)
    dims = (0,) if num_dims == 2 else (0, 2, 3)
    X_hat = (Y - book.beta) / book.gamma
    torch.testing.assert_close(X_hat.mean(dim=dims), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(Y, Y_twin)
    _assert_same_state(book, twin)


# ------------------------------------------------------------------ errors

CONFIG_ERRORS = [
    pytest.param(
        {"num_features": 0, "num_dims": 2},
        ValueError,
        "num_features must be > 0 (the number of channels), got 0",
        id="num_features-0",
    ),
    pytest.param(
        {"num_features": 3.0, "num_dims": 2},
        TypeError,
        "num_features must be an int (the number of channels), got 3.0 of type float",
        id="num_features-float",
    ),
    pytest.param(
        {"num_features": 3, "num_dims": 3},
        ValueError,
        "num_dims must be 2 (after a Linear layer, inputs (N, C)) or 4 (after a Conv2d "
        "layer, inputs (N, C, H, W)), got 3",
        id="num_dims-3",
    ),
    pytest.param(
        {"num_features": 3, "num_dims": 2, "eps": 0.0},
        ValueError,
        "eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got 0.0",
        id="eps-0",
    ),
    pytest.param(
        {"num_features": 3, "num_dims": 2, "eps": "1e-5"},
        TypeError,
        "eps must be a float, got '1e-5' of type str",
        id="eps-str",
    ),
    pytest.param(
        {"num_features": 3, "num_dims": 4, "momentum": 1.9},
        ValueError,
        "momentum must be in [0, 1] (the weight of the new batch, PyTorch's convention; "
        "the book's decay 0.9 is momentum=0.1), got 1.9",
        id="momentum-1.9",
    ),
    pytest.param(
        {"num_features": 3, "num_dims": 4, "momentum": None},
        TypeError,
        "momentum must be a float, got None of type NoneType",
        id="momentum-None",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), CONFIG_ERRORS)
def test_constructor_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(f"BatchNorm: {message}") + "$"):
        BatchNorm(**kwargs)


_ONE_VALUE = (
    "batch_norm: expected more than 1 value per channel in training (the unbiased "
    "variance divides by n - 1), got input of shape"
)
_CHANNELS = "BatchNorm: expected 3 channels in dim 1, got"
_BUILT = "the layer was built with num_features=3"
FORWARD_ERRORS = [
    pytest.param(
        2,
        (4, 3, 5),
        "BatchNorm: expected 2D input (N, C) (num_dims=2), got 3D input of shape (4, 3, 5)",
        id="3D-to-2D",
    ),
    pytest.param(
        2,
        (4, 3, 5, 5),
        "BatchNorm: expected 2D input (N, C) (num_dims=2), got 4D input of shape (4, 3, 5, 5)",
        id="4D-to-2D",
    ),
    pytest.param(
        4,
        (4, 3),
        "BatchNorm: expected 4D input (N, C, H, W) (num_dims=4), got 2D input of shape (4, 3)",
        id="2D-to-4D",
    ),
    pytest.param(2, (4, 5), f"{_CHANNELS} 5 (input of shape (4, 5)); {_BUILT}", id="C-2D"),
    pytest.param(
        4, (4, 2, 5, 5), f"{_CHANNELS} 2 (input of shape (4, 2, 5, 5)); {_BUILT}", id="C-4D"
    ),
    pytest.param(2, (1, 3), f"{_ONE_VALUE} (1, 3)", id="one-value-2D"),
    pytest.param(4, (1, 3, 1, 1), f"{_ONE_VALUE} (1, 3, 1, 1)", id="one-value-4D"),
]


@pytest.mark.parametrize(("num_dims", "shape", "message"), FORWARD_ERRORS)
def test_forward_errors(num_dims: int, shape: tuple[int, ...], message: str) -> None:
    book = BatchNorm(3, num_dims)
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        book(torch.randn(shape))


def test_one_value_per_channel_is_fine_in_eval() -> None:
    book = BatchNorm(3, 2).eval()
    torch.testing.assert_close(book(torch.ones(1, 3)), torch.ones(1, 3) / (1 + 1e-5) ** 0.5)


def test_function_rejects_other_ranks() -> None:
    X = torch.randn(4, 3, 5)
    g = torch.ones(1, 3, 1)
    message = (
        "batch_norm: expected a 2D input (N, C) or a 4D input (N, C, H, W), "
        "got 3D input of shape (4, 3, 5)"
    )
    for training in (True, False):
        with pytest.raises(ValueError, match=re.escape(message) + "$"):
            batch_norm(X, g, 0 * g, 0 * g, g, 1e-5, 0.1, training=training)


# ------------------------------------------------------------------ state


def test_buffers_follow_to_dtype_and_state_dict() -> None:
    book = BatchNorm(3, 4)
    assert dict(book.named_buffers()).keys() == {"moving_mean", "moving_var"}
    assert book.state_dict().keys() == {"gamma", "beta", "moving_mean", "moving_var"}
    book = book.to(torch.float64)
    for name, tensor in book.state_dict().items():
        assert tensor.dtype == torch.float64, name
    X = _random_input((4, 3, 2, 2), torch.float64, torch.Generator().manual_seed(7))
    Y = book(X)
    assert Y.dtype == book.moving_mean.dtype == book.moving_var.dtype == torch.float64


def test_state_dict_round_trip() -> None:
    book, X = _trained(4, (4, 3, 2, 5))
    fresh = BatchNorm(3, 4).double()
    fresh.load_state_dict(book.state_dict())
    book.eval()
    fresh.eval()
    # Exact: fresh holds copies of book's tensors (load_state_dict), and the same code on
    # the same bits in one process gives the same bits.
    torch.testing.assert_close(fresh(X), book(X), rtol=0, atol=0)
    for key, value in book.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_deepcopy_is_independent() -> None:
    book, X = _trained(2, (8, 3))
    clone = copy.deepcopy(book)
    before = {k: v.clone() for k, v in book.state_dict().items()}
    clone(X)  # a train step on the copy only
    # A fresh batch moves the copy's moving mean by O(0.1), far above rounding.
    assert not torch.equal(clone.moving_mean, book.moving_mean)
    for key, value in book.state_dict().items():
        assert torch.equal(value, before[key]), key  # exact: the original is not written


def test_buffers_are_updated_in_place() -> None:
    book = BatchNorm(3, 2)
    moving_mean, moving_var = book.moving_mean, book.moving_var
    book(torch.randn(8, 3) + 2)
    assert book.moving_mean is moving_mean
    assert book.moving_var is moving_var
    assert not moving_mean.requires_grad
    assert not moving_var.requires_grad
    assert moving_mean.abs().min() > 0  # a batch mean near 2 moves it by O(0.1 * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_moves_buffers() -> None:
    book = BatchNorm(3, 4).to("cuda")
    assert book.moving_mean.is_cuda
    assert book.moving_var.is_cuda
    book(torch.randn(4, 3, 2, 2, device="cuda"))


def test_repr() -> None:
    assert repr(BatchNorm(3, 4, eps=1e-3)) == "BatchNorm(3, num_dims=4, eps=0.001, momentum=0.1)"
