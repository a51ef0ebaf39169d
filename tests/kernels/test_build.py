"""``bnlab.kernels.build``: loading the prebuilt (wheel) kernels, the best level the CPU
runs; compiling at first use where there are none (one ``KernelBuildWarning`` line, a
cache under ``$XDG_CACHE_HOME``); and the fallback to the torch-ops path when that fails
(one warning, same results). The wheel itself: ``tests/test_packaging.py``."""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from pathlib import Path

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
    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setattr(kernels, "_state", "not built yet")
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "_fns", {})
    monkeypatch.setattr(kernels.build, "cache_dir", tmp_path / "cache")
    monkeypatch.setattr(kernels.build, "prebuilt_dir", tmp_path / "no-prebuilt")
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
    with (
        pytest.warns(kernels.build.KernelBuildWarning),
        pytest.warns(RuntimeWarning, match=r"failed with exit code \d+: .*bnlab-no-such-flag"),
    ):
        assert not kernels.available()
    # No half-written library is left behind for the next process.
    assert not list(fresh_build_state.rglob("*.so"))


@needs_fast
def test_waiting_builder_loads_the_library_another_process_built(monkeypatch, tmp_path) -> None:
    from filelock import FileLock

    assert kernels.available()  # the real library, to stand in for another process' build
    built = kernels._lib._name
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setattr(kernels, "_state", "not built yet")
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "_fns", {})
    monkeypatch.setattr(kernels.build, "cache_dir", tmp_path / "cache")
    monkeypatch.setattr(kernels.build, "prebuilt_dir", tmp_path / "no-prebuilt")
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


# ------------------------------------------------------------- compile at first use


def test_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernels.build.default_cache_dir() == tmp_path / "xdg" / "bnlab" / "fast_bn"
    # The XDG spec: a relative path is invalid and ignored.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert kernels.build.default_cache_dir() == Path.home() / ".cache" / "bnlab" / "fast_bn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kernels.build.default_cache_dir() == Path.home() / ".cache" / "bnlab" / "fast_bn"


def test_cache_key_changes_with_the_cpu(monkeypatch) -> None:
    key = kernels.build._key()
    monkeypatch.setattr(kernels.build, "_cpu_id", lambda: "model name : another CPU")
    assert kernels.build._key() != key


