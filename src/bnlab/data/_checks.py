"""Argument checks shared by the loaders (typed errors that show the value received)."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "check_images_labels",
    "check_normalize",
    "check_positive_int",
    "check_resize",
]


def check_positive_int(value: object, what: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {what} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{owner}: {what} must be >= 1, got {value}")
    return value


def check_images_labels(images: object, labels: object, owner: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, H, W)`` or ``(N, 1, H, W)``, uint8 or floating; labels ``(N,)`` integer.

    Returns:
        The images as ``(N, 1, H, W)`` (a view) and the labels unchanged.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{owner}: images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(labels, Tensor):
        raise TypeError(f"{owner}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(
            f"{owner}: images must have shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(
            f"{owner}: images must be uint8 (0..255) or floating point (0..1), got {images.dtype}"
        )
    if labels.dim() != 1:
        raise ValueError(f"{owner}: labels must have shape (N,), got {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.is_complex():
        raise TypeError(f"{owner}: labels must have an integer dtype, got {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{owner}: {images.shape[0]} images but {labels.shape[0]} labels; "
            "pass one label per image"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{owner}: no samples (images of shape {tuple(images.shape)})")
    return images, labels


def check_resize(resize: object, owner: str) -> tuple[int, int] | None:
    """None, an int (square) or a pair of ints (height, width), all >= 1."""
    if resize is None:
        return None
    if isinstance(resize, int) and not isinstance(resize, bool):
        size: tuple[object, ...] = (resize, resize)
    elif isinstance(resize, tuple | list) and len(resize) == 2:
        size = tuple(resize)
    else:
        raise TypeError(
            f"{owner}: resize must be None, an int or a (height, width) pair, got {resize!r}"
        )
    for side in size:
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ValueError(f"{owner}: resize sides must be ints >= 1, got {resize!r}")
    return (int(size[0]), int(size[1]))  # type: ignore[call-overload]


def check_normalize(normalize: object, owner: str) -> tuple[float, float] | None:
    """None or a ``(mean, std)`` pair of finite floats with std > 0."""
    if normalize is None:
        return None
    if (
        not isinstance(normalize, tuple | list)
        or len(normalize) != 2
        or not all(isinstance(v, Real) and not isinstance(v, bool) for v in normalize)
    ):
        raise TypeError(
            f"{owner}: normalize must be None or a (mean, std) pair of floats, got {normalize!r}"
        )
    mean, std = float(normalize[0]), float(normalize[1])
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        raise ValueError(
            f"{owner}: normalize needs a finite mean and a finite std > 0, got "
            f"mean={mean}, std={std}"
        )
    return mean, std
