"""``bnlab lab``: listing, per-experiment help, a quick run end to end, usage errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bnlab.cli.main import main
from bnlab.lab import experiment as ex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
import _toy


@pytest.fixture(autouse=True)
def toy():
    ex.register_lab(_toy.SPEC, overwrite=True)
    yield _toy.SPEC
    ex._LABS.pop(_toy.SPEC.name, None)


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "--list"]) == 0
    assert "toy-test" in capsys.readouterr().out


def test_experiment_help_shows_claim_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "toy-test", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "a exceeds b by the shift" in out
    assert "size = 1000   (quick: 50)" in out
    assert "full run: instant" in out


def test_quick_run_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [
        "lab",
        "toy-test",
        "--out",
        str(out),
        "--quick",
        "--seeds",
        "2",
        "--set",
        "shift=1.5",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "a exceeds b: holds" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seeds"] == 2
    assert results["config"]["shift"] == 1.5
    assert (
        results["command"]
        == f"bnlab lab toy-test --out {out} --quick --set shift=1.5 --set seeds=2"
    )
    assert (out / "environment.json").exists()
    assert main(argv) == 1
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "2 finished units reused" in capsys.readouterr().out


def test_bad_setting_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "toy-test", "--out", str(tmp_path), "--set", "nope=1"])
    assert exit_.value.code == 2
    assert "unknown setting 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lab", "toy-test", "--out", str(tmp_path), "--set", "novalue"])
    assert "expected KEY=VALUE, got 'novalue'" in capsys.readouterr().err
