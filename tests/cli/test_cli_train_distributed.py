"""``bnlab train --nproc N``: torchrun's agent, N ranks, one results folder; failures stop all.

The launched runs use ``_dist_train_worker.main`` as ``bnlab.cli.launch.WORKER``: the
real ``bnlab train`` in each rank (torchrun's agent, c10d rendezvous on localhost, gloo,
DDP) on the tiny synthetic data of tests/cli/test_cli_train.py. A 2-process run with
SyncBN equals the single-process run of the same command (metrics of every epoch, also
after ``--resume``); a rank that raises, or that is killed, ends the whole run within
seconds with exit status 1 and a one-line message naming the rank; a rank that hangs ends
the run after ``--dist-timeout``; Ctrl-C (SIGINT to the launcher) stops every rank and
says how to resume. Ranks are forked
from a forkserver that imported torch and bnlab once (process start is the cost).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _dist_train_worker import main as hook_worker

import bnlab.cli.data as cli_data
import bnlab.cli.launch as cli_launch
import bnlab.cli.train as cli_train
from bnlab.cli.launch import worker_argv
from bnlab.cli.main import build_parser, main
from bnlab.data.synthetic import fake_images_labels

TINY = ["--epochs", "1", "--batch-size", "16", "--limit-train", "40", "--limit-test", "20"]
TINY += ["--model", "mlp", "--hidden", "24", "--lr", "0.1", "--no-progress"]
# Seconds from a rank's failure to the end of the whole run: the agent notices a dead
# worker within 0.1 s and stops the others; generous for a loaded test machine.
PROMPT_S = 20.0

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Launched ranks run the test hook; returns the folder of their stderr files."""
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setattr(cli_launch, "WORKER", hook_worker)
    monkeypatch.setenv("BNLAB_TEST_LOG_DIR", str(logs))
    monkeypatch.delenv("BNLAB_TEST_FAIL_RANK", raising=False)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return logs


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same fake data and stub curves for a run in this process."""

    def fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = fake_images_labels(
            64 if split == "train" else 24, seed=0 if split == "train" else 1
        )
        return images, labels.to(torch.int64)

    def stub(history: Any, title: str, path: Path) -> Path:
        path.write_bytes(b"\x89PNG stub")
        return path

    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag, **kw: tmp_path / "data")
    monkeypatch.setattr(cli_data, "load_fashion_mnist", fake_load)
    monkeypatch.setattr(cli_train, "plot_training_curves", stub)


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _metrics(results: dict[str, Any]) -> list[dict[str, float]]:
    keys = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "train_samples")
    return [{k: r[k] for k in keys} for r in results["history"]]


def _assert_close(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)


@gloo
@pytest.mark.slow
def test_nproc_2_sync_bn_writes_one_run_like_a_single_process(
    launched: Path, in_process: None, tmp_path: Path
) -> None:
    out, single = tmp_path / "ddp", tmp_path / "single"
    assert main(["train", "--out", str(out), "--nproc", "2", "--sync-bn", *TINY]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".bnlab-run",  # the run folder's marker and lock
        "checkpoint.pt",
        "config.json",
        "curves.png",
        "environment.json",
        "metrics.jsonl",
        "results.json",
    ]  # written once, no temporary files
    results = _json(out / "results.json")
    assert results["config"]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "sync_bn": True,
        "batch_size_per_process": 8.0,
    }
    assert results["config"]["train"]["batch_size"] == 16  # the global batch
    assert results["first_norm"]["type"] == "SyncBatchNorm"
    env = _json(out / "environment.json")
    assert (env["world_size"], env["backend"], env["threads"]) == (2, "gloo", env["threads"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])
    assert (launched / "rank1.err").read_text() == ""  # rank 0 alone reports

    # The single-process run of the same command (SyncBN over one process is BN).
    assert main(["train", "--out", str(single), *TINY, "--epochs", "2"]) == 0
    reference = _metrics(_json(single / "results.json"))
    _assert_close(_metrics(results), reference[:1])

    # Resume to epoch 2 with 2 processes: the same as 2 epochs in one.
    resume = ["train", "--out", str(out), "--nproc", "2", "--sync-bn", *TINY, "--epochs", "2"]
    assert main([*resume, "--resume"]) == 0
    resumed = _json(out / "results.json")
    assert resumed["resumed_from_epoch"] == 1
    _assert_close(_metrics(resumed), reference)
    assert [
        r["epoch"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "epoch"
    ] == [1, 2]


@gloo
@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "how"), [("raise", "exited with status 1"), ("kill", "was killed by signal 9")]
)
def test_a_failing_rank_stops_the_run_promptly(
    launched: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    how: str,
) -> None:
    monkeypatch.setenv("BNLAB_TEST_FAIL_RANK", "1")
    monkeypatch.setenv("BNLAB_TEST_FAIL_MODE", mode)
    out = tmp_path / "run"
    status = main(["train", "--out", str(out), "--nproc", "2", *TINY])
    ended = time.time()
    assert status == 1
    failed_at = float((launched / "failed_at").read_text())
    assert ended - failed_at < PROMPT_S
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"bnlab train: error: rank 1 of 2 {how} (its error is printed above); the other ranks "
        f"were stopped; the same command with --resume continues {out} from its last full epoch"
    )
    if mode == "raise":
        rank1 = (launched / "rank1.err").read_text()
        assert "bnlab train: error: rank 1 of 2: injected failure in the training data" in rank1
    assert not (out / "results.json").exists()
    assert not (out / "checkpoint.pt").exists()


def test_worker_argv_parses_back_to_the_same_settings() -> None:
    parser = build_parser()
    argv = ["train", "--out", "runs/x", "--model", "mlp", "--hidden", "32,16", "--sync-bn"]
    argv += ["--nproc", "3", "--lr", "0.1", "--dist-timeout", "20", "--resume", "--seed", "4"]
    args = parser.parse_args(argv)
    again = parser.parse_args(worker_argv(args.parser, args, "train"))
    skip = {"nproc", "func", "parser"}
    assert again.nproc == 1
    assert {k: v for k, v in vars(again).items() if k not in skip} == {
        k: v for k, v in vars(args).items() if k not in skip
    }


def test_nproc_under_torchrun_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "r"), "--nproc", "2"])
    assert info.value.code == 2
    assert (
        "argument --nproc: this process already runs under torchrun (WORLD_SIZE=2); drop "
        "--nproc, or run bnlab train --nproc without torchrun" in capsys.readouterr().err
    )


def test_broken_torchrun_variables_are_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "r")])
    assert info.value.code == 2
    assert "WORLD_SIZE is set but RANK, LOCAL_RANK is not" in capsys.readouterr().err


def test_help_states_the_batch_size_and_the_processes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "global batch size (default 256); with N processes each takes 1/N of every batch" in text
    assert "--nproc N" in text
    assert "--sync-bn" in text
    assert "torchrun --nproc-per-node 2 -m bnlab train" in text


def test_launch_rejects_zero_processes() -> None:
    with pytest.raises(ValueError, match="nproc") as info:
        cli_launch.launch(["train"], 0)
    assert str(info.value) == "launch: nproc must be >= 1, got 0"


@gloo
@pytest.mark.slow
def test_a_hung_rank_ends_the_run_after_the_timeout(
    launched: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BNLAB_TEST_FAIL_RANK", "1")
    monkeypatch.setenv("BNLAB_TEST_FAIL_MODE", "hang")
    out = tmp_path / "run"
    status = main(["train", "--out", str(out), "--nproc", "2", *TINY, "--dist-timeout", "6"])
    ended = time.time()
    assert status == 1
    # The timeout counts from rank 0's collective, a moment before rank 1 hangs.
    assert 5.0 <= ended - float((launched / "failed_at").read_text()) < 6.0 + PROMPT_S
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            "bnlab train: error: rank 0 of 2 lost contact with the other processes (one hung or was "
            "stopped)"
        )
    )
    assert (
        "bnlab train: error: rank 0 of 2: lost contact with the other processes ("
        in (launched / "rank0.err").read_text()
    )


@gloo
@pytest.mark.slow
def test_ctrl_c_stops_every_rank(
    launched: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Rank 1 hangs, so the run is surely in progress when Ctrl-C reaches the launcher.
    monkeypatch.setenv("BNLAB_TEST_FAIL_RANK", "1")
    monkeypatch.setenv("BNLAB_TEST_FAIL_MODE", "hang")
    failed_at = launched / "failed_at"

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 60
        while not failed_at.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    out = tmp_path / "run"
    status = main(["train", "--out", str(out), "--nproc", "2", *TINY])
    ended = time.time()
    presser.join()
    assert status == 130
    assert ended - float(failed_at.read_text()) < PROMPT_S
    err = capsys.readouterr().err
    assert f"interrupted; the same command with --resume continues {out} from its last" in err
    assert "bnlab train: interrupted" in err
