"""Fashion-MNIST files: verification verdicts, download (fake opener), resolve order, load."""

from __future__ import annotations

import gzip
import os
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.data import fashion_mnist as fm
from bnlab.data.fashion_mnist import (
    CLASSES,
    FILES,
    MIRROR_URL,
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    FileSpec,
    FileStatus,
    default_cache_dir,
    download_fashion_mnist,
    load_fashion_mnist,
    resolve_data_dir,
    split_files,
    text_labels,
    verify_file,
    verify_folder,
)
from bnlab.data.idx import IdxFormatError, read_idx, write_idx
from bnlab.data.synthetic import fake_images_labels, file_spec_for, write_fake_fashion_mnist

Fake = tuple[Path, tuple[FileSpec, ...]]


def test_the_four_official_files() -> None:
    assert [spec.name for spec in FILES] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert [spec.raw_name for spec in FILES][2] == "t10k-images-idx3-ubyte"
    assert [(s.split, s.kind, s.count) for s in FILES] == [
        ("train", "images", 60000),
        ("train", "labels", 60000),
        ("test", "images", 10000),
        ("test", "labels", 10000),
    ]
    assert FILES[0].raw_size == 16 + 60000 * 28 * 28
    assert FILES[3].raw_size == 8 + 10000
    assert FILES[0].url() == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"
    )
    assert FILES[0].url("https://example.org/fm/") == "https://example.org/fm/" + FILES[0].name
    assert len(CLASSES) == 10


# --- verify --------------------------------------------------------------------------------


def test_good_folder_verifies(fake: Fake) -> None:
    folder, specs = fake
    reports = verify_folder(folder, files=specs)
    assert [r.status for r in reports] == [FileStatus.OK] * 4
    assert all(r.ok for r in reports)
    assert reports[0].path == folder / "train-images-idx3-ubyte.gz"
    assert reports[0].reason == f"md5 {specs[0].md5} matches the official checksum"
    assert str(reports[0]) == f"train-images-idx3-ubyte.gz: ok: {reports[0].reason}"


def test_decompressed_copies_verify(tmp_path: Path) -> None:
    specs = write_fake_fashion_mnist(tmp_path, compress=False)
    reports = verify_folder(tmp_path, files=specs)
    assert all(r.ok for r in reports)
    assert reports[1].path == tmp_path / "train-labels-idx1-ubyte"
    assert reports[1].reason.endswith("matches the official decompressed file")


def test_recompressed_gz_verifies_by_its_content(fake: Fake) -> None:
    folder, specs = fake
    path = folder / specs[0].name
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=9))
    report = verify_file(specs[0], folder)
    assert report.ok
    assert report.reason.startswith("recompressed copy: the .gz differs from the official one")


def test_missing_file(fake: Fake) -> None:
    folder, specs = fake
    (folder / specs[2].name).unlink()
    report = verify_folder(folder, files=specs)[2]
    assert report.status is FileStatus.MISSING
    assert report.path is None
    assert report.reason == (
        f"not found: neither t10k-images-idx3-ubyte.gz nor the decompressed "
        f"t10k-images-idx3-ubyte is in {folder}"
    )


def test_truncated_file_is_corrupt(fake: Fake) -> None:
    folder, specs = fake
    path = folder / specs[0].name
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]))
    report = verify_file(specs[0], folder)
    assert report.status is FileStatus.CORRUPT
    assert report.reason == (
        f"truncated: expected {16 + 30 * 784} bytes (16-byte header + 30 x 28 x 28 uint8 "
        "values), got 1000"
    )


def test_download_cut_short_is_corrupt(fake: Fake) -> None:
    folder, specs = fake
    path = folder / specs[0].name
    path.write_bytes(path.read_bytes()[:-100])
    report = verify_file(specs[0], folder)
    assert report.status is FileStatus.CORRUPT
    assert "the .gz file was cut short" in report.reason


def test_other_content_is_a_checksum_mismatch(fake: Fake) -> None:
    folder, specs = fake
    images, _ = fake_images_labels(30, seed=99)
    write_idx(folder / specs[0].name, images)
    report = verify_file(specs[0], folder)
    assert report.status is FileStatus.MISMATCH
    assert str(report.status) == "checksum mismatch"
    md5 = fm._hash_file(folder / specs[0].name)[0]
    assert report.reason == (
        f"md5 {md5}, expected the official {specs[0].md5}: a well-formed IDX images file "
        "(30 x 28 x 28) with other content (another dataset, e.g. MNIST digits, or a modified "
        "copy)"
    )


