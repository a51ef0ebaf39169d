"""``DeviceLoader``: a whole split held on the device as one tensor, batched by indexing.

Small image datasets fit in memory many times over, so instead of a per-sample
``Dataset`` plus ``DataLoader`` workers (decode, convert and collate every item every
epoch), the split is converted once to a float32 ``(N, 1, H, W)`` tensor in [0, 1] on the
target device and each batch is one ``index_select`` (the approach of Keller Jordan's
cifar10-airbench, whose loader keeps CIFAR-10 on the GPU).

Reproducibility. Epoch ``e`` is shuffled with a ``torch.Generator`` seeded from
``(seed, e)`` alone, on the CPU, so the order of an epoch does not depend on the device,
on what was iterated before, or on the global RNG: ``set_epoch(e)`` then iterating gives
the same batches as reaching epoch ``e`` by iterating ``e`` times. That is what makes a
training run resumed at epoch ``e`` equal to an uninterrupted one. Each ``iter()`` uses
the current epoch and moves the counter on by one, so a plain ``for epoch ...: for x, y
in loader`` loop sees a new order each epoch (unlike ``DistributedSampler``, which
repeats its order until told otherwise).

Sharding across processes. With ``world_size > 1`` every rank computes the same
permutation and cuts the same global batches of ``batch_size`` samples; rank ``r`` takes
its contiguous part ``[r * m // world_size, (r + 1) * m // world_size)`` of each global
batch of ``m`` samples. The ranks' batches of step ``i``, concatenated in rank order, are
exactly the single-process batch ``i``, every rank has the same number of batches, and
the parts differ in size by at most one (the only way a data-parallel step can equal a
single-process step on the same global batch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data._checks import (
    check_images_labels,
    check_normalize,
    check_positive_int,
    check_resize,
)

__all__ = ["DeviceLoader", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from ``(seed, epoch)``.

    Uses numpy's ``SeedSequence`` so that distinct pairs give unrelated streams (a sum
    such as ``seed + epoch`` would make run 0 epoch 1 equal run 1 epoch 0).

    Raises:
        TypeError, ValueError: ``seed`` or ``epoch`` is not an int >= 0.
    """
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"epoch_seed: {name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"epoch_seed: {name} must be >= 0, got {value}")
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class DeviceLoader:
    """Batches of a whole split kept on one device; reproducible by ``(seed, epoch)``.

    Args:
        images: uint8 images in 0..255 (scaled by 1/255) or floating images in [0, 1]
            (cast to float32), ``(N, H, W)`` or ``(N, 1, H, W)``. Copied, never aliased.
        labels: integer labels ``(N,)``; stored as int64.
        batch_size: samples per batch (the last one is smaller unless ``drop_last``).
        shuffle: a new permutation each epoch; when False, the order of the data.
        seed: with the epoch number, fixes the permutation (see the module doc).
        device: where the data live and the batches are made.
        resize: None, an int (square) or ``(height, width)``: each batch is resized
            with bilinear interpolation (``align_corners=False``; antialiased when
            shrinking), e.g. ``resize=96`` as d2l does for ResNet and DenseNet.
        normalize: None or ``(mean, std)``: batches are ``(x - mean) / std``. Applied
            once to the stored split (the same as after the resize, up to float
            rounding, since bilinear weights sum to 1).
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        rank: this process's index in ``[0, world_size)`` (keyword-only).
        world_size: number of processes sharing each global batch of ``batch_size``
            samples; 1 (default) yields whole batches.

    Shape:
        Iterating yields ``x`` float32 ``(B, 1, H', W')`` and ``y`` int64 ``(B,)`` on
        ``device``, where ``(H', W')`` is ``resize`` or the image size and ``B`` is this
        rank's part of the global batch (the whole batch when ``world_size`` is 1).

    Raises:
        TypeError, ValueError: a bad argument (the message shows it), including
            ``drop_last=True`` with fewer samples than one batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        resize: int | tuple[int, int] | None = None,
        normalize: tuple[float, float] | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        owner = type(self).__name__
        self._world_size = check_positive_int(world_size, "world_size", owner)
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"{owner}: rank must be an int, got {rank!r} ({type(rank).__name__})")
        if not 0 <= rank < self._world_size:
            raise ValueError(
                f"{owner}: rank must be in [0, world_size={self._world_size}), got {rank}"
            )
        self._rank = rank
        images, labels = check_images_labels(images, labels, owner)
        self._batch_size = check_positive_int(batch_size, "batch_size", owner)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{owner}: seed must be an int, got {seed!r} ({type(seed).__name__})")
        if seed < 0:
            raise ValueError(f"{owner}: seed must be an int >= 0, got {seed}")
        self._resize = check_resize(resize, owner)
        self._normalize = check_normalize(normalize, owner)
        n = images.shape[0]
        if drop_last and n < self._batch_size:
            raise ValueError(
                f"{owner}: drop_last=True with batch_size {self._batch_size} > {n} samples "
                "would yield no batch; use a smaller batch_size or drop_last=False"
            )
        self._device = torch.device(device)
        self._shuffle = bool(shuffle)
        self._seed = seed
        self._drop_last = bool(drop_last)
        self._epoch = 0
        # Move uint8 first (4x fewer bytes to copy), then convert once on the device.
        x = images.to(self._device)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        else:
            x = x.to(torch.float32, copy=True)
        if self._normalize is not None:
            # Once for the whole split instead of once per batch: (x - mean) / std commutes
            # with the gather, and with the bilinear resize, whose weights sum to 1.
            mean, std = self._normalize
            x.sub_(mean).div_(std)
        self._images = x.contiguous()  # (N, 1, H, W)
        # On the CPU, numpy's single-threaded take gathers rows as fast as index_select
        # with one thread, and it does not stall when other processes hold the cores
        # (OpenMP-parallel index_select of a ~1 MB batch then waits at its barrier).
        self._images_np = self._images.numpy() if self._device.type == "cpu" else None
        self._labels = labels.to(device=self._device, dtype=torch.int64, copy=True)

    # --- epochs ----------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s batches.

        Raises:
            TypeError, ValueError: ``epoch`` is not an int >= 0.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise TypeError(f"{type(self).__name__}.set_epoch: expected an int, got {epoch!r}")
        if epoch < 0:
            raise ValueError(f"{type(self).__name__}.set_epoch: epoch must be >= 0, got {epoch}")
        self._epoch = epoch

    def permutation(self, epoch: int) -> Tensor:
        """The order in which epoch ``epoch`` visits the samples (CPU, int64).

        Shape:
            ``(N,)``; ``arange(N)`` when ``shuffle`` is False.
        """
        n = self.num_samples
        if not self._shuffle:
            return torch.arange(n)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(epoch_seed(self._seed, epoch))
        return torch.randperm(n, generator=generator)

    # --- iteration -------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = self.num_samples, self._batch_size
        return n // b if self._drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(self.permutation(epoch).to(self._device))

    def _batches(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        b = self._batch_size
        for i in range(len(self)):
            index = order[i * b : (i + 1) * b]
            if self._world_size > 1:
                m, w, r = index.shape[0], self._world_size, self._rank
                index = index[r * m // w : (r + 1) * m // w]
            if self._images_np is not None:
                x = torch.from_numpy(self._images_np.take(index.numpy(), axis=0))
            else:
                x = self._images.index_select(0, index)  # (B, 1, H, W), a new tensor
            y = self._labels.index_select(0, index)
            if self._resize is not None:
                shrinking = self._resize[0] < x.shape[2] or self._resize[1] < x.shape[3]
                x = F.interpolate(
                    x, size=self._resize, mode="bilinear", align_corners=False, antialias=shrinking
                )
            yield x, y

    # --- description -----------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """Number of samples in the split (``N``)."""
        return self._images.shape[0]

    @property
    def samples_per_epoch(self) -> int:
        """Samples one epoch yields: ``N``, or fewer with ``drop_last``."""
        return len(self) * self._batch_size if self._drop_last else self.num_samples

    @property
    def batch_size(self) -> int:
        """The global batch size (shared by ``world_size`` ranks)."""
        return self._batch_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(1, H', W')``: the shape of one image in a batch (after the resize)."""
        h, w = self._resize or (self._images.shape[2], self._images.shape[3])
        return (1, h, w)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def drop_last(self) -> bool:
        return self._drop_last

    @property
    def images(self) -> Tensor:
        """The stored float32 images, ``(N, 1, H, W)``: in [0, 1], or normalized when
        ``normalize`` is given (do not modify)."""
        return self._images

    @property
    def labels(self) -> Tensor:
        """The stored int64 labels, ``(N,)`` (do not modify)."""
        return self._labels

    def __repr__(self) -> str:
        shard = (
            f", rank={self._rank}, world_size={self._world_size}" if self._world_size > 1 else ""
        )
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, batch_size="
            f"{self._batch_size}, shuffle={self._shuffle}, seed={self._seed}, device="
            f"'{self._device}', resize={self._resize}, normalize={self._normalize}, "
            f"drop_last={self._drop_last}, epoch={self._epoch}{shard})"
        )
