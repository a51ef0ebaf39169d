"""``bnlab lab ics`` on tiny synthetic data: results, verdict rules, resume, figures, the
measures against direct computations, hooks removed."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _shared import hook_count, one_thread, small_data, spy_build_model  # noqa: F401 (fixture)
from torch import nn

from bnlab.lab import ics
from bnlab.lab.claims import available_claims
from bnlab.lab.experiment import run_lab
from bnlab.lab.kit import build_model, directions_verdict, plateau_notes
from bnlab.lab.runner import Bench, Cell

TINY = dataclasses.replace(
    ics.ICSConfig.quick(),
    seeds=2,
    train_size=96,
    test_size=32,
    batch_size=16,
    steps=4,
    probe_every=2,
    probe_size=16,
    grad_ics_every=2,
    archs=("mlp-relu",),
    noise_archs=("mlp-relu",),
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ics") / "run"
    return out, run_lab(ics.SPEC, TINY, out, data=small_data(), quick=True)


def test_results_structure_and_figures(finished: tuple[Path, dict]) -> None:
    out, _ = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "ics"
    per_seed = on_disk["raw"]["per_seed"]
    assert set(per_seed) == {"mlp-relu"}
    for variants in per_seed.values():
        assert set(variants) == {"none", "bn", "bn-noise"}
        for metrics in variants.values():
            for key in ("drift", "grad_cos", "grad_rel", "grad_l2", "test_acc"):
                assert len(metrics[key]) == TINY.seeds
                assert all(v is not None and math.isfinite(v) for v in metrics[key])
    assert len(on_disk["verdicts"]) == 3
    # Each verdict is its rule's verdict on these numbers, and holds says the same.
    for verdict, (_, rule) in zip(on_disk["verdicts"], ics.CLAIMS, strict=True):
        expected = rule(on_disk)[1]
        assert verdict["measured"].split(":")[0] == expected
        assert verdict["holds"] == {"supported": True, "not supported": False}.get(expected)
    assert [f["file"] for f in on_disk["figures"]] == ["ics_trajectories.png", "ics_gradient.png"]
    for figure in on_disk["figures"]:
        assert (out / figure["file"]).stat().st_size > 1000
    # Trajectories: one record per probe (steps 0, 2 and the end) for every watched layer.
    unit = on_disk["raw"]["units"][0]
    assert list(unit["trajectory"]) == ["fc2", "fc3", "out"]
    assert [r["step"] for r in unit["trajectory"]["fc2"]] == [0, 2, 4]
    assert set(unit["trajectory"]["fc2"][0]) >= {"mean", "var", "q05", "q50", "q95"}


def test_claims_decide_the_results(finished: tuple[Path, dict]) -> None:
    _, results = finished
    mine = {c.key: c for c in available_claims() if c.experiment == "ics"}
    assert set(mine) == {
        "bn-reduces-ics",
        "bn-reduces-gradient-ics",
        "bn-benefit-survives-covariate-shift",
    }
    rules = dict(ics.CLAIMS)
    for claim, (text, _) in zip(mine.values(), ics.CLAIMS, strict=True):
        evidence, verdict = claim.rule(results)
        assert claim.rule is rules[text]
        assert set(evidence) == {"mlp-relu"}
        assert results["verdicts"][list(rules).index(text)]["measured"].startswith(verdict + ":")


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "mlp-relu-bn-seed1.json").unlink()  # as if killed during that unit
    (cut / "results.json").unlink()
    resumed = run_lab(ics.SPEC, TINY, cut, data=small_data(), resume=True, quick=True)
    assert resumed["units_reused"] == len(list((out / "units").iterdir())) - 1
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


def _synthetic(bn: list[float], none: list[float], bn2: list[float], none2: list[float], key):
    return {
        "raw": {
            "per_seed": {
                "lenet": {"bn": {key: bn}, "none": {key: none}, "bn-noise": {key: bn}},
                "mlp-relu": {"bn": {key: bn2}, "none": {key: none2}, "bn-noise": {key: bn2}},
            }
        }
    }


@pytest.mark.parametrize(
    ("rule", "key", "low", "high"),
    [
        (ics.decide_ics, "drift", "supported", "not supported"),
        (ics.decide_grad_ics, "grad_cos", "not supported", "supported"),
        (ics.decide_noise, "test_acc", "not supported", "supported"),
    ],
)
def test_rules_on_synthetic_numbers(rule, key: str, low: str, high: str) -> None:
    small, big, noisy = [0.1, 0.11, 0.12], [0.5, 0.52, 0.51], [0.1, 0.6, 0.3]
    extra = {"grad_rel": [0.1, 0.1, 0.1]}

    def results(bn, none, bn2, none2):
        r = _synthetic(bn, none, bn2, none2, key)
        for arch in r["raw"]["per_seed"].values():
            for variant in arch.values():
                variant.update(extra)
        return r

    # BN lower on both networks, higher on both, then one clear and one unclear.
    assert rule(results(small, big, small, big))[1] == low
    assert rule(results(big, small, big, small))[1] == high
    assert rule(results(small, big, noisy, big))[1] == ("mixed" if low == "supported" else low)
    assert rule(results(big, small, noisy, small))[1] == ("mixed" if high == "supported" else high)


def test_rules_on_equal_numbers_decide_nothing() -> None:
    """The null: the same numbers with and without BN are no evidence either way."""
    same = [0.3, 0.32, 0.31]
    for rule, key in (
        (ics.decide_ics, "drift"),
        (ics.decide_grad_ics, "grad_cos"),
        (ics.decide_noise, "test_acc"),
    ):
        per_seed = {"lenet": {v: {key: same, "grad_rel": same} for v in ("none", "bn", "bn-noise")}}
        evidence, verdict = rule({"raw": {"per_seed": per_seed}})
        assert verdict == "not supported"
        assert evidence["lenet"]["direction"] == "unclear"
        assert evidence["lenet"]["difference"] == 0.0


def test_rule_evidence_names_the_means() -> None:
    per_seed = {
        "lenet": {
            "none": {"drift": [0.5, 0.52, 0.51], "test_acc": [0.1, 0.1, 0.1]},
            "bn": {"drift": [0.1, 0.11, 0.12], "test_acc": [0.8, 0.81, 0.82]},
            "bn-noise": {"test_acc": [0.7, 0.71, 0.72]},
        }
    }
    evidence, _ = ics.decide_ics({"raw": {"per_seed": per_seed}})
    assert evidence["lenet"]["drift_bn"] == pytest.approx(0.11)
    assert evidence["lenet"]["drift_none"] == pytest.approx(0.51)
    assert evidence["lenet"]["difference"] == pytest.approx(-0.4)
    evidence, verdict = ics.decide_noise({"raw": {"per_seed": per_seed}})
    assert verdict == "supported"
    assert evidence["lenet"]["test_acc_bn"] == pytest.approx(0.81)
    assert evidence["lenet"]["test_acc_bn_noise"] == pytest.approx(0.71)


def test_directions_verdict() -> None:
    assert directions_verdict(["less", "less"], "less") == "supported"
    assert directions_verdict(["unclear", "greater"], "less") == "not supported"
    assert directions_verdict(["less", "unclear"], "less") == "mixed"
    with pytest.raises(ValueError, match="no comparisons"):
        directions_verdict([], "less")


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
    model = build_model("lenet", "bnlab", 0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = ics.gradient_shift(model, x, y, 0.1)
    assert list(got) == ["conv2", "fc1", "fc2", "fc3"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


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


def test_no_hooks_left_after_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_build_model(monkeypatch, ics.kit)
    config = dataclasses.replace(TINY, steps=2)
    ics.measure(config, Cell("mlp-relu", "bn-noise", 0), Bench(small_data(), torch.device("cpu")))
    assert len(built) == 1
    assert hook_count(built[0]) == 0


def test_config_errors_show_the_value() -> None:
    with pytest.raises(ValueError, match="unknown arch 'vgg'; choose from: lenet, mlp-relu"):
        ics.ICSConfig(archs=("vgg",))
    with pytest.raises(ValueError, match="noise arch 'lenet' is not in archs"):
        ics.ICSConfig(archs=("mlp-relu",), noise_archs=("lenet",))
    with pytest.raises(ValueError, match="steps must be > 0, got 0"):
        ics.ICSConfig(steps=0)


def test_plateau_notes_flag_networks_at_chance_level() -> None:
    per_seed = {
        "lenet": {"none": {"train_loss": [2.30, 2.31]}, "bn": {"train_loss": [0.5, 0.6]}},
        "mlp-relu": {"none": {"train_loss": [None]}},
    }
    (note,) = plateau_notes(per_seed)
    assert note.startswith("LeNet (sigmoid), none: final train loss 2.305 is at chance level")
