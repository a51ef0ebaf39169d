"""The report reads only regular files, bounded, and one bad folder costs only itself
(issue 19): a FIFO named results.json, a curves.png that is /dev/zero (or a symlink to
it), malformed values of the wrong type; the page is written for the rest."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bnlab.report import build_report, write_report
from bnlab.report.files import image_data_uri, read_json, read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report_folders import make_all, make_train

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


def _within(seconds: float, work: Any) -> Any:
    """``work()``, failing (not hanging) when it takes longer than ``seconds``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@needs_fifo
def test_a_fifo_named_results_json_is_refused_not_waited_on(tmp_path: Path) -> None:
    run = make_train(tmp_path / "run")
    (run / "results.json").unlink()
    os.mkfifo(run / "results.json")
    with pytest.raises(ValueError, match=r"results.json: a FIFO, not a regular file"):
        _within(10, lambda: read_json(run / "results.json"))
    other = make_train(tmp_path / "other")
    report = _within(10, lambda: build_report([run, other]))
    assert [r.source for r in report.results] == [str(other)]
    assert any("a FIFO, not a regular file" in w and str(run) in w for w in report.warnings)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("how", ["symlink", "device"])
def test_a_figure_that_is_dev_zero_is_not_read(tmp_path: Path, how: str) -> None:
    run = make_train(tmp_path / "run")
    (run / "curves.png").unlink()
    if how == "symlink":
        (run / "curves.png").symlink_to("/dev/zero")
        target = run / "curves.png"
    else:
        target = Path("/dev/zero")
    with pytest.raises(ValueError, match="a character device, not a regular file"):
        _within(10, lambda: image_data_uri(target))
    if how == "symlink":
        report = _within(10, lambda: build_report([run]))
        assert len(report.results) == 1  # the run, without its figure
        assert any("curves.png: a character device" in w for w in report.warnings)


def test_files_over_their_size_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnlab.report.files import MAX_BYTES

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"pad": "x" * 200}))
    monkeypatch.setitem(MAX_BYTES, "JSON file", 100)
    with pytest.raises(ValueError, match=r"JSON file of \d+ bytes is larger than the 100 bytes"):
        read_json(path)
    lines = tmp_path / "metrics.jsonl"
    lines.write_text('{"a": 1}\n' * 50)
    monkeypatch.setitem(MAX_BYTES, "JSON-lines file", 100)
    with pytest.raises(ValueError, match="JSON-lines file of 450 bytes is larger than"):
        read_jsonl(lines)


def test_non_finite_numbers_written_as_strings_come_back_as_floats(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"final": {"test_loss": "Infinity", "x": "NaN", "y": "-Infinity"}}))
    final = read_json(path)["final"]
    assert final["test_loss"] == math.inf
    assert math.isnan(final["x"])
    assert final["y"] == -math.inf
    lines = tmp_path / "metrics.jsonl"
    lines.write_text('{"test_loss": "Infinity"}\n')
    assert read_jsonl(lines) == [{"test_loss": math.inf}]


def _malform(kind: str, run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    if kind == "final is a string":
        results["final"] = "oops"
    elif kind == "history of numbers":
        results["history"] = 5
    elif kind == "model is a list":
        results["model"] = [1, 2]
    elif kind == "config is a list":
        (run / "config.json").write_text("[1, 2]")
    elif kind == "missing keys":
        results = {}
    (run / "results.json").write_text(json.dumps(results))


@pytest.mark.parametrize(
    "kind",
    [
        "final is a string",
        "history of numbers",
        "model is a list",
        "config is a list",
        "missing keys",
    ],
)
def test_one_malformed_folder_is_a_warning_and_the_page_has_the_rest(
    tmp_path: Path, kind: str
) -> None:
    folders = make_all(tmp_path / "runs")
    good = build_report(list(folders.values()))
    bad = make_train(tmp_path / "bad")
    _malform(kind, bad)
    paths = [*folders.values(), bad]
    report = write_report(paths, tmp_path / "report.html")
    sources = {r.source for r in report.results}
    assert [r.source for r in report.results if r.source != str(bad)] == [
        r.source for r in good.results
    ]
    assert "Traceback" not in report.html
    assert (tmp_path / "report.html").is_file()
    # The bad folder is either shown with what could be read, or skipped with a warning.
    assert str(bad) in sources or any(str(bad) in w for w in report.warnings)
