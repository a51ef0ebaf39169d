"""``bnlab.kernels``: the fused C++ BatchNorm kernels and their dispatch
(``batch_norm_eligible``), reached through ``bnlab.autograd``.

Which calls take the kernels (and which take the reference path silently); the modules
against their ``torch.nn`` twins and against the reference path at sizes above the
threshold; float64 gradcheck through the kernels; the 1e4 + 1e-3 * noise channel; the
huge-page outputs. The build and its failures: ``test_build.py``.
The numerics tests of ``test_functional_batch_norm.py``, ``test_functional_hard_cases.py``
and ``tests/autograd`` also run on both paths (their ``implementation`` fixture).
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from torch.autograd import gradcheck

import bnlab.autograd
import bnlab.functional
import bnlab.nn
from bnlab import kernels

HAS_COMPILER = any(shutil.which(c) for c in kernels.COMPILERS)
needs_fast = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernel calls by kind: the Python entry points, so batch norm's C++
    autograd node (which calls the kernels from C++) is switched off; ``test_node.py``
    shows that it gives these paths' results bit for bit."""
    monkeypatch.setattr(kernels, "_node_enabled", False)
    counts = {"train_forward": 0, "train_backward": 0, "eval_forward": 0}
    for kind in counts:
        original = getattr(kernels, kind)

        def spy(*args, _kind=kind, _original=original, **kwargs):
            counts[_kind] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernels, kind, spy)
    return counts


def _module(ndim, c, dtype, seed=0):
    cls = {2: bnlab.nn.BatchNorm1d, 3: bnlab.nn.BatchNorm1d, 4: bnlab.nn.BatchNorm2d}.get(
        ndim, bnlab.nn.BatchNorm3d
    )
    twin_cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}.get(
        ndim, torch.nn.BatchNorm3d
    )
    ours = cls(c).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
        ours.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
    twin = twin_cls(c).to(dtype)
    twin.load_state_dict(ours.state_dict())
    return ours, twin


def _step(module, x, grad_y):
    x = x.detach().requires_grad_()
    module.train()
    y = module(x)
    y.backward(grad_y)
    module.eval()
    with torch.no_grad():
        y_eval = module(x)
    return [y, x.grad, module.weight.grad, module.bias.grad, y_eval, *module.buffers()]


@needs_fast
def test_available_where_a_compiler_exists() -> None:
    assert kernels.available(), kernels.status()
    assert kernels.status().startswith("ready: ")


TWIN_SHAPES = [(256, 84), (64, 6, 24), (32, 6, 12, 12), (8, 3, 4, 16, 16)]
TWIN_IDS = ["NC", "NCL", "NCHW", "NCDHW"]


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", TWIN_SHAPES, ids=TWIN_IDS)
def test_modules_on_the_fast_path_match_torch_twins(calls, shape, dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)
    grad_y = torch.randn(shape, generator=gen, dtype=dtype)
    ours, twin = _module(len(shape), shape[1], dtype)
    got = _step(ours, x, grad_y)
    want = _step(twin, x, grad_y)
    assert calls == {"train_forward": 1, "train_backward": 1, "eval_forward": 1}
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-4, 1e-4)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_fast_path_equals_reference_path(dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    shape = (16, 5, 9, 11)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 - 7).to(dtype)
    grad_y = torch.randn(shape, generator=gen, dtype=dtype)
    results = []
    for flag in (True, False):
        ours, _ = _module(4, 5, dtype)
        with kernels.enabled(flag):
            results.append(_step(ours, x, grad_y))
    rtol, atol = (1e-12, 1e-12) if dtype == torch.float64 else (1e-5, 1e-5)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@needs_fast
