"""The CUDA fast path: the Triton kernels of ``bnlab.kernels.triton_bn``.

Where a GPU is present the kernels run on it, and the modules are checked against
their ``torch.nn`` twins on CUDA (dispatch, running statistics, half precision). Without
a GPU, when Triton is installed, the same kernels run under Triton's interpreter
(``TRITON_INTERPRET=1``) on CPU tensors: every numerics test below runs in CI.

Every kernel output is compared with float64 torch on the same (already rounded) input,
on fresh random shapes (hypothesis), several reduction splits, channel blocks, and the
hard cases: a channel ``1e4 + 1e-3 * noise``, constant channels, a batch of one,
float16/bfloat16 inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU, and Triton's interpreter is off", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed")
DEVICE = "cuda" if CUDA else "cpu"


def _import_kernels():
    """``triton_bn``; without a GPU it runs under Triton's interpreter (``conftest.py``
    sets ``TRITON_INTERPRET=1`` before Triton is imported)."""
    if not CUDA:
        import triton.runtime.interpreter as interpreter

        # Triton 3.6's interpreter converts 1-element arrays with int(), an error under
        # numpy >= 2.4: loops with run-time bounds would fail. Use .item() instead.
        original = interpreter._patch_lang_tensor
        if not getattr(original, "_bnlab_patched", False):

            def patch(tensor, scope):
                original(tensor, scope)
                scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

            patch._bnlab_patched = True
            interpreter._patch_lang_tensor = patch
    return importlib.import_module("bnlab.kernels.triton_bn")


tb = _import_kernels()

EPS = 1e-5


def _dims(x):
    return [0, *range(2, x.dim())]


def _reference(x, weight, bias, grad_y):
    """float64 training output, batch mean and biased variance, and the three gradients."""
    x64 = x.detach().double().requires_grad_()
    w = None if weight is None else weight.detach().double().requires_grad_()
    b = None if bias is None else bias.detach().double().requires_grad_()
    y = torch.nn.functional.batch_norm(x64, None, None, w, b, training=True, eps=EPS)
    y.backward(grad_y.double())
    mean = x64.detach().mean(_dims(x))
    var = x64.detach().var(_dims(x), unbiased=False)
    return (
        y.detach(),
        mean,
        var,
        x64.grad,
        None if w is None else w.grad,
        None if b is None else b.grad,
    )


def _close(got, want, rtol, what):
    """``|got - want| <= rtol * (|want|_max + 1)``, elementwise, in float64."""
    got = got.double().cpu()
    want = want.double().cpu()
    assert not torch.isnan(got).any(), f"{what}: NaN in the kernel output"
    err = (got - want).abs().max().item() if want.numel() else 0.0
    scale = want.abs().max().item() + 1.0 if want.numel() else 1.0
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"


def _inputs(shape, dtype, seed, offset=0.0, spread=1.0, affine=True):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * spread + offset).to(dtype)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.rand(c, generator=gen) + 0.5) if affine else None
    b = torch.randn(c, generator=gen) if affine else None
    move = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return move(x), move(w), move(b), move(g)


def _check_train(shape, dtype=torch.float32, seed=0, offset=0.0, spread=1.0, affine=True):
    x, w, b, g = _inputs(shape, dtype, seed, offset, spread, affine)
    y, stats = tb.train_forward(x, w, b, EPS)
    assert y.dtype == dtype
    assert y.shape == x.shape
    assert stats.shape == (5, shape[1])
    y64, mean, var, gx64, gw64, gb64 = _reference(x, w, b, g)
    # float32 arithmetic: ~1e-6 relative; 16-bit outputs are rounded to 8 or 11 bits.
    rtol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    _close(y, y64, rtol, "y")
    _close(stats[0], mean, 2e-5, "mean")
    _close(stats[1], var, 2e-5, "var")
    _close(stats[3] + stats[4], mean, 2e-5, "pivot + offset")
    gx, gw, gb = tb.train_backward(g, x, w, stats[2], stats[3], stats[4], (True, affine, affine))
    _close(gx, gx64, rtol, "grad_x")
    if affine:
        _close(gw, gw64, 2e-5 * max(1, shape[0]), "grad_weight")
        _close(gb, gb64, 2e-5 * max(1, shape[0]), "grad_bias")
    return x, w, b, g, stats


def _prod(dims):
    out = 1
    for d in dims:
        out *= d
    return out


# (N, C) inputs tile 64 channels at a time (so C up to 70 crosses a block); inputs with
# spatial dims tile one channel at a time, each channel a program: a few channels
# suffice, and keep the interpreter fast.
SHAPES = st.one_of(
    st.tuples(st.integers(2, 40), st.integers(1, 70), st.just([])),
    st.tuples(
        st.integers(1, 6), st.integers(1, 4), st.lists(st.integers(1, 7), min_size=1, max_size=3)
    ),
).filter(lambda t: t[0] * _prod(t[2]) >= 2)
# The interpreter runs each program in Python: fewer examples there.
EXAMPLES = 40 if CUDA else 12


@contextlib.contextmanager
def _fuse_limit(limit: int):
    """Inputs up to ``limit`` elements per channel block take the one-launch kernels."""
    previous = tb.FUSE_MAX_PER_PROGRAM
    tb.FUSE_MAX_PER_PROGRAM = limit
    tb.plan.cache_clear()
    try:
        yield
    finally:
        tb.FUSE_MAX_PER_PROGRAM = previous
        tb.plan.cache_clear()


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    shape=SHAPES,
    seed=st.integers(0, 2**31 - 1),
    offset=st.sampled_from([0.0, 3.0, -50.0]),
    affine=st.booleans(),
    fused=st.booleans(),
)
def test_training_forward_and_backward_match_float64(shape, seed, offset, affine, fused) -> None:
    n, c, spatial = shape
    with _fuse_limit(tb.FUSE_MAX_PER_PROGRAM if fused else 0):
        _check_train((n, c, *spatial), seed=seed, offset=offset, affine=affine)


@settings(max_examples=EXAMPLES, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), affine=st.booleans())
def test_eval_matches_float64(shape, seed, affine) -> None:
    n, c, spatial = shape
    x, w, b, _ = _inputs((n, c, *spatial), torch.float32, seed, offset=2.0, affine=affine)
    gen = torch.Generator().manual_seed(seed + 1)
    rm = torch.randn(c, generator=gen).to(DEVICE)
    rv = (torch.rand(c, generator=gen) + 0.1).to(DEVICE)
    y = tb.eval_forward(x, rm, rv, w, b, EPS)
    want = torch.nn.functional.batch_norm(
        x.double(),
        rm.double(),
        rv.double(),
        None if w is None else w.double(),
        None if b is None else b.double(),
        training=False,
        eps=EPS,
    )
    _close(y, want, 2e-5, "eval y")


@pytest.mark.parametrize(
    ("shape", "programs_per_sm"),
    [((200, 3, 40), 64), ((300, 5), 64), ((70, 2, 6, 6), 3), ((1, 4, 5000), 64)],
    ids=["NCL_splits", "NC_splits", "NCHW_few", "batch_of_one_long"],
)
def test_reduction_splits_add_up(monkeypatch, shape, programs_per_sm) -> None:
    """The partial sums of several splits over N give the statistics of one pass."""
    monkeypatch.setattr(tb, "PROGRAMS_PER_SM", programs_per_sm)
    with _fuse_limit(0):
        n, c = shape[0], shape[1]
        s = _prod(shape[2:])
        _, _, _, _, splits = tb.plan(n, c, s, torch.device(DEVICE))
        if programs_per_sm == 64 and n > 1:
            assert splits > 1, "the case must exercise several splits"
        _check_train(shape, seed=3, offset=1.0)


def test_small_inputs_take_one_launch_per_pass() -> None:
    """LeNet's small BN inputs are reduced and normalized by one launch each."""
    device = torch.device(DEVICE)
    for n, c, s in [(256, 16, 64), (256, 120, 1), (256, 84, 1)]:
        assert tb.plan(n, c, s, device)[4] == 1
    assert tb.plan(256, 6, 576, device)[4] > 1, "147456 values per channel: split"


