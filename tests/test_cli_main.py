"""The console script's top level: --version, --help, bad usage, the check command."""

from __future__ import annotations

import pytest

import bnlab
from bnlab.cli.main import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"bnlab {bnlab.__version__}"


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "check" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: bnlab" in capsys.readouterr().out


def test_bad_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "--steps", "many"])
    assert exc.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_check_agrees_with_torch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--steps", "2"]) == 0
    assert "4 of 4 cases agree" in capsys.readouterr().out