@pytest.mark.parametrize("shape", [(4096, 3), (64, 3, 16, 16)], ids=["NC", "NCHW"])
def test_large_offset_tiny_variance_on_the_fast_path(calls, shape) -> None:
    # A float32 channel 1e4 + 1e-3 * noise must normalize like the noise.
    gen = torch.Generator().manual_seed(3)
    x = (1e4 + 1e-3 * torch.randn(shape, generator=gen, dtype=torch.float64)).float()
    grad_y = torch.randn(shape, generator=gen)
    x64 = x.double().requires_grad_()
    y64 = torch.nn.functional.batch_norm(x64, None, None, training=True, eps=1e-12)
    (gx64,) = torch.autograd.grad(y64, x64, grad_y.double())
    xr = x.clone().requires_grad_()
    y = bnlab.autograd.batch_norm(xr, None, None, training=True, eps=1e-12).output
    y.backward(grad_y)
    assert calls["train_forward"] == 1
    assert calls["train_backward"] == 1
    assert (y.double() - y64).abs().max().item() < 1e-3
    assert (xr.grad.double() - gx64).abs().max().item() < 1e-3 * gx64.abs().max().item()


@needs_fast
@pytest.mark.parametrize("pattern", ["xwb", "x", "wb"])
def test_gradcheck_float64_through_the_kernels(monkeypatch, calls, pattern) -> None:
    monkeypatch.setattr(kernels, "MIN_NUMEL", 0)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 3, 2, generator=gen, dtype=torch.float64) * 2 + 1
    w = torch.rand(2, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(2, generator=gen, dtype=torch.float64)
    for t, name in ((x, "x"), (w, "w"), (b, "b")):
        t.requires_grad_(name in pattern)

    def f(x, w, b):
        return bnlab.autograd.BatchNormFunction.apply(x, w, b, 1e-5)[0]

    assert gradcheck(f, (x, w, b))
    assert calls["train_forward"] > 0
    assert calls["train_backward"] > 0


def _cases():
    x = torch.randn(8, 4, 16, 16)
    return {
        "channels_last": (x.contiguous(memory_format=torch.channels_last), torch.float32),
        "sliced": (torch.randn(8, 4, 16, 32)[..., ::2], torch.float32),
        "float16": (x.half(), torch.float16),
        "bfloat16": (x.bfloat16(), torch.bfloat16),
    }


@needs_fast
@pytest.mark.parametrize("case", ["channels_last", "sliced", "float16", "bfloat16"])
def test_unsupported_inputs_take_the_reference_path_silently(calls, case) -> None:
    x, dtype = _cases()[case]
    module = bnlab.nn.BatchNorm2d(4).to(torch.float32)
    x = x.detach().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = module(x)
        y.sum().backward()
        module.eval()
        with torch.no_grad():
            module(x)
    assert calls == {"train_forward": 0, "train_backward": 0, "eval_forward": 0}
    assert y.dtype == dtype


@needs_fast
def test_recorded_calls_and_mixed_dtypes_take_the_reference_path(calls) -> None:
    x = torch.randn(64, 4, 8, 8, requires_grad=True)
    w = torch.ones(4, requires_grad=True)
    # Autograd through the functional core records every op: no kernel.
    bnlab.functional.batch_norm(x, None, None, w, None, training=True).output.sum().backward()
    assert calls["train_forward"] == 0
    # float64 parameters with a float32 input: no kernel.
    y = bnlab.autograd.batch_norm(x, None, None, w.double(), None, training=True).output
    y.sum().backward()
    # grad_y of sum() is an expanded (stride 0) tensor: the backward takes the reference
    # path, after a fast forward.
    bnlab.autograd.batch_norm(x.detach(), None, None, w, None, training=True).output.sum()
    assert calls["train_backward"] == 0


@needs_fast
def test_switched_off_path_is_not_used(calls) -> None:
    x = torch.randn(64, 4, 8, 8)
    with kernels.enabled(False):
        assert not kernels.is_enabled()
        bnlab.autograd.batch_norm(x, None, None, training=True)
    assert kernels.is_enabled()
    assert calls["train_forward"] == 0
    bnlab.autograd.batch_norm(x, None, None, training=True)
    assert calls["train_forward"] == 1


@needs_fast
def test_the_functional_core_never_takes_the_kernels(calls) -> None:
    # bnlab.functional is torch ops only, also where the kernels would qualify (no grad).
    x = torch.randn(64, 4, 8, 8)
    rm, rv = torch.zeros(4), torch.ones(4)
    with torch.no_grad():
        out = bnlab.functional.batch_norm(x, rm, rv, training=True)
        bnlab.functional.batch_norm(x, out.running_mean, out.running_var, training=False)
        _, stats = bnlab.functional.batch_norm_forward(x, None, None, 1e-5)
        bnlab.functional.batch_norm_backward(torch.ones_like(x), x, None, stats)
        bnlab.functional.batch_norm_eval(x, rm, rv, None, None, 1e-5)
    assert calls == {"train_forward": 0, "train_backward": 0, "eval_forward": 0}


@needs_fast
def test_pooled_outputs_match_and_are_plain_tensors(monkeypatch, calls) -> None:
    monkeypatch.setattr(kernels, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(kernels, "_pool", kernels.OutputPool(1 << 20))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, 3, 16, 16, generator=gen)
    grad_y = torch.randn(32, 3, 16, 16, generator=gen)
    ours, twin = _module(4, 3, torch.float32)
    got = _step(ours, x, grad_y)
    want = _step(twin, x, grad_y)
    assert calls["train_forward"] == 1
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    # Plain tensors, not views: in-place ops after BN (ReLU(inplace=True)) work.
    assert got[0].is_contiguous()
    assert not got[0]._is_view()
    torch.relu_(got[0])
    assert not got[1]._is_view()


def test_pool_reuses_only_free_mappings() -> None:
    pool = kernels.OutputPool(max_free_bytes=1 << 30)
    a = pool.empty((1000,), torch.float32)
    a.fill_(1.0)
    b = pool.empty((1000,), torch.float32)  # a is alive: a new mapping
    assert a.data_ptr() != b.data_ptr()
    view = a[10:20]
    address = a.data_ptr()
    del a
    c = pool.empty((1000,), torch.float32)  # a's view keeps its mapping in use
    assert address not in (b.data_ptr(), c.data_ptr())
    assert torch.equal(view, torch.ones(10))
    del view
    d = pool.empty((1000,), torch.float32)  # now free: reused
    assert d.data_ptr() == address
    assert pool.mapped_bytes() == 3 * 4000
    e = pool.empty((10, 5), torch.float64)  # another size: a new mapping
    assert e.shape == (10, 5)
    assert e.dtype == torch.float64
    assert e.is_contiguous()


def test_pool_unmaps_free_mappings_beyond_its_cap() -> None:
    pool = kernels.OutputPool(max_free_bytes=10_000)
    tensors = [pool.empty((1000,), torch.float32) for _ in range(4)]
    assert pool.mapped_bytes() == 16_000
    del tensors
    assert pool.free_bytes() == 16_000
    kept = pool.empty((2000,), torch.float32)  # another size: unmaps the oldest free ones
    assert pool.free_bytes() == 8_000
    assert pool.mapped_bytes() == 8_000 + kept.numel() * 4
    off = kernels.OutputPool(max_free_bytes=0)
    off.empty((1000,), torch.float32)
    assert off.mapped_bytes() == 0  # reuse off: nothing kept


def test_set_pool_limit_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="max_free_bytes") as info:
        kernels.set_pool_limit(-1)
    assert str(info.value) == (
        "set_pool_limit: max_free_bytes must be >= 0 (0 turns reuse off), got -1"
    )


