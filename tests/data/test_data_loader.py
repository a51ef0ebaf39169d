"""DeviceLoader: shapes, values, reproducibility by (seed, epoch), coverage, transforms, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bnlab.data.loader import DeviceLoader, epoch_seed


def data(n: int = 50, h: int = 6, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first pixel encodes the sample index, labels = index."""
    images = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=torch.Generator())
    images[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images, torch.arange(n)


def epoch_labels(loader: DeviceLoader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def test_batches_shapes_and_dtypes() -> None:
    images, labels = data(50)
    loader = DeviceLoader(images, labels, 16)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert [x.shape for x, _ in batches] == [(16, 1, 6, 5)] * 3 + [(2, 1, 6, 5)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert loader.num_samples == loader.samples_per_epoch == 50
    assert loader.image_shape == (1, 6, 5)
    assert loader.device == torch.device("cpu")


def test_values_are_the_images_over_255() -> None:
    images, labels = data(40)
    for x, y in DeviceLoader(images, labels, 7):
        # Exact: uint8 -> float32 is exact and division is correctly rounded.
        assert torch.equal(x, images[y].unsqueeze(1).float() / 255)
        assert x.min() >= 0
        assert x.max() <= 1


def test_shuffle_false_keeps_the_order() -> None:
    images, labels = data(20)
    loader = DeviceLoader(images, labels, 6, shuffle=False)
    assert epoch_labels(loader) == list(range(20))
    assert epoch_labels(loader) == list(range(20))
    assert torch.equal(loader.permutation(5), torch.arange(20))


def test_drop_last() -> None:
    images, labels = data(50)
    loader = DeviceLoader(images, labels, 16, drop_last=True)
    assert len(loader) == 3
    assert loader.samples_per_epoch == 48
    seen = epoch_labels(loader)
    assert len(seen) == len(set(seen)) == 48


@given(
    n=st.integers(1, 70),
    batch_size=st.integers(1, 80),
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 1000),
    drop_last=st.booleans(),
)
def test_each_sample_once_per_epoch(
    n: int, batch_size: int, seed: int, epoch: int, drop_last: bool
) -> None:
    if drop_last and n < batch_size:
        return
    loader = DeviceLoader(*data(n, 2, 2), batch_size, seed=seed, drop_last=drop_last)
    loader.set_epoch(epoch)
    seen = epoch_labels(loader)
    if drop_last:
        assert len(seen) == (n // batch_size) * batch_size
        assert len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(n))
    assert len(seen) == loader.samples_per_epoch


def test_same_seed_same_batches_independent_of_history() -> None:
    images, labels = data(64)
    a = DeviceLoader(images, labels, 10, seed=3)
    b = DeviceLoader(images, labels, 10, seed=3)
    orders_a = [epoch_labels(a) for _ in range(4)]  # epochs 0..3 by plain iteration
    for _ in range(7):  # b: a different history, partial iterations included
        next(iter(b))
    b.set_epoch(2)
    assert epoch_labels(b) == orders_a[2]
    assert b.epoch == 3
    assert epoch_labels(b) == orders_a[3]
    b.set_epoch(0)
    batches_a = list(DeviceLoader(images, labels, 10, seed=3))
    for (xa, ya), (xb, yb) in zip(batches_a, b, strict=True):
        assert torch.equal(xa, xb)  # exact: rows gathered from the same stored images
        assert torch.equal(ya, yb)


def test_epochs_and_seeds_differ() -> None:
    images, labels = data(64)
    loader = DeviceLoader(images, labels, 64, seed=0)
    e0, e1 = epoch_labels(loader), epoch_labels(loader)
    other = epoch_labels(DeviceLoader(images, labels, 64, seed=1))
    assert e0 != e1
    assert e0 != other
    assert sorted(e0) == sorted(e1) == sorted(other)


def test_the_global_rng_is_untouched() -> None:
    images, labels = data(30)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(DeviceLoader(images, labels, 4))
    assert torch.equal(torch.rand(3), expected)  # exact: same generator state, same draws


def test_epoch_seed() -> None:
    seeds = {epoch_seed(s, e) for s in range(20) for e in range(20)}
    assert len(seeds) == 400
    assert epoch_seed(1, 0) != epoch_seed(0, 1)
    assert 0 <= epoch_seed(2**63, 2**40) < 2**63
    with pytest.raises(ValueError, match=r"epoch must be >= 0, got -1"):
        epoch_seed(0, -1)
    with pytest.raises(TypeError, match=r"seed must be an int, got 1.5"):
        epoch_seed(1.5, 0)  # type: ignore[arg-type]


def test_resize() -> None:
    images, labels = data(12, 28, 28)
    loader = DeviceLoader(images, labels, 5, resize=96, shuffle=False)
    x, _y = next(iter(loader))
    assert x.shape == (5, 1, 96, 96)
    assert loader.image_shape == (1, 96, 96)
    expected = F.interpolate(
        images[:5].unsqueeze(1).float() / 255, size=(96, 96), mode="bilinear", align_corners=False
    )
    # Exact: the loader makes this very call (same arguments, same batch shape) on the same
    # bits; bilinear interpolation computes each output from its inputs in a fixed order.
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    small, _ = next(iter(DeviceLoader(images, labels, 5, resize=(14, 7), shuffle=False)))
    assert small.shape == (5, 1, 14, 7)
    shrunk = F.interpolate(
        images[:5].unsqueeze(1).float() / 255, size=(14, 7), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(small, shrunk, rtol=0, atol=0)


def test_normalize_after_resize() -> None:
    images, labels = data(12, 28, 28)
    plain, _ = next(iter(DeviceLoader(images, labels, 12, resize=32, shuffle=False)))
    x, _ = next(
        iter(DeviceLoader(images, labels, 12, resize=32, normalize=(0.286, 0.353), shuffle=False))
    )
    torch.testing.assert_close(x, (plain - 0.286) / 0.353)


def test_inputs_and_outputs_are_not_aliased() -> None:
    images, labels = data(10)
    loader = DeviceLoader(images, labels, 10, shuffle=False)
    images.zero_()
    labels.zero_()
    x, y = next(iter(loader))
    assert y.tolist() == list(range(10))
    x.zero_()  # modifying a batch must not modify the stored split
    x2, _ = next(iter(loader))
    assert x2[:, 0, 0, 0].mul(255).round().tolist() == list(range(10))


def test_float_images_and_4d_input() -> None:
    images = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    loader = DeviceLoader(images, torch.arange(8, dtype=torch.int32), 8, shuffle=False)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    torch.testing.assert_close(x, images.float())


def test_repr() -> None:
    loader = DeviceLoader(*data(10), 4, seed=7, resize=8, normalize=(0.5, 0.25))
    assert repr(loader) == (
        "DeviceLoader(num_samples=10, batch_size=4, shuffle=True, seed=7, device='cpu', "
        "resize=(8, 8), normalize=(0.5, 0.25), drop_last=False, epoch=0)"
    )


ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"images": [1, 2]}, TypeError, "DeviceLoader: images must be a torch.Tensor, got list"),
    ({"labels": None}, TypeError, "DeviceLoader: labels must be a torch.Tensor, got NoneType"),
    (
        {"images": torch.zeros(4, 3, 2, 2, dtype=torch.uint8)},
        ValueError,
        "DeviceLoader: images must have shape (N, H, W) or (N, 1, H, W), got (4, 3, 2, 2)",
    ),
    (
        {"images": torch.zeros(4, 2, 2, dtype=torch.int32)},
        TypeError,
        "DeviceLoader: images must be uint8 (0..255) or floating point (0..1), got torch.int32",
    ),
    (
        {"labels": torch.zeros(4)},
        TypeError,
        "DeviceLoader: labels must have an integer dtype, got torch.float32",
    ),
    (
        {"labels": torch.zeros(4, 1, dtype=torch.long)},
        ValueError,
        "DeviceLoader: labels must have shape (N,), got (4, 1)",
    ),
    (
        {"labels": torch.zeros(5, dtype=torch.long)},
        ValueError,
        "DeviceLoader: 4 images but 5 labels; pass one label per image",
    ),
    (
        {"images": torch.zeros(0, 2, 2, dtype=torch.uint8), "labels": torch.zeros(0).long()},
        ValueError,
        "DeviceLoader: no samples (images of shape (0, 1, 2, 2))",
    ),
    ({"batch_size": 0}, ValueError, "DeviceLoader: batch_size must be >= 1, got 0"),
    ({"batch_size": 2.0}, TypeError, "DeviceLoader: batch_size must be an int, got 2.0 (float)"),
    ({"seed": -1}, ValueError, "DeviceLoader: seed must be an int >= 0, got -1"),
    ({"seed": 1.0}, TypeError, "DeviceLoader: seed must be an int, got 1.0 (float)"),
    (
        {"resize": "96"},
        TypeError,
        "DeviceLoader: resize must be None, an int or a (height, width) pair, got '96'",
    ),
    ({"resize": (0, 5)}, ValueError, "DeviceLoader: resize sides must be ints >= 1, got (0, 5)"),
    (
        {"normalize": 0.5},
        TypeError,
        "DeviceLoader: normalize must be None or a (mean, std) pair of floats, got 0.5",
    ),
    (
        {"normalize": (0.5, 0.0)},
        ValueError,
        "DeviceLoader: normalize needs a finite mean and a finite std > 0, got mean=0.5, std=0.0",
    ),
    (
        {"batch_size": 5, "drop_last": True},
        ValueError,
        "DeviceLoader: drop_last=True with batch_size 5 > 4 samples would yield no batch; use a "
        "smaller batch_size or drop_last=False",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), ERRORS, ids=[e[2][14:50] for e in ERRORS])
