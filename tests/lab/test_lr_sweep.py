"""``lr-sweep`` (and the sweep it shares with ``init``, ``bnlab.lab.kit.sweeps``): a tiny
run end to end ("no verdict at this budget", figure, resume), the trainability summary
and its censoring, the declared rule on synthetic per-seed numbers whose verdict is
known (clear effect, the null, noise, too few seeds, a censored seed), config errors;
and the kit pieces the first edition tested here (``train_variant``, ``take``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from bnlab.lab import lr_sweep, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.kit import sweeps, take, train_variant
from bnlab.lab.runner import Bench, Cell, GridRun
from bnlab.models import create
from bnlab.train import TrainConfig


def tiny_config(**kw) -> lr_sweep.LrSweepConfig:
    tiny = {
        "lrs": (0.1, 1e30),
        "activations": ("relu",),
        "hidden": (16,),
        "steps": 6,
        "batch": 16,
        "window": 3,
        "train_size": 64,
        "test_size": 64,
        "target_acc": 5.0,
    }
    return dataclasses.replace(lr_sweep.LrSweepConfig.quick(), **(tiny | kw))  # fmt: skip


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("lr-sweep")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(), quick=True)
    assert (out / "lr_sweep.png").is_file()
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 2 * config.seeds  # lr x arm x seed
    # lr 1e30 diverges: the run stops early and is recorded as such
    blown = json.loads((out / "units" / "relu-lr1e+30-none-seed100.json").read_text())["value"]
    assert blown["diverged"]
    assert blown["steps_done"] < config.steps
    (verdict,) = results["verdicts"]
    assert verdict["holds"] is None
    assert verdict["measured"].startswith("no verdict at this budget: ")
    assert verdict["measured"].startswith(lr_sweep.CLAIMS[0].rule(results)[1] + ":")
    per_seed = results["raw"]["per_seed"]["relu"]
    assert per_seed["none"]["max_log10"] == [-1.0, -1.0]  # trains at 0.1 only
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
    assert again["units_reused"] == len(units)
    assert again["raw"]["per_seed"] == json.loads(json.dumps(results["raw"]["per_seed"]))


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"lrs must be at least two increasing positive"):
        lr_sweep.LrSweepConfig(lrs=(1.0, 0.1))
    with pytest.raises(ValueError, match=r"activations must name some of relu, sigmoid, tanh"):
        lr_sweep.LrSweepConfig(activations=("gelu",))
    with pytest.raises(ValueError, match=r"LrSweepConfig: steps must be > 0, got 0"):
        lr_sweep.LrSweepConfig(steps=0)


def test_full_config_is_the_declared_design() -> None:
    full, quick = lr_sweep.LrSweepConfig(), lr_sweep.LrSweepConfig.quick()
    assert full.seeds == full.min_seeds == 5
    assert full.train_size is None
    assert full.test_size is None
    assert full.lrs[0] == 0.01
    assert full.lrs[-1] == 100.0
    steps = [math.log10(b / a) for a, b in zip(full.lrs, full.lrs[1:], strict=False)]
    assert all(abs(s - 0.5) < 0.03 for s in steps)  # half decades (the metric's grid)
    assert full.margin == 0.5  # one grid step: the metric's resolution
    assert full.first_seed == 100  # fresh seeds for the second run
    assert (full.drop, full.target_acc) == (3.0, 50.0)
    assert quick.seeds < quick.min_seeds
    assert quick.steps * len(quick.lrs) < full.steps * len(full.lrs)


def _run(accs: dict[tuple[str, int], list[float | None]], grid=(0.1, 1.0, 10.0)) -> GridRun:
    """A GridRun of one activation: ``accs[(arm, seed)]`` per grid value (None: diverged)."""
    cells, results = [], []
    for (arm, seed), values in accs.items():
        for lr, acc in zip(grid, values, strict=True):
            cells.append(Cell(("relu", lr), arm, seed))
            results.append({"diverged": acc is None, "test_acc": acc})
    return GridRun(cells, results)


def test_trainability_and_its_censoring() -> None:
    config = dataclasses.replace(tiny_config(), target_acc=50.0, drop=3.0)
    run = _run(
        {
            ("none", 0): [80.0, 76.0, None],  # 76 is more than 3 below the best 80: 0.1 only
            ("none", 1): [10.0, 10.0, 10.0],  # nowhere (below the 50 % floor)
            ("bn", 0): [84.0, 85.0, 82.0],  # within 3 of 85 everywhere: censored at the top
            ("bn", 1): [30.0, 85.0, 40.0],  # at 1 only
        }
    )
    got = sweeps.trainability(config, run, (0.1, 1.0, 10.0))["relu"]
    assert got["none"]["max_log10"] == [-1.0, -2.0]
    assert got["bn"]["max_log10"] == [1.0, 0.0]
    assert got["none"]["threshold"] == [77.0, 50.0]
    assert got["bn"]["width_decades"] == [3.0, 1.0]
    assert got["none"]["width_decades"] == [1.0, 0.0]
    assert got["bn"]["n_train"] == [3, 1]
    assert got["bn"]["censored_high"] == [True, False]
    assert got["none"]["censored_low"] == [False, True]
    assert got["bn"]["width_censored"] == [True, False]
    assert got["none"]["best_acc"] == [80.0, 10.0]
    assert got["bn"]["trains"] == [[0.1, 1.0, 10.0], [1.0]]
    gap = _run({("bn", 0): [84.0, 20.0, 85.0]})  # trains at 0.1 and 10, not between
    assert sweeps.trainability(config, gap, (0.1, 1.0, 10.0))["relu"]["bn"]["contiguous"] == [False]


def results_of(bn: list[float], none: list[float], **flags: list[bool]) -> dict:
    """lr-sweep results with per-seed ``max_log10`` for BN and no BN (one activation)."""
    config = dataclasses.replace(lr_sweep.LrSweepConfig(), activations=("relu",))
    n = len(bn)
    arms = {
        arm: {
            "max_log10": values,
            "censored_high": flags.get(f"{arm}_high", [False] * n),
            "censored_low": flags.get(f"{arm}_low", [False] * n),
        }
        for arm, values in (("bn", bn), ("none", none))
    }
    specs = [spec_record(s) for s in lr_sweep.specs(config)]
    return {"raw": {"per_seed": {"relu": arms}, "specs": specs}}


RULE = lr_sweep.CLAIMS[0].rule


@pytest.mark.parametrize(
    ("bn", "none", "verdict"),
    [
        ([1.0, 1.0, 1.0, 0.5, 1.0], [-1.0, -1.0, -0.5, -1.0, -1.0], stats.SUPPORTED),
        ([0.0] * 5, [0.0] * 5, stats.REFUTED),  # the null: the same largest lr
        ([-1.0, -1.0, -1.0, -0.5, -1.0], [0.0] * 5, stats.REFUTED),  # lower with BN
        ([1.0, -1.0, 0.5, -0.5, 0.0], [0.0, 0.5, -0.5, 0.5, 0.0], stats.INCONCLUSIVE),
        ([1.0] * 3, [-1.0] * 3, stats.NO_VERDICT),  # under min_seeds
    ],
)
def test_rule_on_synthetic_numbers(bn: list[float], none: list[float], verdict: str) -> None:
    evidence, got = RULE(results_of(bn, none))
    assert got == verdict
    assert evidence["metric"] == "max_log10"
    assert "censoring" not in evidence


def test_censored_seeds_withdraw_a_verdict_they_could_flip() -> None:
    clear = ([1.0, 1.0, 1.0, 0.5, 1.0], [-1.0, -1.0, -0.5, -1.0, -1.0])
    top = [False, False, True, False, False]
    # no BN trains at the top of the grid: its largest lr may be higher -> not supported
    evidence, verdict = RULE(results_of(*clear, none_high=top))
    assert verdict == stats.INCONCLUSIVE
    assert "relu/seed#2" in evidence["censoring"]
    # BN censored at the top cannot undo a 'supported' (its true value is higher still)
    assert RULE(results_of(*clear, bn_high=top))[1] == stats.SUPPORTED
    # the null with BN at the top of the grid: not refuted
    assert RULE(results_of([2.0] * 5, [2.0] * 5, bn_high=[True] * 5))[1] == stats.INCONCLUSIVE


def test_a_sweep_cell_stops_a_diverged_run(fake_data) -> None:
    config = tiny_config()
    bench = Bench(lr_sweep.prepare(config, fake_data()), torch.device("cpu"))
    got = lr_sweep.measure(config, Cell(("relu", 1e30), "none", 0), bench)
    assert got["diverged"]
    assert got["test_acc"] is None
    ok = lr_sweep.measure(config, Cell(("relu", 0.1), "bn", 0), bench)
    assert not ok["diverged"]
    assert 0.0 <= ok["test_acc"] <= 100.0
    assert ok["steps_done"] == config.steps


# --- the kit pieces the first edition's lr-sweep tests covered ---------------------------


def test_train_variant_records_a_nan_loss_as_diverged(fake_data) -> None:
    data = fake_data()
    got = train_variant(
        create("mlp", norm="none"), data, TrainConfig(lr=1e30, epochs=2, batch_size=32)
    )
    assert got["diverged"]
    assert got["nonfinite"]
    assert "loss" in got["error"]
    json.dumps(got)  # JSON-ready: no NaN left in it


def test_take_is_a_fixed_subset_and_names_bad_splits(fake_data) -> None:
    data = fake_data()
    a, _ = take(data, "train", 10, seed=3)
    b, _ = take(data, "train", 10, seed=3)
    assert torch.equal(a, b)
    assert a.shape[0] == 10
    assert take(data, "test", None)[0].shape[0] == 64
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        take(data, "valid", 3)


def test_differences_are_printed_with_the_grid_resolution() -> None:
    # every seed +1 decade: a zero-width t interval, printed with the grid's ±0.5
    results = results_of([1.0] * 5, [0.0] * 5)
    evidence, verdict = RULE(results)
    assert verdict == stats.SUPPORTED
    assert (evidence["settings"][0]["ci_low"], evidence["settings"][0]["ci_high"]) == (1.0, 1.0)
    table = sweeps.resolution_table([evidence], lr_sweep.RESOLUTION, "decades")
    assert table.rows == [
        ["bn-allows-higher-lr", "relu", "+1.00", "[+1.00, +1.00]", "yes", "+1.00 ± 0.5 decades"]
    ]
    assert "resolution ±0.5 decades" in table.title
    assert lr_sweep.CLAIMS[0].measured(evidence).endswith("resolved to ±0.5 decades")
