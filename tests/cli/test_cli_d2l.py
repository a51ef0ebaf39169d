"""``bnlab d2l`` end to end: synthetic data (always) and the real files (when present)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import bnlab.cli.data as cli_data
from bnlab.cli.main import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "fashion-mnist"


def _fake_load(split: str, data_dir: object) -> tuple[torch.Tensor, torch.Tensor]:
    n = 256 if split == "train" else 64
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 255, (n, 28, 28), generator=g, dtype=torch.uint8)
    return images, labels


def test_d2l_command_writes_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag: tmp_path)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", _fake_load)
    out = tmp_path / "run"
    argv = [
        "d2l",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--variants",
        "none",
        "bnlab",
    ]
    assert main([*argv, "--recalibrate-batches", "2"]) == 0
    text = capsys.readouterr().out
    assert "LeNet on Fashion-MNIST" in text
    assert "first BN layer" in text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == {"none", "bnlab"}
    for name in ("config.json", "environment.json", "d2l_curves.png"):
        assert (out / name).stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert config["d2l"]["variants"] == ["none", "bnlab"]
    # A second run into the same folder needs --resume (and leaves the run's files alone) ...
    assert main([*argv]) == 1
    assert "--resume" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()) == config
    # ... with other settings it is refused, naming them ...
    assert main([*argv, "--resume", "--recalibrate-batches", "3"]) == 1
    err = capsys.readouterr().err
    assert f"{out} holds d2l runs of other settings (d2l.recalibrate_batches: 2 -> 3)" in err
    # ... and with the same ones, reuses the finished runs (more seeds are fine).
    assert main([*argv, "--resume", "--recalibrate-batches", "2", "--seeds", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == {"train_samples": 256, "test_samples": 64}
    assert config["d2l"]["seeds"] == [0, 1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["d2l", "--out", "x", "--epochs", "0"], "expected a whole number >= 1, got 0"),
        (["d2l", "--out", "x", "--variants", "batchnrom"], "invalid choice: 'batchnrom'"),
        (["d2l", "--epochs", "2"], "the following arguments are required: --out"),
    ],
)
def test_bad_usage_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.data
@pytest.mark.skipif(
    not (Path(os.environ.get("BNLAB_DATA_DIR", SHARED)) / "train-labels-idx1-ubyte.gz").exists(),
    reason="Fashion-MNIST not found (set BNLAB_DATA_DIR or provide ../shared/datasets/fashion-mnist)",
)
def test_d2l_on_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = os.environ.get("BNLAB_DATA_DIR", str(SHARED))
    out = tmp_path / "real"
    argv = ["d2l", "--data-dir", data_dir, "--out", str(out), "--epochs", "1"]
    argv += ["--limit-train", "1024", "--limit-test", "256", "--variants", "textbook", "bnlab"]
    assert main([*argv, "--recalibrate-batches", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # The textbook layer and bnlab's compute the same function: same training numbers.
    a = summary["variants"]["textbook"]["metrics"]["train_loss"]["mean"]
    b = summary["variants"]["bnlab"]["metrics"]["train_loss"]["mean"]
    assert abs(a - b) < 1e-3


BORDERS = "│┃┓┐┩┤┘┛┫╇┼┴━─"


def assert_fits(text: str, width: int = 80) -> None:
    """No line wider than ``width``, no cell cut ("…"), every table line closed."""
    lines = text.splitlines()
    assert lines
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    assert "…" not in text
    for line in lines:
        if line[:1] in "┏┃┡│├└":
            assert line.rstrip()[-1] in BORDERS, line


def test_d2l_prints_at_80_columns_and_a_tiny_budget_decides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # stdout is not a terminal (a pipe, a CI log, `!bnlab` in Jupyter): rich uses 80.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag: tmp_path)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", _fake_load)
    out = tmp_path / "run"
    argv = ["d2l", "--out", str(out), "--epochs", "1", "--batch-size", "64", "--seeds", "2"]
    assert main([*argv, "--recalibrate-batches", "2"]) == 0
    text = capsys.readouterr().out
    assert_fits(text)
    flat = " ".join(text.split())
    assert "±" in text  # two seeds: the spread is shown, on its own line
    # 256 training images: every verdict says the budget is too small to decide.
    assert "the budget is too small to decide (256 training images (fewer than 10,000))" in flat
    summary = json.loads((out / "summary.json").read_text())
    assert flat.count("budget too small to decide (rule:") == len(summary["verdicts"])


def test_d2l_workers_say_their_layout_and_give_the_serial_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag: tmp_path)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", _fake_load)
    argv = ["d2l", "--epochs", "1", "--batch-size", "64", "--variants", "none", "bnlab"]
    argv += ["--recalibrate-batches", "2", "--threads", "1"]
    previous = torch.get_num_threads()
    try:
        assert main([*argv, "--out", str(tmp_path / "serial"), "--workers", "1"]) == 0
        assert "1 process x 1 thread (--workers, --threads)" in capsys.readouterr().out
        assert main([*argv, "--out", str(tmp_path / "parallel"), "--workers", "2"]) == 0
        assert "2 processes x 1 thread (--workers, --threads)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(previous)
    runs = {}
    for name in ("serial", "parallel"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        runs[name] = [
            {k: v for k, v in r.items() if "time" not in k and "per_s" not in k}
            for r in summary["runs"]
        ]
        environment = json.loads((tmp_path / name / "environment.json").read_text())
        assert environment["layout"]["threads"] == 1
        assert environment["layout"]["workers"] == (2 if name == "parallel" else 1)
    assert runs["parallel"] == runs["serial"]
