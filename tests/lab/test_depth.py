"""``depth``: a tiny run end to end (results, figures, resume), the verdict rules, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.cli.data as cli_data
from bnlab.cli.main import main
from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import depth
from bnlab.lab.claims import available_claims
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.plots.depth import moving_average, plot_depth_curves


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded machine, more only spin (and tests add CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fast_plots(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stub the two figures (most of a tiny run's time); one test draws the real ones."""
    drawn: list[Path] = []

    def stub(data: Any, path: Path, **kwargs: Any) -> Path:
        drawn.append(Path(path))
        Path(path).write_bytes(b"\x89PNG stub")
        return Path(path)

    monkeypatch.setattr(depth, "plot_depth_curves", stub)
    monkeypatch.setattr(depth, "plot_depth_accuracy", stub)
    return drawn


TINY = dataclasses.replace(
    depth.DepthConfig.quick(),
    seeds=1,
    steps=4,
    batch_size=8,
    test_size=32,
    smooth=2,
    final_window=2,
)


def _without_times(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "wall_time_s"} for c in cells]


def test_quick_run_writes_results_figures_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_data
) -> None:
    spec = get_lab("depth")
    out = tmp_path / "run"
    results = run_lab(spec, TINY, out, data=fake_data(test=32), quick=True)
    cells = results["raw"]["cells"]
    assert len(cells) == 2 * 2 * len(TINY.depths) * TINY.seeds
    assert {(c["arch"], c["variant"]) for c in cells} == {
        (a, v) for a in depth.ARCHS for v in depth.VARIANTS
    }
    for c in cells:
        assert isinstance(c["diverged"], bool)
        assert c["steps_done"] == TINY.steps
        assert 0.0 <= c["test_acc"] <= 1.0
    # One loss curve per seed and (network, norm, depth), one value per step.
    curves = results["raw"]["curves"]
    assert len(curves) == 2 * 2 * len(TINY.depths)
    assert all(len(runs) == TINY.seeds for runs in curves.values())
    assert all(len(r) == TINY.steps for runs in curves.values() for r in runs)
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "depth"
    assert [f["file"] for f in saved["figures"]] == ["depth_curves.png", "depth_accuracy.png"]
    for f in saved["figures"]:
        assert (out / f["file"]).read_bytes()[:4] == b"\x89PNG"
    table = saved["tables"][0]
    assert len(table["rows"]) == 2 * 2 * len(TINY.depths)
    assert table["columns"][-1] == "status"
    # Each verdict is the one its rule computes from the saved numbers.
    _, plain_verdict = depth.plain_rule(saved)
    _, skip_verdict = depth.skip_rule(saved)
    shown = [v["measured"].split(":")[0] for v in saved["verdicts"]]
    assert shown == [plain_verdict, skip_verdict]
    expected = [
        {"supported": True, "not supported": False}.get(v) for v in (plain_verdict, skip_verdict)
    ]
    assert [v["holds"] for v in saved["verdicts"]] == expected

    # Delete one finished unit: the resumed run recomputes it to the same numbers.
    (out / "units" / "plain-none-d14-seed0.json").unlink()
    monkeypatch.setattr(depth, "plot_depth_curves", lambda *a, **k: None)
    monkeypatch.setattr(depth, "plot_depth_accuracy", lambda *a, **k: None)
    again = run_lab(spec, TINY, out, data=fake_data(test=32), resume=True, quick=True)
    assert again["units_reused"] == len(cells) - 1
    # Exact: the other units are read back from their JSON, and the deleted one is the
    # same seeded computation on the same machine, one thread (the one_thread fixture).
    assert _without_times(again["raw"]["cells"]) == _without_times(json.loads(json.dumps(cells)))
    assert again["raw"]["curves"] == json.loads(json.dumps(curves))


def _cell(arch: str, variant: str, d: int, seed: int, loss: float | None, acc: float) -> dict:
    return {
        "arch": arch,
        "variant": variant,
        "depth": d,
        "seed": seed,
        "final_loss": loss,
        "test_acc": acc,
        "diverged": loss is None,
    }


def _results(table: dict[tuple[str, str, int], list[tuple[float | None, float]]]) -> dict:
    cells = [
        _cell(arch, variant, d, seed, loss, acc)
        for (arch, variant, d), runs in table.items()
        for seed, (loss, acc) in enumerate(runs)
    ]
    depths = sorted({d for _, _, d in table})
    return {
        "raw": {
            "cells": cells,
            "depths": depths,
            "stuck_loss": 2.0,
            "min_effect": 0.05,
        }
    }


TRAINS = [(0.6, 0.78), (0.62, 0.77)]
STUCK = [(2.30, 0.10), (None, 0.10)]


