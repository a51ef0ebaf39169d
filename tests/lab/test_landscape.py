"""``bnlab lab landscape`` (second edition): a tiny run end to end ("no verdict at this
budget", tuning, figures, resume), the declared rules on synthetic per-seed numbers whose
answer is known (clear effect, equivalence, noise, too few seeds, a run at chance), the
matched-loss readout, and the landscape measures of a linear least-squares model against
the algebra."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _shared import one_thread  # noqa: F401 (fixture)
from torch import nn

from bnlab.lab import landscape, stats
from bnlab.lab.claims import FROM_LITERATURE, available_claims, spec_record
from bnlab.lab.experiment import run_lab
from bnlab.lab.kit import build_model, probed
from bnlab.lab.runner import Bench, Cell

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
    step_sizes=(0.05, 0.2),
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from conftest import make_fake_data

    out = tmp_path_factory.mktemp("landscape") / "run"
    return out, run_lab(landscape.SPEC, TINY, out, data=make_fake_data(96, 64), quick=True)


def test_quick_run_says_no_verdict_with_tables_and_figures(finished: tuple[Path, dict]) -> None:
    out, results = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "landscape"
    raw = on_disk["raw"]
    assert set(raw["per_seed"]) == {"relu"}
    assert set(raw["per_seed"]["relu"]) == {"none", "bn"}
    assert set(raw["lr"]["relu"].values()) <= set(TINY.lrs)
    for metrics in raw["per_seed"]["relu"].values():
        for key in ("log10_beta_at_loss", "log10_loss_range_at_loss", "final_test_acc"):
            assert len(metrics[key]) == TINY.seeds
        assert all(v is not None and v >= 0 for v in metrics["beta_at_step"])
    unit = json.loads((out / "units" / "relu-bn-seed0.json").read_text())["value"]
    assert [p["step"] for p in unit["points"]] == [0, 4, 8]
    assert len(unit["points"][1]["losses"]) == len(TINY.step_sizes)
    assert unit["at_level"]["train_loss"] <= TINY.loss_level
    assert unit["metrics"]["steps_to_level"] == unit["at_level"]["step"]
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
    assert len(units) == 2 * 2 + 2 * 2  # tuning (arm x lr) + measured (arm x seed)


def test_claims_are_registered_from_the_literature(finished: tuple[Path, dict]) -> None:
    _, results = finished
    mine = {c.key: c for c in available_claims() if c.experiment == "landscape"}
    assert set(mine) == {"bn-smoother-landscape", "bn-lipschitz-loss"}
    for claim in mine.values():
        assert claim.source == FROM_LITERATURE
        assert "1805.11604" in claim.literature.paper
        assert claim.rule(results)[1] == stats.NO_VERDICT


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    from conftest import make_fake_data

    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "relu-none-seed1.json").unlink()
    (cut / "results.json").unlink()
    resumed = run_lab(
        landscape.SPEC, TINY, cut, data=make_fake_data(96, 64), resume=True, quick=True
    )
    assert resumed["units_reused"] == 7
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


def _results(config: landscape.LandscapeConfig, bn: list, none: list, acc=None) -> dict:
    acc = acc or {"bn": [85.0] * len(bn), "none": [80.0] * len(none)}
    per_seed = {
        "relu": {
            arm: {
                "log10_beta_at_loss": values,
                "log10_loss_range_at_loss": values,
                "final_test_acc": acc[arm],
            }
            for arm, values in (("bn", bn), ("none", none))
        }
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
    assert never["steps_to_level"] is None


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
    model = build_model("mlp-relu", "bnlab", 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    got = landscape.landscape_probe(model, batches, [0.1, 0.4])
    each = [landscape.landscape_point(model, bx, by, [0.1, 0.4]) for bx, by in batches]
    assert got["beta"] == pytest.approx((each[0]["beta"] + each[1]["beta"]) / 2)
    assert got["losses"][1] == pytest.approx((each[0]["losses"][1] + each[1]["losses"][1]) / 2)
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
            {"relu": {"none": 0.1, "bn": 0.1}},
            Cell("relu", arm, 0),
            Bench(data, torch.device("cpu")),
        )
        for arm in ("none", "bn")
    }
    assert got["none"]["lr"] == 0.1
    assert got["bn"]["metrics"]["final_test_acc"] is not None
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
    with pytest.raises(ValueError, match=r"lrs must be > 0, got \(0.1, -1.0\)"):
        landscape.LandscapeConfig(lrs=(0.1, -1.0))
    with pytest.raises(ValueError, match="loss_level must be > 0, got 0"):
        landscape.LandscapeConfig(loss_level=0)
    with pytest.raises(ValueError, match="first_seed must be >= 0, got -1"):
        landscape.LandscapeConfig(first_seed=-1)
    with pytest.raises(ValueError, match="activation must be relu, sigmoid or tanh, got 'elu'"):
        landscape.LandscapeConfig(activation="elu")