@pytest.mark.parametrize(
    "shape", [(5, 7), (3, 4, 100), (2, 3, 7, 9), (1000, 1), (1, 2, 3000)], ids=str
)
def test_plan_covers_every_sample_once(shape) -> None:
    n, c = shape[0], shape[1]
    s = _prod(shape[2:])
    bn, bc, bs, rows, splits = tb.plan(n, c, s, torch.device(DEVICE))
    assert bn * bc * bs <= tb.TILE
    assert rows % bn == 0
    assert (splits - 1) * rows < n <= splits * rows
    assert bc == 1 if s > 1 else bs == 1


def test_large_offset_tiny_variance() -> None:
    """1e4 + 1e-3 * noise normalizes like the noise (the pivot keeps the digits)."""
    x, *_ = _check_train((64, 3, 8, 8), seed=5, offset=1e4, spread=1e-3)
    y, stats = tb.train_forward(x, None, None, EPS)
    x64 = x.double()
    want = (x64 - x64.mean(_dims(x), keepdim=True)) / torch.sqrt(
        x64.var(_dims(x), unbiased=False, keepdim=True) + EPS
    )
    assert (y.double() - want).abs().max().item() < 1e-3
    _close(stats[1], x64.var(_dims(x), unbiased=False), 1e-9, "var of offset data")


