"""``bnlab report``: writes the page and prints its path, warns about skipped folders,
exit 1 when nothing could be read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bnlab.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from _report_folders import make_all


def test_writes_the_page_and_prints_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = make_all(tmp_path / "runs")
    (tmp_path / "junk").mkdir()
    out = tmp_path / "report.html"
    code = main(["report", *map(str, folders.values()), str(tmp_path / "junk"), "-o", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out} (6 results)\n"
    assert captured.err == (
        f"bnlab report: warning: skipped {tmp_path / 'junk'}: not a bnlab results folder "
        "(expected the files of bnlab train, d2l, lab, lab claims or a benchmark's bench_*.json)\n"
    )
    page = out.read_text(encoding="utf-8")
    assert "<h1>bnlab report</h1>" in page
    assert "generated 20" in page


def test_title_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = make_all(tmp_path / "runs")
    out = tmp_path / "r.html"
    assert main(["report", str(folders["lab"]), "-o", str(out), "--title", "<b>BN</b>"]) == 0
    assert "<h1>&lt;b&gt;BN&lt;/b&gt;</h1>" in out.read_text(encoding="utf-8")


def test_nothing_readable_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "none"), "-o", str(out)]) == 1
    assert capsys.readouterr().err == (
        "bnlab report: error: no results could be read, so no report was written "
        f"(skipped {tmp_path / 'none'}: no such file or folder)\n"
    )
    assert not out.exists()


def test_usage_needs_out_and_a_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "runs/x"])
    assert exit_.value.code == 2
    assert "-o/--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["report", "-o", "x.html"])
    assert exit_.value.code == 2
    assert "RUN_DIR" in capsys.readouterr().err
