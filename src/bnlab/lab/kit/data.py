"""Data for the lab's experiments: fixed subsets, endless batches, a probe batch.

Every subset depends on a seed only, so every variant and training seed of an
experiment sees the same images; the batches of a training run depend on its seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.train import evaluate
from bnlab.train.steps import cycle

__all__ = ["accuracy_on_test", "batches", "float_images", "probe_batch", "split", "take"]


def take(
    data: Mapping[str, Tensor], split: str, count: int | None, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``count`` images and labels of ``split`` ("train" or "test"), a fixed random subset.

    The subset depends on ``seed`` only, so every variant and training seed of an
    experiment sees the same images. ``count`` None (or more than there are) takes all.

    Raises:
        ValueError: an unknown split, or ``data`` without it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"take: split must be 'train' or 'test', got {split!r}")
    key = f"{split}_images"
    if key not in data or f"{split}_labels" not in data:
        raise ValueError(
            f"take: data has no {key!r}/{split}_labels; it holds {', '.join(sorted(data))}"
        )
    images, labels = data[key], data[f"{split}_labels"]
    n = images.shape[0]
    if count is None or count >= n:
        return images, labels
    if count < 1:
        raise ValueError(f"take: count must be >= 1 or None, got {count}")
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
    index, _ = index.sort()
    return images[index], labels[index]


def split(data: Mapping[str, Tensor], train_size: int, test_size: int) -> dict[str, Tensor]:
    """The first ``train_size`` training and ``test_size`` test examples (int64 labels)."""
    return {
        "train_images": data["train_images"][:train_size],
        "train_labels": data["train_labels"][:train_size].to(torch.int64),
        "test_images": data["test_images"][:test_size],
        "test_labels": data["test_labels"][:test_size].to(torch.int64),
    }


def batches(
    images: Tensor, labels: Tensor, batch_size: int, seed: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless full training batches, epoch after epoch of a ``DeviceLoader`` seeded with
    ``seed`` (a batch larger than the subset is cut to the subset).

    Yields:
        ``(x, y)``: float images ``(B, 1, 28, 28)`` in [0, 1] and int64 labels ``(B,)``.
    """
    batch_size = min(batch_size, images.shape[0])
    loader = DeviceLoader(
        images, labels, batch_size, shuffle=True, seed=seed, device=device, drop_last=True
    )
    return cycle(loader)


def probe_batch(data: Mapping[str, Tensor], size: int, device: torch.device | str) -> Tensor:
    """The first ``size`` training images as a float batch ``(size, 1, 28, 28)`` in [0, 1]."""
    n = min(size, data["train_images"].shape[0])
    loader = DeviceLoader(
        data["train_images"][:n], data["train_labels"][:n], n, shuffle=False, device=device
    )
    return next(iter(loader))[0]


def float_images(images: Tensor) -> Tensor:
    """uint8 images ``(N, 28, 28)`` as floats ``(N, 1, 28, 28)`` in [0, 1]."""
    return images.to(torch.float32).div(255.0).unsqueeze(1)


def accuracy_on_test(model: nn.Module, data: Mapping[str, Tensor], device: torch.device) -> float:
    """Accuracy on the test split of ``data`` (eval mode)."""
    loader = DeviceLoader(
        data["test_images"], data["test_labels"], 500, shuffle=False, device=device
    )
    return float(evaluate(model, loader)["acc"])
