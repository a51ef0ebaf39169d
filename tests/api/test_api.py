"""``bnlab.api`` and ``bnlab.d2l``: one call each, the same numbers as the command line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure

import bnlab
import bnlab.api
import bnlab.cli.data as cli_data
import bnlab.data.iterators as iterators
from bnlab.api import NormOptions
from bnlab.cli.main import main
from bnlab.data import DeviceLoader
from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import experiment as ex
from bnlab.train import TIMING_KEYS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
import _toy


def _fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n = 192 if split == "train" else 64
    images, labels = fake_images_labels(n, seed=0 if split == "train" else 1)
    return images, labels.to(torch.int64)


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """Tiny synthetic splits for the API and the CLI alike; records the folder flags."""
    flags: list[Any] = []

    def fake_dir(flag: Any, **kwargs: Any) -> Path:
        flags.append(flag)
        return tmp_path

    monkeypatch.setattr(cli_data, "data_dir_from_env", fake_dir)
    monkeypatch.setattr(bnlab.api, "data_dir_from_env", fake_dir)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", _fake_load)
    monkeypatch.setattr(iterators, "load_fashion_mnist", _fake_load)
    return flags


def _numbers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_the_top_level_names_load_lazily() -> None:
    assert bnlab.d2l.run is bnlab.api.d2l
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = bnlab.nope


def test_load_data_fashion_mnist_is_d2ls_one_line(fake_data: list[Any]) -> None:
    train_iter, test_iter = bnlab.api.load_data_fashion_mnist(32, data_dir="here", limit_test=40)
    assert fake_data == ["here"]
    assert isinstance(train_iter, DeviceLoader)
    assert (len(train_iter), len(test_iter)) == (6, 2)
    x, y = next(iter(train_iter))
    assert x.shape == (32, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    x, _ = next(iter(bnlab.api.load_data_fashion_mnist(8, 32)[1]))
    assert x.shape == (8, 1, 32, 32)  # resize, as d2l's
    with pytest.raises(ValueError, match="limit_train must be >= 1"):
        bnlab.api.load_data_fashion_mnist(8, limit_train=0)


def test_train_gives_the_numbers_of_bnlab_train(fake_data: list[Any], tmp_path: Path) -> None:
    recipe: dict[str, Any] = dict(
        activation="relu", lr=0.05, momentum=0.9, lr_schedule="cosine", batch_size=32, epochs=2
    )
    result = bnlab.api.train("lenet", "bnlab", out=tmp_path / "api", progress=False, **recipe)
    argv = ["--activation", "relu", "--lr", "0.05", "--momentum", "0.9"]
    argv += ["--lr-schedule", "cosine", "--batch-size", "32", "--epochs", "2"]
    # Same digits need the same thread count: without --threads the CLI picks it from
    # the free cores, which depends on the machine's load.
    argv += ["--threads", str(torch.get_num_threads())]
    assert main(["train", "--out", str(tmp_path / "cli"), "--no-progress", *argv]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert _numbers(result.history) == _numbers(cli["history"])
    saved = json.loads((tmp_path / "api" / "config.json").read_text())
    assert saved["train"] == cli["config"]["train"]
    assert saved["model_kwargs"] == {"activation": "relu"}
    assert (tmp_path / "api" / "results.json").is_file()
    page = result._repr_html_()
    assert "final test accuracy" in page
    assert "data:image/png;base64," in page
    assert isinstance(result.figures[0], Figure)
    assert not result.model.training
    assert "TrainResult(lenet + bnlab" in repr(result)


def test_train_takes_norm_options(fake_data: list[Any], tmp_path: Path) -> None:
    result = bnlab.api.train(
        "lenet",
        "ghost",
        epochs=1,
        norm_options={"virtual_batch_size": 8, "momentum": 0.2},
        progress=False,
        out=tmp_path / "run",
    )
    assert result.config["norm_options"] == {"momentum": 0.2, "virtual_batch_size": 8}
    with pytest.raises(ValueError, match="renorm_warmup: the model has no batch renorm layer"):
        bnlab.api.train("lenet", "bnlab", epochs=1, norm_options=NormOptions(renorm_warmup=0.5))
    with pytest.raises(FileExistsError, match="already holds a run"):
        bnlab.api.train("lenet", "bnlab", epochs=1, progress=False, out=tmp_path / "run")


def test_d2l_run_shows_a_tiny_budget(fake_data: list[Any], tmp_path: Path) -> None:
    result = bnlab.d2l.run(
        epochs=1, variants=["none", "bnlab"], recalibrate_batches=2, out=tmp_path, progress=False
    )
    assert [row[0] for row in result.table()] == ["none", "bnlab"]
    assert result.too_small == "192 training images (fewer than 10,000)"
    page = result._repr_html_()
    assert "budget too small to decide (rule:" in page
    assert "data:image/png;base64," in page
    # The report rebuilds the command from the saved options.
    assert json.loads((tmp_path / "config.json").read_text())["argv"]["variants"] == [
        "none",
        "bnlab",
    ]


@pytest.fixture
def toy() -> Any:
    ex.register_lab(_toy.SPEC, overwrite=True)
    yield _toy.SPEC
    ex._LABS.pop(_toy.SPEC.name, None)


@pytest.mark.usefixtures("toy")
def test_lab_runs_an_experiment(tmp_path: Path) -> None:
    result = bnlab.api.lab(
        "toy-test", seeds=2, settings={"shift": 1.5}, out=tmp_path / "run", progress=False
    )
    assert result.results["config"]["shift"] == 1.5
    assert result.too_small == ""
    assert "a exceeds b: <b>holds</b>" in result._repr_html_()
    quick = bnlab.api.lab("toy-test", quick=True, out=tmp_path / "quick", progress=False)
    assert quick.too_small.startswith("a --quick run")
    with pytest.raises(ValueError, match="unknown setting"):
        bnlab.api.lab("toy-test", settings={"nope": 1}, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"momentum": 1.5}, ValueError, "NormOptions: momentum must be in [0, 1], got 1.5"),
        ({"eps": 0}, ValueError, "NormOptions: eps must be a finite number > 0, got 0.0"),
        ({"eps": math.inf}, ValueError, "NormOptions: eps must be a finite number > 0, got inf"),
        ({"r_max": 0.5}, ValueError, "NormOptions: r_max must be >= 1, got 0.5"),
        ({"d_max": -1}, ValueError, "NormOptions: d_max must be >= 0, got -1.0"),
        ({"renorm_warmup": 0}, ValueError, "NormOptions: renorm_warmup must be in (0, 1]"),
        ({"virtual_batch_size": 0}, ValueError, "virtual_batch_size must be >= 1, got 0"),
        ({"virtual_batch_size": 2.0}, TypeError, "virtual_batch_size must be an int, got 2.0"),
        ({"momentum": "0.1"}, TypeError, "NormOptions: momentum must be a number, got '0.1'"),
    ],
)
def test_norm_options_check_their_values(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as exc:
        NormOptions(**kwargs)
    assert message in str(exc.value)


def test_norm_options_round_trip() -> None:
    options = NormOptions(momentum=0.05, r_max=2, renorm_warmup=0.25)
    assert options.to_dict() == {"momentum": 0.05, "r_max": 2.0, "renorm_warmup": 0.25}
    assert NormOptions.from_dict(options.to_dict()) == options
    assert NormOptions.from_dict(None) == NormOptions()


def test_train_stops_at_a_target_accuracy(fake_data: list[Any], tmp_path: Path) -> None:
    result = bnlab.api.train(
        "lenet",
        "bnlab",
        epochs=3,
        batch_size=32,
        target_acc=0.0,
        progress=False,
        out=tmp_path / "t",
    )
    assert [r["epoch"] for r in result.history] == [1]  # every accuracy is >= 0
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert saved["target"] == {
        "test_acc": 0.0,
        "reached": True,
        "epoch": 1,
        "time_s": result.history[0]["time_s"],
    }
    assert result.fit.target(1.01)["reached"] is False
    with pytest.raises(ValueError, match=r"target_acc must be in \[0, 1\], got 1.5"):
        bnlab.api.train("lenet", "bnlab", epochs=1, target_acc=1.5, progress=False)
