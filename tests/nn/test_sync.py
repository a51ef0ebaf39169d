"""SyncBatchNorm and convert_sync_batchnorm.

Spawned tests: one gloo process group of 2 ranks and one of 3 on localhost, each
running every case of ``_sync_worker.CASES`` (slices of one global batch, including
unequal and empty slices) against bnlab's BatchNorm over the concatenated batch in
float64: outputs, grad_x per slice, the sum over ranks of grad_weight/grad_bias,
running statistics after several steps (identical on every rank) and eval outputs.
Starting a process costs seconds (torch's import), so each world size is one start of
its ranks (forked from a forkserver that imported torch once, see ``_context``), and
its test lists every case that failed, on which rank, and how.

Single-process tests: without a process group SyncBatchNorm is bnlab's BatchNorm; the
single-rank sync path (LocalCollectives) equals batch norm and passes gradcheck;
state_dict interop with torch.nn; convert_sync_batchnorm; error messages.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _sync_worker import CASES
from _sync_worker import main as worker_main
from torch import nn

import bnlab.nn as bnn
from bnlab.autograd import LocalCollectives, SyncBatchNormFunction, sync_batch_norm
from bnlab.autograd import batch_norm as bn_autograd
from bnlab.nn import SyncBatchNorm, convert_sync_batchnorm

F64 = torch.float64

# Worst case: a hang inside the group ends after the group's timeout (30 s) per stuck
# collective; the test gives up well after that and kills its own processes.
SPAWN_DEADLINE_S = 150

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def _context() -> multiprocessing.context.BaseContext:
    """A start method that gives fresh processes, importing torch once.

    "forkserver" (Linux, macOS) starts one server that imports torch and bnlab (the
    preload) and has run no torch op, so no thread pool is copied; every
    rank is forked from it in milliseconds. "spawn" (elsewhere) imports torch once per
    rank, seconds each.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Modules importable without the tests' sys.path (the server does not get it in
        # Python 3.11); each rank then imports _sync_worker itself, cheaply. The first
        # backward imports symbolic_shapes (sympy, seconds): preloaded too.
        ctx.set_forkserver_preload(
            ["torch", "torch.distributed", "torch.fx.experimental.symbolic_shapes", "bnlab.nn"]
        )
        return ctx
    return multiprocessing.get_context("spawn")


