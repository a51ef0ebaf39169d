"""The lab runner: results folder, resume by units, config overrides, statistics."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import _toy
import pytest

from bnlab.lab import experiment as ex


@pytest.fixture
def toy():
    ex.register_lab(_toy.SPEC, overwrite=True)
    _toy.CALLS.clear()
    yield _toy.SPEC
    ex._LABS.pop(_toy.SPEC.name, None)


def test_run_writes_the_results_folder(tmp_path: Path, toy: ex.LabSpec) -> None:
    out = tmp_path / "run"
    results = ex.run_lab(
        toy,
        _toy.ToyConfig.quick(),
        out,
        command="bnlab lab toy-test",
        quick=True,
        environment={"torch": "x"},
    )
    assert sorted(p.name for p in out.iterdir()) == [
        ".bnlab-run",  # the run folder's marker and lock (bnlab.train.run_dir)
        "config.json",
        "environment.json",
        "results.json",
        "units",
    ]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["experiment"] == "toy-test"
    assert on_disk["quick"] is True
    assert on_disk["config"]["size"] == 50
    assert on_disk["verdicts"] == [
        {"claim": "a exceeds b", "holds": True, "measured": on_disk["verdicts"][0]["measured"]}
    ]
    assert on_disk["tables"][0]["columns"] == ["group", "mean"]
    assert _toy.CALLS == ["seed0", "seed1", "seed2"]


def test_resume_reuses_finished_units_and_ends_equal(tmp_path: Path, toy: ex.LabSpec) -> None:
    config = _toy.ToyConfig.quick()
    whole = ex.run_lab(toy, config, tmp_path / "whole")
    out = tmp_path / "cut"
    ex.run_lab(toy, config, out)
    (out / "units" / "seed2.json").unlink()  # as if killed before the last unit
    (out / "results.json").unlink()
    _toy.CALLS.clear()
    resumed = ex.run_lab(toy, config, out, resume=True)
    assert _toy.CALLS == ["seed2"]
    assert resumed["units_reused"] == 2
    assert resumed["raw"] == whole["raw"]


def test_non_empty_folder_needs_resume(tmp_path: Path, toy: ex.LabSpec) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"is not empty; pass --resume to continue the run there"):
        ex.run_lab(toy, _toy.ToyConfig.quick(), tmp_path)
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_resume_with_another_config_is_refused(tmp_path: Path, toy: ex.LabSpec) -> None:
    ex.run_lab(toy, _toy.ToyConfig.quick(), tmp_path)
    with pytest.raises(ValueError, match=r"config.json holds another experiment or config"):
        ex.run_lab(toy, _toy.ToyConfig(), tmp_path, resume=True)


def test_corrupt_unit_is_named(tmp_path: Path, toy: ex.LabSpec) -> None:
    ex.run_lab(toy, _toy.ToyConfig.quick(), tmp_path)
    (tmp_path / "units" / "seed1.json").write_text("{torn")
    with pytest.raises(
        RuntimeError, match=r"seed1.json is unreadable .*; delete it to recompute that unit"
    ):
        ex.run_lab(toy, _toy.ToyConfig.quick(), tmp_path, resume=True)


def test_run_checks_config_type_and_data(tmp_path: Path, toy: ex.LabSpec) -> None:
    with pytest.raises(ValueError, match="config must be a ToyConfig, got dict"):
        ex.run_lab(toy, {}, tmp_path)
    needs = dataclasses.replace(toy, name="needs-data", needs_data=True)
    with pytest.raises(ValueError, match=r"lab needs-data needs Fashion-MNIST: pass data"):
        ex.run_lab(needs, _toy.ToyConfig.quick(), tmp_path)


def test_missing_figure_is_an_error(tmp_path: Path, toy: ex.LabSpec) -> None:
    def run(config, ctx):
        return ex.LabOutcome([], [], figures=[ex.Figure("nope.png", "missing")])

    spec = dataclasses.replace(toy, run=run)
    with pytest.raises(RuntimeError, match=r"figure nope\.png was not written"):
        ex.run_lab(spec, _toy.ToyConfig.quick(), tmp_path)


def test_unit_key_must_be_a_file_name(tmp_path: Path) -> None:
    ctx = ex.LabContext(tmp_path)
    with pytest.raises(ValueError, match=r"unit key must be a plain file name, got '\.\./x'"):
        ctx.unit("../x", dict)


def test_config_overrides(toy: ex.LabSpec) -> None:
    config = ex.config_from(
        toy,
        quick=True,
        overrides={"seeds": "5", "shift": "0.25", "label": "b", "flags": "3, 4", "scale": "none"},
    )
    assert config == _toy.ToyConfig(seeds=5, size=50, shift=0.25, label="b", flags=(3, 4))
    assert ex.config_from(toy, quick=False, overrides={"scale": "2"}).scale == 2.0
    with pytest.raises(ValueError, match=r"unknown setting 'sedes'; settings: seeds, size, shift"):
        ex.config_from(toy, quick=True, overrides={"sedes": "2"})
    with pytest.raises(ValueError, match=r"--set size=big: expected int"):
        ex.config_from(toy, quick=True, overrides={"size": "big"})


def test_registry(toy: ex.LabSpec) -> None:
    assert "toy-test" in ex.available_labs()
    assert ex.get_lab("toy-test") is toy
    with pytest.raises(ValueError, match="unknown lab experiment 'toyy'; choose one of: "):
        ex.get_lab("toyy")
    with pytest.raises(ValueError, match="already registered"):
        ex.register_lab(toy)
    with pytest.raises(ValueError, match="config_type must be a dataclass with a quick"):
        ex.register_lab(dataclasses.replace(toy, name="bad", config_type=dict))


def test_describe() -> None:
    d = ex.describe([1.0, 2.0, 3.0, math.nan])
    assert d == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3, "n_nonfinite": 1}
    assert ex.describe([5.0])["std"] is None
    assert ex.describe([math.inf])["mean"] is None


def test_compare() -> None:
    assert ex.compare([1.0, 1.1, 0.9], [0.0, 0.1, -0.1]).direction == "greater"
    assert ex.compare([0.0, 0.1, -0.1], [1.0, 1.1, 0.9]).direction == "less"
    noisy = ex.compare([1.0, -1.0, 0.5], [0.0, 0.2, -0.3])
    assert noisy.direction == "unclear"
    assert noisy.se is not None
    # One value a side: no standard error, only min_effect decides.
    assert ex.compare([1.0], [0.0], min_effect=0.5).direction == "greater"
    assert ex.compare([1.0], [0.0]).direction == "unclear"
    assert ex.compare([1.0], [0.0]).text() == "difference +1.000 (standard error n/a)"
    with pytest.raises(ValueError, match="each group needs a finite value"):
        ex.compare([math.nan], [1.0])


def test_table_rows_match_columns() -> None:
    with pytest.raises(ValueError, match=r"table 't': a row has 1 values for 2 columns: \[1\]"):
        ex.Table("t", ["a", "b"], [[1]])


def test_a_reused_unit_advances_the_progress_bar(tmp_path: Path) -> None:
    class Bar:
        def __init__(self) -> None:
            self.done = 0

        def start(self, total: int, description: str) -> None:
            pass

        def advance(self, steps: int = 1) -> None:
            self.done += steps

    first = ex.LabContext(tmp_path, progress=Bar())
    first.unit("a", lambda: first.progress.advance(7) or 1, progress_steps=7)
    assert first.progress.done == 7
    again = ex.LabContext(tmp_path, progress=Bar())
    assert again.unit("a", lambda: 2, progress_steps=7) == 1
    assert again.progress.done == 7


def test_mean_std_text() -> None:
    assert ex.mean_std_text([1.0, 2.0, 3.0]) == "2 ± 1"
    assert ex.mean_std_text([0.123456]) == "0.1235"
    assert ex.mean_std_text([math.nan]) == "n/a"
    assert ex.mean_std_text([], missing="-") == "-"
