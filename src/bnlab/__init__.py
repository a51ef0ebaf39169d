"""bnlab: batch normalization done right, and every claim about it measured."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bnlab")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "api", "d2l"]


def __getattr__(name: str) -> object:
    # ``bnlab.api`` and ``bnlab.d2l`` (the notebook API) import torch and the lab: they
    # are imported on first use, so that ``import bnlab`` stays light.
    if name in ("api", "d2l"):
        import importlib

        return importlib.import_module(f"bnlab.{name}")
    raise AttributeError(f"module 'bnlab' has no attribute {name!r}")
