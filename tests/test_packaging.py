"""The sdist and the wheel: what a user installs.

Builds both from a copy of the checkout with setuptools' PEP 517 hooks (no isolation,
no network; the wheel from the unpacked sdist, as ``python -m build`` does) and checks
their file lists: the wheel holds the prebuilt kernels of every instruction-set level,
their manifest, the C++ source (for the fallback), the Triton kernels, ``py.typed`` and
the LICENSE, under a ``py3-none-<platform>`` tag; the sdist holds the sources and no
compiled library. The wheel's library loads as the prebuilt one. Installing the wheel
into a fresh venv (torch and all) is ``.ci/wheel_check.sh``'s job, run by ``.ci/run``.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from bnlab.kernels import build

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
HAS_COMPILER = any(shutil.which(c) for c in build.COMPILERS)
TOP_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "LICENSE", "README.md", "constraints.txt")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the wheel build needs one"),
    pytest.mark.skipif(
        not (ROOT / "setup.py").exists(), reason="not a source checkout (no setup.py)"
    ),
]


def _hook(hook: str, cwd: Path, out: Path) -> Path:
    """Run setuptools' PEP 517 ``hook`` in ``cwd`` (a fresh process); the built file."""
    out.mkdir(parents=True, exist_ok=True)
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """``(sdist, wheel)`` built from a copy of this checkout, the wheel from the sdist."""
    tmp = tmp_path_factory.mktemp("dists")
    checkout = tmp / "checkout"
    checkout.mkdir()
    for name in TOP_FILES:
        shutil.copy(ROOT / name, checkout / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "_bn_kernels.json")
    shutil.copytree(ROOT / "src", checkout / "src", ignore=junk)
    sdist = _hook("build_sdist", checkout, tmp / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    wheel = _hook("build_wheel", tmp / "unpacked" / f"bnlab-{VERSION}", tmp / "dist")
    return sdist, wheel


def _levels() -> list[str]:
    return [level for level, _, _ in build._levels(platform.machine())]


def test_the_wheel_holds_the_kernels_source_types_and_license(dists) -> None:
    _, wheel = dists
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name == f"bnlab-{VERSION}-py3-none-{plat}.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        wheel_meta = zf.read(f"bnlab-{VERSION}.dist-info/WHEEL").decode()
        metadata = zf.read(f"bnlab-{VERSION}.dist-info/METADATA").decode()
    for level in _levels():
        assert f"bnlab/kernels/_bn_kernels.{level}.so" in names
    for name in (
        "bnlab/kernels/_bn_kernels.json",
        "bnlab/kernels/bn_kernels.cpp",
        "bnlab/kernels/bn_node.cpp",
        "bnlab/kernels/build.py",
        "bnlab/kernels/triton_bn.py",
        "bnlab/py.typed",
        f"bnlab-{VERSION}.dist-info/licenses/LICENSE",
        f"bnlab-{VERSION}.dist-info/entry_points.txt",
    ):
        assert name in names
    assert not any(name.startswith("tests/") for name in names)
    assert "Root-Is-Purelib: false" in wheel_meta
    assert "License-Expression: MIT" in metadata


def test_the_sdist_holds_the_sources_and_no_library(dists) -> None:
    sdist, _ = dists
    assert sdist.name == f"bnlab-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {name.partition("/")[2] for name in tar.getnames()}
    for name in (
        *TOP_FILES,
        "src/bnlab/kernels/bn_kernels.cpp",
        "src/bnlab/kernels/bn_node.cpp",
        "src/bnlab/kernels/build.py",
        "src/bnlab/kernels/triton_bn.py",
        "src/bnlab/py.typed",
    ):
        assert name in names
    assert not any(name.endswith(".so") or "_bn_kernels" in name for name in names)


def test_the_wheel_library_loads_as_the_prebuilt_one(dists, tmp_path) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("bnlab/kernels/"):
                zf.extract(name, tmp_path)
    loaded, skipped = build._load_prebuilt(tmp_path / "bnlab" / "kernels")
    assert skipped == ""
    assert loaded.origin == "prebuilt"
    cpu = build._cpu_flags() or frozenset()
    runnable = [level for level, _, needs in build._levels(platform.machine()) if needs <= cpu]
    assert loaded.level == runnable[0]  # the best level this CPU runs
