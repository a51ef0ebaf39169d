"""``bnlab train`` under faults: Ctrl-C, damaged or hostile checkpoints, damaged data
files, reduced precision and the anomaly flag (issue 10).

Every failure must end with exit status 1 (130 for Ctrl-C) and one line on stderr that
names the file, never a traceback.
"""

from __future__ import annotations

import errno
import functools
import importlib
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cli_train import QUICK, _train, _without_timings, fake_data, fast_plot  # noqa: F401

import bnlab.cli.data as cli_data
import bnlab.cli.train as cli_train
import bnlab.train.io as train_io
from bnlab.data.fashion_mnist import load_fashion_mnist
from bnlab.data.synthetic import write_fake_fashion_mnist
from bnlab.train import read_jsonl


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def _interrupt() -> None:
    """What Ctrl-C does: SIGINT to this process (KeyboardInterrupt where Python handles it)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.raise_signal(signal.SIGINT)
    raise KeyboardInterrupt


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_sigint_after_an_epoch_exits_130_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(tmp_path / "whole", *QUICK) == 0
    real_fit = cli_train.fit

    def fit_with_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        def on_step(info: Any) -> None:
            if info.epoch == 2:
                _interrupt()

        return real_fit(*args, **{**kwargs, "on_step": on_step})

    out = tmp_path / "run"
    monkeypatch.setattr(cli_train, "fit", fit_with_ctrl_c)
    capsys.readouterr()
    assert _train(out, *QUICK) == 130
    err = capsys.readouterr().err
    # (rich wraps the hint at the terminal width)
    assert "interrupted; the same command with --resume continues" in err
    assert err.endswith("bnlab train: interrupted\n")
    assert "Traceback" not in err
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "epoch"] == [1]
    monkeypatch.setattr(cli_train, "fit", real_fit)
    assert _train(out, *QUICK, "--resume") == 0
    whole, resumed = _results(tmp_path / "whole"), _results(out)
    assert _without_timings(resumed["history"]) == _without_timings(whole["history"])
    assert resumed["first_norm"] == whole["first_norm"]


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_a_torn_checkpoint_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK) == 0
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    # With the previous checkpoint: falls back to it and says so.
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        assert _train(out, *QUICK, "--resume") == 0
    # Without one: exit 1, one line naming the file.
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    (out / "checkpoint.prev.pt").unlink()
    capsys.readouterr()
    assert _train(out, *QUICK, "--resume") == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"bnlab train: error: cannot read checkpoint {out / 'checkpoint.pt'}: it is truncated, "
        "corrupted, or not a checkpoint written by bnlab"
    )
    assert err.count("\n") == 1
    assert "Traceback" not in err


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_a_checkpoint_carrying_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK) == 0
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        state = torch.load(out / name, weights_only=True)
        torch.save({**state, "payload": _Payload(marker)}, out / name)
    capsys.readouterr()
    assert _train(out, *QUICK, "--epochs", "3", "--resume") == 1
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {out / 'checkpoint.pt'}" in err
    assert err.count("\n") == 1
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
@pytest.mark.usefixtures("fast_plot")
def test_a_damaged_data_file_is_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    data_dir = tmp_path / "data"
    specs = write_fake_fashion_mnist(data_dir, train_count=48, test_count=20)
    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag, **kw: data_dir)
    monkeypatch.setattr(
        cli_data, "load_fashion_mnist", functools.partial(load_fashion_mnist, files=specs)
    )
    assert _train(tmp_path / "ok", *QUICK) == 0  # the intact files load
    victim = data_dir / specs[1].name  # train labels
    raw = victim.read_bytes()
    victim.write_bytes(
        {
            "truncated": raw[: len(raw) // 2],
            "flipped": raw[:-9] + bytes([raw[-9] ^ 0xFF]) + raw[-8:],
            "empty": b"",
        }[damage]
    )
    capsys.readouterr()
    assert _train(tmp_path / "bad", *QUICK) == 1
    err = capsys.readouterr().err
    assert specs[1].name.removesuffix(".gz") in err
    assert err.startswith("bnlab train: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_reduced_precision_flag(tmp_path: Path, precision: str) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--precision", precision, "--lr", "0.1") == 0
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == precision
    assert all(r["train_loss"] is not None for r in _results(out)["history"])


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_detect_anomaly_flag_reaches_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real_fit = cli_train.fit

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["detect_anomaly"])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cli_train, "fit", spy)
    assert _train(tmp_path / "a", *QUICK, "--detect-anomaly") == 0
    assert _train(tmp_path / "b", *QUICK) == 0
    assert seen == [True, False]


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_a_run_saved_before_the_precision_setting_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--epochs", "1") == 0
    # As written by bnlab before --precision existed.
    config = json.loads((out / "config.json").read_text())
    del config["train"]["precision"]
    (out / "config.json").write_text(json.dumps(config))
    for name in ("checkpoint.pt",):
        state = torch.load(out / name, weights_only=True)
        del state["config"]["precision"]
        del state["scaler"]
        torch.save(state, out / name)
    assert _train(out, *QUICK, "--resume") == 0


# Issue 19: the last edge cases of a run.


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_a_last_batch_of_one_sample_is_skipped_not_fatal(tmp_path: Path) -> None:
    # 17 = 16 + 1: the last batch holds one sample, which LeNet's BatchNorm1d layers
    # cannot normalize in training (one value per channel).
    out = tmp_path / "run"
    argv = ["--epochs", "2", "--batch-size", "16", "--limit-train", "17", "--limit-test", "20"]
    assert _train(out, *argv, "--epochs", "1") == 0
    assert _train(out, *argv, "--resume") == 0
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [(r["epoch"], r["train_samples"], r["skipped_samples"]) for r in epochs] == [
        (1, 16, 1),
        (2, 16, 1),
    ]
    assert [r["step"] for r in epochs] == [1, 2]  # one update per epoch
    assert _results(out)["history"][-1]["skipped_samples"] == 1
    # Resumed equals uninterrupted.
    whole = tmp_path / "whole"
    assert _train(whole, *argv) == 0
    assert _without_timings(_results(whole)["history"]) == _without_timings(
        _results(out)["history"]
    )


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_an_infinite_test_loss_is_saved_and_read_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A finite training loss with an infinite test loss (what --lr 1e33 gives on some
    # machines and thread counts: whether it does depends on rounding, so the test loss
    # is made infinite here instead).
    train_fit = importlib.import_module("bnlab.train.fit")  # the module; bnlab.train.fit is fit
    real_evaluate = train_fit.evaluate

    def infinite_test_loss(*args: Any, **kwargs: Any) -> dict[str, float]:
        return {**real_evaluate(*args, **kwargs), "loss": math.inf}

    monkeypatch.setattr(train_fit, "evaluate", infinite_test_loss)
    out = tmp_path / "run"
    code = _train(out, "--epochs", "2", "--batch-size", "16", "--limit-train", "48")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Out of range float values" not in err
    assert "Traceback" not in err
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # every epoch is kept
    assert all(math.isfinite(r["train_loss"]) for r in epochs)
    # Written as "Infinity", read back as a float.
    assert all(r["test_loss"] == math.inf for r in epochs)
    assert '"test_loss": "Infinity"' in (out / "metrics.jsonl").read_text()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert train_io.read_json(out / "results.json")["final"]["test_loss"] == math.inf


@pytest.mark.usefixtures("fake_data", "fast_plot")
@pytest.mark.parametrize("key", ["epoch", "optimizer", "rng", "metrics"])
def test_a_checkpoint_missing_a_key_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--epochs", "1") == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state[key]
    torch.save(state, out / "checkpoint.pt")
    capsys.readouterr()
    assert _train(out, *QUICK, "--resume") == 1
    err = capsys.readouterr().err
    assert err == (
        f"bnlab train: error: checkpoint {out / 'checkpoint.pt'} has no {key!r} entry: it is "
        "damaged or was not written by bnlab; start a new run in another directory\n"
    )


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_an_edited_config_cannot_resume_another_runs_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--epochs", "1") == 0
    config = json.loads((out / "config.json").read_text())
    config["norm"] = "torch"  # same parameter names, another layer
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert _train(out, *QUICK, "--norm", "torch", "--resume") == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"bnlab train: error: checkpoint {out / 'checkpoint.pt'} belongs to another run "
        "(norm: 'bnlab' -> 'torch')"
    )
    assert err.count("\n") == 1


class _FullDisk:
    """A file whose writes fail as on a full disk once ``room`` bytes are written."""

    def __init__(self, f: Any, room: int) -> None:
        self._f = f
        self._room = room

    def write(self, data: Any) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_a_full_disk_names_the_checkpoint_and_says_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(out, *QUICK, "--epochs", "1") == 0
    before = (out / "checkpoint.pt").read_bytes()
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(f, 1000) if "checkpoint" in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(train_io.os, "fdopen", fdopen)
    capsys.readouterr()
    assert _train(out, *QUICK, "--resume") == 1  # torch.save itself meets the full disk
    err = capsys.readouterr().err
    assert err.startswith(
        f"bnlab train: error: [Errno {errno.ENOSPC}] cannot write {out / 'checkpoint.pt'}: "
    )
    assert "(disk full)" in err
    assert "unexpected pos" not in err
    assert err.count("\n") == 1
    assert (out / "checkpoint.pt").read_bytes() == before
