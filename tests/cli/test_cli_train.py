"""``bnlab train`` end to end on tiny synthetic data, usage errors, resume; once on real data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.cli.data as cli_data
import bnlab.cli.train as cli_train
from bnlab.cli.main import main
from bnlab.data.fashion_mnist import FILES
from bnlab.data.synthetic import fake_images_labels
from bnlab.train import TIMING_KEYS, read_jsonl

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "fashion-mnist"
RUN_FILES = {
    ".bnlab-run",  # the marker and lock of a bnlab run folder (issue 19)
    "config.json",
    "environment.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "checkpoint.prev.pt",
    "results.json",
    "curves.png",
}
QUICK = ["--epochs", "2", "--batch-size", "16", "--limit-train", "48", "--limit-test", "20"]


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Replace the data lookup and the loader function by tiny learnable synthetic splits."""
    calls: dict[str, Any] = {"flags": [], "splits": []}
    data_dir = tmp_path / "data"

    def fake_dir(flag: Any, **kwargs: Any) -> Path:
        calls["flags"].append(flag)
        return data_dir

    def fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls["splits"].append((split, Path(folder)))
        images, labels = fake_images_labels(
            64 if split == "train" else 24, seed=0 if split == "train" else 1
        )
        return images, labels.to(torch.int64)

    monkeypatch.setattr(cli_data, "data_dir_from_env", fake_dir)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", fake_load)
    return calls


