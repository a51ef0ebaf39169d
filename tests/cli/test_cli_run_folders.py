"""Nothing lost, nothing shared by accident (issue 19): ``bnlab train``, ``d2l`` and ``lab``
write only into an empty folder or one of bnlab's own runs; a run holds a lock on its
folder; ``bnlab report`` refuses a page that would replace one of its inputs.

Every refusal exits 1 with one line that names the problem and the fix, and leaves the
folder's files as they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cli_train import QUICK, _train, fake_data, fast_plot  # noqa: F401

import bnlab.cli.data as cli_data
from bnlab.cli.main import main
from bnlab.lab import experiment as ex
from bnlab.train.run_dir import MARKER_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
import _toy
from _report_folders import make_bench, make_train

SRC = Path(__file__).resolve().parents[2] / "src"


def _user_folder(path: Path) -> dict[str, str]:
    """A user's project folder that happens to hold a config.json."""
    files = {"config.json": '{"mine": true}\n', "notes.txt": "do not touch\n"}
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return files


def _unchanged(path: Path, files: dict[str, str]) -> None:
    assert {p.name: p.read_text() for p in path.iterdir()} == files


def _one_line_error(err: str, command: str) -> str:
    assert err.startswith(f"bnlab {command}: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.usefixtures("fake_data", "fast_plot")
@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_train_refuses_a_folder_that_is_not_a_bnlab_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...]
) -> None:
    out = tmp_path / "project"
    files = _user_folder(out)
    capsys.readouterr()
    assert _train(out, *QUICK, *extra) == 1
    err = _one_line_error(capsys.readouterr().err, "train")
    assert f"{out} is not empty and not a bnlab run folder" in err
    assert "config.json, notes.txt" in err
    assert "choose a new or empty folder" in err
    _unchanged(out, files)


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_train_writes_into_an_empty_folder_and_its_own_run(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert _train(out, *QUICK, "--epochs", "1") == 0
    assert (out / MARKER_NAME).is_file()
    # Its own run: continued, or started again.
    assert _train(out, *QUICK, "--resume") == 0
    assert _train(out, *QUICK, "--overwrite") == 0


def _fake_d2l_load(split: str, data_dir: object) -> tuple[torch.Tensor, torch.Tensor]:
    n = 64 if split == "train" else 16
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 255, (n, 28, 28), generator=g, dtype=torch.uint8), torch.randint(
        0, 10, (n,), generator=g
    )


@pytest.mark.parametrize("extra", [(), ("--resume",)])
def test_d2l_refuses_a_folder_that_is_not_a_bnlab_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
) -> None:
    monkeypatch.setattr(cli_data, "data_dir_from_env", lambda flag: tmp_path)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", _fake_d2l_load)
    out = tmp_path / "project"
    files = _user_folder(out)
    if extra:  # without a config.json to compare: the marker alone decides
        (out / "config.json").unlink()
        del files["config.json"]
    capsys.readouterr()
    argv = ["d2l", "--out", str(out), "--epochs", "1", "--batch-size", "32", "--variants", "none"]
    assert main([*argv, *extra]) == 1
    err = _one_line_error(capsys.readouterr().err, "d2l")
    assert "is not empty and not a bnlab run folder" in err
    _unchanged(out, files)


@pytest.fixture
def toy_lab() -> Any:
    ex.register_lab(_toy.SPEC, overwrite=True)
    yield _toy.SPEC
    ex._LABS.pop(_toy.SPEC.name, None)


@pytest.mark.usefixtures("toy_lab")
def test_lab_refuses_a_folder_that_is_not_a_bnlab_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "project"
    files = {"notes.txt": "do not touch\n", "env.json": "{}\n"}
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    capsys.readouterr()
    argv = ["lab", "toy-test", "--out", str(out), "--quick", "--no-progress", "--resume"]
    assert main(argv) == 1
    err = _one_line_error(capsys.readouterr().err, "lab")
    assert "is not empty and not a bnlab run folder" in err
    _unchanged(out, files)
    # Its own folder resumes as before.
    run = tmp_path / "run"
    assert main(["lab", "toy-test", "--out", str(run), "--quick", "--no-progress"]) == 0
    assert main(["lab", "toy-test", "--out", str(run), "--quick", "--no-progress", "--resume"]) == 0


_HOLDER = """
import sys, time
from bnlab.train.run_dir import RunDir
RunDir(sys.argv[1]).claim()
print("held", flush=True)
time.sleep(120)
"""


def _hold(folder: Path) -> subprocess.Popen[str]:
    """Another process that claims ``folder`` (as a running ``bnlab train`` does) and waits."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER), str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.usefixtures("fake_data", "fast_plot")
def test_a_second_process_on_the_same_folder_exits_1_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        capsys.readouterr()
        assert _train(out, *QUICK) == 1
        err = _one_line_error(capsys.readouterr().err, "train")
        assert f"{out} is in use by another bnlab process (pid {holder.pid}, " in err
        assert "started 20" in err  # the holder's start time
        assert "wait for it to finish, or choose another folder" in err
        assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME]  # nothing written
    finally:
        holder.kill()  # a crash: the kernel drops the lock
        holder.wait()
    # The lock went with the process: the run now starts, and is not mixed with another.
    assert _train(out, *QUICK) == 0
    epochs = [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [1, 2]


@pytest.mark.parametrize("target", ["results.json", "checkpoint.pt", "."])
def test_report_refuses_to_write_over_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    run = make_train(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(run / target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bnlab report: error: -o ")
    assert err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # A page beside the folder, or an .html page inside it, is fine.
    assert main(["report", str(run), "-o", str(tmp_path / "report.html")]) == 0
    assert main(["report", str(run), "-o", str(run / "report.html")]) == 0


def test_report_refuses_a_benchmark_file_as_its_own_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = sorted(make_bench(tmp_path / "bench").glob("bench_*.json"))[0]
    before = bench.read_text()
    assert main(["report", str(bench), "-o", str(bench)]) == 1
    assert "is also an input of this report" in capsys.readouterr().err
    assert bench.read_text() == before


def _late_interrupt_script(kind: str) -> str:
    return textwrap.dedent(
        f"""
        import atexit, os, signal, sys, time
        from bnlab.cli.main import main

        def ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)

        class Late:
            def __del__(self):
                ctrl_c()

        if {kind!r} == "exit handlers":
            atexit.register(ctrl_c)  # Ctrl-C while the exit handlers run
        else:
            late = Late()  # Ctrl-C while the interpreter frees its modules
        sys.argv = ["bnlab", "report", "no-such-folder", "-o", "page.html"]
        sys.exit(main())
        """
    )


@pytest.mark.parametrize("kind", ["exit handlers", "teardown"])
def test_ctrl_c_in_the_last_moments_exits_130_with_one_line(tmp_path: Path, kind: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _late_interrupt_script(kind)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.perf_counter() - started < 120
    lines = done.stderr.splitlines()
    assert lines[0].startswith("bnlab report: error: no results could be read")
    assert "Traceback" not in done.stderr
    assert done.returncode != -signal.SIGINT  # never killed by the signal without a word
    if kind == "exit handlers":
        assert done.returncode == 130
        assert lines[1:] == ["bnlab report: interrupted"]
    else:
        # The process ends itself before the teardown: the command's own status.
        assert done.returncode == 1
        assert lines[1:] == []