@needs_fast
def test_first_use_compile_says_so_in_one_line_then_uses_the_cache(
    fresh_build_state, monkeypatch
) -> None:
    monkeypatch.setattr(kernels.build, "cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh_build_state))
    with pytest.warns(kernels.build.KernelBuildWarning) as record:
        assert kernels.available()
    assert len(record) == 1
    message = str(record[0].message)
    folder = fresh_build_state / "bnlab" / "fast_bn" / kernels.build._key()
    assert message.startswith("bnlab: compiling the C++ kernels for this CPU with ")
    assert str(folder) in message
    assert "\n" not in message
    info = kernels.library_info()
    assert info["origin"] == "compiled"
    assert info["path"] == str(folder / "bn_kernels.so")
    assert info["compile_s"] > 0
    # A second process finds it in the cache: no compile, no message.
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_loaded", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.available()
    assert kernels.library_info()["origin"] == "cached"


def test_the_compile_message_never_raises(monkeypatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a filter that turns warnings into errors
        kernels.build._announce("compiling")  # must not cost the fast path


# ------------------------------------------------------------- prebuilt libraries


@pytest.fixture(scope="session")
def real_library() -> Path:
    """This process' library (loaded before any test resets the build state)."""
    if not kernels.available():
        pytest.skip(f"the C++ kernels do not build here: {kernels.status()}")
    return Path(kernels._lib._name)


def _fake_prebuilt(
    library: Path, folder: Path, levels: list[str], *, source_sha256: str | None = None
) -> None:
    """``folder`` as a wheel's kernels folder: ``library`` under each level's name."""
    folder.mkdir(parents=True, exist_ok=True)
    for level in levels:
        shutil.copy(library, kernels.build.prebuilt_path(folder, level))
    shutil.copy(kernels.build.SOURCE, folder / kernels.build.SOURCE.name)
    manifest = {
        "abi": kernels.build.ABI_VERSION,
        "source_sha256": source_sha256 or kernels.build._source_hash(kernels.build.SOURCE),
        "levels": levels,
    }
    (folder / kernels.build.MANIFEST).write_text(json.dumps(manifest))


X86 = ["x86-64-v4", "x86-64-v3", "x86-64"]
V3_CPU = kernels.build._X86_V3 | {"sse2"}
V4_CPU = kernels.build._X86_V4


@needs_fast
@pytest.mark.parametrize(
    ("cpu", "want"),
    [
        (V4_CPU, "x86-64-v4"),
        (V3_CPU, "x86-64-v3"),
        (frozenset({"sse2"}), "x86-64"),
        (None, "x86-64"),
    ],
    ids=["avx512", "avx2", "baseline", "unknown-cpu"],
)
def test_prebuilt_library_of_the_best_level_the_cpu_runs(
    real_library, monkeypatch, tmp_path, cpu, want
) -> None:
    _fake_prebuilt(real_library, tmp_path, X86)
    monkeypatch.setattr(kernels.build.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kernels.build, "_cpu_flags", lambda: cpu)
    loaded, skipped = kernels.build._load_prebuilt(tmp_path)
    assert skipped == ""
    assert loaded.origin == "prebuilt"
    assert loaded.level == want
    assert loaded.path == kernels.build.prebuilt_path(tmp_path, want)


@needs_fast
def test_a_prebuilt_library_loads_without_a_compiler(
    real_library, fresh_build_state, monkeypatch
) -> None:
    prebuilt = fresh_build_state.parent / "wheel"
    _fake_prebuilt(real_library, prebuilt, ["generic"])
    monkeypatch.setattr(kernels.build.platform, "machine", lambda: "riscv64")  # one level
    monkeypatch.setattr(kernels.build, "prebuilt_dir", prebuilt)
    monkeypatch.setattr(kernels.build, "compilers", ("bnlab-no-such-compiler++",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no compile message, no fallback warning
        assert kernels.available()
    assert kernels.library_info() == {
        "origin": "prebuilt",
        "level": "generic",
        "path": str(kernels.build.prebuilt_path(prebuilt, "generic")),
        "compile_s": 0.0,
        "skipped": "",
    }
    assert kernels.status() == f"ready: {kernels.build.prebuilt_path(prebuilt, 'generic')}"
    assert not fresh_build_state.exists()  # nothing compiled, nothing cached


@needs_fast
@pytest.mark.parametrize("problem", ["stale", "broken", "no-level"])
def test_an_unusable_prebuilt_library_falls_back_to_compiling(
    real_library, fresh_build_state, monkeypatch, problem
) -> None:
    prebuilt = fresh_build_state.parent / "wheel"
    stale = "0" * 64 if problem == "stale" else None
    _fake_prebuilt(real_library, prebuilt, ["x86-64-v4"], source_sha256=stale)
    # The real library stands in for the compiled one (a real compile is tested above).
    folder = fresh_build_state / kernels.build._key()
    folder.mkdir(parents=True)
    shutil.copy(kernels.build.prebuilt_path(prebuilt, "x86-64-v4"), folder / "bn_kernels.so")
    if problem == "broken":
        kernels.build.prebuilt_path(prebuilt, "x86-64-v4").write_bytes(b"not a library")
    monkeypatch.setattr(kernels.build, "prebuilt_dir", prebuilt)
    monkeypatch.setattr(kernels.build.platform, "machine", lambda: "x86_64")
    cpu = V3_CPU if problem == "no-level" else V4_CPU
    monkeypatch.setattr(kernels.build, "_cpu_flags", lambda: cpu)
    loaded = kernels.build.load()
    assert loaded.origin == "cached"
    assert loaded.path == folder / "bn_kernels.so"
    want = {
        "stale": "bn_kernels.cpp changed since the prebuilt libraries were built",
        "broken": "_bn_kernels.x86-64-v4.so does not load: OSError: ",
        "no-level": "no prebuilt level of ['x86-64-v4'] runs on this CPU",
    }[problem]
    assert loaded.skipped.startswith(want), loaded.skipped


@needs_fast
def test_build_prebuilt_compiles_each_level_and_writes_the_manifest(tmp_path) -> None:
    manifest = kernels.build.build_prebuilt(tmp_path, machine="riscv64")  # one generic level
    assert manifest["levels"] == ["generic"]
    assert manifest["abi"] == kernels.build.ABI_VERSION
    assert manifest["source_sha256"] == kernels.build._source_hash(kernels.build.SOURCE)
    assert "-march=native" not in manifest["flags"]["generic"]
    assert json.loads((tmp_path / kernels.build.MANIFEST).read_text()) == manifest
    assert kernels.build.prebuilt_path(tmp_path, "generic").stat().st_size > 0
    # The portable flags per level of x86-64, best first, never -march=native.
    levels = kernels.build.VARIANTS["x86_64"]
    assert [level for level, _, _ in levels] == ["x86-64-v4", "x86-64-v3", "x86-64"]
    assert all(f"-march={level}" in march for level, march, _ in levels)
