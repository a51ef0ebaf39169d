"""``FashionMNISTDataset``: per-sample access the way the d2l book loads Fashion-MNIST.

The book (d2l.ai, section 4.2 "The Image Classification Dataset") wraps
``torchvision.datasets.FashionMNIST`` with ``transforms.Resize(resize)`` (on the PIL image)
followed by ``transforms.ToTensor()``, and iterates it with a ``DataLoader`` and 4
workers. This class does the same per item without torchvision: the uint8 image is
resized with Pillow's bilinear filter (what ``Resize`` calls on a PIL image, so the
result is rounded to uint8 as there) and converted to a float32 ``(1, H, W)`` tensor in
[0, 1] (what ``ToTensor`` does). It exists for baseline comparisons with
:class:`bnlab.data.loader.DeviceLoader`, which does the whole split at once; the two agree
exactly without resize and within 1/255 with it (the uint8 rounding after Pillow's resize).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bnlab.data._checks import check_images_labels, check_resize
from bnlab.data.fashion_mnist import FileSpec, load_fashion_mnist

__all__ = ["FashionMNISTDataset"]


class FashionMNISTDataset(Dataset[tuple[Tensor, int]]):
    """Fashion-MNIST (or any uint8 image set) as a map-style ``Dataset``.

    Args:
        images: uint8 images ``(N, H, W)`` or ``(N, 1, H, W)``.
        labels: integer labels ``(N,)``.
        resize: None, an int (square) or ``(height, width)``: resize each image with
            Pillow's bilinear filter before the conversion.

    Shape:
        ``dataset[i]`` is ``(x, y)``: ``x`` float32 ``(1, H', W')`` in [0, 1], ``y`` an
        int (``DataLoader``'s default collate stacks them into ``(B, 1, H', W')`` and an
        int64 ``(B,)``).

    Raises:
        TypeError, ValueError: bad images, labels or resize (the message shows them).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        resize: int | tuple[int, int] | None = None,
    ) -> None:
        owner = type(self).__name__
        images, labels = check_images_labels(images, labels, owner)
        if images.dtype != torch.uint8:
            raise TypeError(f"{owner}: images must be uint8 (as stored in IDX), got {images.dtype}")
        self._images = images[:, 0].cpu().contiguous()  # (N, H, W)
        self._labels = labels.cpu().to(torch.int64)
        self._resize = check_resize(resize, owner)
        if self._resize is not None:
            from PIL import Image  # Pillow comes with matplotlib; only needed to resize

            self._pil: Any = Image

    @classmethod
    def from_folder(
        cls,
        split: str,
        data_dir: str | os.PathLike[str],
        *,
        resize: int | tuple[int, int] | None = None,
        files: tuple[FileSpec, ...] | None = None,
    ) -> FashionMNISTDataset:
        """Load a verified split with :func:`load_fashion_mnist` and wrap it."""
        images, labels = load_fashion_mnist(split, data_dir, files=files)
        return cls(images, labels, resize=resize)

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self._images[index]  # (H, W) uint8
        if self._resize is not None:
            height, width = self._resize
            resized = self._pil.fromarray(image.numpy()).resize(
                (width, height), self._pil.Resampling.BILINEAR
            )
            image = torch.from_numpy(np.asarray(resized).copy())
        return image.unsqueeze(0).to(torch.float32).div(255.0), int(self._labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={len(self)}, resize={self._resize})"
