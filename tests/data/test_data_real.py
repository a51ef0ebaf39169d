"""The real Fashion-MNIST files: checksums, structure, decompressed copies, damaged copies.

Uses ``$BNLAB_DATA_DIR`` or the shared copy beside the checkout
(``../shared/datasets/fashion-mnist``); skipped when neither exists.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from bnlab.data.fashion_mnist import FILES, FileStatus, load_fashion_mnist, verify_folder

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "fashion-mnist"


def _real_dir() -> Path | None:
    for candidate in (os.environ.get("BNLAB_DATA_DIR"), SHARED):
        if candidate and (Path(candidate) / FILES[0].name).is_file():
            return Path(candidate).resolve()
    return None


REAL = _real_dir()
pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(
        REAL is None,
        reason=f"no Fashion-MNIST copy: set BNLAB_DATA_DIR or provide {SHARED.resolve()}",
    ),
]


@pytest.fixture(scope="module")
def real() -> Path:
    assert REAL is not None
    return REAL


def test_the_shared_copy_verifies(real: Path) -> None:
    reports = verify_folder(real, use_cache=False)
    assert [r.status for r in reports] == [FileStatus.OK] * 4, [str(r) for r in reports]


def test_checksums_match_the_published_lists(real: Path) -> None:
    sums = real / "SHA256SUMS"
    raw_sums = real / "RAW_SHA256SUMS"
    provenance = real / "PROVENANCE.md"
    if not (sums.is_file() and raw_sums.is_file() and provenance.is_file()):
        pytest.skip(f"{real} has no SHA256SUMS / RAW_SHA256SUMS / PROVENANCE.md")
    gz = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    raw = dict(reversed(line.split()) for line in raw_sums.read_text().splitlines() if line)
    md5s = dict(
        re.findall(r"\|\s*(\S+\.gz)\s*\|[^|]*\|\s*`([0-9a-f]{32})`", provenance.read_text())
    )
    for spec in FILES:
        assert gz[spec.name] == spec.sha256
        assert raw[spec.raw_name] == spec.raw_sha256
        assert md5s[spec.name] == spec.md5


def test_test_split(real: Path) -> None:
    images, labels = load_fashion_mnist("test", real)
    assert images.shape == (10000, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (10000,)
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert labels[:3].tolist() == [9, 2, 1]


@pytest.mark.slow
def test_train_split(real: Path) -> None:
    images, labels = load_fashion_mnist("train", real)
    assert images.shape == (60000, 28, 28)
    assert torch.bincount(labels).tolist() == [6000] * 10
    assert 70 < images.float().mean().item() < 75  # about 72.94 (0.286 * 255)


def test_decompressed_copies_verify_and_load_the_same(real: Path, tmp_path: Path) -> None:
    for spec in FILES[2:]:
        with gzip.open(real / spec.name) as src, open(tmp_path / spec.raw_name, "wb") as out:
            shutil.copyfileobj(src, out)
    reports = verify_folder(tmp_path, files=FILES[2:])
    assert all(r.ok for r in reports)
    assert reports[0].path == tmp_path / "t10k-images-idx3-ubyte"
    a = load_fashion_mnist("test", tmp_path)
    b = load_fashion_mnist("test", real)
    # Exact: uint8 and int64 values decoded from the same bytes.
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_a_truncated_real_copy_is_named_precisely(real: Path, tmp_path: Path) -> None:
    spec = FILES[2]
    data = gzip.decompress((real / spec.name).read_bytes())
    (tmp_path / spec.raw_name).write_bytes(data[:786432])  # a real-world truncated copy
    report = verify_folder(tmp_path, files=[spec])[0]
    assert report.status is FileStatus.CORRUPT
    assert report.reason == (
        "truncated: expected 7840016 bytes (16-byte header + 10000 x 28 x 28 uint8 values), "
        "got 786432"
    )
