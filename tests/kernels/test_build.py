"""``bnlab.kernels.build``: building and loading the C++ kernels, and the fallback to
the torch-ops path when that fails (one warning, same results)."""

from __future__ import annotations

import shutil
import threading
import warnings

import pytest
import torch

import bnlab.autograd
from bnlab import kernels

HAS_COMPILER = any(shutil.which(c) for c in kernels.COMPILERS)
needs_fast = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")


@pytest.fixture
def calls(monkeypatch):
    """Counts the training-forward kernel calls."""
    counts = {"train_forward": 0}
    original = kernels.train_forward

    def spy(*args, **kwargs):
        counts["train_forward"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "train_forward", spy)
    return counts


@pytest.fixture
def fresh_build_state(monkeypatch, tmp_path):
    """An empty build cache and no loaded library; the real state comes back afterwards."""
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_state", "not built yet")
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "_fns", {})
    monkeypatch.setattr(kernels.build, "cache_dir", tmp_path / "cache")
    return tmp_path / "cache"


def test_failed_build_warns_once_and_falls_back(fresh_build_state, monkeypatch, calls) -> None:
    monkeypatch.setattr(kernels.build, "compilers", ("bnlab-no-such-compiler++",))
    x = torch.randn(64, 4, 8, 8)
    want = torch.nn.functional.batch_norm(x, None, None, training=True)
    with pytest.warns(RuntimeWarning) as record:
        y = bnlab.autograd.batch_norm(x, None, None, training=True).output
    assert len(record) == 1
    message = str(record[0].message)
    assert message == (
        "bnlab: BatchNorm fast path unavailable, using the reference path "
        "(RuntimeError: no C++ compiler found (looked for bnlab-no-such-compiler++))"
    )
    assert "\n" not in message
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        bnlab.autograd.batch_norm(x, None, None, training=True)
    assert not kernels.available()
    assert kernels.status().startswith("unavailable: RuntimeError: no C++ compiler found")
    assert calls["train_forward"] == 0


@needs_fast
def test_compiler_error_warns_with_its_last_line(fresh_build_state, monkeypatch) -> None:
    monkeypatch.setattr(kernels.build, "FLAGS", (*kernels.build.FLAGS, "-fbnlab-no-such-flag"))
    with pytest.warns(RuntimeWarning, match=r"failed with exit code \d+: .*bnlab-no-such-flag"):
        assert not kernels.available()
    # No half-written library is left behind for the next process.
    assert not list(fresh_build_state.rglob("*.so"))


@needs_fast
def test_waiting_builder_loads_the_library_another_process_built(monkeypatch, tmp_path) -> None:
    from filelock import FileLock

    assert kernels.available()  # the real library, to stand in for another process' build
    built = kernels._lib._name
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_state", "not built yet")
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "_fns", {})
    monkeypatch.setattr(kernels.build, "cache_dir", tmp_path / "cache")
    # Compiling now would fail: the waiting builder must load, not compile.
    monkeypatch.setattr(kernels.build, "compilers", ("bnlab-no-such-compiler++",))
    folder = tmp_path / "cache" / kernels.build._key()
    folder.mkdir(parents=True)
    lock = FileLock(str(folder / "build.lock"))
    lock.acquire()
    result = {}
    waiter = threading.Thread(target=lambda: result.update(ok=kernels.available()))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive()  # blocked on the lock
    shutil.copy(built, folder / "bn_kernels.so")
    lock.release()
    waiter.join(timeout=60)
    assert result == {"ok": True}
    assert kernels.status() == f"ready: {folder / 'bn_kernels.so'}"