def test_raw_copy_with_other_content_is_a_checksum_mismatch(tmp_path: Path) -> None:
    specs = write_fake_fashion_mnist(tmp_path, compress=False)
    _, labels = fake_images_labels(60, seed=5)
    write_idx(tmp_path / specs[1].raw_name, labels)
    report = verify_file(specs[1], tmp_path)
    assert report.status is FileStatus.MISMATCH
    assert report.reason.startswith("sha256 ")
    assert f"expected the official {specs[1].raw_sha256[:12]}…" in report.reason


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        (
            lambda p: p.write_bytes(gzip.decompress(p.read_bytes())),
            "not gzip-compressed although named .gz: it starts with 0x00 0x00",
        ),
        (
            lambda p: p.write_bytes((p.parent / "train-labels-idx1-ubyte.gz").read_bytes()),
            "wrong magic number 2049 (0x00000801: uint8, 1 dim, an IDX labels file), expected 2051",
        ),
        (
            lambda p: write_idx(p, fake_images_labels(31)[0]),
            "wrong image count: the header says 31 (31 x 28 x 28), expected 30",
        ),
    ],
    ids=["empty", "not-gzip", "wrong-magic", "wrong-count"],
)
def test_corrupt_verdicts(fake: Fake, damage: Callable[[Path], object], reason: str) -> None:
    folder, specs = fake
    damage(folder / specs[0].name)
    report = verify_file(specs[0], folder)
    assert report.status is FileStatus.CORRUPT
    assert report.reason.startswith(reason)


def test_good_raw_copy_beside_a_bad_gz(fake: Fake) -> None:
    folder, specs = fake
    gz = folder / specs[1].name
    (folder / specs[1].raw_name).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.write_bytes(b"")
    report = verify_file(specs[1], folder)
    assert report.ok
    assert report.path == folder / specs[1].raw_name


def test_both_copies_bad_names_both(fake: Fake) -> None:
    folder, specs = fake
    (folder / specs[1].raw_name).write_bytes(b"\x00\x00\x08\x01")
    (folder / specs[1].name).write_bytes(b"")
    report = verify_file(specs[1], folder)
    assert report.status is FileStatus.CORRUPT
    assert report.reason == (
        "the file is empty (0 bytes); train-labels-idx1-ubyte: corrupt: truncated: the magic "
        "number announces 1 dimensions, so the header has 8 bytes, got 4"
    )


def test_verify_folder_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder$"):
        verify_folder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file: not a folder"):
        verify_folder(tmp_path / "file")


