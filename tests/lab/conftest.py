"""Fixtures of the lab's tests: a tiny synthetic Fashion-MNIST."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from bnlab.data.synthetic import fake_images_labels

FakeData = Callable[..., dict[str, torch.Tensor]]


def make_fake_data(train: int = 96, test: int = 64) -> dict[str, torch.Tensor]:
    """``train`` synthetic training images (seed 0) and ``test`` test images (seed 1),
    uint8 ``(N, 28, 28)`` with int64 labels, keyed as ``LabContext.data``."""
    x, y = fake_images_labels(train, seed=0)
    tx, ty = fake_images_labels(test, seed=1)
    return {
        "train_images": x,
        "train_labels": y.long(),
        "test_images": tx,
        "test_labels": ty.long(),
    }


@pytest.fixture(scope="session")
def fake_data() -> FakeData:
    """``fake_data(train=96, test=64)``: the synthetic data set (see ``make_fake_data``)."""
    return make_fake_data
