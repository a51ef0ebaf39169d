"""Twin tests: ``bnlab.nn.BatchNorm*d`` against ``torch.nn.BatchNorm*d``.

Both modules get the same ``state_dict`` (loaded ours -> torch and torch -> ours), then
run several train steps (forward, backward with a random ``grad_y``) and an eval step;
outputs, input grads, every parameter grad and every buffer must agree
(PyTorch ``test/test_nn.py::_test_batchnorm_update_stats``).

Tolerances: float64 rtol = atol = 1e-10 (the two implementations differ only in
rounding, about 1e-15); float32 rtol 1e-4, atol 1e-5 for outputs and buffers and
atol 1e-4 for grads (weight and bias grads are sums over up to 120 values).
"""

from __future__ import annotations

import pytest
import torch
from bn_module_cases import CASE_IDS, CASES, CHANNELS_LAST, BNCase, check_layout, make_input
from bn_module_cases import randomize_ as randomize

TOL = {
    torch.float64: {"out": (1e-10, 1e-10), "grad": (1e-10, 1e-10)},
    torch.float32: {"out": (1e-4, 1e-5), "grad": (1e-4, 1e-4)},
}

TRAIN_STEPS = 3


def _close(actual, expected, tol, what):
    rtol, atol = tol
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _compare_state(ours, theirs, tol, when):
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd), when
    for key in ours_sd:
        if key == "num_batches_tracked":
            # Exact by construction: an int64 count of train steps, no float arithmetic.
            assert torch.equal(ours_sd[key], theirs_sd[key]), f"{when}: {key}"
        else:
            _close(ours_sd[key], theirs_sd[key], tol, f"{when}: buffer/parameter {key}")


def _step(case, module, leaf, view, grad_y):
    leaf = leaf.detach().clone().requires_grad_()
    x = view(leaf)
    check_layout(case, x)
    for p in module.parameters():
        p.grad = None
    y = module(x)
    y.backward(grad_y)
    grads = {name: p.grad for name, p in module.named_parameters()}
    return y, leaf.grad, grads


@pytest.mark.parametrize("source", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_torch_twin(case: BNCase, dtype: torch.dtype, source: str) -> None:
    gen = torch.Generator().manual_seed(1234)
    tol = TOL[dtype]
    ours, theirs = case.ours(dtype=dtype), case.theirs(dtype=dtype)
    src, dst = (ours, theirs) if source == "ours_to_torch" else (theirs, ours)
    randomize(src, gen)
    dst.load_state_dict(src.state_dict())
    _compare_state(ours, theirs, tol["out"], "after load")

    for mode in ["train"] * TRAIN_STEPS + ["eval"]:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        leaf, view = make_input(case, dtype, gen)
        grad_y = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(dtype)
        y, gx, grads = _step(case, ours, leaf, view, grad_y)
        y_t, gx_t, grads_t = _step(case, theirs, leaf, view, grad_y)
        assert y.dtype == y_t.dtype == dtype
        assert y.shape == y_t.shape == case.shape
        _close(y, y_t, tol["out"], f"{mode} output")
        _close(gx, gx_t, tol["grad"], f"{mode} input grad")
        assert list(grads) == list(grads_t)
        for name in grads:
            _close(grads[name], grads_t[name], tol["grad"], f"{mode} grad of {name}")
        _compare_state(ours, theirs, tol["out"], f"after {mode} step")
        if case.layout == CHANNELS_LAST:
            fmt = torch.channels_last if y.dim() == 4 else torch.channels_last_3d
            assert y.is_contiguous(memory_format=fmt), f"{mode}: output lost channels_last"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_eval_only_matches_torch_twin(case: BNCase) -> None:
    """A fresh module put straight into eval (running stats 0 / 1, or batch stats)."""
    gen = torch.Generator().manual_seed(7)
    ours, theirs = case.ours(dtype=torch.float64).eval(), case.theirs(dtype=torch.float64).eval()
    leaf, view = make_input(case, torch.float64, gen)
    y, y_t = ours(view(leaf)), theirs(view(leaf))
    _close(y, y_t, TOL[torch.float64]["out"], "eval output")
    _compare_state(ours, theirs, TOL[torch.float64]["out"], "after eval")
