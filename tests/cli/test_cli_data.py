"""``bnlab data verify|download|where`` and ``data_dir_from_env``, through ``main([...])``.

The fake files replace the official specs (``FILES``) for the duration of a test, so the
commands run end to end without the real data and without the network.
"""

from __future__ import annotations

import argparse
import io
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.cli.data import data_dir_from_env, load_splits
from bnlab.cli.main import main
from bnlab.data import fashion_mnist
from bnlab.data.fashion_mnist import FileSpec
from bnlab.data.synthetic import write_fake_fashion_mnist


class _Response(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No network, no real environment: an empty home, no BNLAB_DATA_DIR."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("BNLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("BNLAB_DEBUG", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fashion_mnist.clear_verification_cache()
    yield
    fashion_mnist.clear_verification_cache()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, tuple[FileSpec, ...]]:
    """Valid fake files in tmp_path/fake, installed as the official specs."""
    folder = tmp_path / "fake"
    specs = write_fake_fashion_mnist(folder, train_count=20, test_count=10)
    monkeypatch.setattr(fashion_mnist, "FILES", specs)
    return folder, specs


def test_load_splits_finds_loads_and_limits(fake: tuple[Path, tuple[FileSpec, ...]]) -> None:
    folder, _ = fake
    args = argparse.Namespace(data_dir=str(folder), limit_train=7, limit_test=None)
    splits = load_splits(args)
    assert splits.data_dir == folder
    assert sorted(splits.tensors) == ["test_images", "test_labels", "train_images", "train_labels"]
    assert [len(t) for t in splits.tensors.values()] == [7, 7, 10, 10]
    assert splits.tensors["train_labels"].dtype == torch.int64
    assert splits.describe() == f"Fashion-MNIST from {folder}: 7 training and 10 test images"
    # A command without the limit options (bnlab lab) gets the whole splits.
    whole = load_splits(argparse.Namespace(data_dir=str(folder)))
    assert len(whole.tensors["train_images"]) == 20


def test_data_is_listed_and_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert "BNLAB_DATA_DIR" in out
    assert "verify" in out
    assert "download" in out
    assert "where" in out
    assert main(["data"]) == 2


def test_verify_good_folder(fake: tuple[Path, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder, specs = fake
    assert main(["data", "verify", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    for line, spec in zip(lines, specs, strict=False):
        assert line.split()[:2] == ["ok", spec.name]
    assert lines[-1] == f"all 4 Fashion-MNIST files verified in {folder}"


def test_verify_bad_folder(fake: tuple[Path, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder, specs = fake
    (folder / specs[1].name).unlink()
    images = folder / specs[2].name
    images.write_bytes(images.read_bytes()[:200])
    assert main(["data", "verify", str(folder)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("ok ")
    assert lines[1].startswith(f"missing  {specs[1].name}  not found: neither")
    assert lines[2].startswith(f"corrupt  {specs[2].name}   truncated: expected 7856 bytes")
    assert lines[3].startswith("ok ")
    assert lines[4] == (
        f"2 of 4 files are not usable in {folder}; 'bnlab data download --dir {folder}' "
        "fetches the missing or damaged ones"
    )
    assert "Traceback" not in captured.out + captured.err


def test_verify_not_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", str(tmp_path / "nope")]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"bnlab data: error: {tmp_path / 'nope'}: no such folder\n"


def test_where_follows_the_order(
    fake: tuple[Path, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _ = fake
    cache = tmp_path / "xdg" / "bnlab" / "fashion-mnist"
    write_fake_fashion_mnist(cache, train_count=20, test_count=10)
    assert main(["data", "where"]) == 0
    assert capsys.readouterr().out == f"{cache}\n"
    monkeypatch.setenv("BNLAB_DATA_DIR", str(folder))
    assert main(["data", "where"]) == 0
    assert capsys.readouterr().out == f"{folder}\n"
    assert main(["data", "where", "--data-dir", str(cache)]) == 0
    assert capsys.readouterr().out == f"{cache}\n"


def test_where_without_data_says_where_to_put_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "where"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    cache = tmp_path / "xdg" / "bnlab" / "fashion-mnist"
    assert captured.err.startswith("bnlab data: error: Fashion-MNIST not found. Searched: ")
    for needle in (
        "--data-dir",
        "BNLAB_DATA_DIR",
        str(cache),
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz",
    ):
        assert needle in captured.err
    assert captured.err.count("\n") == 1  # one message, no traceback


def test_where_home_cache_without_xdg(
    fake: tuple[Path, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    cache = tmp_path / "home" / ".cache" / "bnlab" / "fashion-mnist"
    write_fake_fashion_mnist(cache, train_count=20, test_count=10)
    assert main(["data", "where"]) == 0
    assert capsys.readouterr().out == f"{cache}\n"


def test_download(
    fake: tuple[Path, tuple[FileSpec, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, specs = fake
    served = {spec.url(): (folder / spec.name).read_bytes() for spec in specs}
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda request, timeout: _Response(served[request.full_url])
    )
    dest = tmp_path / "dest"
    assert main(["data", "download", "--dir", str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"Fashion-MNIST ready in {dest}"
    assert sorted(p.name for p in dest.iterdir()) == sorted(s.name for s in specs)
    # Without --dir: into the user cache.
    assert main(["data", "download"]) == 0
    assert (tmp_path / "xdg" / "bnlab" / "fashion-mnist" / specs[0].name).is_file()


def test_download_failure_is_one_line(
    fake: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "download", "--dir", str(tmp_path / "d"), "--tries", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bnlab data: error: could not download {fashion_mnist.MIRROR_URL}")
    assert "after 1 try: try 1: URLError: <urlopen error network disabled in tests>" in err


def test_data_dir_from_env(
    fake: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = fake
    assert data_dir_from_env(str(folder)) == folder
    monkeypatch.setenv("BNLAB_DATA_DIR", str(folder))
    assert data_dir_from_env(None) == folder
    with pytest.raises(fashion_mnist.DatasetNotFoundError, match=r"^--data-dir is "):
        data_dir_from_env(str(tmp_path))
