"""``bnlab lab ics`` (second edition): a tiny run end to end ("no verdict at this budget",
figures, resume), each declared claim's rule on synthetic per-seed numbers whose verdict
is known (clear effect, equivalence, noise, too few seeds, runs at chance), the
matched-loss read-out, the lr choice, the measures against direct computations, hooks
removed, config errors."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import hook_count, one_thread  # noqa: F401 (fixture)
from torch import nn

from bnlab.lab import ics, kit, stats
from bnlab.lab.claims import available_claims, spec_record
from bnlab.lab.experiment import run_lab
from bnlab.lab.kit import matched, probed
from bnlab.lab.runner import Bench, Cell
from bnlab.models import create
from bnlab.train import init_weights

TINY = dataclasses.replace(
    ics.ICSConfig.quick(),
    steps=(("relu", 6), ("sigmoid", 6), ("sigmoid-common", 6)),
    lrs=(0.3, 1.0),
    batch=16,
    train_size=64,
    test_size=32,
    window=2,
    loss_level=5.0,
    read_steps=4,
    probe_every=2,
    probe_size=16,
    grad_every=3,
    grad_every_at_loss=2,
)


#: A config of the given steps' settings alone, every claim voted in each of them.
def only(config: ics.ICSConfig, steps: tuple, **kw) -> ics.ICSConfig:
    names = tuple(s for s, _ in steps)
    common = tuple((s, lr) for s, lr in config.common_lrs if s in names)
    return dataclasses.replace(
        config, steps=steps, ics_settings=names, gain_settings=names, common_lrs=common, **kw
    )


#: The per-seed "arms" of claim 3 beside the real arms.
GAIN_ARMS = {"noisy-gain", "level"}


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, fake_data: Callable[..., dict]
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ics") / "run"
    return out, run_lab(ics.SPEC, TINY, out, data=fake_data(64, 32), quick=True)


def test_quick_run_says_no_verdict(finished: tuple[Path, dict]) -> None:
    out, _ = finished
    on_disk = json.loads((out / "results.json").read_text())
    raw = on_disk["raw"]
    assert set(raw["per_seed"]) == {"relu", "sigmoid", "sigmoid-common"}
    for arms in raw["per_seed"].values():
        assert set(arms) == set(ics.ARMS) | GAIN_ARMS
        assert len(arms["noisy-gain"][ics.GAIN]) == TINY.seeds
        assert arms["level"][ics.GAIN] == [TINY.gain_level] * TINY.seeds
        for arm in ics.ARMS:
            metrics = arms[arm]
            assert len(metrics["final_test_acc"]) == TINY.seeds
            assert all(0 <= v <= 100 for v in metrics["final_test_acc"])
            # the loss level 5 is reached at the first step: every run has a read-out
            assert metrics["steps_to_level"] == [1, 1]
            assert all(v is not None for v in metrics["log_drift_at_loss"])
            assert all(v is not None for v in metrics["log_w1_at_loss"])
            assert all(v is not None for v in metrics["log_w1_seen_at_loss"])
    assert set(raw["lr"]["sigmoid"].values()) <= set(TINY.lrs)
    assert [raw["lr"]["relu"][a] for a in ("none", "bn")] == [TINY.common_lr] * 2
    assert raw["lr"]["relu"]["bn-noise"] in TINY.noise_lrs
    # the common-lr sigmoid setting: every arm, noisy BN too, at one lr, not tuned
    assert raw["lr"]["sigmoid-common"] == dict.fromkeys(ics.ARMS, 1.0)
    assert [s["name"] for s in raw["specs"]] == [c.key for c in ics.CLAIMS]
    assert len(on_disk["verdicts"]) == 3
    for verdict, claim in zip(on_disk["verdicts"], ics.CLAIMS, strict=True):
        expected = claim.rule(on_disk)[1]
        assert expected == stats.NO_VERDICT
        assert verdict["measured"].startswith(expected + ":")
        assert verdict["holds"] is None
    assert [f["file"] for f in on_disk["figures"]] == [
        "ics_matched.png",
        "ics_drift_vs_loss.png",
        "ics_gradient.png",
    ]
    for figure in on_disk["figures"]:
        assert (out / figure["file"]).stat().st_size > 1000
    units = sorted(p.name for p in (out / "units").iterdir())
    # tuning: sigmoid lr x arm, ReLU noisy BN's lrs; measured: 3 settings x 3 arms x 2 seeds
    assert len(units) == 2 * 3 + 2 + 3 * 3 * 2
    assert not any(u.startswith("tune-sigmoid-common") for u in units)
    assert "sigmoid-common-bn-noise-seed1.json" in units
    assert "tune-sigmoid-lr0.3-bn-noise.json" in units
    assert "tune-relu-lr0.3-bn-noise.json" in units
    assert "tune-relu-lr0.3-bn.json" not in units
    assert "relu-bn-seed1.json" in units


def test_claims_decide_the_results(finished: tuple[Path, dict]) -> None:
    _, results = finished
    mine = {c.key: c for c in available_claims() if c.experiment == "ics"}
    assert set(mine) == {
        "bn-reduces-ics",
        "bn-reduces-gradient-ics",
        "noisy-bn-keeps-bn-benefit",
    }
    voted = {
        "bn-reduces-ics": ["relu", "sigmoid-common"],
        "bn-reduces-gradient-ics": ["relu", "sigmoid-common"],
        "noisy-bn-keeps-bn-benefit": ["relu", "sigmoid"],
    }
    for claim in ics.CLAIMS:
        evidence, _ = mine[claim.key].rule(results)
        assert evidence["claim"] == claim.key
        assert [r["setting"] for r in evidence["settings"]] == voted[claim.key]
        assert mine[claim.key].literature is not None
    # the settings a claim is not voted in are shown
    shown = {r["claim"] for r in results["raw"]["shown"]}
    assert "W1 drift at matched loss, not voted here" in shown
    assert "noisy BN's gain ratio, not voted here" in shown


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path, fake_data: Callable[..., dict]
) -> None:
    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "sigmoid-bn-seed1.json").unlink()  # as if killed during that unit
    (cut / "results.json").unlink()
    resumed = run_lab(ics.SPEC, TINY, cut, data=fake_data(64, 32), resume=True, quick=True)
    assert resumed["units_reused"] == len(list((out / "units").iterdir())) - 1
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


# --- the declared rules on synthetic numbers -------------------------------------------

NOISE = np.array([0.01, -0.02, 0.005, 0.015, -0.01])


def synthetic(
    metric: str,
    arm: str,
    reference: str,
    a: float,
    r: float,
    *,
    noise=NOISE,
    acc=None,
    other: dict | None = None,
):
    """Per-seed numbers where ``arm`` has ``a + noise`` and ``reference`` ``r`` in every
    setting (``other``: setting -> ``a`` there instead); every other metric is filled so
    that the three claims can be evaluated."""
    config = ics.ICSConfig()
    base = {
        "log_w1_at_loss": [-2.0] * 5,
        "grad_cos_at_loss": [0.8] * 5,
        ics.GAIN: [0.8] * 5,
        "final_test_acc": [85.0] * 5,
    }
    per_seed = {}
    for setting in config.settings:
        arms = {name: {k: list(v) for k, v in base.items()} for name in (*ics.ARMS, *GAIN_ARMS)}
        arms[arm][metric] = list((other or {}).get(setting, a) + noise)
        arms[reference][metric] = [r] * 5
        if acc is not None:
            arms[reference]["final_test_acc"] = list(acc)
        per_seed[setting] = arms
    return {"raw": {"per_seed": per_seed, "specs": [spec_record(s) for s in ics.specs(config)]}}


CASES = [
    # (claim, metric, arm, reference, the claimed direction's sign, a unit effect)
    ("bn-reduces-ics", "log_w1_at_loss", "bn", "none", -1, 1.0),
    ("bn-reduces-gradient-ics", "grad_cos_at_loss", "bn", "none", +1, 0.3),
    # noisy BN's share of BN's gain 1.5 against the level 0.5 (-0.5 in the opposite case)
    ("noisy-bn-keeps-bn-benefit", ics.GAIN, "noisy-gain", "level", +1, 1.0),
]


@pytest.mark.parametrize(("key", "metric", "arm", "reference", "sign", "effect"), CASES)
def test_rules_on_known_numbers(key, metric, arm, reference, sign, effect) -> None:
    rule = next(c.rule for c in ics.CLAIMS if c.key == key)
    r = 0.5 if metric in ("grad_cos_at_loss", ics.GAIN) else -2.0
    # a clear effect in the claimed direction, in both settings: supported
    assert rule(synthetic(metric, arm, reference, r + sign * effect, r))[1] == stats.SUPPORTED
    # equal within the margin: refuted (equivalence shown)
    assert rule(synthetic(metric, arm, reference, r, r))[1] == stats.REFUTED
    # the opposite direction: refuted
    assert rule(synthetic(metric, arm, reference, r - sign * effect, r))[1] == stats.REFUTED
    # the null with noise larger than the margin: inconclusive, with a budget
    wide = NOISE * 30 * effect
    evidence, verdict = rule(synthetic(metric, arm, reference, r, r, noise=wide))
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5


@pytest.mark.parametrize(("key", "metric", "arm", "reference", "sign", "effect"), CASES)
def test_only_the_voted_settings_decide(key, metric, arm, reference, sign, effect) -> None:
    """The ICS claims are voted in relu and sigmoid-common (one lr for both arms), not in
    sigmoid (per-arm lrs); claim 3 in relu and sigmoid, not in sigmoid-common."""
    rule = next(c.rule for c in ics.CLAIMS if c.key == key)
    r = 0.5 if metric in ("grad_cos_at_loss", ics.GAIN) else -2.0
    off = "sigmoid" if key != "noisy-bn-keeps-bn-benefit" else "sigmoid-common"
    voted = [s for s in ics.ICSConfig().settings if s != off]
    good, bad = r + sign * effect, r - sign * effect
    # the setting not voted goes the other way: still supported
    evidence, verdict = rule(synthetic(metric, arm, reference, good, r, other={off: bad}))
    assert verdict == stats.SUPPORTED
    assert [e["setting"] for e in evidence["settings"]] == voted
    # a voted setting goes the other way: context-dependent
    flip = synthetic(metric, arm, reference, good, r, other={voted[1]: bad})
    assert rule(flip)[1] == stats.CONTEXT_DEPENDENT


def test_fewer_than_five_seeds_give_no_verdict() -> None:
    results = synthetic("log_w1_at_loss", "bn", "none", -3.0, -2.0)
    for arms in results["raw"]["per_seed"].values():
        for metrics in arms.values():
            for k in metrics:
                metrics[k] = metrics[k][:4]
    for claim in ics.CLAIMS:
        assert claim.rule(results)[1] == stats.NO_VERDICT


def test_runs_at_chance_or_never_at_the_loss_level_are_excluded() -> None:
    acc = [85.0, 85.0, 10.5, 85.0, 85.0]  # seed 2 of no BN never left chance
    results = synthetic("log_w1_at_loss", "bn", "none", -3.0, -2.0, acc=acc)
    evidence, verdict = ics.CLAIMS[0].rule(results)
    assert verdict == stats.NO_VERDICT  # 4 pairs left < 5 in every setting
    assert {(e["arm"], e["seed"]) for e in evidence["excluded"]} == {("none", 2)}
    assert "never left chance" in evidence["excluded"][0]["reason"]
    results = synthetic("log_w1_at_loss", "bn", "none", -3.0, -2.0)
    results["raw"]["per_seed"]["relu"]["none"]["log_w1_at_loss"][1] = None  # never reached
    evidence, _ = ics.CLAIMS[0].rule(results)
    assert evidence["excluded"] == [
        {"arm": "none", "seed": 1, "reason": "non-finite value", "setting": "relu"}
    ]
    relu = evidence["settings"][0]
    assert (relu["n_run"], relu["n"], relu["status"]) == (5, 4, "excluded")


# --- the matched-loss read-out, the lr choice -----------------------------------------


def test_matched_helpers() -> None:
    avg = matched.LossAverage(2)
    for loss in (3.0, 1.0, 0.0, 2.0):
        avg.add(loss)
    assert avg.values == [3.0, 2.0, 0.5, 1.0]
    assert matched.first_reach(avg.values, 2.0) == 2
    assert matched.first_reach([math.nan, 1.0], 1.5) == 2
    assert matched.first_reach(avg.values, 0.1) is None
    assert matched.window_mean([0, 10, 20, 30], [1.0, 2.0, None, 4.0], 10, 25) == 3.0
    assert matched.window_mean([0, 10], [1.0, 2.0], None, 25) is None
    assert matched.window_mean([0, 10], [1.0, 2.0], 50, 25) is None
    factor = matched.hold_then_decay(100, 0.75)
    assert [factor(k) for k in (0, 74, 75, 90, 100)] == [1.0, 1.0, 1.0, 0.4, 0.0]
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        matched.LossAverage(0)


def test_read_metrics_at_matched_loss_and_step() -> None:
    config = dataclasses.replace(TINY, loss_level=1.0, read_steps=4)
    run = {
        "loss_ma": [2.0, 1.5, 1.0, 0.9, 0.8, 0.7],
        "drift": {
            "steps": [0, 2, 4],
            "values": [0.4, 0.2, 0.1],
            "w1": [0.3, 0.2, 0.05],
            "w1_seen": [0.6, 0.5, 0.4],
        },
        "grad": {
            "steps": [0, 3],
            "layers": {
                "a": [{"cos": 0.2, "rel": 1.0, "l2": 1.0}, {"cos": 0.8, "rel": 0.5, "l2": 1.0}],
                "b": [{"cos": 0.4, "rel": 1.0, "l2": 1.0}, {"cos": 1.0, "rel": 0.3, "l2": 1.0}],
            },
        },
        "final_test_acc": 50.0,
    }
    got = ics.read_metrics(config, run)
    assert got["steps_to_level"] == 3  # the moving average reaches 1.0 after step 3
    assert got["drift_at_loss"] == pytest.approx(0.1)  # intervals starting in [3, 7)
    assert got["log_drift_at_loss"] == pytest.approx(math.log(0.1))
    assert got["drift_run"] == pytest.approx(0.7 / 3)
    assert got["log_w1_at_loss"] == pytest.approx(math.log(0.05))
    assert got["w1_seen_at_loss"] == pytest.approx(0.4)
    assert got["w1_run"] == pytest.approx(0.55 / 3)
    assert got["grad_n_at_loss"] == 1  # the measurement at step 3
    assert got["grad_cos_at_loss"] == pytest.approx(0.9)
    assert got["grad_cos_run"] == pytest.approx(0.6)
    assert got["grad_rel_at_loss"] == pytest.approx(0.4)
    assert got["final_train_loss"] == pytest.approx(sum(run["loss_ma"]) / 6)
    never = dict(run, loss_ma=[2.3] * 6)
    got = ics.read_metrics(config, never)
    assert got["steps_to_level"] is None
    assert got["log_drift_at_loss"] is None
    assert got["log_w1_at_loss"] is None
    assert got["grad_n_at_loss"] is None
    assert got["grad_cos_at_loss"] is None
    assert got["drift_run"] == pytest.approx(0.7 / 3)


def test_choose_lrs_takes_the_lowest_finite_final_loss() -> None:
    tuning = {"sigmoid": {"none": {0.3: 2.3, 1.0: 0.7, 3.0: None}, "bn": {0.3: math.nan}}}
    assert kit.paired.choose_lrs(tuning) == {"sigmoid": {"none": 1.0, "bn": None}}


def test_one_measured_unit_and_no_hooks_left(monkeypatch: pytest.MonkeyPatch, fake_data) -> None:
    built: list[nn.Module] = []
    original = probed.LeNet

    def keep(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(probed, "LeNet", keep)  # kit.matched.lenet_run builds it
    config = only(TINY, (("relu", 4), ("sigmoid", 4)))
    bench = Bench(config.subsets(fake_data(64, 32), "ics"), torch.device("cpu"))
    got = ics.measure(config, {"sigmoid": {"bn-noise": 0.3}}, Cell("sigmoid", "bn-noise", 0), bench)
    assert got["lr"] == 0.3
    assert got["drift"]["steps"] == [0, 2]  # intervals 0-2 and 2-4 (the last probe at 4)
    # noisy BN probed with a fresh noise draw per probe drifts more than without noise
    assert all(s > w for s, w in zip(got["drift"]["w1_seen"], got["drift"]["w1"], strict=True))
    assert list(got["grad"]["layers"]) == ["conv2", "fc1", "fc2", "fc3"]
    # every 3 steps, every 2 from the first reach of the loss level (after step 1)
    assert got["grad"]["steps"] == [0, 2]
    assert len(built) == 1
    assert hook_count(built[0]) == 0
    plain = ics.measure(config, {"sigmoid": {"bn": 0.3}}, Cell("sigmoid", "bn", 0), bench)
    assert plain["drift"]["w1_seen"] == plain["drift"]["w1"]
    assert hook_count(built[1]) == 0


# --- the measures ----------------------------------------------------------------------


def test_gradient_shift_of_a_two_layer_linear_net_by_hand() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    lr = 0.3

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - target) ** 2).sum()

    w1, w2 = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    before = [p.detach().clone() for p in net.parameters()]
    # L = 1/2 ||x W1^T W2^T - t||^2; r = residual; dL/dW2 = r^T h, dL/dW1 = (r W2)^T x.
    h = x @ w1.T
    r = h @ w2.T - t
    g2, g1 = r.T @ h, (r @ w2).T @ x
    w1_new = w1 - lr * g1
    h_new = x @ w1_new.T
    g2_after = (h_new @ w2.T - t).T @ h_new
    got = ics.gradient_shift(net, x, t, lr, loss_fn=mse)
    assert list(got) == ["1"]
    assert got["1"]["l2"] == pytest.approx(float((g2 - g2_after).norm()), rel=1e-10)
    assert got["1"]["rel"] == pytest.approx(float((g2 - g2_after).norm() / g2.norm()), rel=1e-10)
    cos = float((g2 * g2_after).sum() / (g2.norm() * g2_after.norm()))
    assert got["1"]["cos"] == pytest.approx(cos, rel=1e-10)
    # The model is left as it was, without hooks.
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q)
        assert p.grad is None
    assert hook_count(net) == 0
    with pytest.raises(ValueError, match="'9' is not a weight layer"):
        ics.gradient_shift(net, x, t, lr, loss_fn=mse, layers=["9"])


def test_gradient_shift_leaves_bn_statistics_alone() -> None:
    model = create("lenet", norm="bnlab")
    init_weights(model, 0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = ics.gradient_shift(model, x, y, 0.1)
    assert list(got) == ["conv2", "fc1", "fc2", "fc3"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_w1_drift_on_known_samples() -> None:
    x = torch.tensor([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0], [3.0, 7.0]])  # (N=4, C=2)
    before = ics._channel_sorted(x)
    assert torch.equal(before[0], torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0]]))
    assert before[1] == pytest.approx(float(x.std(unbiased=False)))
    assert ics.w1_drift(before, before) == 0.0
    # The same values in another order: no drift (W1 sees distributions, not examples).
    assert ics.w1_drift(before, ics._channel_sorted(x.flip(0))) == 0.0
    # Channel 0 moves by +1 everywhere; channel 1 spreads (3 -> 1 and 5 -> 7 swap
    # nothing; 1 -> 0, 7 -> 8): W1 per channel 1 and 0.5, mean 0.75, over S.
    moved = torch.tensor([[1.0, 0.0], [2.0, 3.0], [3.0, 5.0], [4.0, 8.0]])
    got = ics.w1_drift(before, ics._channel_sorted(moved))
    assert got == pytest.approx(0.75 / before[1])
    # A shape change with the same mean and std per channel: two moments see nothing.
    a = torch.tensor([[-1.0], [-1.0], [1.0], [1.0]])
    b = torch.tensor([[-(2**0.5)], [0.0], [0.0], [2**0.5]])
    assert ics.distribution_drift(ics._channel_moments(a), ics._channel_moments(b)) == 0.0
    assert ics.w1_drift(ics._channel_sorted(a), ics._channel_sorted(b)) > 0.1
    assert ics.w1_drift((before[0], 0.0), ics._channel_sorted(moved)) == math.inf
    with pytest.raises(ValueError, match="probes of different shapes"):
        ics.w1_drift(before, ics._channel_sorted(x[:2]))


def test_gain_ratios() -> None:
    arms = {
        "none": {"final_test_acc": [80.0, 80.0, 10.5, 80.0, 80.0, None]},
        "bn": {"final_test_acc": [90.0, 90.0, 90.0, 79.0, 90.0, 90.0]},
        "bn-noise": {"final_test_acc": [89.0, 75.0, 90.0, 85.0, 85.0, 90.0]},
    }
    # seed 2: no BN at chance; seed 3: BN gained nothing; seed 5: a run missing
    assert ics.gain_ratios(arms) == [
        pytest.approx(0.9),
        pytest.approx(-0.5),
        None,
        None,
        pytest.approx(0.5),
        None,
    ]


def test_distribution_drift_on_known_moments() -> None:
    mu, sd = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    assert ics.distribution_drift((mu, sd, 2.0), (mu, sd, 2.0)) == 0.0
    # Channel 0 shifts by 1, channel 1 doubles its std (+2): mean (1 + 2) / 2, over S = 2.
    moved = (torch.tensor([1.0, 1.0]), torch.tensor([1.0, 4.0]), 3.0)
    assert ics.distribution_drift((mu, sd, 2.0), moved) == pytest.approx(0.75)
    assert ics.distribution_drift((mu, sd, 0.0), moved) == math.inf
    x = torch.randn(64, 3, 5, 5)
    mean, std, spread = ics._channel_moments(x)
    assert torch.allclose(mean, x.mean(dim=(0, 2, 3)))
    assert torch.allclose(std, x.transpose(0, 1).reshape(3, -1).std(dim=1, unbiased=False))
    assert spread == pytest.approx(float(x.std(unbiased=False)))


@pytest.mark.parametrize("shape", [(10, 3), (4, 3, 2, 2)])
def test_noisy_outputs_applies_one_affine_map_per_channel_and_removeshook_count(shape) -> None:
    bn = nn.BatchNorm1d(3) if len(shape) == 2 else nn.BatchNorm2d(3)
    x = torch.randn(*shape)
    with ics.noisy_outputs(
        {"bn": bn}, shift=1.0, scale=2.0, generator=torch.Generator().manual_seed(0)
    ) as drawn:
        y = bn(x)
    s, b = drawn["bn"]
    assert torch.all(s >= 0.5 - 1e-6)
    assert torch.all(s <= 2.0 + 1e-6)
    assert torch.all(b.abs() <= 1.0)
    view = (1, 3) + (1,) * (len(shape) - 2)
    assert torch.allclose(y, bn(x) * s.view(view) + b.view(view), atol=1e-6)
    assert hook_count(bn) == 0
    with (
        pytest.raises(ValueError, match=r"got shift=1\.0, scale=0\.5"),
        ics.noisy_outputs({"bn": bn}, shift=1.0, scale=0.5, generator=torch.Generator()),
    ):
        pass


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": ()}, "steps is empty"),
        ({"steps": (("gelu", 10),)}, "unknown activation 'gelu' in steps"),
        ({"steps": (("relu", 0),)}, "steps of 'relu' must be an integer >= 1, got 0"),
        ({"tuned": ("tanh",)}, r"tuned setting 'tanh' is not in steps' settings \('relu', "),
        (
            {"tuned": ("sigmoid",), "lrs": (0.1, -1.0)},
            r"lrs must be positive values, got \(0.1, -1.0\)",
        ),
        ({"hold": 1.5}, "hold must be in \\[0, 1\\], got 1.5"),
        ({"noise_scale": 0.5}, "need noise_scale >= 1 and noise_shift >= 0, got 0.5 and 1.0"),
        ({"loss_level": 0}, "loss_level must be > 0, got 0"),
        ({"seeds": 0}, "seeds must be > 0, got 0"),
        ({"noise_lrs": (0.1, 0.0)}, r"noise_lrs must be positive values, got \(0.1, 0.0\)"),
        ({"grad_every_at_loss": 0}, "grad_every_at_loss must be > 0, got 0"),
        ({"gain_margin": 0}, "gain_margin must be > 0, got 0"),
        ({"first_seed": -1}, "first_seed must be an int >= 0, got -1"),
        (
            {"ics_settings": ("relu", "tanh")},
            r"ics_settings names setting 'tanh', not in steps' settings",
        ),
        ({"arm_lrs": (("sigmoid", "ln", 1.0),)}, "arm_lrs and common_lrs need known arms"),
        ({"common_lrs": (("sigmoid-common", 0.0),)}, "arm_lrs and common_lrs need known"),
        ({"steps": (("gelu-x", 10),)}, "unknown activation 'gelu-x' in steps"),
    ],
)
def test_config_errors_show_the_value(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ics.ICSConfig(**kw)


def test_no_tuned_setting_runs_no_tuning_units(tmp_path: Path, fake_data) -> None:
    config = only(TINY, (("relu", 4),), tuned=(), noise_lrs=(), seeds=1)
    assert ics.tune_grid(config) is None
    results = run_lab(ics.SPEC, config, tmp_path / "run", data=fake_data(64, 32), quick=True)
    units = sorted(p.name for p in (tmp_path / "run" / "units").iterdir())
    assert units == ["relu-bn-noise-seed0.json", "relu-bn-seed0.json", "relu-none-seed0.json"]
    assert results["raw"]["lr"] == {"relu": dict.fromkeys(ics.ARMS, TINY.common_lr)}
    assert results["raw"]["tuning"] == {}
    assert results["raw"]["lr_at_grid_edge"] == []


def test_tuning_grid_noisy_bn_alone_in_the_common_lr_setting() -> None:
    config = dataclasses.replace(TINY, noise_lrs=(0.1, 0.3, 1.0))
    cells = ics.tune_grid(config).cells()
    relu = [(c.setting[1], c.variant) for c in cells if c.setting[0] == "relu"]
    assert relu == [(0.1, "bn-noise"), (0.3, "bn-noise"), (1.0, "bn-noise")]
    sigmoid = [(c.setting[1], c.variant) for c in cells if c.setting[0] == "sigmoid"]
    assert len(sigmoid) == len(TINY.lrs) * 3
    assert {c.setting[0] for c in cells} == {"relu", "sigmoid"}  # not the common-lr one
    assert {c.seed for c in cells} == {TINY.tune_seed}
    assert ics.ICSConfig().seed_list == (300, 301, 302, 303, 304)
    assert ics.main_grid(ics.ICSConfig()).seed_list == (300, 301, 302, 303, 304)


def test_full_run_lrs_fixed_common_and_tuned() -> None:
    """The full run: the sigmoid lrs fixed from the earlier tuning (none 1, BN 3, noisy BN
    3), every arm at 1 in sigmoid-common, ReLU no BN and BN at 0.1 and noisy BN tuned (the
    only tuning runs)."""
    config = ics.ICSConfig()
    assert config.settings == ("relu", "sigmoid", "sigmoid-common")
    lrs = {
        s: {a: ics._lr(config, {"relu": {"bn-noise": 0.3}}, s, a) for a in ics.ARMS}
        for s in config.settings
    }
    assert lrs == {
        "relu": {"none": 0.1, "bn": 0.1, "bn-noise": 0.3},
        "sigmoid": {"none": 1.0, "bn": 3.0, "bn-noise": 3.0},
        "sigmoid-common": dict.fromkeys(ics.ARMS, 1.0),
    }
    cells = ics.tune_grid(config).cells()
    assert {(c.setting[0], c.variant) for c in cells} == {("relu", "bn-noise")}
    assert matched.activation_of("sigmoid-common") == "sigmoid"
    assert matched.activation_of("relu") == "relu"


def test_per_setting_steps_run_the_grid_setting_by_setting() -> None:
    """kit.paired.run_by_setting (ics's two step budgets): the cells in the grid's order,
    one progress share per setting; the setting must be the outer loop."""
    config = only(TINY, (("relu", 3), ("sigmoid", 5)), seeds=2)
    grid = ics.main_grid(config)
    assert kit.paired.by_setting(grid, config.steps_of) == 2 * 3 * (3 + 5)
    assert kit.paired.by_setting(grid, 7) == 12 * 7

    class Progress:
        def __init__(self) -> None:
            self.moved = 0

        def advance(self, n: int) -> None:
            self.moved += n

    class Ctx:
        progress = Progress()
        units_dir = Path("/nonexistent")
        device = torch.device("cpu")
        data = None

        def unit(self, key, work, progress_steps=0):
            return {"key": key, **work()}

    ctx = Ctx()
    done = kit.paired.run_by_setting(
        ctx, grid, lambda cell, bench: {"setting": cell.setting}, data=None, steps=config.steps_of
    )
    assert done.cells == grid.cells()
    assert [r["key"] for r in done.results] == [grid.key(c) for c in grid.cells()]
    assert ctx.progress.moved == 2 * 3 * (3 + 5)
    with pytest.raises(ValueError, match="per-setting steps need the setting outermost"):
        kit.paired.run_by_setting(
            ctx,
            dataclasses.replace(grid, order=("seed", "setting", "variant")),
            None,
            data=None,
            steps=config.steps_of,
        )
