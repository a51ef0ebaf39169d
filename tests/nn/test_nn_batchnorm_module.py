"""``bnlab.nn.BatchNorm*d`` as a drop-in for ``torch.nn``: API, state, serialization, errors.

Everything here is compared with the installed ``torch.nn`` twin rather than with
hard-coded expectations, so a drift of either side shows.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import re

import pytest
import torch
from bn_module_cases import CASE_IDS, CASES, BNCase, eval_atol, make_input
from bn_module_cases import randomize_ as randomize

import bnlab.nn

CLASSES = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
SHAPES = {"BatchNorm1d": (4, 3, 5), "BatchNorm2d": (4, 3, 5, 2), "BatchNorm3d": (3, 3, 2, 3, 2)}
KWARGS = [
    {},
    {"affine": False},
    {"track_running_stats": False},
    {"affine": False, "track_running_stats": False},
    {"eps": 1e-3, "momentum": None},
    {"momentum": 0.0},
    {"bias": False},
    {"affine": False, "bias": False},
]
KWARGS_IDS = [
    "default",
    "affine_off",
    "untracked",
    "bare",
    "eps_momentum_none",
    "momentum_0",
    "bias_off",
    "affine_and_bias_off",
]


def _pair(cls: str, **kwargs):
    return getattr(bnlab.nn, cls)(3, **kwargs), getattr(torch.nn, cls)(3, **kwargs)


def _train_steps(module: torch.nn.Module, shape, steps: int = 3, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(steps):
        module(torch.randn(shape, generator=gen, dtype=torch.float64).to(_dtype(module)) * 3 + 1)


def _dtype(module: torch.nn.Module) -> torch.dtype:
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _assert_state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bitwise equal state. Exact by construction at every call: one state is a copy of
    the other (load_state_dict, deepcopy, pickle, save/load), or both were set by
    assignment (fresh or reset modules: zeros, ones, a count), or both were updated by
    the same code from the same bits (``_same_behaviour``)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------- API and state


@pytest.mark.parametrize("cls", CLASSES)
def test_constructor_signature_matches_torch(cls: str) -> None:
    ours = inspect.signature(getattr(bnlab.nn, cls).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, cls).__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


@pytest.mark.parametrize("kwargs", KWARGS, ids=KWARGS_IDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_parameters_buffers_and_attributes_match_torch(cls: str, kwargs: dict) -> None:
    ours, theirs = _pair(cls, **kwargs)
    assert [(n, p.shape, p.dtype, p.requires_grad) for n, p in ours.named_parameters()] == [
        (n, p.shape, p.dtype, p.requires_grad) for n, p in theirs.named_parameters()
    ]
    assert [(n, b.shape, b.dtype) for n, b in ours.named_buffers()] == [
        (n, b.shape, b.dtype) for n, b in theirs.named_buffers()
    ]
    for name in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]:
        assert (getattr(ours, name) is None) == (getattr(theirs, name) is None), name
    for name in ["num_features", "eps", "momentum", "affine", "track_running_stats", "training"]:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert (
        ours.state_dict()._metadata[""]["version"] == theirs.state_dict()._metadata[""]["version"]
    )
    _assert_state_equal(ours, theirs)


@pytest.mark.parametrize("kwargs", KWARGS, ids=KWARGS_IDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_repr_matches_torch(cls: str, kwargs: dict) -> None:
    ours, theirs = _pair(cls, **kwargs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("cls", CLASSES)
def test_factory_kwargs_dtype(cls: str) -> None:
    m = getattr(bnlab.nn, cls)(3, dtype=torch.float64)
    assert m.weight.dtype == m.bias.dtype == torch.float64
    assert m.running_mean.dtype == m.running_var.dtype == torch.float64
    assert m.num_batches_tracked.dtype == torch.long
    assert m.weight.device.type == m.num_batches_tracked.device.type == "cpu"


@pytest.mark.parametrize("cls", CLASSES)
def test_reset_methods_match_torch(cls: str) -> None:
    ours, theirs = _pair(cls)
    for m in (ours, theirs):
        _train_steps(m, SHAPES[cls])
        with torch.no_grad():
            m.weight.mul_(3)
            m.bias.add_(2)
    ours.reset_running_stats()
    theirs.reset_running_stats()
    assert int(ours.num_batches_tracked) == 0
    # Parameters untouched: both are 1.0 * 3, which is exact in any float format.
    assert torch.equal(ours.weight, theirs.weight)
    torch.testing.assert_close(ours.running_mean, torch.zeros(3))
    torch.testing.assert_close(ours.running_var, torch.ones(3))
    ours.reset_parameters()
    theirs.reset_parameters()
    _assert_state_equal(ours, theirs)


@pytest.mark.parametrize("cls", CLASSES)
def test_reset_untracked_is_a_no_op(cls: str) -> None:
    m = getattr(bnlab.nn, cls)(3, affine=False, track_running_stats=False)
    m.reset_running_stats()
    m.reset_parameters()
    assert m.running_mean is None
    assert m.weight is None


@pytest.mark.parametrize("cls", CLASSES)
def test_eval_does_not_touch_buffers_and_train_does(cls: str) -> None:
    m = getattr(bnlab.nn, cls)(3)
    x = torch.randn(SHAPES[cls]) * 2 + 5
    m.eval()
    m(x)
    assert int(m.num_batches_tracked) == 0
    # Exact: eval must not write the buffers, which still hold their initial 0 and 1.
    assert torch.equal(m.running_mean, torch.zeros(3))
    assert torch.equal(m.running_var, torch.ones(3))
    m.train()
    m(x)
    assert int(m.num_batches_tracked) == 1
    # 0.1 * batch mean (about 5): about 0.5, nowhere near a rounding of 0.
    assert not torch.equal(m.running_mean, torch.zeros(3))


def test_untracked_uses_batch_statistics_in_eval() -> None:
    m = bnlab.nn.BatchNorm2d(3, track_running_stats=False).eval()
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64) * 4 + 7
    expected = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(m.double()(x), expected, rtol=1e-12, atol=1e-12)


def test_buffers_stay_the_same_objects_after_training() -> None:
    """Training updates buffers in place: optimizers, hooks and DDP hold references."""
    m = bnlab.nn.BatchNorm2d(3)
    before = {n: b.data_ptr() for n, b in m.named_buffers()}
    refs = dict(m.named_buffers())
    _train_steps(m, SHAPES["BatchNorm2d"])
    assert {n: b.data_ptr() for n, b in m.named_buffers()} == before
    assert all(refs[n] is b for n, b in m.named_buffers())


def test_running_stats_do_not_require_grad_after_training() -> None:
    m = bnlab.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 2, requires_grad=True)
    m(x).sum().backward()
    assert not m.running_mean.requires_grad
    assert not m.running_var.requires_grad
    assert m.running_mean.grad_fn is None


# ------------------------------------------------------------------- state_dict interop


@pytest.mark.parametrize("kwargs", KWARGS, ids=KWARGS_IDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_loads_both_ways(cls: str, kwargs: dict) -> None:
    ours, theirs = _pair(cls, **kwargs)
    for m in (ours, theirs):
        _train_steps(m, SHAPES[cls])
    fresh_ours, fresh_theirs = _pair(cls, **kwargs)
    assert not fresh_theirs.load_state_dict(ours.state_dict(), strict=True).missing_keys
    assert not fresh_ours.load_state_dict(theirs.state_dict(), strict=True).missing_keys
    _assert_state_equal(fresh_theirs, ours)
    _assert_state_equal(fresh_ours, theirs)
    # The same statistics give the same eval outputs.
    x = torch.randn(SHAPES[cls])
    atol = eval_atol(theirs, x)
    torch.testing.assert_close(fresh_ours.eval()(x), theirs.eval()(x), rtol=0, atol=atol)


def _version_1(state_dict: dict) -> dict:
    """A pre-``num_batches_tracked`` (version 1) checkpoint of the same module."""
    sd = copy.copy(state_dict)  # keeps _metadata
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}
    return sd


@pytest.mark.parametrize("cls", CLASSES)
def test_loads_version_1_torch_state_dict_without_num_batches_tracked(cls: str) -> None:
    _, theirs = _pair(cls)
    _train_steps(theirs, SHAPES[cls])
    sd = _version_1(theirs.state_dict())
    ours = getattr(bnlab.nn, cls)(3)
    result = ours.load_state_dict(sd, strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    assert int(ours.num_batches_tracked) == 0
    assert ours.num_batches_tracked.dtype == torch.long
    # Exact: load_state_dict copies the statistics (no arithmetic on the way).
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)
    assert "num_batches_tracked" not in sd  # the caller's dict is not extended


@pytest.mark.parametrize("cls", CLASSES)
def test_version_1_load_into_a_trained_module_matches_torch(cls: str) -> None:
    """torch keeps the module's own batch counter when a v1 checkpoint lacks one."""
    ours, theirs = _pair(cls, momentum=None)
    for m in (ours, theirs):
        _train_steps(m, SHAPES[cls], steps=4)
    _, source = _pair(cls)
    _train_steps(source, SHAPES[cls], steps=2, seed=5)
    ours.load_state_dict(_version_1(source.state_dict()))
    theirs.load_state_dict(_version_1(source.state_dict()))
    _assert_state_equal(ours, theirs)


