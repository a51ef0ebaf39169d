"""Data: the IDX format, Fashion-MNIST (locate, download, verify, load) and loaders.

Modules:
    idx: read/write IDX files (raw or gzip) with header, size and count checks.
    fashion_mnist: the four official files, checksums, verification, download,
        ``resolve_data_dir`` and ``load_fashion_mnist``.
    loader: ``DeviceLoader``, the whole split on the device, reproducible by (seed, epoch).
    iterators: ``load_data_fashion_mnist(batch_size, resize, data_dir=...)``, d2l's
        one-line loader (``train_iter, test_iter``), and ``load_splits``.
    dataset: ``FashionMNISTDataset``, per-sample access as in the d2l book (baselines).
    synthetic: tiny fake Fashion-MNIST files for tests.

Nothing here reads the environment or prints; the CLI (``bnlab.cli.data``) does.
"""

from bnlab.data.dataset import FashionMNISTDataset
from bnlab.data.fashion_mnist import (
    CLASSES,
    FILES,
    MIRROR_URL,
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    FileReport,
    FileSpec,
    FileStatus,
    default_cache_dir,
    download_fashion_mnist,
    load_fashion_mnist,
    resolve_data_dir,
    text_labels,
    verify_folder,
)
from bnlab.data.idx import IdxFormatError, read_idx, read_idx_images, read_idx_labels
from bnlab.data.iterators import load_data_fashion_mnist, load_splits
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import write_fake_fashion_mnist

__all__ = [
    "CLASSES",
    "FILES",
    "MIRROR_URL",
    "ChecksumError",
    "DatasetNotFoundError",
    "DeviceLoader",
    "DownloadError",
    "FashionMNISTDataset",
    "FileReport",
    "FileSpec",
    "FileStatus",
    "IdxFormatError",
    "default_cache_dir",
    "download_fashion_mnist",
    "load_data_fashion_mnist",
    "load_fashion_mnist",
    "load_splits",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "resolve_data_dir",
    "text_labels",
    "verify_folder",
    "write_fake_fashion_mnist",
]