@pytest.fixture
def fast_plot(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Skip drawing curves.png (most of a tiny run's time); one test draws the real one."""
    drawn: list[Path] = []

    def stub(history: list[dict[str, Any]], title: str, path: Path) -> Path:
        drawn.append(path)
        path.write_bytes(b"\x89PNG stub")
        return path

    monkeypatch.setattr(cli_train, "plot_training_curves", stub)
    return drawn


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--out", str(out), "--no-progress", *extra])


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_train_writes_the_results_folder(
    fake_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--data-dir", "somewhere", "--log-every-steps", "2") == 0
    assert fake_data["flags"] == ["somewhere"]
    assert [s for s, _ in fake_data["splits"]] == ["train", "test"]
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no temporary files left

    config = _json(out / "config.json")
    assert config["model"] == "lenet"
    assert config["norm"] == "bnlab"
    assert config["train"]["epochs"] == 2
    assert config["train"]["batch_size"] == 16
    assert config["data"]["train_samples"] == 48
    assert config["data"]["test_samples"] == 20

    env = _json(out / "environment.json")
    for key in ("python", "torch", "device", "threads", "git_revision", "bnlab"):
        assert key in env
    assert env["device"] == "cpu"

    results = _json(out / "results.json")
    assert set(results["final"]) >= {"train_loss", "train_acc", "test_acc"}
    assert results["wall_time_s"] > 0
    assert results["images_per_s"] > 0
    assert "forward" in results["images_per_s_definition"]
    assert results["config"] == config
    assert [r["epoch"] for r in results["history"]] == [1, 2]
    assert results["first_norm"]["layer"] == "norm1"
    assert len(results["first_norm"]["gamma"]) == 6

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in metrics if r["kind"] == "epoch"] == [1, 2]
    assert [r["step"] for r in metrics if r["kind"] == "step"] == [2, 4, 6]
    assert metrics[-1]["test_acc"] == results["final"]["test_acc"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stdout = capsys.readouterr().out
    assert "bnlab train: lenet with norm bnlab" in stdout
    assert "final test accuracy" in stdout
    assert "gamma = [" in stdout


def test_train_mlp_options(
    fake_data: dict[str, Any], fast_plot: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "mlp"
    args = ["--model", "mlp", "--norm", "torch", "--hidden", "32,16", "--norm-position", "before"]
    assert _train(out, *QUICK, *args, "--lr", "0.1", "--momentum", "0.9") == 0
    config = _json(out / "config.json")
    assert config["model_kwargs"] == {"hidden": [32, 16], "norm_position": "before"}
    assert config["train"]["momentum"] == 0.9
    assert _json(out / "results.json")["first_norm"]["type"] == "BatchNorm1d"


# The README's best recipe (ReLU LeNet-BN, momentum SGD, cosine schedule, batch 128).
RECIPE = ["--activation", "relu", "--lr", "0.05", "--momentum", "0.9", "--lr-schedule", "cosine"]


def test_train_the_readme_recipe(
    fake_data: dict[str, Any], fast_plot: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "recipe"
    assert _train(out, *QUICK, *RECIPE) == 0
    config = _json(out / "config.json")
    assert config["model_kwargs"] == {"activation": "relu"}
    assert config["train"]["lr_schedule"] == "cosine"
    assert config["train"]["momentum"] == 0.9
    assert "norm_options" not in config  # none given: the key stays out
    # The cosine schedule ran: the two epochs were trained at different rates, so the
    # run differs from the same run at a constant rate.
    constant = tmp_path / "constant"
    recipe = [a if a != "cosine" else "constant" for a in RECIPE]
    assert _train(constant, *QUICK, *recipe) == 0
    a, b = _json(out / "results.json"), _json(constant / "results.json")
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert a["history"][1]["train_loss"] != b["history"][1]["train_loss"]


def test_norm_options_reach_the_layers(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[torch.nn.Module] = []
    create = cli_train.models.create

    def spy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = create(*args, **kwargs)
        built.append(model)
        return model

    monkeypatch.setattr(cli_train.models, "create", spy)
    out = tmp_path / "ghost"
    options = ["--norm", "ghost", "--virtual-batch-size", "4", "--bn-momentum", "0.05"]
    assert _train(out, *QUICK, *options, "--bn-eps", "0.001") == 0
    assert _json(out / "config.json")["norm_options"] == {
        "momentum": 0.05,
        "eps": 0.001,
        "virtual_batch_size": 4,
    }
    layers = [m for m in built[-1].modules() if type(m).__name__.startswith("GhostBatchNorm")]
    assert len(layers) == 4
    assert {(m.momentum, m.eps, m.virtual_batch_size) for m in layers} == {(0.05, 0.001, 4)}


def test_renorm_warmup_resumes_exactly(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The warm-up is planned over the run's --epochs (as the cosine schedule): a resumed
    # run sets the bounds of the checkpoint's step, not of step 0.
    whole, part = tmp_path / "whole", tmp_path / "part"
    options = ["--norm", "batchrenorm", "--renorm-warmup", "0.5", "--r-max", "2", "--lr", "0.5"]
    assert _train(whole, *QUICK, *options) == 0
    real_fit = cli_train.fit

    def fit_stopped_in_epoch_2(*args: Any, **kwargs: Any) -> Any:
        given = kwargs["on_step"]

        def on_step(info: Any) -> None:
            given(info)
            if info.epoch == 2:
                raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(cli_train, "fit", fit_stopped_in_epoch_2)
    assert _train(part, *QUICK, *options) == 130
    monkeypatch.setattr(cli_train, "fit", real_fit)
    assert _train(part, *QUICK, *options, "--resume") == 0
    a, b = _json(whole / "results.json"), _json(part / "results.json")
    assert b["resumed_from_epoch"] == 1
    assert _without_timings(a["history"]) == _without_timings(b["history"])
    assert _json(whole / "config.json")["norm_options"] == {"r_max": 2.0, "renorm_warmup": 0.5}


def test_train_without_norm_has_no_gamma(
    fake_data: dict[str, Any], fast_plot: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "plain"
    assert _train(out, *QUICK, "--norm", "none", "--lr", "0.9") == 0
    assert _json(out / "results.json")["first_norm"] is None


def test_resume_equals_an_uninterrupted_run(
    fake_data: dict[str, Any], fast_plot: list[Path], tmp_path: Path
) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--batch-size", "16", "--limit-train", "48", "--limit-test", "20", "--lr", "0.5"]
    assert _train(full, *common, "--epochs", "2") == 0
    assert _train(part, *common, "--epochs", "1") == 0
    assert _train(part, *common, "--epochs", "2", "--resume") == 0
    a, b = _json(full / "results.json"), _json(part / "results.json")
    assert _without_timings(a["history"]) == _without_timings(b["history"])
    assert b["resumed_from_epoch"] == 1
    assert a["first_norm"] == b["first_norm"]
    full_state = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    part_state = torch.load(part / "checkpoint.pt", weights_only=True)["model"]
    for key, value in full_state.items():
        assert torch.equal(value, part_state[key]), key
    assert [r["epoch"] for r in read_jsonl(part / "metrics.jsonl")] == [1, 2]


def test_existing_run_needs_resume_or_overwrite(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _train(out, *QUICK)
    assert exc.value.code == 2
    assert (
        f"argument --out: {out} already holds a run (checkpoint.pt, results.json); add --resume "
        "to continue it, --overwrite to start it again, or choose another folder"
    ) in capsys.readouterr().err
    assert _train(out, *QUICK, "--overwrite", "--epochs", "1") == 0
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]


def test_a_run_stopped_in_its_first_epoch_starts_again(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    real_fit = cli_train.fit

    def interrupted_fit(*args: Any, **kwargs: Any) -> Any:
        def on_step(info: Any) -> None:
            raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(cli_train, "fit", interrupted_fit)
    assert _train(out, *QUICK) == 130
    assert "interrupted; the same command with --resume continues" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists()
    monkeypatch.setattr(cli_train, "fit", real_fit)
    assert _train(out, *QUICK) == 0
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]


def test_resume_refuses_other_settings(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--epochs", "1") == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _train(out, *QUICK, "--resume", "--lr", "0.5", "--norm", "torch")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"--resume: {out} was run with other settings (norm: 'bnlab' -> 'torch'; train.lr: 1.0 -> 0.5)"
        in err
    )


USAGE_ERRORS = [
    (["--epochs", "0"], "argument --epochs: expected a whole number >= 1, got 0"),
    (["--batch-size", "many"], "argument --batch-size: expected a whole number >= 1, got 'many'"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0, got -1"),
    (["--lr", "nan"], "argument --lr: expected a finite number > 0, got nan"),
    (["--seed", "-3"], "argument --seed: expected a whole number >= 0, got -3"),
    (["--norm", "batchnrom"], "argument --norm: invalid choice: 'batchnrom'"),
    (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--momentum", "1.5"], "argument --momentum: expected a number in [0, 1), got 1.5"),
    (
        ["--weight-decay", "-0.1"],
        "argument --weight-decay: expected a finite number >= 0, got -0.1",
    ),
    (
        ["--hidden", "100,0"],
        "argument --hidden: expected comma-separated whole numbers >= 1 such as 100 or 256,128, got '100,0'",
    ),
    (["--hidden", "100"], "argument --hidden: applies to --model mlp only, not --model lenet"),
    (
        ["--norm-position", "before"],
        "argument --norm-position: applies to --model mlp only, not --model lenet",
    ),
    (["--limit-train", "0"], "argument --limit-train: expected a whole number >= 1, got 0"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    (["--lr-schedule", "step"], "argument --lr-schedule: invalid choice: 'step'"),
    (
        ["--model", "resnet20", "--activation", "relu"],
        "argument --activation: applies to --model lenet or mlp only, not --model resnet20",
    ),
    (["--bn-momentum", "1.5"], "argument --bn-momentum: expected a number in [0, 1], got 1.5"),
    (["--bn-eps", "0"], "argument --bn-eps: expected a finite number > 0, got 0"),
    (
        ["--norm", "batchrenorm", "--r-max", "0.5"],
        "norm layer options: NormOptions: r_max must be >= 1, got 0.5",
    ),
    (
        ["--virtual-batch-size", "8"],
        "norm layer options: virtual_batch_size: the model has no ghost batch norm layer "
        "(--norm ghost) (norm 'bnlab'); it would change nothing",
    ),
    (
        ["--renorm-warmup", "0.5"],
        "norm layer options: renorm_warmup: the model has no batch renorm layer",
    ),
    (
        ["--norm", "none", "--bn-momentum", "0.2"],
        "norm layer options: momentum: the model has no norm layer with running statistics",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS]
)
def test_usage_errors_exit_2(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        _train(tmp_path / "run", *argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_without_a_run_exits_2(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        _train(tmp_path / "run", "--resume")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"--resume: no checkpoint.pt in {tmp_path / 'run'}; run without --resume to start it" in err
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_exits_2(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        _train(tmp_path / "run", "--device", "cuda")
    assert exc.value.code == 2
    assert (
        "argument --device: cuda was asked for but CUDA is not available; use --device cpu"
        in capsys.readouterr().err
    )


def test_nan_loss_exits_1_with_advice(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _train(tmp_path / "run", *QUICK, "--model", "mlp", "--norm", "none", "--lr", "1e20")
    assert code == 1
    err = capsys.readouterr().err
    assert "bnlab train: error: training loss is nan at epoch 1, step" in err
    assert "Lower the learning rate (lr=1e+20)" in err


def _real_dir() -> Path | None:
    for candidate in (os.environ.get("BNLAB_DATA_DIR"), SHARED):
        if candidate and (Path(candidate) / FILES[0].name).is_file():
            return Path(candidate).resolve()
    return None


@pytest.mark.data
@pytest.mark.skipif(
    _real_dir() is None, reason=f"no Fashion-MNIST copy: set BNLAB_DATA_DIR or provide {SHARED}"
)
def test_train_on_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "real"
    data_dir = str(_real_dir())
    argv = ["--data-dir", data_dir, "--limit-train", "512", "--limit-test", "256", "--epochs", "1"]
    argv += ["--batch-size", "64"]
    assert _train(out, *argv) == 0
    assert {p.name for p in out.iterdir()} == RUN_FILES - {
        "checkpoint.prev.pt"
    }  # one epoch: no previous
    results = _json(out / "results.json")
    assert results["config"]["data"]["train_samples"] == 512
    assert results["config"]["data"]["test_samples"] == 256
    assert results["history"][0]["step"] == 8
    assert 0.0 <= results["final"]["test_acc"] <= 1.0
    assert results["final"]["train_loss"] > 0
    assert "final test accuracy" in capsys.readouterr().out


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


def test_summary_fits_80_columns(
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = tmp_path / ("a-results-folder-with-a-long-name-" * 3)
    assert _train(out, *QUICK) == 0
    text = capsys.readouterr().out
    assert_fits(text)
    assert out.name[-20:] in "".join(text.split())  # the path wraps, never cut


def test_target_acc_stops_at_the_first_epoch_that_reaches_it(
    tmp_path: Path,
    fake_data: dict[str, Any],
    fast_plot: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A target of 0 is reached by the first epoch; one above every accuracy never is.
    assert _train(tmp_path / "zero", *QUICK, "--epochs", "4", "--target-acc", "0") == 0
    results = _json(tmp_path / "zero" / "results.json")
    assert [r["epoch"] for r in results["history"]] == [1]
    assert results["epochs_run"] == 1
    assert results["target"] == {
        "test_acc": 0.0,
        "reached": True,
        "epoch": 1,
        "time_s": results["history"][0]["time_s"],
    }
    assert "test accuracy >= 0" in capsys.readouterr().out
    assert _train(tmp_path / "never", *QUICK, "--epochs", "2", "--target-acc", "1") == 0
    results = _json(tmp_path / "never" / "results.json")
    if all(r["test_acc"] < 1 for r in results["history"]):
        assert len(results["history"]) == 2
        assert results["target"]["reached"] is False
        assert results["target"]["epoch"] is None
        assert "not in 2 epochs" in capsys.readouterr().out
    # The target is not a training setting: a run may resume with another one.
    assert _train(tmp_path / "zero", *QUICK, "--epochs", "4", "--resume") == 0
    assert [r["epoch"] for r in _json(tmp_path / "zero" / "results.json")["history"]] == [
        1,
        2,
        3,
        4,
    ]