def test_version_2_state_dict_without_counter_is_a_missing_key() -> None:
    sd = bnlab.nn.BatchNorm2d(3).state_dict()
    del sd["num_batches_tracked"]
    with pytest.raises(
        RuntimeError, match=re.escape('Missing key(s) in state_dict: "num_batches_tracked"')
    ):
        bnlab.nn.BatchNorm2d(3).load_state_dict(sd)


def test_untracked_module_rejects_running_stats_like_torch() -> None:
    sd = bnlab.nn.BatchNorm2d(3).state_dict()
    for module in (
        bnlab.nn.BatchNorm2d(3, track_running_stats=False),
        torch.nn.BatchNorm2d(3, track_running_stats=False),
    ):
        with pytest.raises(
            RuntimeError, match=re.escape('Unexpected key(s) in state_dict: "running_mean"')
        ):
            module.load_state_dict(sd)


# ------------------------------------------------------------------- copies and conversion


def _trained(cls: str = "BatchNorm2d", **kwargs) -> torch.nn.Module:
    m = getattr(bnlab.nn, cls)(3, **kwargs)
    randomize(m, torch.Generator().manual_seed(3))
    _train_steps(m, SHAPES[cls])
    return m


def _same_behaviour(a: torch.nn.Module, b: torch.nn.Module, cls: str = "BatchNorm2d") -> None:
    _assert_state_equal(a, b)
    for key in ["num_features", "eps", "momentum", "affine", "track_running_stats", "training"]:
        assert getattr(a, key) == getattr(b, key)
    x = torch.randn(SHAPES[cls], dtype=_dtype(a))
    a.eval()
    b.eval()
    # Exact: b is a copy of a (same class, same bits), run on the same input in the same
    # process and thread count: the same kernels in the same order give the same bits.
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    a.train()
    b.train()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    _assert_state_equal(a, b)


