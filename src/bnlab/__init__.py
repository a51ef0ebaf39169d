"""bnlab: batch normalization done right, and every claim about it measured."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bnlab")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
