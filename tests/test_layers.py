"""The architecture stays one-way: each subpackage imports only the layers below it.

functional <- kernels <- autograd <- nn <- models <- train <- lab <- cli; ``data``,
``plots``, ``bench``, ``textbook`` and ``nonfinite`` sit beside that chain with the imports
listed here.
``kernels`` (the fused C++/Triton fast path) is called by ``autograd`` only: ``nn`` and
everything above reach it through ``autograd``, never directly (``bench`` may, to switch
it and report its state).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bnlab"

CORE = {"functional", "autograd", "nn"}  # what the layers above nn may import
ALLOWED: dict[str, set[str]] = {
    "functional": {"functional"},
    "kernels": {"functional", "kernels"},
    "autograd": {"functional", "kernels", "autograd"},
    "nn": CORE,
    "textbook": {"textbook"},
    "nonfinite": set(),  # JSON's NaN/inf codec, shared by train.io and the report
    "data": {"data"},
    "plots": {"plots"},
    "bench": CORE | {"kernels", "textbook", "bench"},
    "models": CORE | {"textbook", "models"},
    "train": CORE | {"textbook", "models", "data", "nonfinite", "train"},
    "lab": CORE | {"textbook", "models", "data", "train", "plots", "lab"},
    "report": {"plots", "nonfinite", "report"},
    "cli": None,  # the top: may import anything
    # The Python API for notebooks (bnlab.api, bnlab.d2l): the top, above cli (it finds
    # the data as the CLI does and draws the same kind of progress); cli never imports it.
    "api": None,
    "d2l": None,
}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _bnlab_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bnlab" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if _layer(p) not in {"__init__", "__main__"})


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{path}: layer {layer!r} has no place in tests/test_layers.py"
    allowed = ALLOWED[layer]
    if allowed is None:
        return
    upward = _bnlab_imports(path) - allowed
    assert not upward, f"{path.relative_to(SRC)} ({layer}) imports {sorted(upward)} from above"


KERNEL_CALLERS = {"kernels", "autograd", "bench"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_only_autograd_calls_the_kernels(path: Path) -> None:
    # cli may import anything else, but not the kernels: it reaches them through autograd.
    layer = _layer(path)
    if layer not in KERNEL_CALLERS:
        assert "kernels" not in _bnlab_imports(path), (
            f"{path.relative_to(SRC)} ({layer}) imports bnlab.kernels; only autograd calls it"
        )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_the_cli_does_not_import_the_python_api(path: Path) -> None:
    # One way between the two tops: bnlab.api may use cli helpers, never the reverse.
    if _layer(path) == "cli":
        assert not {"api", "d2l"} & _bnlab_imports(path), (
            f"{path.relative_to(SRC)} imports bnlab.api or bnlab.d2l"
        )