def _grid(**overrides: list[tuple[float | None, float]]) -> dict:
    base = {
        ("plain", "none", 8): TRAINS,
        ("plain", "bn", 8): TRAINS,
        ("resnet", "none", 8): TRAINS,
        ("resnet", "bn", 8): TRAINS,
        ("plain", "none", 56): STUCK,
        ("plain", "bn", 56): [(0.9, 0.65), (0.95, 0.66)],
        ("resnet", "none", 56): STUCK,
        ("resnet", "bn", 56): [(0.6, 0.78), (0.61, 0.79)],
    }
    for key, runs in overrides.items():
        arch, variant, d = key.split("_")
        base[(arch, variant, int(d))] = runs
    return _results(base)


def test_plain_rule_supported_not_supported_mixed() -> None:
    evidence, verdict = depth.plain_rule(_grid())
    assert verdict == "supported"
    assert evidence["plain_none_status"] == {"8": "trains", "56": "stuck"}
    assert evidence["first_stuck_depth_none"] == 56
    assert evidence["final_loss_none_at_largest"] == pytest.approx(2.30)  # diverged seed left out
    # Without BN the deep plain net trains: not supported.
    assert depth.plain_rule(_grid(plain_none_56=TRAINS))[1] == "not supported"
    # With BN it is stuck too: the failure is not BN's to fix, not supported.
    assert depth.plain_rule(_grid(plain_bn_56=STUCK))[1] == "not supported"
    # One seed stuck, one trains: mixed.
    assert depth.plain_rule(_grid(plain_none_56=[(2.3, 0.1), (0.7, 0.7)]))[1] == "mixed"
    # Stuck already at the smallest depth: depth is not what stops it, mixed.
    assert depth.plain_rule(_grid(plain_none_8=STUCK))[1] == "mixed"
    # The null: the same numbers everywhere (every network trains at every depth).
    same = {
        f"{a}_{v}_{d}": TRAINS for a in ("plain", "resnet") for v in ("none", "bn") for d in (8, 56)
    }
    evidence, verdict = depth.plain_rule(_grid(**same))
    assert verdict == "not supported"
    assert evidence["first_stuck_depth_none"] is None


def test_a_stuck_run_is_named_by_its_training_loss_or_divergence() -> None:
    ok = {"final_loss": 1.0, "test_acc": 0.15, "diverged": False}
    assert not depth.status_of(ok, 2.0)  # a low eval accuracy alone does not count
    assert depth.status_of({**ok, "final_loss": 2.2}, 2.0)
    assert depth.status_of({**ok, "diverged": True}, 2.0)
    assert depth.status_of({**ok, "final_loss": None}, 2.0)


def test_skip_rule_supported_not_supported_mixed() -> None:
    evidence, verdict = depth.skip_rule(_grid())
    assert verdict == "supported"
    top = evidence["by_depth"]["56"]
    assert top["diff"] == pytest.approx(0.925 - 0.605)  # plain loss - ResNet loss
    assert top["direction"] == "greater"
    assert top["resnet_acc"] == pytest.approx(0.785)
    assert evidence["by_depth"]["8"]["direction"] == "unclear"
    # The plain net reaches the lower loss: not supported.
    worse = [(1.2, 0.6), (1.25, 0.6)]
    assert depth.skip_rule(_grid(resnet_bn_56=worse))[1] == "not supported"
    # No difference beyond min_effect (0.05): not supported.
    same = [(0.92, 0.7), (0.94, 0.7)]
    assert depth.skip_rule(_grid(resnet_bn_56=same))[1] == "not supported"
    # A large difference the seeds do not separate: mixed.
    noisy = [(0.2, 0.8), (1.2, 0.6)]
    assert depth.skip_rule(_grid(resnet_bn_56=noisy))[1] == "mixed"
    # Every ResNet seed diverged: no finite loss on that side, mixed.
    assert depth.skip_rule(_grid(resnet_bn_56=[(None, 0.1), (None, 0.1)]))[1] == "mixed"
    # The null: the plain network's numbers on the ResNet too, a difference of 0.
    plain_bn = [(0.9, 0.65), (0.95, 0.66)]
    evidence, verdict = depth.skip_rule(_grid(resnet_bn_56=plain_bn))
    assert verdict == "not supported"
    assert evidence["by_depth"]["56"]["diff"] == 0.0  # exact: the same numbers, same means