# ---------------------------------------------------------------- the modules' lean path


def _lean_module(shape, dtype, **kwargs):
    cls = bnlab.nn.BatchNorm1d if len(shape) in (2, 3) else bnlab.nn.BatchNorm2d
    module = cls(shape[1], **kwargs).to(dtype)
    if module.weight is not None:
        gen = torch.Generator().manual_seed(6)
        with torch.no_grad():
            module.weight.copy_(torch.rand(shape[1], generator=gen, dtype=dtype) + 0.5)
            module.bias.copy_(torch.randn(shape[1], generator=gen, dtype=dtype))
    return module


def _two_steps(module, x, grad_y):
    """Two training steps (the second sees updated buffers), then eval."""
    out = []
    for _ in range(2):
        xr = x.detach().requires_grad_()
        module.train()
        y = module(xr)
        y.backward(grad_y)
        out += [y, xr.grad, *(p.grad for p in module.parameters())]
        module.zero_grad(set_to_none=True)
    module.eval()
    with torch.no_grad():
        out.append(module(x))
    return [t for t in (*out, *module.buffers()) if t is not None]


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": None}, {"momentum": 1.0}, {"track_running_stats": False}, {"affine": False}],
    ids=["momentum", "cumulative", "momentum1", "untracked", "no_affine"],
)
@pytest.mark.parametrize("shape", [(256, 84), (16, 5, 9, 11)], ids=["NC", "NCHW"])
def test_module_lean_path_equals_reference_path(calls, shape, kwargs, dtype) -> None:
    # The running statistics are updated inside the kernel on the lean path; the
    # reference path returns them from the pure function and copies them into the buffers.
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 - 7).to(dtype)
    grad_y = torch.randn(shape, generator=gen, dtype=dtype)
    results = []
    for flag in (True, False):
        module = _lean_module(shape, dtype, **kwargs)
        with kernels.enabled(flag):
            results.append(_two_steps(module, x, grad_y))
    assert calls["train_forward"] >= 2  # untracked: eval mode normalizes with the batch too
    assert calls["train_backward"] == 2
    rtol, atol = (1e-12, 1e-12) if dtype == torch.float64 else (1e-5, 1e-5)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    if kwargs.get("track_running_stats", True):
        assert results[0][-1].item() == 2  # num_batches_tracked, incremented in the kernel