def test_verification_is_cached_by_size_and_mtime(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, specs = fake
    assert verify_file(specs[1], folder).ok
    hashed: list[Path] = []
    real_hash = fm._hash_file
    monkeypatch.setattr(fm, "_hash_file", lambda path: hashed.append(path) or real_hash(path))
    assert verify_file(specs[1], folder).ok
    assert hashed == []  # served from the cache
    path = folder / specs[1].name
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert verify_file(specs[1], folder).ok
    assert hashed == [path]  # changed mtime: hashed again
    assert verify_file(specs[1], folder, use_cache=False).ok
    assert len(hashed) == 2
    fm.clear_verification_cache()
    verify_file(specs[1], folder)
    assert len(hashed) == 3


def test_failures_are_not_cached(fake: Fake) -> None:
    folder, specs = fake
    path = folder / specs[1].name
    good = path.read_bytes()
    path.write_bytes(good[:10])
    assert verify_file(specs[1], folder).status is FileStatus.CORRUPT
    path.write_bytes(good)
    assert verify_file(specs[1], folder).ok


# --- download ------------------------------------------------------------------------------


def test_download_fetches_checks_and_reports_progress(
    tmp_path: Path, fake: Fake, serve: Callable[..., Any]
) -> None:
    _, specs = fake
    opener = serve()
    progress: list[tuple[str, int, int | None]] = []
    dest = tmp_path / "new" / "cache"
    reports = download_fashion_mnist(
        dest, files=specs, opener=opener, progress=lambda *a: progress.append(a)
    )
    assert [r.ok for r in reports] == [True] * 4
    assert sorted(p.name for p in dest.iterdir()) == sorted(s.name for s in specs)
    assert all((dest / s.name).stat().st_mode & 0o777 == 0o644 for s in specs)
    assert opener.calls == [MIRROR_URL + s.name for s in specs]
    assert all(r.ok for r in verify_folder(dest, files=specs, use_cache=False))
    assert progress[0] == (specs[0].name, 0, specs[0].size)
    assert progress[-1] == (specs[3].name, specs[3].size, specs[3].size)
    # A second call finds everything in place and downloads nothing.
    again = serve()
    download_fashion_mnist(dest, files=specs, opener=again)
    assert again.calls == []


def test_md5_mismatch_then_retry_succeeds(
    tmp_path: Path, fake: Fake, serve: Callable[..., Any]
) -> None:
    folder, specs = fake
    good = (folder / specs[1].name).read_bytes()
    opener = serve({specs[1].name: [good[:-1] + b"X", good]})
    reports = download_fashion_mnist(tmp_path / "d", files=specs, opener=opener, retry_wait=0)
    assert all(r.ok for r in reports)
    assert opener.calls.count(MIRROR_URL + specs[1].name) == 2


def test_three_failures_raise_and_leave_no_partial_file(
    tmp_path: Path, fake: Fake, serve: Callable[..., Any]
) -> None:
    folder, specs = fake
    good = (folder / specs[0].name).read_bytes()
    opener = serve(
        {
            specs[0].name: [
                good[:100],
                urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
                (good, 5000),  # the connection drops after 5000 bytes
            ]
        }
    )
    dest = tmp_path / "d"
    with pytest.raises(DownloadError) as exc:
        download_fashion_mnist(dest, files=specs, opener=opener, retry_wait=0)
    url = MIRROR_URL + specs[0].name
    assert str(exc.value) == (
        f"could not download {url} into {dest} after 3 tries: "
        f"try 1: md5 {fm.hashlib.md5(good[:100]).hexdigest()} of the 100 "
        f"bytes received, expected the official {specs[0].md5} ({specs[0].size} bytes); "
        "try 2: URLError: <urlopen error [Errno -3] Temporary failure in name resolution>; "
        "try 3: ConnectionResetError: connection reset by peer (fake)"
    )
    assert list(dest.iterdir()) == []  # no partial file, no temporary file
    assert isinstance(exc.value, OSError)


def test_retry_waits_grow(
    tmp_path: Path, fake: Fake, serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, specs = fake
    waits: list[float] = []
    monkeypatch.setattr(fm.time, "sleep", waits.append)
    opener = serve({specs[0].name: [ConnectionRefusedError("refused")]})
    with pytest.raises(DownloadError, match=r"after 3 tries"):
        download_fashion_mnist(tmp_path, files=specs, opener=opener, retry_wait=0.5)
    assert waits == [0.5, 1.0]


def test_a_bad_file_is_replaced_atomically(
    fake: Fake, serve: Callable[..., Any], tmp_path: Path
) -> None:
    _, specs = fake
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / specs[3].name).write_bytes(b"garbage")
    download_fashion_mnist(dest, files=specs, opener=serve())
    assert all(r.ok for r in verify_folder(dest, files=specs))
    assert sorted(p.name for p in dest.iterdir()) == sorted(s.name for s in specs)


def test_download_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tries must be an int >= 1, got 0"):
        download_fashion_mnist(tmp_path, tries=0)
    with pytest.raises(ValueError, match=r"timeout must be > 0 seconds, got -1"):
        download_fashion_mnist(tmp_path, timeout=-1)


# --- where the data are --------------------------------------------------------------------


def test_default_cache_dir() -> None:
    assert default_cache_dir("/xdg", "/home/u") == Path("/xdg/bnlab/fashion-mnist")
    assert default_cache_dir(None, "/home/u") == Path("/home/u/.cache/bnlab/fashion-mnist")
    assert default_cache_dir("", "/home/u") == Path("/home/u/.cache/bnlab/fashion-mnist")
    assert default_cache_dir("rel", "/home/u") == Path("/home/u/.cache/bnlab/fashion-mnist")


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, Path, Path, tuple[FileSpec, ...]]:
    """Three folders with the same valid fake files: flag, env, cache."""
    specs = write_fake_fashion_mnist(tmp_path / "flag", train_count=10, test_count=10)
    write_fake_fashion_mnist(tmp_path / "env", train_count=10, test_count=10)
    write_fake_fashion_mnist(tmp_path / "cache", train_count=10, test_count=10)
    return tmp_path / "flag", tmp_path / "env", tmp_path / "cache", specs


