"""Fuzz the entry points of ``bnlab.functional`` against ``torch.nn.functional`` in float64.

Each target draws an input (random rank, shape with zero-sized dims, dtype, layout,
NaN/inf), per-channel tensors that are right, missing, of the wrong length or of another
dtype, and argument values in and out of range (``eps``, ``momentum``, ``num_groups``,
``virtual_batch_size``). The contract is the one of ``_fuzz``: equal to the float64
reference (outputs and the returned running statistics), or a documented error naming
the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _fuzz
import pytest
import torch
import torch.nn.functional
from hypothesis import given
from hypothesis import strategies as st

import bnlab.functional as BF
from bnlab.functional.ghost import ghost_chunk_sizes


# Mostly valid values, so that most cases get as far as a comparison.
class TwinRefused(Exception):
    """torch refused an input that bnlab accepted (a reference is then missing)."""


class _Twin:
    """``torch.nn.functional`` whose errors become ``TwinRefused``: bnlab defines a few
    inputs torch refuses (group norm of one value per group: mean = x, var = 0, output =
    bias), and a refusal by the reference is not a bnlab error."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(torch.nn.functional, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise TwinRefused(f"{name}: {exc}") from exc

        return call


F = _Twin()

EPS = st.sampled_from((1e-5, 1e-3) * 5 + (0.0, -1.0, float("nan")))
MOMENTUM = st.sampled_from((0.1, 0.0, 1.0) * 4 + (None, 1.5))


@st.composite
def per_channel(draw: st.DrawFn, channels: int, *, positive: bool = False) -> torch.Tensor | None:
    """A ``(C,)`` tensor, usually right; sometimes None, of the wrong length or dtype."""
    kind = draw(st.sampled_from(("ok",) * 40 + ("none", "none", "length", "float64", "2d")))
    if kind == "none":
        return None
    n = channels + 1 if kind == "length" else channels
    g = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    t = torch.rand(n, generator=g) + 0.5 if positive else torch.randn(n, generator=g)
    if kind == "float64":
        t = t.double()
    if kind == "2d":
        t = t.unsqueeze(0)
    return t


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double().clone()


def _batch_norm(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    rm, rv = data.draw(per_channel(c)), data.draw(per_channel(c, positive=True))
    training = data.draw(st.booleans())
    momentum, eps = data.draw(MOMENTUM), data.draw(EPS)
    out = BF.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum, eps=eps)
    rm64, rv64 = _f64(rm), _f64(rv)
    ref = F.batch_norm(
        x.double(),
        rm64,
        rv64,
        _f64(w),
        _f64(b),
        training,
        0.0 if momentum is None else momentum,
        eps,
    )
    got = {"y": out.output}
    want = {"y": ref}
    if training and rm is not None and momentum is not None and x.numel() > 0:
        got.update(running_mean=out.running_mean, running_var=out.running_var)
        want.update(running_mean=rm64, running_var=rv64)
    return got, want


