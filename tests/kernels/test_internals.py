"""The CPython and torch internals the fast path leans on, checked so that an upgrade
that changes them fails here, loudly, instead of slowing down or corrupting quietly.

* The output pool (``bnlab.kernels.pool``) tells a used buffer from a free one by
  ``torch._C._storage_Use_Count`` (every tensor and view on a storage holds a reference
  to it) and ``sys.getrefcount`` of the storage's Python object.
* ``bnlab.autograd.batch_norm`` calls the C++ ``apply`` of ``torch._C._FunctionBase``
  directly (it skips about 8 us of Python per call), guarded by
  ``torch._C._are_functorch_transforms_active`` and
  ``torch._C._functorch.is_functorch_wrapped_tensor``; the group and layer norm
  dispatch uses the same two guards (``bnlab.kernels.is_transformed``).
"""

from __future__ import annotations

import gc
import importlib
import sys

import pytest
import torch

import bnlab.nn
from bnlab import kernels
from bnlab.kernels.pool import OutputPool

# The module, not the function of the same name that bnlab.autograd exports.
autograd_bn = importlib.import_module("bnlab.autograd.batch_norm")

# ------------------------------------------------------------------------- output pool


def test_tensors_on_a_storage_hold_a_reference_to_it() -> None:
    storage = torch.UntypedStorage(4096)
    before = torch._C._storage_Use_Count(storage._cdata)
    t = torch.empty(0).set_(storage, 0, (16,))
    view = t[2:4]
    del t
    gc.collect()
    assert torch._C._storage_Use_Count(storage._cdata) > before, (
        "a view no longer holds a reference to its storage: the output pool "
        "(bnlab.kernels.pool) would hand out memory that a tensor still uses"
    )
    holder = view.untyped_storage()
    del view
    gc.collect()
    assert sys.getrefcount(storage) > 2, "the storage object a caller holds is not counted"
    del holder
    assert torch._C._storage_Use_Count(storage._cdata) == before, (
        "the reference outlives every tensor on the storage"
    )


def test_the_pool_can_tell_used_mappings_from_free_ones() -> None:
    pool = OutputPool(max_free_bytes=1 << 20)
    assert pool.reuse_works(), (
        "the output pool cannot tell used mappings from free ones on this interpreter and "
        "torch (sys.getrefcount or torch.frombuffer changed): it has turned reuse off, so "
        "large outputs page-fault again; see bnlab/kernels/pool.py"
    )
    assert kernels._pool.reuse_works()


def test_the_pool_never_reuses_a_mapping_in_use() -> None:
    pool = OutputPool(max_free_bytes=1 << 30)
    a = pool.empty((1024,), torch.float32)
    a.fill_(3.0)
    # Every way of keeping a's memory alive keeps its mapping in use.
    keepers = {
        "view": a[5:9],
        "storage": a.untyped_storage(),
        "alias": torch.empty(0).set_(a.untyped_storage(), 0, (1024,)),
    }
    address = a.data_ptr()
    del a
    for name in list(keepers):
        t = pool.empty((1024,), torch.float32)
        assert t.data_ptr() != address, f"mapping reused while a {name} of it is alive"
        del keepers[name]
        del t
    gc.collect()
    assert pool.empty((1024,), torch.float32).data_ptr() == address  # free again: reused


def test_a_pool_that_cannot_tell_turns_reuse_off(monkeypatch) -> None:
    pool = OutputPool(max_free_bytes=1 << 30)
    monkeypatch.setattr(pool, "_is_free", lambda buf: True)  # as if refcounts lied
    assert not pool.reuse_works()
    a = pool.empty((1000,), torch.float32)
    address = a.data_ptr()
    b = pool.empty((1000,), torch.float32)
    assert b.data_ptr() != address
    assert pool.mapped_bytes() == 0  # nothing kept for reuse


# ------------------------------------------------------------- the direct C++ apply


def test_the_cpp_apply_of_autograd_functions_is_found() -> None:
    assert autograd_bn._kernel_apply is not None, (
        "torch._C._FunctionBase.apply, or the functorch checks that guard calling it, "
        "are gone: the modules fall back to Function.apply (about 8 us slower a call); "
        "see bnlab/autograd/batch_norm.py _cpp_apply"
    )


@pytest.mark.skipif(not kernels.available(), reason="the C++ kernels do not build here")
def test_the_cpp_apply_equals_function_apply() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    results = []
    for apply in (autograd_bn._kernel_apply, autograd_bn.FastBatchNormFunction.apply):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = apply(xs, ws, bs, 1e-5, None)
        assert type(y.grad_fn).__name__ == "FastBatchNormFunctionBackward"
        y.backward(grad_y)
        results.append((y.detach(), xs.grad, ws.grad, bs.grad))
    for a, o in zip(*results, strict=True):
        assert torch.equal(a, o)


def test_the_functorch_guards_see_transforms() -> None:
    x = torch.randn(3, 4)
    assert not torch._C._are_functorch_transforms_active()
    assert not torch._C._functorch.is_functorch_wrapped_tensor(x)
    assert not kernels.is_transformed(x)
    seen = []

    def probe(row):
        seen.append(
            (
                torch._C._are_functorch_transforms_active(),
                torch._C._functorch.is_functorch_wrapped_tensor(row),
                kernels.is_transformed(row),
            )
        )
        return row

    torch.func.vmap(probe)(x)
    assert seen == [(True, True, True)]


@pytest.mark.skipif(not kernels.available(), reason="the C++ kernels do not build here")
def test_modules_under_vmap_do_not_take_the_kernels(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "MIN_NUMEL", 0)
    x = torch.randn(2, 8, 4, 5, 5)
    ln = bnlab.nn.LayerNorm((4, 5, 5))
    gn = bnlab.nn.GroupNorm(2, 4)
    want = [torch.stack([m(t) for t in x]) for m in (ln, gn)]
    got = [torch.func.vmap(m)(x) for m in (ln, gn)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
