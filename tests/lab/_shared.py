"""Pieces the lab's experiment tests share: a tiny data set, a hook counter, one thread."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.data.synthetic import fake_images_labels


def small_data() -> dict[str, torch.Tensor]:
    """96 training and 32 test images of the synthetic set (fixed seed)."""
    x, y = fake_images_labels(128, seed=0)
    return {
        "train_images": x[:96],
        "train_labels": y[:96].long(),
        "test_images": x[96:],
        "test_labels": y[96:].long(),
    }


def hook_count(model: nn.Module) -> int:
    """Forward, forward-pre and backward hooks left on ``model``'s modules."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread per test module (import it to use it): the runs are tiny, and a
    second thread only waits at OpenMP barriers on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spy_build_model(monkeypatch: pytest.MonkeyPatch, module) -> list[nn.Module]:
    """Patch ``module.build_model`` to keep every model it builds; returns that list."""
    built: list[nn.Module] = []
    original = module.build_model

    def keep(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(module, "build_model", keep)
    return built