def test_claims_are_registered_with_their_seed_files() -> None:
    claims = {c.key: c for c in available_claims() if c.experiment == "depth"}
    assert set(claims) == {
        "no-bn-plain-stops-training-with-depth",
        "skip-connections-matter-at-depth",
    }
    assert claims["no-bn-plain-stops-training-with-depth"].source == "004_deb69101c4c8736e.txt"
    assert claims["skip-connections-matter-at-depth"].source == "000_3d8114077ba70cad.txt"
    assert claims["skip-connections-matter-at-depth"].rule(_grid())[1] == "supported"


def test_full_config_fits_the_stated_budget() -> None:
    full, quick = depth.DepthConfig(), depth.DepthConfig.quick()
    # Exact: the config's literal defaults.
    assert full.depths == (8, 20, 44)
    assert full.seeds == 2
    assert full.steps * full.batch_size == 3840
    assert full.lr == 0.05
    assert full.momentum == 0.9
    assert quick.steps * quick.batch_size * len(quick.depths) < full.steps * full.batch_size


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"depths": (8, 21)},
            r"depth must be 6n \+ 2 \(8, 14, 20, 26, 32, 44, 56, \.\.\.\), got 21",
        ),
        ({"depths": ()}, r"depths must name at least one depth, got \(\)"),
        (
            {"depths": (20, 8)},
            r"depths must be increasing without repeats, got \(20, 8\); use \(8, 20\)",
        ),
        ({"norm": "none"}, r"norm is the BN variant's norm and cannot be 'none'"),
        ({"steps": 0}, r"depth: steps must be >= 1, got 0"),
        ({"final_window": 500}, r"final_window must be in 1\.\.steps \(60\), got 500"),
    ],
)
def test_config_errors_show_the_value_and_fix(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(depth.DepthConfig(), **changes)


def test_too_little_training_data_is_named(tmp_path: Path, fake_data) -> None:
    config = dataclasses.replace(TINY, steps=40)
    with pytest.raises(
        ValueError,
        match=r"steps \* batch_size = 320 training images needed, the data holds 96; "
        "lower steps or batch_size",
    ):
        run_lab(get_lab("depth"), config, tmp_path / "run", data=fake_data(test=32), quick=True)


def test_moving_average_skips_missing_values() -> None:
    got = moving_average([1.0, 3.0, None, 5.0], 2)
    assert got == [1.0, 2.0, 3.0, 5.0]  # exact: small integers and their halves are exact
    assert math.isnan(moving_average([None], 3)[0])
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        moving_average([1.0], 0)
    with pytest.raises(ValueError, match="no panels to draw"):
        plot_depth_curves({}, Path("unused.png"))


def test_cli_quick_run_writes_results_and_figures(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fast_plots: list[Path],
) -> None:
    asked: list[Any] = []

    def fake_dir(flag: Any, **kwargs: Any) -> Path:
        asked.append(flag)
        return tmp_path / "data"

    def fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = fake_images_labels(
            96 if split == "train" else 32, seed=0 if split == "train" else 1
        )
        return images, labels

    monkeypatch.setattr(cli_data, "data_dir_from_env", fake_dir)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", fake_load)
    out = tmp_path / "run"
    argv = [
        "lab",
        "depth",
        "--quick",
        "--data-dir",
        "somewhere",
        "--out",
        str(out),
        "--set",
        "steps=4",
        "--set",
        "batch_size=8",
        "--set",
        "final_window=2",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert asked == ["somewhere"]
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == "depth"
    assert results["quick"] is True
    assert results["config"]["depths"] == [8, 14]
    assert results["config"]["steps"] == 4
    assert [p.name for p in fast_plots] == ["depth_curves.png", "depth_accuracy.png"]
    assert {f["file"] for f in results["figures"]} <= {p.name for p in out.iterdir()}
    printed = capsys.readouterr().out
    assert "Without BN, the plain network stops training as depth grows" in printed
    assert "(results.json and 2 figures)" in printed


def test_a_nan_loss_is_recorded_as_diverged_not_raised(
    tmp_path: Path, fast_plots: list[Path], fake_data
) -> None:
    config = dataclasses.replace(TINY, depths=(8,), steps=3, final_window=1, lr=1e30)
    results = run_lab(
        get_lab("depth"), config, tmp_path / "run", data=fake_data(test=32), quick=True
    )
    cells = results["raw"]["cells"]
    assert all(c["diverged"] for c in cells)
    stopped = [c for c in cells if c["nonfinite"]]
    assert stopped  # at lr 1e30 some run meets a NaN/inf loss
    for c in stopped:
        assert c["final_loss"] is None
        assert c["steps_done"] < config.steps
    rows = results["tables"][0]["rows"]
    assert {r[-1] for r in rows} == {"stuck"}
    json.dumps(results, allow_nan=False)  # JSON-ready: no NaN left in it
