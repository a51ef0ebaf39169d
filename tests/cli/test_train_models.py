"""``bnlab train`` with the ResNet/DenseNet/plain models, ``--resize`` and ``--preset``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.cli.data as cli_data
import bnlab.cli.train as cli_train
from bnlab.cli.main import build_parser, main
from bnlab.data.synthetic import fake_images_labels

TINY = ["--epochs", "1", "--batch-size", "8", "--limit-train", "16", "--limit-test", "8"]


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tiny synthetic splits instead of Fashion-MNIST, and no real plot."""

    def fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = fake_images_labels(16, seed=0 if split == "train" else 1)
        return images, labels.to(torch.int64)

    def stub_plot(history: list[dict[str, Any]], title: str, path: Path) -> Path:
        path.write_bytes(b"\x89PNG stub")
        return path

    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag, **kw: tmp_path / "data")
    monkeypatch.setattr(cli_data, "load_fashion_mnist", fake_load)
    monkeypatch.setattr(cli_train, "plot_training_curves", stub_plot)


def _resolved(*argv: str) -> Any:
    args = build_parser().parse_args(["train", "--out", "unused", *argv])
    cli_train._apply_preset(args)
    return args


def test_without_a_preset_the_defaults_are_unchanged() -> None:
    args = _resolved()
    assert (args.model, args.norm, args.lr, args.epochs, args.batch_size, args.resize) == (
        "lenet",
        "bnlab",
        1.0,
        10,
        256,
        None,
    )


def test_a_preset_fills_and_explicit_flags_override() -> None:
    args = _resolved("--preset", "d2l-resnet18")
    assert (args.model, args.norm, args.lr, args.epochs, args.batch_size, args.resize) == (
        "resnet18",
        "bnlab",
        0.05,
        10,
        256,
        96,
    )
    args = _resolved("--preset", "d2l-resnet18", "--norm", "groupnorm", "--lr", "0.1")
    assert (args.model, args.norm, args.lr, args.resize) == ("resnet18", "groupnorm", 0.1, 96)
    args = _resolved("--preset", "d2l-densenet", "--resize", "64", "--batch-size", "32")
    assert (args.model, args.lr, args.resize, args.batch_size) == ("densenet", 0.1, 64, 32)


def test_help_lists_presets_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name in ("d2l-lenet", "d2l-resnet18", "d2l-densenet", "resnet20", "plain", "--resize"):
        assert name in out


def test_unknown_preset_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x", "--preset", "resnet"])
    assert exc.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


def test_train_resnet20_with_bnlab(fake_data: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--no-progress", "--model", "resnet20", *TINY])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == {"name": "resnet20", "norm": "bnlab", "num_parameters": 269_434}
    assert results["first_norm"]["layer"] == "stem.1"
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] is None
    assert config["data"]["resize"] is None


def test_preset_with_overrides_and_resize(fake_data: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--preset", "d2l-resnet18", "--model", "plain", "--norm", "groupnorm"]
    code = main(["train", "--out", str(out), "--no-progress", *argv, "--resize", "32", *TINY])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "d2l-resnet18"
    assert (config["model"], config["norm"], config["train"]["lr"]) == ("plain", "groupnorm", 0.05)
    assert config["data"]["resize"] == 32
    results = json.loads((out / "results.json").read_text())
    assert results["first_norm"]["type"] == "GroupNorm"
    # Resuming with the same flags continues the run.
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                "--no-progress",
                *argv,
                "--resize",
                "32",
                *TINY[:1],
                "2",
                *TINY[2:],
                "--resume",
            ]
        )
        == 0
    )
