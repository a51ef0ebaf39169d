"""``bnlab lab saturation`` (second edition): a tiny run end to end ("no verdict at this
budget", per-network tuning, figures, resume), the declared rules on synthetic per-seed
numbers whose answer is known (clear effect, equivalence, noise, too few seeds, a run at
chance), the matched-loss readout, the measures on known tensors, no hooks left."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _shared import hook_count, one_thread  # noqa: F401 (fixture)
from torch import nn

from bnlab.lab import saturation, stats
from bnlab.lab.claims import available_claims, spec_record
from bnlab.lab.experiment import run_lab
from bnlab.lab.runner import Bench, Cell, GridRun

TINY = dataclasses.replace(
    saturation.SaturationConfig.quick(),
    seeds=2,
    batch=16,
    steps_sigmoid=8,
    steps_relu=6,
    window=3,
    level_sigmoid=2.5,
    level_relu=2.5,
    probe_every_sigmoid=4,
    probe_every_relu=3,
    probe_size=32,
    level_probes=2,
    level_gap=2,
)


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, fake_data: Callable[..., dict]
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("saturation") / "run"
    return out, run_lab(saturation.SPEC, TINY, out, data=fake_data(96, 64), quick=True)


def test_quick_run_says_no_verdict_with_tables_and_figures(finished: tuple[Path, dict]) -> None:
    out, results = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "saturation"
    raw = on_disk["raw"]
    assert raw["threshold"] == saturation.SATURATION_THRESHOLD
    assert set(raw["per_seed"]) == {"sigmoid", "relu", "sigmoid-common"}
    assert raw["common_lr"] == TINY.common_lr
    assert set(raw["lr"]["sigmoid"].values()) <= set(TINY.lrs_sigmoid)
    assert set(raw["lr"]["relu"].values()) <= set(TINY.lrs_relu)
    sig, relu = raw["per_seed"]["sigmoid"]["none"], raw["per_seed"]["relu"]["bn"]
    assert all(0 <= v <= 1 for v in sig["saturated_at_step"])
    assert sig["zeros_at_step"] == [None, None]  # no ReLU in the sigmoid LeNet
    assert all(0 <= v <= 1 for v in relu["zeros_at_step"])
    assert relu["saturated_at_step"] == [None, None]
    for arms in raw["per_seed"].values():
        for metrics in arms.values():
            assert all(math.isfinite(v) for v in metrics["grad_ratio_at_step"])
            assert all(math.isfinite(v) for v in metrics["grad_rel_ratio_at_step"])
    unit = json.loads((out / "units" / "sigmoid-none-seed0.json").read_text())["value"]
    assert [p["step"] for p in unit["points"]] == [0, 4, 8]
    assert list(unit["points"][0]["saturated"]) == [f"act{k}" for k in range(1, 5)]
    assert list(unit["points"][0]["grad_rms"]) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert list(unit["points"][0]["grad_rel"]) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert unit["at_level"]["train_loss"] <= TINY.level_sigmoid
    window = unit["level_window"]
    assert window[0] == unit["at_level"]
    assert [p["step"] for p in window] == [window[0]["step"] + 2 * k for k in range(len(window))]
    # The common-lr setting: at common_lr, or the tuned run itself when that is the lr.
    for arm in ("none", "bn"):
        common = json.loads((out / "units" / f"sigmoid-common-{arm}-seed0.json").read_text())
        assert common["value"]["lr"] == TINY.common_lr
        if raw["lr"]["sigmoid"][arm] == TINY.common_lr:
            assert common["value"] == {"lr": TINY.common_lr, "same_as": "sigmoid"}
            tuned = raw["per_seed"]["sigmoid"][arm]
            assert raw["per_seed"]["sigmoid-common"][arm] == tuned
    assert len(on_disk["verdicts"]) == 3
    for verdict, claim in zip(on_disk["verdicts"], saturation.CLAIMS, strict=True):
        _, rule_verdict = claim.rule(results)
        assert rule_verdict == stats.NO_VERDICT
        assert verdict["measured"].startswith(rule_verdict + ":")
        assert verdict["holds"] is None
    assert [f["file"] for f in on_disk["figures"]] == ["saturation_matched.png", "saturation.png"]
    for f in on_disk["figures"]:
        assert (out / f["file"]).stat().st_size > 1000
    # tuning: 2 networks x 2 lrs x 2 arms; measured: 2 networks x 2 arms x 2 seeds; the
    # common lr: 2 arms x 2 seeds
    assert len(list((out / "units").glob("*.json"))) == 8 + 8 + 4


def test_claims_name_their_seed_sentence(finished: tuple[Path, dict]) -> None:
    _, results = finished
    mine = {c.key: c for c in available_claims() if c.experiment == "saturation"}
    assert set(mine) == {
        "bn-avoids-saturation",
        "bn-fewer-relu-zeros",
        "bn-alleviates-vanishing-gradients",
    }
    seeds = Path("/work/shared/seeds")
    for claim in mine.values():
        assert claim.source.endswith(".txt")
        assert claim.sentence
        if seeds.is_dir():
            assert claim.sentence in (seeds / claim.source).read_text()
        assert claim.rule(results)[1] == stats.NO_VERDICT


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path, fake_data: Callable[..., dict]
) -> None:
    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "relu-bn-seed0.json").unlink()
    (cut / "results.json").unlink()
    resumed = run_lab(saturation.SPEC, TINY, cut, data=fake_data(96, 64), resume=True, quick=True)
    assert resumed["units_reused"] == 19
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


def _results(metric: str, setting: str, bn: list, none: list, acc=None) -> dict:
    acc = acc or {"bn": [85.0] * len(bn), "none": [80.0] * len(none)}
    per_seed = {
        s: {
            arm: {
                m: values if (s, m) == (setting, metric) else [0.0] * len(values)
                for m in (
                    "saturated_at_loss",
                    "grad_rel_ratio_at_loss",
                    "grad_ratio_at_loss",
                    "zeros_at_loss",
                )
            }
            | {"final_test_acc": acc[arm]}
            for arm, values in (("bn", bn), ("none", none))
        }
        for s in ("sigmoid", "relu")
    }
    # Shown, not voted: a huge effect at the common lr or in the raw ratio changes nothing.
    per_seed["sigmoid-common"] = {
        arm: {m: [5.0 * (arm == "bn")] * len(none) for m in per_seed["sigmoid"]["none"]}
        | {"final_test_acc": [85.0] * len(none)}
        for arm in ("bn", "none")
    }
    if metric != "grad_ratio_at_loss":
        for arm in ("bn", "none"):
            per_seed["sigmoid"][arm]["grad_ratio_at_loss"] = [5.0 * (arm == "bn")] * len(none)
    specs = [spec_record(s) for s in saturation.specs(saturation.SaturationConfig())]
    return {"raw": {"per_seed": per_seed, "specs": specs}}


@pytest.mark.parametrize(
    ("key", "metric", "setting", "sign", "margin"),
    [
        ("bn-avoids-saturation", "saturated_at_loss", "sigmoid", -1, 0.02),
        ("bn-alleviates-vanishing-gradients", "grad_rel_ratio_at_loss", "sigmoid", +1, 0.3),
        ("bn-fewer-relu-zeros", "zeros_at_loss", "relu", -1, 0.05),
    ],
)
def test_rules_on_synthetic_numbers(key, metric, setting, sign, margin) -> None:
    (claim,) = [c for c in saturation.CLAIMS if c.key == key]
    base = [0.50, 0.52, 0.47, 0.55, 0.49]

    def shifted(by: float, wiggle: float = 0.0) -> list[float]:
        return [v + by + wiggle * (-1) ** i for i, v in enumerate(base)]

    def verdict(bn, none=base, acc=None):
        return claim.rule(_results(metric, setting, bn, none, acc))

    assert verdict(shifted(sign * 5 * margin, margin / 20))[1] == stats.SUPPORTED
    assert verdict(shifted(0.0, margin / 100))[1] == stats.REFUTED  # the null: equivalent
    assert verdict(shifted(-sign * 5 * margin, margin / 20))[1] == stats.REFUTED  # opposite
    noisy = [v + d * 4 * margin for v, d in zip(base, (-1, 1, -0.8, 0.9, -0.6), strict=True)]
    evidence, got = verdict(noisy)
    assert got == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    assert verdict(shifted(sign * 5 * margin)[:3], base[:3])[1] == stats.NO_VERDICT
    # A seed that never left chance is excluded (4 pairs left: no verdict).
    acc = {"bn": [85.0] * 5, "none": [80.0, 80.0, 9.0, 80.0, 80.0]}
    evidence, got = verdict(shifted(sign * 5 * margin, margin / 20), base, acc)
    assert got == stats.NO_VERDICT
    assert evidence["excluded"][0]["seed"] == 2
    # A run that never reached the loss level has no value there: excluded.
    evidence, got = verdict([None, *shifted(sign * 5 * margin)[1:]])
    assert got == stats.NO_VERDICT
    assert evidence["excluded"][0]["reason"] == "non-finite value"


def test_specs_follow_the_networks_run() -> None:
    only = saturation.SaturationConfig(networks=("sigmoid",))
    assert [s.name for s in saturation.specs(only)] == [
        "bn-avoids-saturation",
        "bn-alleviates-vanishing-gradients",
    ]
    assert [s.settings for s in saturation.specs(saturation.SaturationConfig())] == [
        ("sigmoid",),
        ("sigmoid",),
        ("relu",),
    ]


def test_read_metrics_at_matched_loss_and_step() -> None:
    def point(step, sat, rms_first, rel_first=0.01):
        return {
            "step": step,
            "train_loss": 0.7,
            "saturated": {"act1": sat, "act2": 3 * sat},
            "zeros": {},
            "grad_rms": {"conv1": rms_first, "fc2": 0.5, "fc3": 0.1},
            "grad_rel": {"conv1": rel_first, "fc2": 0.5, "fc3": 0.1},
        }

    run = {
        "at_level": point(300, 0.01, 0.001),
        "points": [point(0, 0.0, 0.1), point(1500, 0.1, 0.01)],
        "final_train_loss": 0.5,
        "final_test_acc": 80.0,
    }
    got = saturation.read_metrics(saturation.SaturationConfig(), "sigmoid", run)
    assert got["saturated_at_loss"] == pytest.approx(0.02)
    assert got["saturated_at_step"] == pytest.approx(0.2)
    assert got["grad_ratio_at_loss"] == pytest.approx(-2.0)
    assert got["grad_ratio_at_step"] == pytest.approx(-1.0)
    assert got["zeros_at_loss"] is None
    assert got["steps_to_level"] == 300
    never = saturation.read_metrics(
        saturation.SaturationConfig(), "sigmoid", dict(run, at_level=None)
    )
    assert never["saturated_at_loss"] is None
    assert never["grad_rel_ratio_at_loss"] is None
    assert never["steps_to_level"] is None
    assert got["grad_rel_ratio_at_loss"] == pytest.approx(-1.0)
    assert got["level_probes"] == 1
    # The matched-loss readout: each layer's value the mean over the window, then the ratio.
    window = [point(300, 0.01, 0.001, 0.01), point(310, 0.03, 0.003, 0.03)]
    averaged = saturation.read_metrics(
        saturation.SaturationConfig(),
        "sigmoid",
        dict(run, at_level=window[0], level_window=window),
    )
    assert averaged["saturated_at_loss"] == pytest.approx(0.04)
    assert averaged["grad_rel_ratio_at_loss"] == pytest.approx(math.log10(0.02 / 0.1))
    assert averaged["grad_ratio_at_loss"] == pytest.approx(math.log10(0.002 / 0.1))
    assert averaged["level_probes"] == 2
    assert averaged["steps_to_level"] == 300


def test_saturated_and_zero_share_of_known_tensors() -> None:
    z = torch.tensor([-5.0, -4.0, -3.9, 0.0, 3.99, 4.0, 4.01, 10.0])
    assert saturation.saturated_share(z) == pytest.approx(3 / 8)  # |z| > 4: -5, 4.01, 10
    assert saturation.saturated_share(z, threshold=3.95) == pytest.approx(6 / 8)
    # |z| > 4 is where sigmoid' = s (1 - s) falls below 0.0177.
    s = torch.sigmoid(torch.tensor(4.0))
    assert float(s * (1 - s)) == pytest.approx(0.0177, abs=1e-4)
    a = torch.relu(torch.tensor([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.1]]))
    assert saturation.zero_share(a) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match=r"empty tensor of shape \(0, 3\)"):
        saturation.zero_share(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"empty tensor of shape \(0,\)"):
        saturation.saturated_share(torch.zeros(0))


def test_gradient_rms() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    assert saturation.gradient_rms(net) == {}
    net[0].weight.grad = torch.full((3, 2), 2.0)
    net[2].weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    got = saturation.gradient_rms(net)
    assert got["0"] == pytest.approx(2.0)
    assert got["2"] == pytest.approx(5.0 / math.sqrt(3))


def test_probe_gradient_rms_matches_backward_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    got = saturation.saturation_probe(net, x, y)
    assert net[0].weight.grad is None
    torch.nn.functional.cross_entropy(net(x), y).backward()
    assert got["grad_rms"] == pytest.approx(saturation.gradient_rms(net))
    assert got["grad_rel"]["0"] == pytest.approx(
        float(net[0].weight.grad.norm() / net[0].weight.detach().norm())
    )
    assert got["grad_rel"]["2"] == pytest.approx(
        float(net[2].weight.grad.norm() / net[2].weight.detach().norm())
    )
    assert list(got["saturated"]) == ["1"]
    assert got["zeros"] == {}
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert hook_count(net) == 0


def test_no_hooks_left_after_a_unit(fake_data, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[nn.Module] = []
    original = saturation.probed.lenet

    def keep(*args):
        built.append(original(*args))
        return built[-1]

    monkeypatch.setattr(saturation.probed, "lenet", keep)
    config = dataclasses.replace(TINY, steps_sigmoid=2, probe_every_sigmoid=2)
    got = saturation.main_cell(
        config,
        {"sigmoid": {"none": 1.0, "bn": 1.0}},
        Cell("sigmoid", "bn", 0),
        Bench(fake_data(64, 32), torch.device("cpu")),
    )
    assert got["lr"] == 1.0
    assert [p["step"] for p in got["points"]] == [0, 2]
    assert got["metrics"]["final_test_acc"] is not None
    assert len(built) == 1
    assert hook_count(built[0]) == 0
    # The common-lr setting reuses the tuned run when that is at the common lr.
    bench = Bench(fake_data(64, 32), torch.device("cpu"))
    lrs = {"sigmoid": {"none": 1.0, "bn": 3.0}}
    same = saturation.main_cell(config, lrs, Cell("sigmoid-common", "none", 0), bench)
    assert same == {"lr": 1.0, "same_as": "sigmoid"}
    other = saturation.main_cell(config, lrs, Cell("sigmoid-common", "bn", 0), bench)
    assert other["lr"] == config.common_lr
    assert other["metrics"]["final_test_acc"] is not None


def test_config_errors_show_the_value() -> None:
    with pytest.raises(ValueError, match="networks must be among sigmoid, relu, got \\('elu',\\)"):
        saturation.SaturationConfig(networks=("elu",))
    with pytest.raises(ValueError, match=r"steps_sigmoid must be > 0, got -1"):
        saturation.SaturationConfig(steps_sigmoid=-1)
    with pytest.raises(ValueError, match="first_seed must be >= 0, got -1"):
        saturation.SaturationConfig(first_seed=-1)
    with pytest.raises(ValueError, match=r"lrs_relu must be > 0, got \(\)"):
        saturation.SaturationConfig(lrs_relu=())
    with pytest.raises(ValueError, match=r"saturation_margin must be > 0, got 0"):
        saturation.SaturationConfig(saturation_margin=0)
    with pytest.raises(ValueError, match=r"common_seeds must be > 0, got 0"):
        saturation.SaturationConfig(common_seeds=0)
    with pytest.raises(ValueError, match=r"level_probes must be > 0, got 0"):
        saturation.SaturationConfig(level_probes=0)


def test_common_setting_runs_on_the_first_seeds_and_shares_tuned_runs() -> None:
    config = saturation.SaturationConfig()
    assert config.settings == ("sigmoid", "relu", "sigmoid-common")
    assert saturation.SaturationConfig(networks=("relu",)).settings == ("relu",)
    cells = saturation.main_grid(config).cells()
    common = sorted({c.seed for c in cells if c.setting == "sigmoid-common"})
    assert common == list(range(config.first_seed, config.first_seed + config.common_seeds))
    assert len(cells) == 2 * 2 * config.seeds + 2 * config.common_seeds
    got = saturation.shared_runs(
        GridRun(
            [Cell("sigmoid", "none", 0), Cell("sigmoid-common", "none", 0)],
            [{"lr": 1.0, "metrics": {"x": 1}}, {"lr": 1.0, "same_as": "sigmoid"}],
        )
    )
    assert got.results[1] == {"lr": 1.0, "metrics": {"x": 1}}