def test_resolve_order(three: tuple[Path, Path, Path, tuple[FileSpec, ...]]) -> None:
    flag, env, cache, specs = three
    assert resolve_data_dir(flag, str(env), cache, files=specs) == flag
    assert resolve_data_dir(None, str(env), cache, files=specs) == env
    assert resolve_data_dir(None, None, cache, files=specs) == cache
    assert resolve_data_dir("", "", cache, files=specs) == cache  # empty means unset


def test_an_explicit_folder_is_authoritative(
    three: tuple[Path, Path, Path, tuple[FileSpec, ...]], tmp_path: Path
) -> None:
    _, env, cache, specs = three
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as exc:
        resolve_data_dir(empty, str(env), cache, files=specs)
    names = ", ".join(s.name for s in specs)
    assert str(exc.value) == (
        f"--data-dir is {empty}, but 4 of 4 Fashion-MNIST files there are not usable: missing "
        f"{names}. To fix it, put the four files ({names}, or their decompressed copies) "
        f"there, run 'bnlab data download --dir {empty}', or point --data-dir at another folder"
    )
    with pytest.raises(DatasetNotFoundError, match=r"^BNLAB_DATA_DIR is .*nowhere, which does"):
        resolve_data_dir(None, str(tmp_path / "nowhere"), cache, files=specs)
    (env / specs[0].name).write_bytes(b"")
    with pytest.raises(ChecksumError) as bad:
        resolve_data_dir(None, str(env), cache, files=specs)
    assert "1 of 4 Fashion-MNIST files there are not usable: train-images-idx3-ubyte.gz: " in str(
        bad.value
    )
    assert "corrupt: the file is empty (0 bytes)" in str(bad.value)
    assert [r.spec.name for r in bad.value.reports] == [specs[0].name]


def test_nothing_local_and_no_download_gives_one_clear_message(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError) as exc:
        resolve_data_dir(None, None, cache, download=False)
    assert str(exc.value) == (
        "Fashion-MNIST not found. Searched: --data-dir (not given), BNLAB_DATA_DIR (not set), "
        f"the user cache {cache} does not exist; downloading was not allowed (run 'bnlab data "
        "download' to fetch the files). Put the four files train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or "
        "their decompressed copies) in one folder and pass it with --data-dir DIR or set "
        f"BNLAB_DATA_DIR=DIR, or put them in {cache}."
    )


def test_offline_gives_one_clear_message(tmp_path: Path, make_opener: Any) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    offline = make_opener(
        {s.url(): [urllib.error.URLError("[Errno 101] Network is unreachable")] for s in FILES}
    )
    with pytest.raises(DatasetNotFoundError) as exc:
        resolve_data_dir(None, None, cache, opener=offline, retry_wait=0)
    message = str(exc.value)
    assert message.startswith(
        "Fashion-MNIST not found. Searched: --data-dir (not given), BNLAB_DATA_DIR (not set), "
        f"the user cache {cache} is incomplete (missing train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); "
        f"downloading into it failed: could not download {FILES[0].url()} into {cache} after 3 "
        "tries: try 1: URLError: <urlopen error [Errno 101] Network is unreachable>;"
    )
    assert message.endswith(
        f"pass it with --data-dir DIR or set BNLAB_DATA_DIR=DIR, or put them in {cache}."
    )
    assert len(offline.calls) == 3
    assert list(cache.iterdir()) == []


def test_download_into_the_cache_as_last_resort(
    tmp_path: Path, fake: Fake, serve: Callable[..., Any]
) -> None:
    _, specs = fake
    cache = tmp_path / "xdg" / "bnlab" / "fashion-mnist"
    calls: list[str] = []
    found = resolve_data_dir(
        None, None, cache, files=specs, opener=serve(), progress=lambda n, d, t: calls.append(n)
    )
    assert found == cache
    assert all(r.ok for r in verify_folder(cache, files=specs, use_cache=False))
    assert set(calls) == {s.name for s in specs}


