"""``bnlab lab claims``: the table from results folders, claims.json, bad folders named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnlab.cli.main import main
from bnlab.lab import placement
from bnlab.lab.claims import spec_record


def write_run(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def placement_run(folder: Path) -> Path:
    """A second-edition placement run: BN before the activation better by a point."""
    spread = [-0.02, 0.01, 0.0, 0.02, -0.01]
    per_seed = {
        a: {
            "before": {"test_acc": [89.0 + d for d in spread]},
            "after": {"test_acc": [88.0] * 5},
        }
        for a in ("sigmoid", "relu")
    }
    specs = [spec_record(s) for s in placement.specs(placement.PlacementConfig())]
    raw = {"per_seed": per_seed, "specs": specs}
    return write_run(folder, {"experiment": "placement", "quick": True, "raw": raw})


def test_claims_table_written_and_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps long paths at the terminal width
    good = placement_run(tmp_path / "placement")
    bad = tmp_path / "not-a-run"
    bad.mkdir()
    out = tmp_path / "claims"
    assert main(["lab", "claims", str(good), str(bad), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed
    assert "results.json: no results.json" in printed.replace("\n", "")
    assert "not-a-run" in printed.replace("\n", "")
    assert "supported" in printed
    assert "not measured" in printed
    table = json.loads((out / "claims.json").read_text())
    rows = {row["key"]: row for row in table}
    row = rows["bn-before-activation"]
    assert set(row) >= {"claim", "source", "experiment", "evidence", "rule", "verdict"}
    assert row["verdict"] == "supported"
    assert row["source"] == "000_3d8114077ba70cad.txt"
    assert row["evidence"]["quick"] is True
    assert rows["bn-regularizes"]["verdict"] == "not measured"
    assert {r["verdict"] for r in table} <= {"supported", "not supported", "mixed", "not measured"}


def test_claims_markdown_written_beside(tmp_path: Path) -> None:
    good = placement_run(tmp_path / "placement")
    out, md = tmp_path / "claims", tmp_path / "docs" / "claims.md"
    md.parent.mkdir()
    assert main(["lab", "claims", str(good), "--out", str(out), "--markdown", str(md)]) == 0
    table = json.loads((out / "claims.json").read_text())
    lines = md.read_text().splitlines()
    assert len(lines) == 2 + len(table)
    row = next(line for line in lines if "`placement`" in line)
    assert "**supported**" in row  # the verdict
    assert "[" in row  # and its interval


def test_no_readable_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "claims", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    printed = capsys.readouterr().out
    assert "no 'bnlab lab' results among the folders given" in printed
    assert not (tmp_path / "o" / "claims.json").exists()


def test_claims_needs_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "claims", "somewhere"])
    assert exit_.value.code == 2
    assert "--out" in capsys.readouterr().err