def test_constant_channel_gives_bias_and_zero_grad() -> None:
    x = torch.full((6, 2, 4, 4), 3.25, device=DEVICE)
    w = torch.tensor([2.0, 0.5], device=DEVICE)
    b = torch.tensor([-1.0, 4.0], device=DEVICE)
    y, stats = tb.train_forward(x, w, b, EPS)
    assert torch.equal(stats[1].cpu(), torch.zeros(2))
    assert torch.equal(y.cpu(), b.cpu().view(1, 2, 1, 1).expand(6, 2, 4, 4))
    g = torch.randn(x.shape).to(DEVICE)
    gx, gw, _ = tb.train_backward(g, x, w, stats[2], stats[3], stats[4], (True, True, True))
    assert gw.abs().max().item() == 0.0
    # grad_x of a constant channel is k1 * (g - mean(g)): finite, zero mean per channel.
    sums = gx.double().sum(dim=(0, 2, 3)).abs()
    assert (sums <= 1e-5 * gx.double().abs().sum(dim=(0, 2, 3))).all()


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        pytest.param(
            torch.bfloat16,
            marks=pytest.mark.skipif(not CUDA, reason="bfloat16 under the interpreter: CUDA only"),
        ),
    ],
    ids=str,
)
@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (32, 20)], ids=str)
def test_half_precision_inputs(dtype, shape) -> None:
    """16-bit inputs: float32 statistics, output rounded once to the input dtype."""
    _check_train(shape, dtype=dtype, seed=11, offset=1.0)


def test_only_requested_gradients() -> None:
    x, w, b, g = _inputs((4, 3, 6), torch.float32, 1)
    _, stats = tb.train_forward(x, w, b, EPS)
    *_, gx64, gw64, gb64 = _reference(x, w, b, g)
    for need in [(False, True, False), (False, False, True), (True, False, False)]:
        got = tb.train_backward(g, x, w, stats[2], stats[3], stats[4], need)
        for flag, value, want, what in zip(
            need, got, (gx64, gw64, gb64), ("grad_x", "grad_weight", "grad_bias"), strict=True
        ):
            if flag:
                _close(value, want, 2e-5, what)
            else:
                assert value is None


# ------------------------------------------------------------------ dispatch (CUDA only)

needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "cumulative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape", [(64, 16, 8, 8), (256, 120), (4, 6, 3, 5, 5), (32, 64, 56, 56)], ids=str
)
def test_module_matches_torch_on_cuda(monkeypatch, dtype, shape, momentum) -> None:
    """bnlab.nn.BatchNorm*d on CUDA takes the kernels and follows torch.nn step by step."""
    import bnlab.nn
    from bnlab import kernels

    calls = {"train_forward": 0, "train_backward": 0, "eval_forward": 0}
    for kind in calls:
        original = getattr(kernels, kind)

        def spy(*args, _kind=kind, _original=original, **kwargs):
            calls[_kind] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernels, kind, spy)
    ours_cls = {2: bnlab.nn.BatchNorm1d, 4: bnlab.nn.BatchNorm2d, 5: bnlab.nn.BatchNorm3d}
    twin_cls = {2: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
    c = shape[1]
    ours = ours_cls[len(shape)](c, momentum=momentum).cuda().to(dtype)
    twin = twin_cls[len(shape)](c, momentum=momentum).cuda().to(dtype)
    twin.load_state_dict(ours.state_dict())
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    for step in range(3):
        # Fresh gradients each step: accumulated 16-bit gradients round at every step.
        ours.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
        x = (torch.randn(shape, device="cuda") * 2 + step).to(dtype)
        g = torch.randn(shape, device="cuda").to(dtype)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), twin(xt)
        yo.backward(g)
        yt.backward(g)
        torch.testing.assert_close(yo.float(), yt.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(xo.grad.float(), xt.grad.float(), atol=tol, rtol=tol)
        for a, b in ((ours.weight.grad, twin.weight.grad), (ours.bias.grad, twin.bias.grad)):
            # Sums over N * S values, rounded once to the parameter dtype: compared
            # relative to the largest of them (a channel near 0 has the same rounding).
            assert a.dtype == dtype
            _close(a, b, tol, "parameter gradient")
    torch.testing.assert_close(
        ours.running_mean.float(), twin.running_mean.float(), atol=tol, rtol=tol
    )
    torch.testing.assert_close(
        ours.running_var.float(), twin.running_var.float(), atol=tol, rtol=tol
    )
    assert int(ours.num_batches_tracked) == 3
    ours.eval()
    twin.eval()
    x = torch.randn(shape, device="cuda").to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).float(), twin(x).float(), atol=tol, rtol=tol)
    assert calls == {"train_forward": 3, "train_backward": 3, "eval_forward": 1}


@needs_cuda
def test_cuda_cases_that_take_the_reference_path() -> None:
    from bnlab import kernels

    x = torch.randn(8, 4, 5, 5, device="cuda")
    assert kernels.batch_norm_eligible(x, per_channel=(None, None))
    assert kernels.cuda_status().startswith("ready")
    assert not kernels.batch_norm_eligible(x.double(), per_channel=(None, None)), (
        "float64: reference"
    )
    cl = x.to(memory_format=torch.channels_last)
    assert not kernels.batch_norm_eligible(cl, per_channel=(None, None)), "channels_last: reference"
    w = torch.ones(4, device="cuda", requires_grad=True)
    assert not kernels.batch_norm_eligible(x, per_channel=(w, None)), (
        "recorded by autograd: reference"
    )
    assert not kernels.batch_norm_eligible(x, per_channel=(torch.ones(4), None)), (
        "weight on the CPU"
    )


@pytest.mark.parametrize("momentum", [0.1, 0.7, None], ids=["m0.1", "m0.7", "cumulative"])
@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (40, 70)], ids=str)
def test_running_statistics_updated_in_place(momentum, shape) -> None:
    """``running=`` updates the buffers as ``batch_norm`` returns them, over 3 steps."""
    import bnlab.functional

    c = shape[1]
    gen = torch.Generator().manual_seed(7)
    rm = torch.randn(c, generator=gen).to(DEVICE)
    rv = (torch.rand(c, generator=gen) + 0.5).to(DEVICE)
    counter = torch.tensor(4, dtype=torch.int64, device=DEVICE)
    want_m, want_v, want_n = rm.cpu().double(), rv.cpu().double(), counter.cpu().clone()
    for step in range(3):
        x, w, b, _ = _inputs(shape, torch.float32, seed=step, offset=float(step))
        # The weight of the new batch, as bnlab.autograd computes it for the kernels.
        factor = bnlab.functional.running_update_factor(momentum, int(counter) + 1, "test")
        tb.train_forward(x, w, b, EPS, running=(rm, rv, counter, factor))
        out = bnlab.functional.batch_norm(
            x.cpu().double(), want_m, want_v, None, None, True, momentum, EPS, want_n
        )
        want_m, want_v, want_n = out.running_mean, out.running_var, out.num_batches_tracked
        _close(rm, want_m, 2e-6, f"running_mean after step {step}")
        _close(rv, want_v, 2e-6, f"running_var after step {step}")
        assert int(counter) == int(want_n) == 5 + step


def test_running_update_without_counter() -> None:
    x, *_ = _inputs((8, 2, 3), torch.float32, seed=2)
    rm = torch.zeros(2, device=DEVICE)
    rv = torch.ones(2, device=DEVICE)
    _, stats = tb.train_forward(x, None, None, EPS, running=(rm, rv, None, 0.25))
    n = 8 * 3
    _close(rm, 0.25 * stats[0], 1e-6, "running_mean")
    _close(rv, 0.75 + 0.25 * stats[1] * n / (n - 1), 1e-6, "running_var")