def test_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    args: dict[str, Any] = {
        "images": torch.zeros(4, 2, 2, dtype=torch.uint8),
        "labels": torch.zeros(4, dtype=torch.long),
        "batch_size": 2,
    }
    args.update(kwargs)
    images, labels, batch_size = args.pop("images"), args.pop("labels"), args.pop("batch_size")
    with pytest.raises(error) as exc:
        DeviceLoader(images, labels, batch_size, **args)
    assert str(exc.value) == message


def test_set_epoch_errors() -> None:
    loader = DeviceLoader(*data(4), 2)
    with pytest.raises(ValueError, match=r"DeviceLoader.set_epoch: epoch must be >= 0, got -2"):
        loader.set_epoch(-2)
    with pytest.raises(TypeError, match=r"DeviceLoader.set_epoch: expected an int, got '3'"):
        loader.set_epoch("3")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_same_batches_as_cpu() -> None:
    images, labels = data(300, 28, 28)
    cpu = DeviceLoader(images, labels, 64, seed=5, resize=40, normalize=(0.3, 0.4))
    gpu = DeviceLoader(images, labels, 64, seed=5, resize=40, normalize=(0.3, 0.4), device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.device.type == "cuda"
        assert xg.dtype == torch.float32
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), rtol=1e-5, atol=1e-5)