def _spawn(world_size: int, out: Path) -> tuple[dict[int, dict[str, str]], list[int | None]]:
    ctx = _context()
    procs = [
        ctx.Process(target=worker_main, args=(rank, world_size, str(out)), daemon=True)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    results = {}
    for rank in range(world_size):
        path = out / f"rank{rank}.json"
        results[rank] = json.loads(path.read_text()) if path.exists() else {}
    return results, [p.exitcode for p in procs]


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("world_size", sorted(CASES))
def test_spawned_ranks_equal_batchnorm_over_concatenated_batch(world_size, tmp_path):
    results, exitcodes = _spawn(world_size, tmp_path)
    failures = []
    for case in CASES[world_size]:
        for rank in range(world_size):
            got = results[rank].get(case.name, "no result (the rank crashed or hung)")
            if got != "ok":
                failures.append(f"[{case.name}] rank {rank}: {got}")
    report = f"world size {world_size}, exit codes {exitcodes}:\n" + "\n".join(failures)
    assert exitcodes == [0] * world_size, report
    assert not failures, report


def test_cases_cover_the_claims():
    # The spawned table keeps the hard cases the issue names.
    for world_size in (2, 3):
        cases = CASES[world_size]
        assert any(0 in c.sizes and sum(c.sizes) > 0 for c in cases)
        assert any(len(set(c.sizes)) == len(c.sizes) for c in cases)
        assert any(c.error for c in cases)
        assert {len(c.spatial) + 2 for c in cases} >= {2, 3, 5}
    assert any(c.group for c in CASES[3])


# ---------------------------------------------------------------- single process


def _randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.normal_(generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return m


@pytest.mark.parametrize(
    ("shape", "bn_cls", "kwargs"),
    [
        ((6, 3), bnn.BatchNorm1d, {}),
        ((4, 3, 5), bnn.BatchNorm1d, {"momentum": None}),
        ((4, 3, 2, 3), bnn.BatchNorm2d, {}),
        ((2, 3, 2, 2, 3), bnn.BatchNorm3d, {"affine": False}),
        ((4, 3, 2, 3), bnn.BatchNorm2d, {"track_running_stats": False}),
        ((0, 3, 2, 3), bnn.BatchNorm2d, {}),
    ],
)
def test_without_process_group_equals_batchnorm(shape, bn_cls, kwargs):
    assert not dist.is_initialized()
    sync = _randomize(SyncBatchNorm(3, dtype=F64, **kwargs))
    bn = bn_cls(3, dtype=F64, **kwargs)
    bn.load_state_dict(sync.state_dict())
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(shape, generator=gen, dtype=F64) + step
        g = torch.randn(shape, generator=gen, dtype=F64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = sync(xa), bn(xb)
        ya.backward(g)
        yb.backward(g)
        # Exact: without a process group SyncBatchNorm.forward is BatchNorm's forward
        # (super().forward), the same code on the same bits.
        assert torch.equal(ya, yb)
        assert torch.equal(xa.grad, xb.grad)
        for (name, a), b in zip(sync.named_parameters(), bn.parameters(), strict=True):
            assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(sync.named_buffers(), bn.buffers(), strict=True):
        assert torch.equal(a, b), name
    sync.eval()
    bn.eval()
    x = torch.randn(shape, generator=gen, dtype=F64)
    assert torch.equal(sync(x), bn(x))


def test_without_process_group_equals_torch_batchnorm2d():
    sync = _randomize(SyncBatchNorm(4))
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(sync.state_dict())
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(sync(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_without_process_group(training):
    sync = _randomize(SyncBatchNorm(3, dtype=F64)).train(training)
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: sync(x), (x, sync.weight, sync.bias))


def _local_sync(x, w, b, rm=None, rv=None, momentum=0.1, nbt=None):
    return sync_batch_norm(
        x, rm, rv, w, b, momentum=momentum, num_batches_tracked=nbt, collectives=LocalCollectives()
    )


def test_gradcheck_single_rank_sync_function():
    # The closed-form backward of the sync path, with identity collectives.
    x = (torch.randn(5, 3, 2, dtype=F64) + 3).requires_grad_()
    w = torch.rand(3, dtype=F64).add_(0.5).requires_grad_()
    b = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _local_sync(x, w, b).output, (x, w, b))
    assert torch.autograd.gradcheck(lambda x: _local_sync(x, None, None).output, (x,))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(7, 3), (4, 3, 5), (2, 3, 2, 2, 2)])
def test_single_rank_sync_equals_batch_norm(shape, momentum):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=F64) * 1e-3 + 1e4
    g = torch.randn(shape, generator=gen, dtype=F64)
    w = torch.rand(3, generator=gen, dtype=F64) + 0.5
    b = torch.randn(3, generator=gen, dtype=F64)
    stats = (torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5, torch.tensor(2))
    out = []
    for fn in (_local_sync, None):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        if fn is None:
            r = bn_autograd(xi, *stats[:2], wi, bi, True, momentum, 1e-5, stats[2])
        else:
            r = fn(xi, wi, bi, *stats[:2], momentum=momentum, nbt=stats[2])
        grads = torch.autograd.grad(r.output, (xi, wi, bi), g)
        out.append((r.output, *grads, r.running_mean, r.running_var, r.num_batches_tracked))
    # x = 1e4 + 1e-3 * noise: the two paths round the mean in different orders (merged
    # float64 moments against centred sums), and one rounding at 1e4 is cond = 1e4 / 1e-3
    # = 1e7 times larger relative to the spread. So each result may differ by a few
    # float64 eps * cond of its size (about 4e-9), whatever the summation order.
    tol = 16 * torch.finfo(F64).eps * 1e7
    for a, b_ in zip(*out, strict=True):
        torch.testing.assert_close(a, b_, rtol=tol, atol=tol * float(b_.detach().abs().max()))


def test_single_rank_sync_empty_batch_keeps_statistics():
    x = torch.empty(0, 3, 4, dtype=F64, requires_grad=True)
    w = torch.ones(3, dtype=F64, requires_grad=True)
    rm, rv, nbt = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), torch.tensor(0)
    r = _local_sync(x, w, None, rm, rv, nbt=nbt)
    assert r.output.shape == (0, 3, 4)
    assert r.running_mean is rm
    assert r.running_var is rv
    assert r.num_batches_tracked is nbt
    r.output.sum().backward()
    assert x.grad.shape == (0, 3, 4)
    # Exact: a sum over an empty batch is 0 with no rounding.
    assert torch.equal(w.grad, torch.zeros(3, dtype=F64))