def _batch_norm_eval(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    rm, rv = data.draw(per_channel(c)), data.draw(per_channel(c, positive=True))
    eps = data.draw(EPS)
    y = BF.batch_norm_eval(x, rm, rv, w, b, eps)
    ref = F.batch_norm(x.double(), _f64(rm), _f64(rv), _f64(w), _f64(b), False, 0.0, eps)
    return {"y": y}, {"y": ref}


def _layer_norm(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    shape = tuple(x.shape[-1:]) if data.draw(st.booleans()) else (c,)
    w = data.draw(per_channel(shape[0] if shape else c))
    b = data.draw(per_channel(shape[0] if shape else c))
    eps = data.draw(EPS)
    y = BF.layer_norm(x, shape, w, b, eps)
    return {"y": y}, {"y": F.layer_norm(x.double(), shape, _f64(w), _f64(b), eps)}


def _group_norm(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    groups = data.draw(st.sampled_from((1, c, 2, 0, -1)))
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    eps = data.draw(EPS)
    y = BF.group_norm(x, groups, w, b, eps)
    return {"y": y}, {"y": F.group_norm(x.double(), groups, _f64(w), _f64(b), eps)}


def _instance_norm(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    rm, rv = data.draw(per_channel(c)), data.draw(per_channel(c, positive=True))
    use_input = data.draw(st.booleans())
    momentum = data.draw(st.sampled_from((0.1, 0.0, 1.0, 1.5)))
    eps = data.draw(EPS)
    out = BF.instance_norm(x, rm, rv, w, b, use_input_stats=use_input, momentum=momentum, eps=eps)
    rm64, rv64 = _f64(rm), _f64(rv)
    ref = F.instance_norm(x.double(), rm64, rv64, _f64(w), _f64(b), use_input, momentum, eps)
    got, want = {"y": out.output}, {"y": ref}
    if use_input and rm is not None:
        got.update(running_mean=out.running_mean, running_var=out.running_var)
        want.update(running_mean=rm64, running_var=rv64)
    return got, want


def _batch_moments(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    mean, var = BF.batch_moments(x)
    dims = [0, *range(2, x.dim())]
    x64 = x.double()
    return {"mean": mean, "var": var}, {
        "mean": x64.mean(dims),
        "var": x64.var(dims, unbiased=False),
    }


def _ghost(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    vbs = data.draw(st.sampled_from((2, 3, 1, 128) * 3 + (0,)))
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    training = True  # without running statistics (eval mode is batch_norm's, fuzzed above)
    kw = {"training": training, "momentum": 0.1, "eps": 1e-5, "virtual_batch_size": vbs}
    out = BF.ghost_batch_norm(x, None, None, w, b, **kw)
    # Reference: each virtual batch through torch's batch norm, in float64.
    x64 = x.double()
    if x.shape[0] == 0:
        ref = x64.clone()
    else:
        spatial = x[0, 0].numel()
        sizes = ghost_chunk_sizes(x.shape[0], vbs, spatial)
        ref = torch.cat(
            [
                F.batch_norm(p, None, None, _f64(w), _f64(b), True, 0.0, 1e-5)
                for p in x64.split(sizes)
            ]
        )
    return {"y": out.output}, {"y": ref}


def _renorm(data: st.DataObject, x: torch.Tensor, c: int) -> tuple[Any, Any]:
    rm, rv = data.draw(per_channel(c)), data.draw(per_channel(c, positive=True))
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    r_max, d_max = data.draw(st.sampled_from(((3.0, 5.0), (1.0, 0.0)) * 3 + ((0.5, 1.0),)))
    out = BF.batch_renorm(x, rm, rv, w, b, training=False, eps=1e-5, r_max=r_max, d_max=d_max)
    # In eval mode batch renorm is batch norm with the running statistics.
    ref = F.batch_norm(x.double(), _f64(rm), _f64(rv), _f64(w), _f64(b), False, 0.0, 1e-5)
    return {"y": out.output}, {"y": ref}


TARGETS: dict[str, tuple[Callable[..., tuple[Any, Any]], tuple[int, ...]]] = {
    "batch_norm": (_batch_norm, (0, 1, 2, 3, 4, 5)),
    "batch_norm_eval": (_batch_norm_eval, (0, 1, 2, 3, 4, 5)),
    "layer_norm": (_layer_norm, (0, 1, 2, 3, 4)),
    "group_norm": (_group_norm, (1, 2, 3, 4)),
    "instance_norm": (_instance_norm, (1, 2, 3, 4, 5)),
    "batch_moments": (_batch_moments, (1, 2, 3, 4)),
    "ghost_batch_norm": (_ghost, (2, 3, 4)),
    "batch_renorm": (_renorm, (1, 2, 3, 4)),
}


@pytest.mark.parametrize("name", list(TARGETS))
@given(data=st.data())
def test_functional_fuzz(name: str, data: st.DataObject) -> None:
    call, ranks = TARGETS[name]
    c = data.draw(st.integers(1, 4), label="channels")
    x, info = data.draw(_fuzz.input_tensors(ranks=ranks, channels=c), label="input")
    target = f"functional.{name}"
    try:
        got, want = call(data, x, c)
    except TwinRefused:
        _fuzz.record(target, "twin_refused")
        return
    except Exception as exc:
        _fuzz.check_refusal(exc, (name,))
        _fuzz.record(target, "refused")
        return
    low = x.dtype if x.dtype in _fuzz.TOL else torch.float32
    for key, value in got.items():
        assert value.dtype == (x.dtype if key == "y" else value.dtype)
        # Running statistics are kept in their own dtype (float32 for float64 inputs).
        tol = low if _fuzz.TOL.get(value.dtype, (1.0,)) <= _fuzz.TOL[low] else value.dtype
        _fuzz.assert_close_ref(value, want[key], tol, f"{name} {key} ({info})")
    _fuzz.record(target, "ok")


# Regressions the fuzzing found.


def test_batch_moments_refuses_a_1d_input_by_name() -> None:
    # Was an IndexError (tuple index out of range) from deep inside centered_moments.
    with pytest.raises(ValueError, match=r"batch_moments: expected an input of shape \(N, C, \*\)"):
        BF.batch_moments(torch.ones(3))


def test_batch_moments_refuses_integers_and_empty_inputs_by_name() -> None:
    # Were "cannot reshape tensor of 0 elements" and a dtype cast error from torch.
    with pytest.raises(TypeError, match="batch_moments: expected a floating-point tensor"):
        BF.batch_moments(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"got shape \(0, 1, 1\)"):
        BF.batch_moments(torch.ones(0, 1, 1))
