"""``load_data_fashion_mnist``: d2l's one-line data loader, on bnlab's ``DeviceLoader``.

Dive into Deep Learning starts every chapter with ``train_iter, test_iter =
d2l.load_data_fashion_mnist(batch_size, resize=None)``. This is the same call (same
name, same first two arguments, the same pair back) except that the folder is an
argument: this layer never reads the environment. ``bnlab.api.load_data_fashion_mnist``
finds the folder itself, as the command line does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from bnlab.data.fashion_mnist import load_fashion_mnist
from bnlab.data.loader import DeviceLoader

__all__ = ["load_data_fashion_mnist", "load_splits", "split_loaders"]


def _limit(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{name} must be an int or None, got {value!r} of type {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (images to keep), got {value}")
    return value


def load_splits(
    data_dir: str | os.PathLike[str],
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> dict[str, torch.Tensor]:
    """Both splits as tensors, the first ``limit_*`` images of each where given.

    Returns:
        ``train_images``, ``test_images`` (uint8 ``(N, 28, 28)``), ``train_labels``,
        ``test_labels`` (int64 ``(N,)``): the keys ``bnlab.lab`` and ``run_d2l`` take.

    Raises:
        TypeError, ValueError: a bad limit; the errors of ``load_fashion_mnist``.
    """
    limits = {"train": _limit("limit_train", limit_train), "test": _limit("limit_test", limit_test)}
    tensors: dict[str, torch.Tensor] = {}
    for split, limit in limits.items():
        images, labels = load_fashion_mnist(split, data_dir)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        tensors[f"{split}_images"] = images
        tensors[f"{split}_labels"] = labels.to(torch.int64)
    return tensors


def split_loaders(
    data: Mapping[str, torch.Tensor], batch_size: int, *, seed: int = 0, **options: Any
) -> tuple[DeviceLoader, DeviceLoader]:
    """The two loaders of a training run over ``load_splits``' tensors.

    Args:
        data: ``train_images``, ``train_labels``, ``test_images``, ``test_labels``.
        batch_size: samples per batch, both splits.
        seed: the training order of every epoch follows from ``(seed, epoch)``.
        options: more ``DeviceLoader`` arguments for both (``device``, ``resize``,
            ``rank``, ``world_size``).

    Returns:
        ``(train, test)``: the training split shuffled each epoch, the test split in order.
    """
    train = DeviceLoader(
        data["train_images"], data["train_labels"], batch_size, shuffle=True, seed=seed, **options
    )
    test = DeviceLoader(
        data["test_images"], data["test_labels"], batch_size, shuffle=False, **options
    )
    return train, test


def load_data_fashion_mnist(
    batch_size: int,
    resize: int | None = None,
    *,
    data_dir: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> tuple[DeviceLoader, DeviceLoader]:
    """Fashion-MNIST as ``(train_iter, test_iter)``, as d2l's function of that name.

    Args:
        batch_size: samples per batch.
        resize: None (28x28) or the side the images are resized to, e.g. 96 for d2l's
            ResNet and DenseNet.
        data_dir: the folder holding the four files (``bnlab.data.resolve_data_dir``).
        device: where the data live and the batches are made.
        seed: the training order of every epoch follows from ``(seed, epoch)``.
        limit_train, limit_test: keep only the first N images of a split.

    Returns:
        Two ``DeviceLoader``: the training set shuffled each epoch, the test set in
        order; both yield ``x`` float32 ``(B, 1, H, W)`` in [0, 1] and ``y`` int64 ``(B,)``.

    Raises:
        TypeError, ValueError: a bad argument; DatasetNotFoundError, ChecksumError: the
            files are missing or damaged.
    """
    data = load_splits(data_dir, limit_train=limit_train, limit_test=limit_test)
    return split_loaders(data, batch_size, seed=seed, device=device, resize=resize)
