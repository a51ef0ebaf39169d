"""FashionMNISTDataset: the d2l-style per-sample path, and its agreement with DeviceLoader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bnlab.data.dataset import FashionMNISTDataset
from bnlab.data.fashion_mnist import FileSpec
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import fake_images_labels


@pytest.fixture
def split() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fake_images_labels(40, seed=3)
    return images, labels.long()


def test_item_is_a_float_image_in_0_1_and_an_int(split: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = split
    dataset = FashionMNISTDataset(images, labels)
    x, y = dataset[7]
    assert len(dataset) == 40
    assert x.shape == (1, 28, 28)
    assert x.dtype == torch.float32
    assert isinstance(y, int)
    assert y == int(labels[7])
    # Exact: uint8 -> float32 is exact and IEEE division is correctly rounded, so k / 255
    # has one right float32 answer on every machine.
    torch.testing.assert_close(x, images[7].unsqueeze(0).float() / 255, rtol=0, atol=0)


def test_dataloader_collates_like_the_book(split: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = next(iter(DataLoader(FashionMNISTDataset(*split), batch_size=16)))
    assert x.shape == (16, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.shape == (16,)
    assert y.dtype == torch.int64


def test_agrees_with_device_loader(split: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = split
    per_sample = next(iter(DataLoader(FashionMNISTDataset(images, labels), batch_size=40)))
    whole = next(iter(DeviceLoader(images, labels, 40, shuffle=False)))
    # Exact: both are k / 255 of the same uint8 values (correctly rounded division).
    assert torch.equal(per_sample[0], whole[0])
    assert torch.equal(per_sample[1], whole[1])


def test_resize_agrees_with_device_loader_within_one_level(
    split: tuple[torch.Tensor, torch.Tensor],
) -> None:
    images, labels = split
    dataset = FashionMNISTDataset(images, labels, resize=96)
    assert dataset[0][0].shape == (1, 96, 96)
    pil = next(iter(DataLoader(dataset, batch_size=40)))[0]
    torch_resized = next(iter(DeviceLoader(images, labels, 40, resize=96, shuffle=False)))[0]
    # Pillow rounds its result to uint8, as torchvision's Resize on a PIL image does.
    torch.testing.assert_close(pil, torch_resized, rtol=0, atol=1 / 255 + 1e-4)
    # Pillow's output is uint8 k, so pil = fl(k / 255); fl(fl(k / 255) * 255) == k holds
    # for every k in 0..255 in float32 (correctly rounded operations: machine independent).
    assert torch.equal((pil * 255).round(), pil * 255)
    assert FashionMNISTDataset(images, labels, resize=(20, 30))[0][0].shape == (1, 20, 30)


def test_from_folder(tmp_path: Path) -> None:
    from bnlab.data.synthetic import write_fake_fashion_mnist

    specs: tuple[FileSpec, ...] = write_fake_fashion_mnist(tmp_path, test_count=9)
    dataset = FashionMNISTDataset.from_folder("test", tmp_path, files=specs)
    assert len(dataset) == 9
    assert repr(dataset) == "FashionMNISTDataset(num_samples=9, resize=None)"


def test_errors(split: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = split
    with pytest.raises(TypeError, match=r"images must be uint8 \(as stored in IDX\), got torch"):
        FashionMNISTDataset(images.float(), labels)
    with pytest.raises(ValueError, match=r"FashionMNISTDataset: 40 images but 39 labels"):
        FashionMNISTDataset(images, labels[:39])
    with pytest.raises(ValueError, match=r"resize sides must be ints >= 1, got -3"):
        FashionMNISTDataset(images, labels, resize=-3)