@pytest.mark.parametrize("kwargs", KWARGS, ids=KWARGS_IDS)
def test_deepcopy(kwargs: dict) -> None:
    m = _trained(**kwargs)
    c = copy.deepcopy(m)
    for (_, t), (_, tc) in zip(
        [*m.named_parameters(), *m.named_buffers()],
        [*c.named_parameters(), *c.named_buffers()],
        strict=True,
    ):
        assert t.data_ptr() != tc.data_ptr()
    _same_behaviour(m, c)


@pytest.mark.parametrize("kwargs", KWARGS, ids=KWARGS_IDS)
def test_pickle_round_trip(kwargs: dict) -> None:
    m = _trained(**kwargs)
    c = pickle.loads(pickle.dumps(m))
    assert type(c) is type(m)
    _same_behaviour(m, c)


def test_torch_save_load_round_trip() -> None:
    m = _trained()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    c = torch.load(buf, weights_only=False)
    _same_behaviour(m, c)


@pytest.mark.parametrize("cls", CLASSES)
def test_to_float64_matches_torch_twin(cls: str) -> None:
    ours, theirs = _pair(cls)
    randomize(ours, torch.Generator().manual_seed(0))
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = ours.to(torch.float64), theirs.to(torch.float64)
    for t in [*ours.parameters(), ours.running_mean, ours.running_var]:
        assert t.dtype == torch.float64
    assert ours.num_batches_tracked.dtype == torch.long
    assert isinstance(ours.weight, torch.nn.Parameter)
    x = torch.randn(SHAPES[cls], dtype=torch.float64) * 2 + 1
    for mode in (True, True, False):
        ours.train(mode)
        theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    for a, b in zip(ours.buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------- tracing and compiling


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("cls", CLASSES)
def test_jit_trace(cls: str) -> None:
    shape = SHAPES[cls]
    gen = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randn(shape, generator=gen) * 2 + 1 for _ in range(2))
    m = _trained(cls)
    # Eval: a pure function of the input; the traced module gives the eager output.
    m.eval()
    traced = torch.jit.trace(copy.deepcopy(m), x0, check_trace=False)
    # Not bitwise: the JIT runs the recorded graph, which it may optimize.
    torch.testing.assert_close(traced(x1), m(x1), rtol=0, atol=eval_atol(m, x1))
    # Train: the trace records the buffer update too.
    m.train()
    eager = copy.deepcopy(m)
    traced = torch.jit.trace(copy.deepcopy(m), x0, check_trace=False)
    eager(x0)  # the trace ran the forward once
    torch.testing.assert_close(traced(x1), eager(x1), rtol=1e-6, atol=1e-6)
    for a, b in zip(traced.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_matches_eager() -> None:
    """Small: one compiled module (inductor), two train steps with backward, then eval."""
    torch._dynamo.reset()
    m = _trained("BatchNorm2d")
    eager = copy.deepcopy(m)
    steps_before = int(m.num_batches_tracked)
    compiled = torch.compile(m)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(4, 3, 5, 2, generator=gen) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn(4, 3, 5, 2, generator=gen)
        ya, yb = compiled(xa), eager(xb)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.weight.grad, eager.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.bias.grad, eager.bias.grad, rtol=1e-5, atol=1e-5)
        for a, b in zip(m.buffers(), eager.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    m.eval()
    eager.eval()
    x = torch.randn(4, 3, 5, 2, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    assert int(m.num_batches_tracked) == int(eager.num_batches_tracked) == steps_before + 2


# ------------------------------------------------------------------- empty batch


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_empty_batch_leaves_every_buffer_untouched(case: BNCase, training: bool) -> None:
    m = case.ours(dtype=torch.float64).train(training)
    randomize(m, torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn((0, *case.shape[1:]), dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    y.sum().backward()
    assert x.grad is not None
    assert x.grad.shape == x.shape
    for p in m.parameters():
        assert p.grad is not None
        # Exact: a sum over an empty batch is 0 with no rounding.
        assert torch.equal(p.grad, torch.zeros_like(p))
    after = m.state_dict()
    for key in before:
        # Exact: an empty batch must not write the buffers.
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("cls", CLASSES)
def test_empty_batch_channels_last_and_half(cls: str) -> None:
    m = getattr(bnlab.nn, cls)(3)
    shape = (0, *SHAPES[cls][1:])
    x = torch.randn(shape).half()
    if x.dim() >= 4:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    y = m(x)
    assert y.dtype == torch.float16
    assert y.shape == x.shape
    assert int(m.num_batches_tracked) == 0


# ------------------------------------------------------------------- batch of one


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        ("BatchNorm1d", (1, 3)),
        ("BatchNorm1d", (1, 3, 1)),
        ("BatchNorm2d", (1, 3, 1, 1)),
        ("BatchNorm3d", (1, 3, 1, 1, 1)),
    ],
)
def test_batch_of_one_works_in_eval_like_torch(cls: str, shape) -> None:
    ours, theirs = _pair(cls)
    randomize(ours, torch.Generator().manual_seed(0))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(shape)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=eval_atol(ours, x))
    _assert_state_equal(ours, theirs)


def test_batch_of_one_with_length_works_in_training_like_torch() -> None:
    ours, theirs = _pair("BatchNorm1d")
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    ours, theirs = ours.double(), theirs.double()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------- errors

ERRORS = [
    # (desc, cls, kwargs, input shape or tensor factory, training, exception, message part)
    (
        "rank_2d",
        "BatchNorm2d",
        {},
        lambda: torch.randn(8, 3, 5),
        True,
        ValueError,
        "BatchNorm2d: expected 4D input (N, C, H, W), got 3D input of shape (8, 3, 5)",
    ),
    (
        "rank_1d",
        "BatchNorm1d",
        {},
        lambda: torch.randn(2, 3, 4, 5),
        True,
        ValueError,
        "BatchNorm1d: expected 2D or 3D input (N, C) or (N, C, L), got 4D input of shape (2, 3, 4, 5)",
    ),
    (
        "rank_1d_vector",
        "BatchNorm1d",
        {},
        lambda: torch.randn(3),
        False,
        ValueError,
        "BatchNorm1d: expected 2D or 3D input (N, C) or (N, C, L), got 1D input of shape (3,)",
    ),
    (
        "rank_3d",
        "BatchNorm3d",
        {},
        lambda: torch.randn(2, 3, 4, 5),
        False,
        ValueError,
        "BatchNorm3d: expected 5D input (N, C, D, H, W), got 4D input of shape (2, 3, 4, 5)",
    ),
    (
        "channels",
        "BatchNorm2d",
        {},
        lambda: torch.randn(2, 4, 5, 5),
        True,
        ValueError,
        "BatchNorm2d: expected 3 channels in dim 1, got 4 (input of shape (2, 4, 5, 5))",
    ),
    (
        "channels_eval",
        "BatchNorm1d",
        {},
        lambda: torch.randn(2, 5),
        False,
        ValueError,
        "BatchNorm1d: expected 3 channels in dim 1, got 5 (input of shape (2, 5))",
    ),
    (
        "int_dtype",
        "BatchNorm2d",
        {},
        lambda: torch.ones(2, 3, 4, 4, dtype=torch.long),
        True,
        TypeError,
        "BatchNorm2d: expected a floating-point input (float16, bfloat16, float32 or float64), "
        "got dtype torch.int64",
    ),
    (
        "uint8_dtype_eval",
        "BatchNorm2d",
        {},
        lambda: torch.ones(2, 3, 4, 4, dtype=torch.uint8),
        False,
        TypeError,
        "got dtype torch.uint8",
    ),
    (
        "bool_dtype",
        "BatchNorm1d",
        {},
        lambda: torch.ones(2, 3, dtype=torch.bool),
        True,
        TypeError,
        "got dtype torch.bool",
    ),
    (
        "complex_dtype",
        "BatchNorm1d",
        {},
        lambda: torch.randn(4, 3, dtype=torch.complex64),
        True,
        TypeError,
        "BatchNorm1d: expected a floating-point input (float16, bfloat16, float32 or float64), "
        "got dtype torch.complex64",
    ),
    (
        "not_a_tensor",
        "BatchNorm1d",
        {},
        lambda: [[1.0, 2.0, 3.0]],
        True,
        TypeError,
        "BatchNorm1d: expected a torch.Tensor input, got list",
    ),
    (
        "one_value_per_channel_1d",
        "BatchNorm1d",
        {},
        lambda: torch.randn(1, 3),
        True,
        ValueError,
        "BatchNorm1d: expected more than 1 value per channel when training, got input of shape (1, 3)",
    ),
    (
        "one_value_per_channel_2d",
        "BatchNorm2d",
        {},
        lambda: torch.randn(1, 3, 1, 1),
        True,
        ValueError,
        "BatchNorm2d: expected more than 1 value per channel when training, "
        "got input of shape (1, 3, 1, 1)",
    ),
    (
        "one_value_per_channel_untracked_eval",
        "BatchNorm3d",
        {"track_running_stats": False},
        lambda: torch.randn(1, 3, 1, 1, 1),
        False,
        ValueError,
        "BatchNorm3d: expected more than 1 value per channel when training, "
        "got input of shape (1, 3, 1, 1, 1)",
    ),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "make", "training", "exc", "message"),
    [e[1:] for e in ERRORS],
    ids=[e[0] for e in ERRORS],
)
def test_forward_errors(cls, kwargs, make, training, exc, message) -> None:
    m = getattr(bnlab.nn, cls)(3, **kwargs).train(training)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(exc, match=re.escape(message)):
        m(make())
    after = m.state_dict()
    # Exact: the error is raised before any buffer is written.
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_value_per_channel_message_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"batch of at least 2, or call \.eval\(\)"):
        bnlab.nn.BatchNorm1d(3)(torch.randn(1, 3))


