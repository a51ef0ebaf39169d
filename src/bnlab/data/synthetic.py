"""A tiny stand-in for Fashion-MNIST, written as real IDX files, for tests and demos.

:func:`write_fake_fashion_mnist` writes the four files under their official names with
a few random but learnable images (class ``c`` has a bright horizontal bar at row
``2 + 2c``) and returns the matching :class:`FileSpec` entries, checksums included, so
that the whole path (verify, load, loaders, CLI) runs without the real data::

    specs = write_fake_fashion_mnist(tmp_path)
    images, labels = load_fashion_mnist("train", tmp_path, files=specs)
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from bnlab.data.fashion_mnist import CLASSES, FileSpec
from bnlab.data.idx import write_idx

__all__ = ["fake_images_labels", "file_spec_for", "write_fake_fashion_mnist"]


def fake_images_labels(
    count: int, *, seed: int = 0, rows: int = 28, cols: int = 28
) -> tuple[Tensor, Tensor]:
    """Random uint8 images whose class is visible as a bright bar, and their labels.

    Args:
        count: number of examples (labels cycle through the 10 classes, shuffled).
        seed: fixes the images and labels.
        rows, cols: image size; ``rows`` must be >= 22 to place every class's bar.

    Returns:
        ``(images, labels)``: uint8 ``(count, rows, cols)`` and uint8 ``(count,)``.

    Raises:
        ValueError: ``count`` < 1, or the image is too small.
    """
    if count < 1:
        raise ValueError(f"fake_images_labels: count must be >= 1, got {count}")
    if rows < 2 + 2 * len(CLASSES) or cols < 1:
        raise ValueError(f"fake_images_labels: need rows >= 22 and cols >= 1, got {rows}x{cols}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(CLASSES)
    labels = labels[torch.randperm(count, generator=generator)].to(torch.uint8)
    images = torch.randint(0, 96, (count, rows, cols), generator=generator, dtype=torch.uint8)
    bar_rows = 2 + 2 * labels.long()  # (count,)
    images[torch.arange(count), bar_rows] = 255
    return images, labels


def file_spec_for(
    path: str | os.PathLike[str], *, name: str, split: str, kind: str, count: int
) -> FileSpec:
    """A :class:`FileSpec` whose checksums are those of the file at ``path``.

    ``path`` may be a ``.gz`` or a raw IDX file; for a raw file, the ``.gz`` checksums are
    those of ``gzip.compress(content, mtime=0)``.
    """
    data = Path(path).read_bytes()
    compressed = data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data) if compressed else data
    packed = data if compressed else gzip.compress(data, mtime=0)
    return FileSpec(
        name=name,
        split=split,
        kind=kind,
        count=count,
        md5=hashlib.md5(packed, usedforsecurity=False).hexdigest(),
        sha256=hashlib.sha256(packed).hexdigest(),
        size=len(packed),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        raw_size=len(raw),
    )


def write_fake_fashion_mnist(
    folder: str | os.PathLike[str],
    *,
    train_count: int = 60,
    test_count: int = 20,
    seed: int = 0,
    compress: bool = True,
) -> tuple[FileSpec, ...]:
    """Write four small IDX files under the official names; return their specs.

    Args:
        folder: where to write (created if needed).
        train_count, test_count: examples per split.
        seed: fixes the content (the test split uses ``seed + 1``).
        compress: write ``.gz`` files (as published) or the decompressed copies.

    Returns:
        Four :class:`FileSpec` in the order of ``FILES``, with the checksums and sizes of
        the files written; pass them as ``files=`` to verify/load/download functions.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for split, prefix, count, split_seed in (
        ("train", "train", train_count, seed),
        ("test", "t10k", test_count, seed + 1),
    ):
        images, labels = fake_images_labels(count, seed=split_seed)
        for kind, tensor, stem in (
            ("images", images, f"{prefix}-images-idx3-ubyte"),
            ("labels", labels, f"{prefix}-labels-idx1-ubyte"),
        ):
            path = write_idx(out / (stem + (".gz" if compress else "")), tensor)
            specs.append(
                file_spec_for(path, name=stem + ".gz", split=split, kind=kind, count=count)
            )
    return tuple(specs)