@needs_fast
def test_module_training_forward_under_no_grad_updates_the_buffers(calls) -> None:
    x = torch.randn(64, 4, 8, 8) * 2 + 3
    modules = [_lean_module(x.shape, torch.float32, momentum=None) for _ in range(2)]
    for module, flag in zip(modules, (True, False), strict=True):
        with torch.no_grad(), kernels.enabled(flag):
            module(x)
            module(x * 0.5)
    assert calls["train_forward"] == 2
    for a, b in zip(modules[0].buffers(), modules[1].buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_fast
def test_double_backward_through_the_module_lean_path(calls) -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(64, 4, 4, 4, generator=gen, dtype=torch.float64)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    grads = []
    for flag in (True, False):
        module = _lean_module(x.shape, torch.float64)
        xr = x.clone().requires_grad_()
        with kernels.enabled(flag):
            (gx,) = torch.autograd.grad(module(xr), xr, grad_y, create_graph=True)
            gx.pow(2).sum().backward()
        grads.append((gx, xr.grad, module.weight.grad))
    assert calls["train_forward"] == 1
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_fast
def test_lean_path_leaves_errors_to_the_general_path() -> None:
    # Inputs above MIN_NUMEL with one thing wrong: the same messages as small inputs.
    module = bnlab.nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="channels in dim 1") as info:
        module(torch.randn(64, 5, 8, 8))
    assert str(info.value) == (
        "BatchNorm2d: expected 4 channels in dim 1, got 5 (input of shape (64, 5, 8, 8)); "
        "the layer was built with num_features=4"
    )
    module.momentum = 1.5  # set after construction: checked at the call
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\].*got 1\.5$"):
        module(torch.randn(64, 4, 8, 8))
    with pytest.raises(ValueError, match="more than 1 value per channel") as info:
        bnlab.nn.BatchNorm1d(4096)(torch.randn(1, 4096))
    assert str(info.value).startswith(
        "BatchNorm1d: expected more than 1 value per channel when training, got input of "
        "shape (1, 4096)"
    )
    assert module.num_batches_tracked.item() == 0  # nothing was updated


@needs_fast
@pytest.mark.parametrize("flag", [True, False], ids=["fast", "reference"])
def test_tracked_training_under_functorch_is_refused_as_torchs(flag) -> None:
    # Inside a functorch transform the kernels are refused (issue 19: the torch-ops
    # forward runs, tests/autograd/test_functorch.py); a module that updates its running
    # statistics mutates captured tensors, which torch.func refuses, for torch's
    # BatchNorm2d too.
    module = bnlab.nn.BatchNorm2d(4)
    twin = torch.nn.BatchNorm2d(4)
    x = torch.randn(64, 4, 8, 8)
    for m in (module, twin):
        with kernels.enabled(flag), pytest.raises(RuntimeError, match="captured Tensor"):
            torch.func.grad(lambda t, m=m: m(t).sum())(x)
