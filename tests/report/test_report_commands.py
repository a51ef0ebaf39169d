"""The report's "reproduce with" commands run, and give the same numbers again."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.cli.data as cli_data
from bnlab.cli.main import main
from bnlab.data.synthetic import fake_images_labels
from bnlab.report.commands import argv_from_options, d2l_command, train_command
from bnlab.train import TIMING_KEYS


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tiny synthetic splits in place of the data lookup (a few hundred images)."""

    def fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = 192 if split == "train" else 64
        images, labels = fake_images_labels(n, seed=0 if split == "train" else 1)
        return images, labels.to(torch.int64)

    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag, **kw: tmp_path)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", fake_load)


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _numbers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _rerun(command: str) -> int:
    words = shlex.split(command)
    assert words[0] == "bnlab"
    return main([*words[1:], "--no-progress"] if words[1] == "train" else words[1:])


# A small run with every kind of option the command rebuilds: the README's recipe
# (activation, momentum, cosine schedule), a norm option, the data limits.
TRAIN_RUNS = {
    "recipe": [
        *("--activation", "relu", "--lr", "0.05", "--momentum", "0.9"),
        *("--lr-schedule", "cosine", "--batch-size", "32"),
    ],
    "renorm": [
        "--norm",
        "batchrenorm",
        "--renorm-warmup",
        "0.5",
        "--r-max",
        "2",
        "--bn-eps",
        "1e-4",
    ],
    "mlp": ["--model", "mlp", "--hidden", "16", "--activation", "tanh", "--lr", "0.1"],
}


@pytest.mark.usefixtures("fake_data")
@pytest.mark.parametrize("options", TRAIN_RUNS.values(), ids=list(TRAIN_RUNS))
def test_the_train_command_reproduces_the_run(tmp_path: Path, options: list[str]) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    small = ["--epochs", "1", "--limit-train", "160", "--limit-test", "48"]
    assert main(["train", "--out", str(first), "--no-progress", *small, *options]) == 0
    command = train_command(_json(first / "config.json"), str(again))
    assert command is not None
    assert "--lr-schedule" in command  # the flag the CLI once rejected (exit 2)
    assert _rerun(command) == 0
    a, b = _json(first / "results.json"), _json(again / "results.json")
    assert _numbers(a["history"]) == _numbers(b["history"])
    assert a["first_norm"] == b["first_norm"]
    assert _json(again / "config.json")["train"] == _json(first / "config.json")["train"]


@pytest.mark.usefixtures("fake_data")
def test_the_d2l_command_reproduces_the_run(tmp_path: Path) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    small = ["--epochs", "1", "--batch-size", "64", "--variants", "none", "bnlab"]
    assert main(["d2l", "--out", str(first), *small, "--recalibrate-batches", "2"]) == 0
    config = _json(first / "config.json")
    config["argv"]["out"] = str(again)
    command = d2l_command(config)
    assert command is not None
    assert _rerun(command) == 0
    a, b = _json(first / "summary.json"), _json(again / "summary.json")
    for name in ("none", "bnlab"):
        ma, mb = a["variants"][name]["metrics"], b["variants"][name]["metrics"]
        for key in ("train_loss", "train_acc", "test_acc"):
            assert ma[key] == mb[key], (name, key)


def test_options_become_flags() -> None:
    options = {"lr_schedule": "cosine", "variants": ["none", "bnlab"], "quick": True, "x": None}
    assert argv_from_options(options) == [
        "--lr-schedule",
        "cosine",
        "--variants",
        "none",
        "bnlab",
        "--quick",
    ]


def test_train_command_spells_the_norm_options() -> None:
    config = {
        "model": "lenet",
        "norm": "ghost",
        "model_kwargs": {"activation": "relu"},
        "train": {"lr": 0.05},
        "norm_options": {"momentum": 0.05, "eps": 0.001, "virtual_batch_size": 4},
    }
    assert train_command(config, "runs/x") == (
        "bnlab train --model lenet --norm ghost --activation relu --lr 0.05 "
        "--bn-momentum 0.05 --bn-eps 0.001 --virtual-batch-size 4 --out runs/x"
    )