def test_single_rank_sync_double_backward_raises():
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    y = _local_sync(x, None, None).output
    (gx,) = torch.autograd.grad((y**3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward|once_differentiable|twice"):
        gx.sum().backward()


def test_single_rank_sync_float16_statistics_in_float32():
    x = (torch.randn(8, 3, 4) * 0.1 + 2).half()
    y, mean, _var, count = SyncBatchNormFunction.apply(x, None, None, 1e-5, LocalCollectives(), "t")
    assert y.dtype == torch.float16
    assert mean.dtype == torch.float32
    assert int(count) == 32
    ref = bn_autograd(x.float(), None, None, training=True).output
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- state_dict interop


@pytest.mark.parametrize("torch_cls", [nn.SyncBatchNorm, nn.BatchNorm2d])
def test_state_dict_interop_both_ways(torch_cls):
    ours = _randomize(SyncBatchNorm(5))
    with torch.no_grad():
        ours.num_batches_tracked.fill_(7)
    theirs = torch_cls(5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    back = SyncBatchNorm(5)
    back.load_state_dict(theirs.state_dict())
    for (k, a), b in zip(back.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # exact: two copies, no arithmetic


def test_repr_and_untracked_buffers_match_torch():
    ours = SyncBatchNorm(4, affine=False, track_running_stats=False)
    theirs = nn.SyncBatchNorm(4, affine=False, track_running_stats=False)
    assert ours.extra_repr() == theirs.extra_repr()
    assert ours.state_dict().keys() == theirs.state_dict().keys()


# ---------------------------------------------------------------- convert


def test_convert_nested_model():
    ghost = bnn.GhostBatchNorm2d(4, virtual_batch_size=2)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        _randomize(nn.BatchNorm2d(4), 1),
        nn.ReLU(),
        nn.Sequential(bnn.BatchNorm2d(4), ghost, nn.Sequential(nn.Flatten(), nn.Linear(4, 6))),
        _randomize(bnn.BatchNorm1d(6), 2),
    )
    model[1].weight.requires_grad_(False)
    model[4].eval()
    old = {name: m for name, m in model.named_modules()}
    out = convert_sync_batchnorm(model, process_group="pg")
    assert out is model
    for name in ("1", "3.0", "4"):
        new = out.get_submodule(name)
        assert type(new) is SyncBatchNorm, name
        assert new.process_group == "pg"
        assert new.weight is old[name].weight
        assert new.running_var is old[name].running_var
        assert new.training == old[name].training
    assert not out[1].weight.requires_grad
    assert not out[4].training
    assert out[3][1] is ghost
    assert isinstance(out[0], nn.Conv2d)
    assert isinstance(out[3][2][1], nn.Linear)
    assert out(torch.randn(2, 1, 3, 3)).shape == (2, 6)


@pytest.mark.parametrize(
    "bn",
    [
        nn.BatchNorm3d(3, eps=1e-3, momentum=None, dtype=F64),
        bnn.BatchNorm1d(3, affine=False, track_running_stats=False),
        nn.BatchNorm1d(3, bias=False),
        nn.SyncBatchNorm(3, momentum=0.3),
    ],
    ids=["torch3d_f64", "bnlab_untracked", "torch_no_bias", "torch_sync"],
)
def test_convert_bare_module(bn):
    new = SyncBatchNorm.convert_sync_batchnorm(_randomize(bn))
    assert type(new) is SyncBatchNorm
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        assert getattr(new, attr) == getattr(bn, attr), attr
    assert new.state_dict().keys() == bn.state_dict().keys()
    for k, v in bn.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k  # exact: conversion copies or shares
        assert new.state_dict()[k].dtype == v.dtype
    spatial = (2, 2, 2) if isinstance(bn, nn.BatchNorm3d) else (5,)
    dtype = bn.weight.dtype if bn.weight is not None else torch.float32
    x = torch.randn(4, 3, *spatial, dtype=dtype)
    new.eval()
    bn.eval()
    if bn.track_running_stats:
        ref = nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
        torch.testing.assert_close(new(x), ref)


def test_convert_lazy_batchnorm_error():
    with pytest.raises(ValueError, match="uninitialized") as info:
        convert_sync_batchnorm(nn.Sequential(nn.LazyBatchNorm2d()))
    assert str(info.value) == (
        "convert_sync_batchnorm: LazyBatchNorm2d has uninitialized parameters (a lazy "
        "module); run one forward pass first so that num_features is known"
    )


# ---------------------------------------------------------------- errors


def test_error_input_rank():
    with pytest.raises(ValueError, match="at least 2D") as info:
        SyncBatchNorm(3)(torch.randn(3))
    assert str(info.value) == (
        "SyncBatchNorm: expected at least 2D input (N, C, *), got 1D input of shape (3,)"
    )


def test_error_channels():
    with pytest.raises(ValueError, match=r"expected 3 channels in dim 1, got 4 \(input of shape"):
        SyncBatchNorm(3)(torch.randn(2, 4))


def test_error_global_batch_of_one_value():
    with pytest.raises(ValueError, match="1 value per channel") as info:
        _local_sync(torch.randn(1, 3, dtype=F64), None, None)
    assert str(info.value) == (
        "sync_batch_norm: expected more than 1 value per channel when training, got 1 value "
        "per channel in the global batch over 1 ranks (this rank's input has shape (1, 3)); "
        "a batch of one has no batch variance. Use a larger global batch, or call .eval() "
        "to normalize with the running statistics"
    )


def test_error_cumulative_average_needs_counter():
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="momentum=None") as info:
        _local_sync(torch.randn(4, 3), None, None, rm, rv, momentum=None)
    assert str(info.value) == (
        "sync_batch_norm: momentum=None (cumulative average) needs num_batches_tracked; "
        "pass the batch counter, or a momentum in [0, 1]"
    )


def test_error_constructor_eps():
    with pytest.raises(ValueError, match=r"SyncBatchNorm: eps must be > 0 .*got -1\.0"):
        SyncBatchNorm(3, eps=-1.0)
