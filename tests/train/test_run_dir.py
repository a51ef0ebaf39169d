"""The run folder: its files, and the one comparison every resume check makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnlab.train.run_dir import (
    RUN_FILES,
    Change,
    ForeignFolderError,
    RunDir,
    RunDirBusyError,
    settings_changes,
)

SAVED = {
    "command": "train",
    "model": "lenet",
    "norm": "bnlab",
    "train": {"lr": 1.0, "epochs": 2, "seed": 0},
    "data": {"data_dir": "/a", "limit_train": 64},
}


def test_same_settings_have_no_changes() -> None:
    assert settings_changes(SAVED, json.loads(json.dumps(SAVED))) == []


def test_changes_are_dotted_in_the_current_order_then_sorted_inside_a_section() -> None:
    current = {
        **SAVED,
        "norm": "torch",
        "train": {"seed": 3, "lr": 0.5, "epochs": 2},
        "data": {"data_dir": "/b", "limit_train": 64},
    }
    changes = settings_changes(SAVED, current)
    assert [str(c) for c in changes] == [
        "norm: 'bnlab' -> 'torch'",
        "train.lr: 1.0 -> 0.5",
        "train.seed: 0 -> 3",
        "data.data_dir: '/a' -> '/b'",
    ]
    assert changes[0] == Change("norm", "bnlab", "torch")


def test_may_change_takes_keys_and_whole_sections() -> None:
    current = {**SAVED, "train": {"lr": 1.0, "epochs": 5, "seed": 0}, "data": {"data_dir": "/b"}}
    changes = settings_changes(SAVED, current, may_change={"train.epochs", "data"})
    assert changes == []
    assert [c.key for c in settings_changes(SAVED, current, may_change={"data"})] == [
        "train.epochs"
    ]


def test_keys_on_one_side_only_are_changes() -> None:
    current = {**SAVED, "preset": "d2l-lenet"}
    del current["command"]
    changes = settings_changes(SAVED, current)
    assert [str(c) for c in changes] == ["preset: None -> 'd2l-lenet'", "command: 'train' -> None"]
    # A section only one side has is compared key by key against nothing.
    spread = {**SAVED, "distributed": {"world_size": 2}}
    assert [str(c) for c in settings_changes(SAVED, spread)] == [
        "distributed.world_size: None -> 2"
    ]
    assert settings_changes(SAVED, spread, may_change={"distributed.world_size"}) == []


def test_defaults_fill_settings_added_since_the_run_was_saved() -> None:
    current = {**SAVED, "train": {**SAVED["train"], "precision": "32"}}
    assert [c.key for c in settings_changes(SAVED, current)] == ["train.precision"]
    defaults = {"train": {"precision": "32", "lr": 99.0}}
    assert settings_changes(SAVED, current, defaults=defaults) == []


def test_tuples_equal_the_lists_json_gives_back() -> None:
    assert settings_changes({"seeds": [0, 1]}, {"seeds": (0, 1)}) == []
    assert [str(c) for c in settings_changes({"seeds": [0, 1]}, {"seeds": (0, 2)})] == [
        "seeds: [0, 1] -> (0, 2)"
    ]


def test_run_dir_writes_and_reads_the_layout(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "a" / "run")
    assert run.is_empty()
    assert not run.path.exists()  # nothing is created before a write
    run.write_config(SAVED)
    run.write_environment({"torch": "x"})
    run.write_results({"final": {"test_acc": 0.5}})
    assert run.read_config() == SAVED
    assert json.loads(run.environment.read_text()) == {"torch": "x"}
    assert json.loads(run.results.read_text()) == {"final": {"test_acc": 0.5}}
    assert run.existing(RUN_FILES) == ["config.json", "environment.json", "results.json"]
    assert run.settings_changes({**SAVED, "norm": "torch"}) == [Change("norm", "bnlab", "torch")]
    (run.path / "notes.txt").write_text("mine")
    run.remove()
    # Nothing else (the marker says the folder is bnlab's).
    assert sorted(p.name for p in run.path.iterdir()) == [".bnlab-run", "notes.txt"]


def test_run_dir_metrics_and_checkpoints(tmp_path: Path) -> None:
    run = RunDir(tmp_path).claim()  # an earlier run's folder
    run.previous_checkpoint.write_bytes(b"an earlier run's")
    (tmp_path / ".metrics.jsonl.0123456789ab.tmp").write_text("torn")
    run.start_metrics()
    assert run.metrics.read_text() == ""
    assert not run.previous_checkpoint.exists()
    assert not list(tmp_path.glob(".*.tmp"))
    run.append_metrics({"epoch": 1})
    run.append_metrics({"epoch": 2})
    run.rewrite_metrics([{"epoch": 1}])
    assert run.metrics.read_text() == '{"epoch": 1}\n'
    run.save_checkpoint({"epoch": 1})
    run.save_checkpoint({"epoch": 2})
    assert run.load_checkpoint() == {"epoch": 2}
    assert run.load_checkpoint(previous=True) == {"epoch": 1}


def test_read_config_refuses_what_is_not_an_object(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError):
        run.read_config()
    run.config.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        run.read_config()


# Ownership and the lock (issue 19).


def test_a_folder_that_is_not_bnlabs_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"mine": true}')
    run = RunDir(tmp_path)
    with pytest.raises(ForeignFolderError, match=r"is not empty and not a bnlab run folder"):
        run.write_config(SAVED)
    with pytest.raises(ForeignFolderError):
        run.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == '{"mine": true}'


def test_a_file_is_not_a_run_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ForeignFolderError, match="exists and is not a folder"):
        RunDir(tmp_path / "f").claim()


def test_claim_marks_and_locks_and_is_reentrant(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert not run.is_claimed()
    with run.claimed():
        assert run.is_claimed()
        assert run.is_empty()  # the marker alone is no content
        holder = json.loads(run.marker.read_text())
        assert holder["pid"] == os.getpid()
        assert set(holder) == {"pid", "command", "started"}
        run.write_config(SAVED)  # claims again: nothing to do
    assert not run.is_claimed()
    assert run.is_marked()
    (run.path / "notes.txt").write_text("added by hand")
    run.write_config(SAVED)  # a marked folder stays bnlab's
    run.release()


_HOLD = """
import sys, time
from bnlab.train.run_dir import RunDir
RunDir(sys.argv[1]).claim()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_until_the_holder_ends(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "run")],
        env={**os.environ, "PYTHONPATH": str(src)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        run = RunDir(tmp_path / "run")
        with pytest.raises(
            RunDirBusyError, match=rf"in use by another bnlab process \(pid {proc.pid}, "
        ) as exc:
            run.claim()
        assert exc.value.holder["pid"] == proc.pid
        assert not run.is_claimed()
    finally:
        proc.kill()  # the kernel drops the lock of a killed process
        proc.wait()
    with run.claimed():
        assert json.loads(run.marker.read_text())["pid"] == os.getpid()