CONSTRUCTOR_ERRORS = [
    (
        "eps_zero",
        {"eps": 0.0},
        ValueError,
        "BatchNorm2d: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got 0.0",
    ),
    (
        "eps_negative",
        {"eps": -1e-5},
        ValueError,
        "BatchNorm2d: eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got -1e-05",
    ),
    ("eps_nan", {"eps": float("nan")}, ValueError, "got nan"),
    ("eps_inf", {"eps": float("inf")}, ValueError, "got inf"),
    (
        "eps_str",
        {"eps": "1e-5"},
        TypeError,
        "BatchNorm2d: eps must be a float > 0, got '1e-5' of type str",
    ),
    (
        "momentum_above_1",
        {"momentum": 1.5},
        ValueError,
        "BatchNorm2d: momentum must be in [0, 1] (the weight of the new batch, PyTorch's "
        "convention; a decay of 0.9 is momentum=0.1), or None for a cumulative average, got 1.5",
    ),
    (
        "momentum_negative",
        {"momentum": -0.1},
        ValueError,
        "or None for a cumulative average, got -0.1",
    ),
    ("momentum_decay_style", {"momentum": 0.99 + 1}, ValueError, "got 1.99"),
    ("momentum_nan", {"momentum": float("nan")}, ValueError, "got nan"),
    (
        "momentum_str",
        {"momentum": "0.1"},
        TypeError,
        "BatchNorm2d: momentum must be a float in [0, 1] or None, got '0.1' of type str",
    ),
    (
        "num_features_zero",
        {"num_features": 0},
        ValueError,
        "BatchNorm2d: num_features must be > 0 (the number of channels), got 0",
    ),
    (
        "num_features_negative",
        {"num_features": -3},
        ValueError,
        "BatchNorm2d: num_features must be > 0 (the number of channels), got -3",
    ),
    (
        "num_features_bool",
        {"num_features": True},
        TypeError,
        "BatchNorm2d: num_features must be an int (the number of channels), got True of type bool",
    ),
    (
        "num_features_float",
        {"num_features": 3.0},
        TypeError,
        "BatchNorm2d: num_features must be an int (the number of channels), got 3.0 of type float",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [e[1:] for e in CONSTRUCTOR_ERRORS],
    ids=[e[0] for e in CONSTRUCTOR_ERRORS],
)
def test_constructor_errors(kwargs, exc, message) -> None:
    kwargs = {"num_features": 3, **kwargs}
    with pytest.raises(exc, match=re.escape(message)):
        bnlab.nn.BatchNorm2d(**kwargs)


@pytest.mark.parametrize("cls", CLASSES)
def test_constructor_error_names_the_class(cls: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{cls}: eps must be > 0")):
        getattr(bnlab.nn, cls)(3, eps=0)


@pytest.mark.parametrize("momentum", [0, 1, 0.0, 1.0, 0.5, None])
def test_momentum_bounds_are_inclusive(momentum) -> None:
    assert bnlab.nn.BatchNorm1d(3, momentum=momentum).momentum == momentum


def test_case_table_layouts_are_what_they_claim() -> None:
    from bn_module_cases import check_layout

    gen = torch.Generator().manual_seed(0)
    for case in CASES:
        leaf, view = make_input(case, torch.float32, gen)
        check_layout(case, view(leaf))


@pytest.mark.parametrize("cls", CLASSES)
def test_bias_false_like_torch(cls: str) -> None:
    """torch.nn's ``bias=False`` (keyword-only): a learnable scale and no shift."""
    theirs = getattr(torch.nn, cls)(3, bias=False)
    ours = getattr(bnlab.nn, cls)(3, bias=False)
    assert ours.bias is None
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(SHAPES[cls])
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_inference_mode_like_torch(training: bool) -> None:
    ours, theirs = _pair("BatchNorm2d")
    randomize(ours, torch.Generator().manual_seed(0))
    theirs.load_state_dict(ours.state_dict())
    ours.train(training)
    theirs.train(training)
    x = torch.randn(4, 3, 5, 2) * 2 + 1
    with torch.inference_mode():
        y, y_t = ours(x), theirs(x)
    torch.testing.assert_close(y, y_t, rtol=1e-5, atol=1e-6)
    _assert_state_equal_close(ours, theirs)


def _assert_state_equal_close(a: torch.nn.Module, b: torch.nn.Module, when: str = "") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=f"{when} {key}")


@pytest.mark.parametrize("cls", CLASSES)
def test_attributes_changed_after_construction_act_like_torch(cls: str) -> None:
    """torch reads ``track_running_stats``, ``momentum`` and ``eps`` at every forward:
    ``track_running_stats = False`` on a built module freezes its buffers in training
    (batch statistics, no update) and keeps normalizing with them in eval."""
    ours, theirs = _pair(cls)
    randomize(ours, torch.Generator().manual_seed(0))
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(1)
    for attrs in (
        {"momentum": None},
        {"eps": 0.5},
        {"track_running_stats": False},
        {"track_running_stats": True, "momentum": 0.7},
    ):
        for m in (ours, theirs):
            for k, v in attrs.items():
                setattr(m, k, v)
        for training in (True, False):
            ours.train(training)
            theirs.train(training)
            x = torch.randn(SHAPES[cls], generator=gen) * 2 + 1
            when = f"{attrs}, training={training}:"
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5, msg=when)
            _assert_state_equal_close(ours, theirs, when)
