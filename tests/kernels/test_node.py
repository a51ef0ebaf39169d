"""Batch norm's C++ autograd node (``bnlab.kernels.train_node``, ``bn_node.cpp``).

The node runs the same kernels as the Python ``FastBatchNormFunction``, so every result
(output, the three gradients, running statistics, batch counter) must equal that path's
bit for bit: same kernel, same arguments, same thread count. Equality to torch's own
batch norm, gradcheck and the hard numerical cases are the kernels' and the modules'
tests; here: that the node is the Function path with another wrapper, that it refuses
what the kernels refuse, and that it behaves as an autograd node should (double
backward, saved-tensor hooks, in-place checks, graph release).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnlab.nn
from bnlab import kernels
from bnlab.kernels import build

pytestmark = pytest.mark.skipif(
    kernels.train_node(torch.empty(kernels.MIN_NUMEL)) is None,
    reason="the C++ autograd node does not build here",
)

MODULES = {2: bnlab.nn.BatchNorm1d, 3: bnlab.nn.BatchNorm1d, 4: bnlab.nn.BatchNorm2d}


def _module(shape: tuple[int, ...], dtype: torch.dtype, **options: object) -> torch.nn.Module:
    module = MODULES[len(shape)](shape[1], **options).to(dtype)
    if module.affine:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            module.weight.copy_(torch.rand(shape[1], generator=gen, dtype=dtype) + 0.5)
            module.bias.copy_(torch.randn(shape[1], generator=gen, dtype=dtype))
    return module


def _steps(
    node: bool, shape: tuple[int, ...], dtype: torch.dtype, steps: int = 2, **options: object
) -> list[torch.Tensor]:
    """Two training steps (forward, backward) of a fresh module; everything they made."""
    module = _module(shape, dtype, **options)
    gen = torch.Generator().manual_seed(7)
    out: list[torch.Tensor] = []
    with kernels.enabled(True, node=node):
        for _ in range(steps):
            x = (torch.randn(shape, generator=gen, dtype=dtype) * 3 + 100).requires_grad_()
            grad_y = torch.randn(shape, generator=gen, dtype=dtype)
            y = module(x)
            y.backward(grad_y)
            out += [y.detach(), x.grad]
            out += [p.grad.clone() for p in module.parameters()]
            out += [b.clone() for b in module.buffers()]
            module.zero_grad(set_to_none=True)
    return out


def _grad_fn_name(shape: tuple[int, ...], node: bool) -> str:
    with kernels.enabled(True, node=node):
        y = _module(shape, torch.float32)(torch.randn(shape, requires_grad=True))
    return y.grad_fn.name()


# At least kernels.MIN_NUMEL (4096) elements, so that the node takes every example.
shapes = st.one_of(
    st.tuples(st.integers(64, 400), st.integers(64, 130)),
    st.tuples(st.integers(16, 40), st.integers(1, 12), st.integers(256, 400)),
    st.tuples(st.integers(16, 32), st.integers(1, 8), st.integers(16, 24), st.integers(16, 24)),
)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    affine=st.booleans(),
    track=st.booleans(),
    momentum=st.sampled_from([0.1, 0.9, None]),
)
def test_the_node_gives_the_function_paths_results_bit_for_bit(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    affine: bool,
    track: bool,
    momentum: float | None,
) -> None:
    assert "TrainStep" in _grad_fn_name(shape, node=True)
    options = {"affine": affine, "track_running_stats": track, "momentum": momentum}
    with_node = _steps(True, shape, dtype, **options)
    without = _steps(False, shape, dtype, **options)
    assert len(with_node) == len(without)
    for a, b in zip(with_node, without, strict=True):
        # Same kernels on the same inputs with the same thread count: equal, not close.
        assert torch.equal(a, b)


def test_the_node_records_the_step_and_refuses_what_the_kernels_refuse() -> None:
    # Large enough for the kernels (kernels.MIN_NUMEL) and below the pool's threshold.
    assert "TrainStep" in _grad_fn_name((256, 120), node=True)
    assert _grad_fn_name((256, 120), node=False) == "FastBatchNormFunctionBackward"
    # Too small for the kernels, or large enough for the output pool: the Python paths.
    assert "TrainStep" not in _grad_fn_name((4, 3), node=True)
    big = (kernels.POOL_MIN_BYTES // 4 // 64 + 1, 64)
    assert _grad_fn_name(big, node=True) == "FastBatchNormFunctionBackward"
    x = torch.randn(64, 8, 4, 4)
    node = kernels.train_node(x)
    w = torch.ones(8)
    refused = {
        "channels_last": (x.to(memory_format=torch.channels_last), w),
        "float16": (x.half(), w.half()),
        "weight of another dtype": (x, w.double()),
        "weight of another size": (x, torch.ones(7)),
        "strided weight": (x, torch.ones(16)[::2]),
        "one value per channel": (torch.randn(1, 4096), torch.ones(4096)),
    }
    for what, (xs, ws) in refused.items():
        assert node(xs, ws, None, 1e-5, None, None, None, 0.0) is None, what
    counter = torch.tensor(0.0)  # a float counter: refused
    rm, rv = torch.zeros(8), torch.ones(8)
    assert node(x, w, None, 1e-5, rm, rv, counter, 0.1) is None
    assert node(x, w, None, 1e-5, rm, rv, torch.tensor(0), 0.1) is not None


def test_double_backward_and_non_contiguous_grads_take_the_torch_ops_backward() -> None:
    shape = (64, 6, 4, 4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    module = _module(shape, torch.float64, track_running_stats=False)

    def f(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.batch_norm(inp, None, None, weight, bias, True, 0.0, 1e-5)

    with kernels.enabled(True, node=True):
        xs = x.clone().requires_grad_()
        y = module(xs)
        assert "TrainStep" in y.grad_fn.name()
        # A grad_y the kernel does not take: a transposed, non-contiguous tensor.
        grad_y = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).permute(3, 2, 1, 0)
        (gx,) = torch.autograd.grad(y, xs, grad_y)
        xr = x.clone().requires_grad_()
        (gr,) = torch.autograd.grad(f(xr, module.weight, module.bias), xr, grad_y)
        torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-10)
        # create_graph: the backward is recorded (torch ops), so second order works.
        xs = x[:8, :, :2, :2].contiguous().repeat(8, 1, 2, 2).requires_grad_()
        assert "TrainStep" in module(xs).grad_fn.name()
        assert torch.autograd.gradgradcheck(module, (xs,))


def test_saved_tensor_hooks_in_place_checks_and_graph_release() -> None:
    shape = (256, 120)
    module = _module(shape, torch.float32)
    packed: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t.shape)
        return t

    with kernels.enabled(True, node=True):
        x = torch.randn(shape, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = module(x)
        assert "TrainStep" in y.grad_fn.name()
        assert torch.Size(shape) in packed  # x, saved through the hooks
        y.sum().backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            y.sum().backward()
        # x changed in place after the forward: autograd must refuse, not use stale x.
        h = torch.randn(shape, requires_grad=True) * 1.0
        y = module(h)
        with torch.no_grad():
            h.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_forward_mode_ad_and_tracing_take_the_python_paths() -> None:
    import torch.autograd.forward_ad as fwd

    module = _module((256, 120), torch.float32)
    x = torch.randn(256, 120)
    with kernels.enabled(True, node=True):
        for node in (True, False):
            # Both paths refuse in torch's own words (the kernels have no jvp).
            with (
                kernels.enabled(True, node=node),
                fwd.dual_level(),
                pytest.raises(NotImplementedError, match="jvp"),
            ):
                module(fwd.make_dual(x, torch.ones_like(x)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_module((256, 120), torch.float32), x, check_trace=False)
        kinds = [n.kind() for n in traced.graph.nodes()]
        assert "prim::PythonOp" in kinds  # the autograd.Function path, as before the node


def test_a_node_that_does_not_build_leaves_the_function_path_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(_: object) -> None:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels, "_node", None)
    monkeypatch.setattr(kernels, "_node_failed", False)
    monkeypatch.setattr(kernels, "_node_state", "not built yet")
    monkeypatch.setattr(build, "build_node", fail)
    x = torch.randn(256, 120, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="autograd node unavailable.*no compiler here"):
        assert kernels.train_node(x) is None
    assert kernels.node_status().startswith("unavailable: RuntimeError: no compiler here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        y = _module((256, 120), torch.float32)(x)
    assert y.grad_fn.name() == "FastBatchNormFunctionBackward"


def test_the_node_library_is_keyed_by_its_source_and_torch(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(build, "cache_dir", tmp_path)
    one = build.TorchBuild("2.13.0 abc", ("/inc",), ("/lib",), ("-D_GLIBCXX_USE_CXX11_ABI=1",))
    other = build.TorchBuild("2.11.0 def", ("/inc",), ("/lib",), ("-D_GLIBCXX_USE_CXX11_ABI=1",))
    assert build.node_path(one) != build.node_path(other)
    assert build.node_path(one) == build.node_path(one)
    assert build.node_path(one).is_relative_to(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_channels_through_the_node(dtype: torch.dtype) -> None:
    """A channel at 1e4 with noise of 1e-3 (catastrophic cancellation for a naive
    variance), a constant channel (variance 0) and a normal one: the node gives the
    Function's results bit for bit, and both stay close to float64 torch."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(512, 3, 4, generator=gen, dtype=torch.float64)
    x[:, 0] = 1e4 + 1e-3 * x[:, 0]
    x[:, 1] = 7.0
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    results = []
    for node in (True, False):
        module = bnlab.nn.BatchNorm1d(3).to(dtype)
        xs = x.to(dtype, copy=True).requires_grad_()
        with kernels.enabled(True, node=node):
            y = module(xs)
            assert ("TrainStep" in y.grad_fn.name()) == node
            y.backward(grad_y.to(dtype))
        results.append((y.detach(), xs.grad, module.weight.grad, module.running_var))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    # float64 torch on the same (rounded) input, as test_fast_path's 1e4 test.
    xr = x.to(dtype).to(torch.float64, copy=True).requires_grad_()
    yr = torch.nn.functional.batch_norm(xr, None, None, training=True, eps=1e-5)
    (gr,) = torch.autograd.grad(yr, xr, grad_y.to(dtype).double())
    y, gx = results[0][0].double(), results[0][1].double()
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert (y - yr).abs().max().item() < tol
    assert (gx - gr).abs().max().item() < tol * gr.abs().max().item()
