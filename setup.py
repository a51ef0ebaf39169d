"""Builds the C++ kernels into the wheel; the metadata lives in pyproject.toml.

``bnlab/kernels/bn_kernels.cpp`` has a plain C ABI and no torch or Python headers, so
it is compiled as an ordinary shared library (not a Python extension) by
``bnlab.kernels.build.build_prebuilt``: once per instruction-set level, with portable
flags, into ``bnlab/kernels/_bn_kernels.<level>.so`` beside a manifest; the package
picks the best level the CPU runs when it loads. One library serves every Python and
torch version, so the wheel is tagged ``py3-none-<platform>``.

An editable install (``pip install -e .``) builds nothing here: a source checkout
compiles at first use (``-march=native``, cached), so that edits of the source take
effect. Set ``BNLAB_NO_PREBUILT=1`` to build a wheel without the libraries (it then
compiles at first use too, where a compiler exists).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent


def _kernels_build():
    """``bnlab.kernels.build`` without importing ``bnlab`` (which needs torch)."""
    path = HERE / "src" / "bnlab" / "kernels" / "build.py"
    spec = importlib.util.spec_from_file_location("_bnlab_kernels_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class BuildPyWithKernels(build_py):
    """``build_py``, then the kernels' libraries into the build tree (not when editable)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False) or os.environ.get("BNLAB_NO_PREBUILT"):
            return
        folder = Path(self.build_lib) / "bnlab" / "kernels"
        manifest = _kernels_build().build_prebuilt(folder)
        print(f"bnlab: built the kernels {manifest['levels']} with {manifest['compiler']}")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False) or os.environ.get("BNLAB_NO_PREBUILT"):
            return outputs
        folder = Path(self.build_lib) / "bnlab" / "kernels"
        return [*outputs, *(str(p) for p in sorted(folder.glob("_bn_kernels.*")))]


class PlatformWheel(bdist_wheel):
    """A platform wheel (the libraries are machine code) for any Python 3: no Python C API."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _, _, plat = super().get_tag()
        return "py3", "none", plat


class BinaryDistribution(Distribution):
    """Installs into platlib: the package holds machine code."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    cmdclass={"build_py": BuildPyWithKernels, "bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
)
