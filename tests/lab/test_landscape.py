"""``bnlab lab landscape`` (second edition): a tiny run end to end ("no verdict at this
budget", tuning, figures, resume), the declared rules on synthetic per-seed numbers whose
answer is known (clear effect, equivalence, noise, too few seeds, a run at chance), the
matched-loss readout, and the landscape measures of a linear least-squares model against
the algebra."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _shared import one_thread  # noqa: F401 (fixture)
from torch import nn

from bnlab.lab import kit, landscape, stats
from bnlab.lab.claims import FROM_LITERATURE, available_claims, spec_record
from bnlab.lab.experiment import run_lab
from bnlab.lab.kit import probed
from bnlab.lab.runner import Bench, Cell, GridRun
from bnlab.models import create
from bnlab.train import init_weights

TINY = dataclasses.replace(
    landscape.LandscapeConfig.quick(),
    seeds=2,
    lrs=(0.1, 0.3),
    batch=16,
    steps=8,
    window=3,
    loss_level=2.5,
    probe_every=4,
    probe_batches=2,
    level_probes=2,
    level_gap=2,
    step_sizes=(0.05, 0.2),
    radii=(0.05, 0.1),
)


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, fake_data: Callable[..., dict]
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("landscape") / "run"
    return out, run_lab(landscape.SPEC, TINY, out, data=fake_data(96, 64), quick=True)


def test_quick_run_says_no_verdict_with_tables_and_figures(finished: tuple[Path, dict]) -> None:
    out, results = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "landscape"
    raw = on_disk["raw"]
    assert set(raw["per_seed"]) == {"common", "tuned"}
    assert set(raw["per_seed"]["common"]) == {"none", "bn"}
    assert set(raw["lr"]["relu"].values()) <= set(TINY.lrs)
    assert raw["setting_lrs"]["common"] == {"none": TINY.common_lr, "bn": TINY.common_lr}
    for setting in ("common", "tuned"):
        for metrics in raw["per_seed"][setting].values():
            for key in (
                "log10_rel_beta_at_loss",
                "log10_rel_loss_range_at_loss",
                "log10_beta_at_loss",
                "weight_norm_at_loss",
                "final_test_acc",
            ):
                assert len(metrics[key]) == TINY.seeds
            assert all(v is not None and v >= 0 for v in metrics["beta_at_step"])
            assert all(v is not None and v >= 0 for v in metrics["rel_beta_at_step"])
    unit = json.loads((out / "units" / "common-bn-seed0.json").read_text())["value"]
    assert unit["lr"] == TINY.common_lr
    assert [p["step"] for p in unit["points"]] == [0, 4, 8]
    assert len(unit["points"][1]["losses"]) == len(TINY.step_sizes)
    assert len(unit["points"][1]["rel_losses"]) == len(TINY.radii)
    assert unit["at_level"]["train_loss"] <= TINY.loss_level
    assert unit["metrics"]["steps_to_level"] == unit["at_level"]["step"]
    window = unit["level_window"]
    assert window[0] == unit["at_level"]
    assert [p["step"] for p in window] == [
        unit["at_level"]["step"] + 2 * k for k in range(len(window))
    ]
    # A tuned arm at the common lr is the common run, not run again.
    for arm, lr in raw["setting_lrs"]["tuned"].items():
        tuned = json.loads((out / "units" / f"tuned-{arm}-seed0.json").read_text())["value"]
        assert tuned["lr"] == lr
        if lr == TINY.common_lr:
            assert tuned == {"lr": lr, "same_as": "common"}
            for key, values in raw["per_seed"]["tuned"][arm].items():
                assert values == raw["per_seed"]["common"][arm][key], key
    assert len(on_disk["verdicts"]) == 2
    for verdict, claim in zip(on_disk["verdicts"], landscape.CLAIMS, strict=True):
        _evidence, rule_verdict = claim.rule(results)
        assert rule_verdict == stats.NO_VERDICT
        assert verdict["measured"].startswith(rule_verdict + ":")
        assert verdict["holds"] is None
    assert [f["file"] for f in on_disk["figures"]] == ["landscape_matched.png", "landscape.png"]
    for f in on_disk["figures"]:
        assert (out / f["file"]).stat().st_size > 1000
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 2 + 2 * 2 * 2  # tuning (arm x lr) + measured (setting x arm x seed)


def test_claims_are_registered_from_the_literature(finished: tuple[Path, dict]) -> None:
    _, results = finished
    mine = {c.key: c for c in available_claims() if c.experiment == "landscape"}
    assert set(mine) == {"bn-smoother-landscape", "bn-lipschitz-loss"}
    for claim in mine.values():
        assert claim.source == FROM_LITERATURE
        assert "1805.11604" in claim.literature.paper
        assert claim.rule(results)[1] == stats.NO_VERDICT


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path, fake_data: Callable[..., dict]
) -> None:
    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "common-none-seed1.json").unlink()
    (cut / "results.json").unlink()
    resumed = run_lab(landscape.SPEC, TINY, cut, data=fake_data(96, 64), resume=True, quick=True)
    assert resumed["units_reused"] == 11
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


def _results(config: landscape.LandscapeConfig, bn: list, none: list, acc=None) -> dict:
    acc = acc or {"bn": [85.0] * len(bn), "none": [80.0] * len(none)}
    per_seed = {
        "common": {
            arm: {
                "log10_rel_beta_at_loss": values,
                "log10_rel_loss_range_at_loss": values,
                "final_test_acc": acc[arm],
            }
            for arm, values in (("bn", bn), ("none", none))
        },
        # The tuned setting is shown, not voted: a huge effect there changes nothing.
        "tuned": {
            arm: {
                "log10_rel_beta_at_loss": [v - 5.0 * (arm == "bn") for v in none],
                "log10_rel_loss_range_at_loss": [v - 5.0 * (arm == "bn") for v in none],
                "final_test_acc": [85.0] * len(none),
            }
            for arm in ("bn", "none")
        },
    }
    return {
        "raw": {"per_seed": per_seed, "specs": [spec_record(s) for s in landscape.specs(config)]}
    }


@pytest.mark.parametrize("claim", landscape.CLAIMS, ids=lambda c: c.key)
def test_rules_on_synthetic_numbers(claim) -> None:
    config = landscape.LandscapeConfig()
    base = [0.50, 0.62, 0.41, 0.55, 0.47]
    lower = [v - 1.0 + 0.01 * i for i, v in enumerate(base)]  # BN a factor 10 smoother
    assert claim.rule(_results(config, lower, base))[1] == stats.SUPPORTED
    # The null: equal within a hundredth of the margin (0.3 log10): equivalence, refuted.
    same = [v + 0.003 * (-1) ** i for i, v in enumerate(base)]
    assert claim.rule(_results(config, same, base))[1] == stats.REFUTED
    # BN rougher by a factor 10: opposite, refuted.
    assert claim.rule(_results(config, [v + 1.0 for v in base], base))[1] == stats.REFUTED
    # Noise as large as the effect: inconclusive, with the seeds needed.
    noisy = [v + d for v, d in zip(base, (-0.9, 0.8, -0.7, 0.9, -0.6), strict=True)]
    evidence, verdict = claim.rule(_results(config, noisy, base))
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    # Under min_seeds: no verdict.
    assert claim.rule(_results(config, lower[:3], base[:3]))[1] == stats.NO_VERDICT
    # A run that never left chance is excluded: 4 pairs left, fewer than 5 decide nothing.
    acc = {"bn": [85.0] * 5, "none": [80.0, 10.5, 80.0, 80.0, 80.0]}
    evidence, verdict = claim.rule(_results(config, lower, base, acc))
    assert verdict == stats.NO_VERDICT
    assert evidence["excluded"][0]["seed"] == 1
    # A run that never reached the level has no value: excluded too.
    evidence, verdict = claim.rule(_results(config, [None, *lower[1:]], base))
    assert verdict == stats.NO_VERDICT
    assert evidence["excluded"][0]["reason"] == "non-finite value"


def test_read_metrics_at_matched_loss_and_step() -> None:
    point = {
        "loss_range": 0.1,
        "grad_change_max": 2.0,
        "beta": 100.0,
        "grad_change_rel": 0.5,
        "grad_norm": 4.0,
        "rel_loss_range": 0.01,
        "rel_grad_change_max": 3.0,
        "rel_beta": 1000.0,
        "rel_grad_norm": 5.0,
        "weight_norm": 7.0,
    }
    run = {
        "at_level": {"step": 37, "train_loss": 0.59, **point},
        "points": [
            {"step": 0},
            {"step": landscape.LandscapeConfig().steps, **dict(point, beta=10.0)},
        ],
        "final_train_loss": 0.4,
        "final_test_acc": 85.0,
    }
    got = landscape.read_metrics(landscape.LandscapeConfig(), run)
    assert got["log10_beta_at_loss"] == pytest.approx(2.0)
    assert got["log10_beta_at_step"] == pytest.approx(1.0)
    assert got["log10_loss_range_at_loss"] == pytest.approx(-1.0)
    assert got["steps_to_level"] == 37
    never = landscape.read_metrics(landscape.LandscapeConfig(), dict(run, at_level=None))
    assert never["log10_beta_at_loss"] is None
    assert never["log10_rel_beta_at_loss"] is None
    assert never["steps_to_level"] is None
    assert got["log10_rel_beta_at_loss"] == pytest.approx(3.0)
    assert got["level_probes"] == 1
    # The matched-loss readout is the mean over the window's probes (then log10).
    window = [
        {"step": 37, "train_loss": 0.59, **point},
        {"step": 47, "train_loss": 0.58, **dict(point, rel_beta=3000.0, beta=300.0)},
    ]
    averaged = landscape.read_metrics(
        landscape.LandscapeConfig(), dict(run, at_level=window[0], level_window=window)
    )
    assert averaged["rel_beta_at_loss"] == pytest.approx(2000.0)
    assert averaged["log10_beta_at_loss"] == pytest.approx(math.log10(200.0))
    assert averaged["weight_norm_at_loss"] == pytest.approx(7.0)
    assert averaged["level_probes"] == 2
    assert averaged["steps_to_level"] == 37
    # A probe with a non-finite value leaves no readout (not a mean of the rest).
    window[1] = dict(window[1], rel_beta=None)
    broken = landscape.read_metrics(
        landscape.LandscapeConfig(), dict(run, at_level=window[0], level_window=window)
    )
    assert broken["log10_rel_beta_at_loss"] is None
    assert broken["log10_beta_at_loss"] == pytest.approx(math.log10(200.0))


def _level_window_run(x: torch.Tensor, y: torch.Tensor, *, steps: int, probe_every: int) -> dict:
    """A linear model trained to a loss level reached at its first step (10), with a
    window of 3 probes 4 steps apart."""
    net = nn.Linear(4, 3)
    return probed.train_probed(
        net,
        iter([(x, y)] * 100),
        torch.optim.SGD(net.parameters(), lr=0.5),
        steps=steps,
        window=2,
        level=10.0,
        probe=lambda: {},
        probe_every=probe_every,
        level_probes=3,
        level_gap=4,
    )


def test_train_probed_probes_at_the_level_and_at_fixed_steps() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    batches = iter([(x, y)] * 100)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    calls = []
    got = probed.train_probed(
        model,
        batches,
        opt,
        steps=20,
        window=2,
        level=0.9,
        probe=lambda: {"n": len(calls.append(1) or calls)},
        probe_every=10,
    )
    assert [p["step"] for p in got["points"]] == [0, 10, 20]
    at = got["at_level"]
    assert at["train_loss"] <= 0.9
    assert got["loss_ma"][at["step"] - 2] > 0.9  # the first step that reached it
    assert got["steps_done"] == 20
    assert not got["diverged"]
    # A diverging run stops at the first non-finite loss.
    bad = nn.Linear(4, 3)
    with torch.no_grad():
        bad.weight.fill_(math.inf)
    stopped = probed.train_probed(
        bad, iter([(x, y)] * 5), torch.optim.SGD(bad.parameters(), lr=0.1), steps=5, window=2
    )
    assert stopped["diverged"]
    assert stopped["final_train_loss"] is None
    assert stopped["level_window"] == []
    # A matched-loss window: the probe at the reach, then every level_gap steps.
    windowed = _level_window_run(x, y, steps=40, probe_every=20)
    assert [p["step"] for p in windowed["level_window"]] == [1, 5, 9]
    assert windowed["level_window"][0] == windowed["at_level"]
    assert got["level_window"] == [got["at_level"]]  # the default: one probe
    # A run that ends inside the window keeps the probes it took.
    short = _level_window_run(x, y, steps=6, probe_every=3)
    assert [p["step"] for p in short["level_window"]] == [1, 5]


def test_relative_point_is_free_of_the_bn_weight_scale_and_the_raw_one_is_not() -> None:
    torch.manual_seed(0)
    model = probed.lenet("relu", "bnlab", 0).double()
    for layer in kit.norm_layers(model).values():
        layer.eps = 1e-30  # scale-invariant to rounding (eps 1e-5 breaks it at 1e-4)
    x, y = torch.rand(32, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (32,))
    radii, etas = [0.02, 0.1], [0.05, 0.2]
    before = landscape.relative_point(model, x, y, radii)
    raw_before = landscape.landscape_point(model, x, y, etas)
    logits = model(x).detach()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("conv1", "conv2", "fc1", "fc2"):  # each feeds a BN layer
            for p in getattr(scaled, name).parameters():
                p.mul_(2.0)
    assert torch.allclose(scaled(x), logits, atol=1e-8)  # the same function
    after = landscape.relative_point(scaled, x, y, radii)
    for key in ("loss_range", "grad_change_max", "beta", "grad_norm"):
        assert after[key] == pytest.approx(before[key], rel=1e-6), key
    assert after["losses"] == pytest.approx(before["losses"], rel=1e-6)
    raw_after = landscape.landscape_point(scaled, x, y, etas)
    assert raw_after["grad_norm"] < 0.9 * raw_before["grad_norm"]  # the raw gradient shrinks
    # ReLU's symmetry without BN: one layer times 2, the next over 2.
    plain = probed.lenet("relu", "none", 0).double()
    base = landscape.relative_point(plain, x, y, radii)
    moved = copy.deepcopy(plain)
    with torch.no_grad():
        for p in moved.fc1.parameters():
            p.mul_(2.0)
        moved.fc2.weight.mul_(0.5)
    assert torch.allclose(moved(x), plain(x), atol=1e-8)
    again = landscape.relative_point(moved, x, y, radii)
    for key in ("loss_range", "beta", "grad_norm"):
        assert again[key] == pytest.approx(base[key], rel=1e-6), key


def test_relative_point_moves_the_stated_relative_distance() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2).double()
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - target) ** 2).sum()

    w, b = net.weight.detach().clone(), net.bias.detach().clone()
    got = landscape.relative_point(net, x, t, [0.1], loss_fn=mse)
    # Per tensor: g_hat = (||W|| gW, ||b|| gb); the move -rho ||theta|| g_hat / ||g_hat||
    # per tensor, a relative distance rho.
    r = x @ w.T + b - t
    gw, gb = r.T @ x, r.sum(0)
    nw, nb = float(w.norm()), float(b.norm())
    hnorm = math.sqrt(nw**2 * float(gw.pow(2).sum()) + nb**2 * float(gb.pow(2).sum()))
    w2, b2 = w - 0.1 * nw**2 * gw / hnorm, b - 0.1 * nb**2 * gb / hnorm
    moved = math.sqrt(float((w2 - w).pow(2).sum()) / nw**2 + float((b2 - b).pow(2).sum()) / nb**2)
    assert moved == pytest.approx(0.1, rel=1e-10)
    assert got["grad_norm"] == pytest.approx(hnorm, rel=1e-10)
    assert got["losses"][0] == pytest.approx(float(mse(x @ w2.T + b2, t)), rel=1e-10)
    r2 = x @ w2.T + b2 - t
    change = math.sqrt(
        nw**2 * float((r2.T @ x - gw).pow(2).sum()) + nb**2 * float((r2.sum(0) - gb).pow(2).sum())
    )
    assert got["beta"] == pytest.approx(change / 0.1, rel=1e-10)
    assert got["weight_norm"] == pytest.approx(float(w.norm()), rel=1e-10)
    assert torch.equal(net.weight, w)


def test_landscape_point_of_least_squares_against_the_algebra() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2, bias=False).double()
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - target) ** 2).sum()

    w = net.weight.detach().clone()
    # L(W) = 1/2 ||X W^T - T||^2, G = (X W^T - T)^T X; one step: G' = G - eta G X^T X.
    g = (x @ w.T - t).T @ x
    h = x.T @ x
    etas = [0.01, 0.05, 0.2]
    got = landscape.landscape_point(net, x, t, etas, loss_fn=mse)
    losses = [float(mse(x @ (w - eta * g).T, t)) for eta in etas]
    changes = [eta * float((g @ h).norm()) for eta in etas]
    assert got["loss0"] == pytest.approx(float(mse(x @ w.T, t)), rel=1e-10)
    assert got["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert got["losses"] == pytest.approx(losses, rel=1e-10)
    assert got["grad_changes"] == pytest.approx(changes, rel=1e-10)
    beta = float((g @ h).norm() / g.norm())  # the same for every step size here
    assert got["betas"] == pytest.approx([beta] * 3, rel=1e-10)
    assert got["beta"] == pytest.approx(beta, rel=1e-10)
    assert got["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-10)
    assert got["grad_change_rel"] == pytest.approx(changes[-1] / float(g.norm()), rel=1e-10)
    assert torch.equal(net.weight, w)
    assert net.weight.grad is None


def test_landscape_probe_averages_the_batches_and_leaves_the_model_alone() -> None:
    model = create(
        "mlp", norm="bnlab", hidden=(100, 100, 100), activation="relu", norm_position="before"
    )
    init_weights(model, 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    got = landscape.landscape_probe(model, batches, [0.1, 0.4], [0.05])
    each = [landscape.landscape_point(model, bx, by, [0.1, 0.4]) for bx, by in batches]
    rel = [landscape.relative_point(model, bx, by, [0.05]) for bx, by in batches]
    assert got["beta"] == pytest.approx((each[0]["beta"] + each[1]["beta"]) / 2)
    assert got["losses"][1] == pytest.approx((each[0]["losses"][1] + each[1]["losses"][1]) / 2)
    assert got["rel_beta"] == pytest.approx((rel[0]["beta"] + rel[1]["beta"]) / 2)
    assert got["rel_losses"][0] == pytest.approx((rel[0]["losses"][0] + rel[1]["losses"][0]) / 2)
    assert got["weight_norm"] == pytest.approx(rel[0]["weight_norm"])
    assert "rel_beta" not in landscape.landscape_probe(model, batches, [0.1])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def test_a_unit_shares_init_across_arms(fake_data) -> None:
    config = dataclasses.replace(TINY, steps=2, probe_every=2)
    data = fake_data(64, 32)
    got = {
        arm: landscape.main_cell(
            config,
            {"relu": {"none": 0.1, "bn": 0.3}},
            Cell("tuned", arm, 0),
            Bench(data, torch.device("cpu")),
        )
        for arm in ("none", "bn")
    }
    assert got["none"]["lr"] == 0.1
    assert got["none"]["metrics"]["final_test_acc"] is not None
    assert got["bn"] == {"lr": 0.3, "same_as": "common"}  # the common run
    common = landscape.main_cell(
        config, {"relu": {"none": 0.1}}, Cell("common", "none", 0), Bench(data, torch.device("cpu"))
    )
    assert common["lr"] == config.common_lr
    a, b = probed.lenet("relu", "none", 3), probed.lenet("relu", "bnlab", 3)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert torch.equal(a.fc3.weight, b.fc3.weight)


def test_errors_show_the_value() -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"step sizes must be > 0, got \[0.1, 0.0\]"):
        landscape.landscape_point(
            net, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [0.1, 0.0]
        )
    with pytest.raises(ValueError, match=r"step_sizes must be > 0, got \(\)"):
        landscape.LandscapeConfig(step_sizes=())
    with pytest.raises(ValueError, match=r"radii must be > 0, got \(0.1, 0.0\)"):
        landscape.LandscapeConfig(radii=(0.1, 0.0))
    with pytest.raises(ValueError, match=r"radii must be > 0, got \[\]"):
        landscape.relative_point(net, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [])
    with pytest.raises(ValueError, match="common_lr must be > 0, got 0"):
        landscape.LandscapeConfig(common_lr=0)
    with pytest.raises(ValueError, match="level_probes must be > 0, got 0"):
        landscape.LandscapeConfig(level_probes=0)
    with pytest.raises(ValueError, match=r"lrs must be > 0, got \(0.1, -1.0\)"):
        landscape.LandscapeConfig(lrs=(0.1, -1.0))
    with pytest.raises(ValueError, match="loss_level must be > 0, got 0"):
        landscape.LandscapeConfig(loss_level=0)
    with pytest.raises(ValueError, match="first_seed must be >= 0, got -1"):
        landscape.LandscapeConfig(first_seed=-1)
    with pytest.raises(ValueError, match="activation must be relu, sigmoid or tanh, got 'elu'"):
        landscape.LandscapeConfig(activation="elu")


def test_shared_runs_fill_the_tuned_cells_from_the_common_runs() -> None:
    cells = [
        Cell("common", "none", 0),
        Cell("common", "bn", 0),
        Cell("tuned", "none", 0),
        Cell("tuned", "bn", 0),
    ]
    results = [
        {"lr": 0.3, "metrics": {"x": 1}},
        {"lr": 0.3, "metrics": {"x": 2}},
        {"lr": 0.1, "metrics": {"x": 3}},
        {"lr": 0.3, "same_as": "common"},
    ]
    got = landscape.shared_runs(GridRun(cells, results))
    assert [r["metrics"]["x"] for r in got.results] == [1, 2, 3, 2]
    assert got.cells == cells