# --- load ----------------------------------------------------------------------------------


def test_load(fake: Fake) -> None:
    folder, specs = fake
    images, labels = load_fashion_mnist("train", folder, files=specs)
    expected_images, expected_labels = fake_images_labels(30, seed=0)
    assert images.dtype == torch.uint8
    assert images.shape == (30, 28, 28)
    assert labels.dtype == torch.int64
    assert labels.shape == (30,)
    # Exact: uint8 and int64 values decoded from the written bytes.
    assert torch.equal(images, expected_images)
    assert torch.equal(labels, expected_labels.long())
    test_images, _ = load_fashion_mnist("test", folder, files=specs)
    assert test_images.shape == (10, 28, 28)


def test_load_raw_copies(tmp_path: Path) -> None:
    specs = write_fake_fashion_mnist(tmp_path, compress=False, test_count=7)
    images, labels = load_fashion_mnist("test", tmp_path, files=specs)
    assert images.shape == (7, 28, 28)
    assert labels.shape == (7,)


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match=r"^unknown Fashion-MNIST split") as exc:
        split_files("val")
    assert str(exc.value) == "unknown Fashion-MNIST split 'val'; choose one of: train, test"
    with pytest.raises(ValueError, match=r"\(the official test files are named t10k-\*\)"):
        load_fashion_mnist("t10k", ".")


def test_load_refuses_missing_and_damaged_files(fake: Fake) -> None:
    folder, specs = fake
    (folder / specs[3].name).unlink()
    with pytest.raises(DatasetNotFoundError) as exc:
        load_fashion_mnist("test", folder, files=specs)
    assert str(exc.value) == (
        f"cannot load the Fashion-MNIST test split from {folder}: missing "
        f"t10k-labels-idx1-ubyte.gz. Check the folder with 'bnlab data verify {folder}' or "
        f"fetch the files with 'bnlab data download --dir {folder}'"
    )
    path = folder / specs[0].name
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte.gz: corrupt: truncated"):
        load_fashion_mnist("train", folder, files=specs)


def test_load_images_and_labels_count_mismatch(tmp_path: Path) -> None:
    images, labels = fake_images_labels(12)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:11])
    specs = (
        file_spec_for(
            tmp_path / "train-images-idx3-ubyte.gz",
            name="train-images-idx3-ubyte.gz",
            split="train",
            kind="images",
            count=12,
        ),
        file_spec_for(
            tmp_path / "train-labels-idx1-ubyte.gz",
            name="train-labels-idx1-ubyte.gz",
            split="train",
            kind="labels",
            count=11,
        ),
    )
    with pytest.raises(IdxFormatError) as exc:
        load_fashion_mnist("train", tmp_path, files=specs)
    assert str(exc.value).startswith(
        f"{tmp_path / 'train-images-idx3-ubyte.gz'}: holds 12 images but "
        f"{tmp_path / 'train-labels-idx1-ubyte.gz'} holds 11 labels"
    )


def test_labels_out_of_range(tmp_path: Path) -> None:
    specs = list(write_fake_fashion_mnist(tmp_path, test_count=5))
    path = write_idx(
        tmp_path / "t10k-labels-idx1-ubyte.gz", torch.tensor([1, 2, 12, 3, 4], dtype=torch.uint8)
    )
    specs[3] = file_spec_for(path, name=path.name, split="test", kind="labels", count=5)
    with pytest.raises(ChecksumError, match=r"label 12 at index 2 is outside 0\.\.9$"):
        load_fashion_mnist("test", tmp_path, files=specs)


def test_text_labels() -> None:
    assert text_labels(torch.tensor([9, 0, 5])) == ["Ankle boot", "T-shirt/top", "Sandal"]
    assert text_labels([3]) == ["Dress"]
    with pytest.raises(ValueError, match=r"labels are 0\.\.9, got \[10, -1\]"):
        text_labels([10, -1])


def test_error_types_fit_the_cli() -> None:
    # bnlab.cli.main turns ValueError/OSError into one line and exit status 1.
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(ChecksumError, ValueError)
    assert issubclass(DownloadError, OSError)


def test_written_fake_files_round_trip(fake: Fake) -> None:
    folder, specs = fake
    assert read_idx(folder / specs[1].name).shape == (30,)
