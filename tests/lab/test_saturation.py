"""``bnlab lab saturation`` on tiny synthetic data: results, verdict rules, resume,
figure, the measures on known tensors, no hooks left."""

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

from bnlab.lab import saturation
from bnlab.lab.claims import available_claims
from bnlab.lab.experiment import run_lab
from bnlab.lab.runner import Bench, Cell

TINY = dataclasses.replace(
    saturation.SaturationConfig.quick(),
    seeds=2,
    archs=("mlp-sigmoid", "mlp-relu"),
    train_size=96,
    test_size=32,
    batch_size=16,
    steps=4,
    probe_every=2,
    probe_size=16,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("saturation") / "run"
    return out, run_lab(saturation.SPEC, TINY, out, data=small_data(), quick=True)


def test_results_structure_and_figure(finished: tuple[Path, dict]) -> None:
    out, _ = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "saturation"
    assert on_disk["raw"]["threshold"] == saturation.SATURATION_THRESHOLD
    per_seed = on_disk["raw"]["per_seed"]
    assert set(per_seed) == {"mlp-sigmoid", "mlp-relu"}
    sig, relu = per_seed["mlp-sigmoid"]["none"], per_seed["mlp-relu"]["bn"]
    assert all(0 <= v <= 1 for v in sig["saturated"])
    assert sig["zeros"] == [None, None]  # no ReLU in the sigmoid MLP
    assert all(0 <= v <= 1 for v in relu["zeros"])
    assert relu["saturated"] == [None, None]
    for variants in per_seed.values():
        for metrics in variants.values():
            assert all(math.isfinite(v) for v in metrics["grad_ratio_log10"])
    unit = next(u for u in on_disk["raw"]["units"] if u["arch"] == "mlp-sigmoid")
    assert unit["init_scale"] == TINY.hard_init_scale
    assert [p["step"] for p in unit["probes"]] == [0, 2, 3]
    assert list(unit["probes"][0]["saturated"]) == [f"act{k}" for k in range(1, 7)]
    assert list(unit["probes"][0]["grad_rms"]) == [f"fc{k}" for k in range(1, 7)] + ["out"]
    assert len(on_disk["verdicts"]) == 3
    for verdict, (_, rule) in zip(on_disk["verdicts"], saturation.CLAIMS, strict=True):
        expected = rule(on_disk)[1]
        assert verdict["measured"].split(":")[0] == expected
        assert verdict["holds"] == {"supported": True, "not supported": False}.get(expected)
    assert [f["file"] for f in on_disk["figures"]] == ["saturation.png"]
    assert (out / "saturation.png").stat().st_size > 1000


def test_claims_decide_the_results(finished: tuple[Path, dict]) -> None:
    _, results = finished
    mine = {c.key: c for c in available_claims() if c.experiment == "saturation"}
    assert set(mine) == {
        "bn-avoids-saturation",
        "bn-fewer-relu-zeros",
        "bn-alleviates-vanishing-gradients",
    }
    for claim, (_, rule), shown in zip(
        mine.values(), saturation.CLAIMS, results["verdicts"], strict=True
    ):
        assert claim.source.endswith(".txt")
        assert claim.rule is rule
        evidence, verdict = claim.rule(results)
        assert shown["measured"].startswith(verdict + ":")
        assert evidence


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "mlp-relu-bn-seed0.json").unlink()
    (cut / "results.json").unlink()
    resumed = run_lab(saturation.SPEC, TINY, cut, data=small_data(), resume=True, quick=True)
    assert resumed["units_reused"] == 7
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


def _results(metric: str, bn: dict[str, list], none: dict[str, list]) -> dict:
    return {
        "raw": {
            "per_seed": {
                arch: {"bn": {metric: bn[arch]}, "none": {metric: none[arch]}} for arch in bn
            }
        }
    }


@pytest.mark.parametrize(
    ("rule", "metric", "archs", "wanted"),
    [
        (saturation.decide_saturation, "saturated", ("lenet", "mlp-sigmoid"), "less"),
        (saturation.decide_relu_zeros, "zeros", ("mlp-relu",), "less"),
        (saturation.decide_vanishing, "grad_ratio_log10", ("lenet", "mlp-sigmoid"), "greater"),
    ],
)
def test_rules_on_synthetic_numbers(rule, metric: str, archs: tuple, wanted: str) -> None:
    small, big, noisy = [0.1, 0.11, 0.12], [0.5, 0.52, 0.51], [0.1, 0.9, 0.4]
    good, bad = (small, big) if wanted == "less" else (big, small)
    assert rule(_results(metric, dict.fromkeys(archs, good), dict.fromkeys(archs, bad)))[1] == (
        "supported"
    )
    assert rule(_results(metric, dict.fromkeys(archs, bad), dict.fromkeys(archs, good)))[1] == (
        "not supported"
    )
    if len(archs) == 2:
        bn = {archs[0]: good, archs[1]: noisy}
        assert rule(_results(metric, bn, dict.fromkeys(archs, bad)))[1] == "mixed"
    # Networks without the quantity (None everywhere) are left out of the decision.
    empty = {arch: [None] for arch in archs}
    evidence, verdict = rule(_results(metric, empty, empty))
    assert evidence == {}
    assert verdict == "mixed"  # nothing to decide from
    # The null: equal numbers on every network decide nothing.
    evidence, verdict = rule(
        _results(metric, dict.fromkeys(archs, good), dict.fromkeys(archs, good))
    )
    assert verdict == "not supported"
    assert {e["direction"] for e in evidence.values()} == {"unclear"}


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


def test_no_hooks_left_after_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    built = spy_build_model(monkeypatch, saturation.kit)
    config = dataclasses.replace(TINY, steps=2)
    saturation.measure(
        config, Cell("mlp-sigmoid", "bn", 0), Bench(small_data(), torch.device("cpu"))
    )
    assert len(built) == 1
    assert hook_count(built[0]) == 0


def test_config_errors_show_the_value() -> None:
    with pytest.raises(ValueError, match="unknown arch 'vgg'; choose from: lenet"):
        saturation.SaturationConfig(archs=("vgg",))
    with pytest.raises(ValueError, match=r"hard_init_scale must be > 0, got -1\.0"):
        saturation.SaturationConfig(hard_init_scale=-1.0)
