"""``shift-mcc`` (second edition): the MCC against its formula, the shift score, the
planted shifts, each declared claim's rule on synthetic per-seed numbers whose verdict is
known, a tiny run end to end ("no verdict at this budget", figures, resume), config
errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlab.lab import shift_mcc, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.shift_mcc import adversarial_mcc, matthews_corrcoef, shift_images


def tiny() -> shift_mcc.ShiftMccConfig:
    return dataclasses.replace(
        shift_mcc.ShiftMccConfig.quick(),
        sample_size=40,
        hidden=8,
        classifier_steps=10,
        steps=(("relu", 8), ("sigmoid", 8)),
        batch=16,
        train_size=64,
        test_size=96,
        window=2,
        loss_level=5.0,
        read_steps=4,
        step_reads=(4,),
        probe_every=2,
        probe_size=32,
        long_interval=4,
    )


def pearson(a: list[int], b: list[int]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return 0.0 if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40))
def test_mcc_is_the_pearson_correlation_of_the_0_1_vectors(pairs: list[tuple[int, int]]) -> None:
    pred = [p for p, _ in pairs]
    target = [t for _, t in pairs]
    got = matthews_corrcoef(torch.tensor(pred), torch.tensor(target))
    assert got == pytest.approx(pearson(pred, target), abs=1e-12)
    assert -1.0 <= got <= 1.0


def test_mcc_against_the_confusion_formula_and_edge_cases() -> None:
    # TP=3, TN=2, FP=1, FN=2
    pred = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    target = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0])
    expected = (3 * 2 - 1 * 2) / math.sqrt((3 + 1) * (3 + 2) * (2 + 1) * (2 + 2))
    assert matthews_corrcoef(pred, target) == pytest.approx(expected)
    assert matthews_corrcoef(target, target) == 1.0
    assert matthews_corrcoef(1 - target, target) == -1.0
    assert matthews_corrcoef(torch.ones(8), target) == 0.0  # constant predictions
    assert matthews_corrcoef(torch.zeros(8), target) == 0.0
    assert matthews_corrcoef(target, torch.ones(8)) == 0.0  # one class only
    assert matthews_corrcoef(torch.tensor([True, False]), torch.tensor([True, False])) == 1.0


def test_mcc_errors_show_the_value() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(2,\)"):
        matthews_corrcoef(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pred must hold only 0 and 1, got 2"):
        matthews_corrcoef(torch.tensor([0, 2]), torch.tensor([0, 1]))


def test_adversarial_mcc_separates_shifted_samples_and_not_equal_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(100, 6, generator=gen)
    same = torch.randn(100, 6, generator=gen)
    far = torch.randn(100, 6, generator=gen) + 2.0
    assert adversarial_mcc(a, far, seed=0, steps=50)["mcc"] > 0.9
    assert abs(adversarial_mcc(a, same, seed=0, steps=50)["mcc"]) < 0.3
    # a variance change is found through the hidden layer
    wide = 3.0 * torch.randn(100, 6, generator=gen)
    assert adversarial_mcc(a, wide, seed=0, steps=100, hidden=16)["mcc"] > 0.5
    again = adversarial_mcc(a, far, seed=0, steps=50)
    assert again == adversarial_mcc(a, far, seed=0, steps=50)


def test_adversarial_mcc_errors() -> None:
    with pytest.raises(ValueError, match=r"same feature shape, got \(3,\) and \(4,\)"):
        adversarial_mcc(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"holdout must be in \(0, 1\), got 1.5"):
        adversarial_mcc(torch.zeros(5, 3), torch.zeros(5, 3), holdout=1.5)
    with pytest.raises(ValueError, match="at least 2 examples per sample, got 1 and 5"):
        adversarial_mcc(torch.zeros(1, 3), torch.zeros(5, 3))


def test_shift_images_and_unknown_kind() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.full((2, 4), 0.5)
    assert torch.allclose(
        shift_images(x, "brightness", 0.2, generator=gen), torch.full((2, 4), 0.7)
    )
    assert torch.equal(shift_images(x, "brightness", 0.9, generator=gen), torch.ones(2, 4))
    y = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(
        shift_images(y, "contrast", 0.5, generator=gen), torch.tensor([[0.25, 0.75]])
    )
    noisy = shift_images(x, "noise", 0.1, generator=gen)
    assert not torch.equal(noisy, x)
    assert noisy.min() >= 0
    assert noisy.max() <= 1
    with pytest.raises(ValueError, match="unknown shift 'blur'; choose one of: brightness"):
        shift_images(x, "blur", 0.1, generator=gen)


def test_plant_shift_moves_every_feature_by_delta_sd() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 2, 2, generator=gen) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    moved = shift_mcc.plant_shift(x, 0.1)
    assert moved.shape == x.shape
    sd = x.reshape(50, -1).std(dim=0, unbiased=False)
    assert torch.allclose((moved - x).reshape(50, -1), (0.1 * sd).expand(50, -1))
    assert torch.equal(shift_mcc.plant_shift(x, 0.0), x)
    assert shift_mcc.ShiftMccConfig().seed_list == (200, 201, 202, 203, 204)


def test_class_mix_draws_the_declared_share() -> None:
    labels = torch.arange(100) % 10
    pool = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    got = shift_mcc.class_mix(labels, pool, 20, 0.7)
    assert got.numel() == 20
    assert int((labels[got] < 5).sum()) == 14
    assert len(set(got.tolist())) == 20
    assert set(got.tolist()) <= set(pool.tolist())
    # more of classes 0-4 than the pool holds: all of them, the rest from 5-9
    got = shift_mcc.class_mix(labels, pool, 80, 1.0)
    assert int((labels[got] < 5).sum()) == 50


# --- the declared rules on synthetic numbers -------------------------------------------

NOISE = [0.01, -0.02, 0.005, 0.015, -0.01]


def synthetic(**overrides: list[float]) -> dict:
    """Per-seed numbers of every claim: by default a clean detector (null 0, planted
    shifts 0.9, splits 0) and BN lower inside LeNet (0.3 against 0.8)."""
    config = shift_mcc.ShiftMccConfig()
    null = [0.0 + e for e in NOISE]
    values = {
        "null": null,
        "shifted": [0.9 + e for e in NOISE],
        "train-test": [0.0 - e for e in NOISE],
        "bn": [0.3 + e for e in NOISE],
        "none": [0.8] * 5,
    } | overrides
    kinds = [kind for kind, _ in config.planted]
    kinds.append(shift_mcc.internal_key(config.internal_voted))  # inside LeNet
    per_seed = {
        kind: {"shifted": {"mcc": values["shifted"]}, "null": {"mcc": values["null"]}}
        for kind in kinds
    }
    per_seed["null"] = {"null": {"mcc": values["null"]}, "zero": {"mcc": [0.0] * 5}}
    per_seed["splits"] = {"train-test": {"mcc": values["train-test"]}, "null": {"mcc": null}}
    for setting in config.settings:
        per_seed[setting] = {
            arm: {"mcc_at_loss": values[arm], "final_test_acc": [85.0] * 5}
            for arm in ("bn", "none")
        }
    return {
        "raw": {"per_seed": per_seed, "specs": [spec_record(s) for s in shift_mcc.specs(config)]}
    }


def verdicts(results: dict) -> dict[str, str]:
    return {c.key: c.rule(results)[1] for c in shift_mcc.CLAIMS}


def test_rules_on_known_numbers() -> None:
    assert verdicts(synthetic()) == {
        "mcc-detects-covariate-shift": stats.SUPPORTED,
        "mcc-false-positive-on-null": stats.REFUTED,  # the null is 0 within 0.05
        "fashion-mnist-splits-shifted": stats.REFUTED,
        "bn-reduces-ics-mcc": stats.SUPPORTED,
    }
    # a detector that flags everything: the null is far from 0, the splits "differ"
    flags = synthetic(null=[0.5 + e for e in NOISE], **{"train-test": [0.9] * 5})
    got = verdicts(flags)
    assert got["mcc-false-positive-on-null"] == stats.SUPPORTED
    assert got["fashion-mnist-splits-shifted"] == stats.SUPPORTED
    # planted shifts at the null's level: not detected (equivalent): refuted
    blind = synthetic(shifted=[0.0 + e for e in NOISE])
    assert verdicts(blind)["mcc-detects-covariate-shift"] == stats.REFUTED
    # BN equal to no BN within the margin: refuted; higher: refuted
    assert verdicts(synthetic(bn=[0.8 + e for e in NOISE]))["bn-reduces-ics-mcc"] == stats.REFUTED
    assert verdicts(synthetic(bn=[0.95 + e for e in NOISE]))["bn-reduces-ics-mcc"] == stats.REFUTED
    # noise wider than the margin: inconclusive, with a budget
    wide = [0.8 + 20 * e for e in NOISE]
    evidence, verdict = next(c for c in shift_mcc.CLAIMS if c.key == "bn-reduces-ics-mcc").rule(
        synthetic(bn=wide)
    )
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5


def test_one_planted_shift_missed_is_context_dependent() -> None:
    results = synthetic()
    results["raw"]["per_seed"]["class-mix"]["shifted"]["mcc"] = [0.0 - e for e in NOISE]
    evidence, verdict = shift_mcc.CLAIMS[0].rule(results)
    assert verdict == stats.CONTEXT_DEPENDENT
    assert [r["status"] for r in evidence["settings"]] == [
        "better",
        "better",
        "better",
        "equivalent",
        "better",  # the planted shift inside LeNet
    ]
    # the detector blind at the internal size and dimension: not supported either
    results = synthetic()
    inside = shift_mcc.internal_key(shift_mcc.ShiftMccConfig().internal_voted)
    assert inside == "inside LeNet: +0.1 sd"
    results["raw"]["per_seed"][inside]["shifted"]["mcc"] = [0.0 - e for e in NOISE]
    assert shift_mcc.CLAIMS[0].rule(results)[1] == stats.CONTEXT_DEPENDENT


def test_too_few_seeds_and_runs_at_chance() -> None:
    results = synthetic()
    for arms in results["raw"]["per_seed"].values():
        for metrics in arms.values():
            for k in metrics:
                metrics[k] = metrics[k][:4]
    assert set(verdicts(results).values()) == {stats.NO_VERDICT}
    results = synthetic()
    results["raw"]["per_seed"]["relu"]["none"]["final_test_acc"][3] = 9.0
    evidence, verdict = shift_mcc.CLAIMS[3].rule(results)
    assert verdict == stats.SUPPORTED  # the sigmoid setting still votes; relu is excluded
    relu = evidence["settings"][0]
    assert (relu["setting"], relu["n"], relu["status"]) == ("relu", 4, "excluded")
    assert evidence["excluded"][0]["reason"].startswith("never left chance")


# --- a tiny run ------------------------------------------------------------------------


def test_tiny_run_writes_results_figures_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("shift-mcc")
    config = tiny()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(96, 96), quick=True)
    for figure in ("shift_detector.png", "shift_internal.png"):
        assert (out / figure).stat().st_size > 1000
    raw = results["raw"]
    per_seed = raw["per_seed"]
    assert set(per_seed) == {
        "brightness",
        "contrast",
        "noise",
        "class-mix",
        "null",
        "splits",
        "inside LeNet: +0.05 sd",
        "inside LeNet: +0.1 sd",
        "control relu/none",
        "control relu/bn",
        "control sigmoid/none",
        "control sigmoid/bn",
        "relu",
        "sigmoid",
    }
    for delta in config.internal_planted:
        inside = per_seed[shift_mcc.internal_key(delta)]
        assert all(-1 <= v <= 1 for v in inside["shifted"]["mcc"] + inside["null"]["mcc"])
    for key in shift_mcc.control_keys(config):
        assert all(-1 <= v <= 1 for v in per_seed[key]["long"]["mcc"])
    for setting in ("relu", "sigmoid"):
        for arm in ("none", "bn"):
            assert per_seed[setting][arm]["steps_to_level"] == [1, 1]
            assert all(-1 <= v <= 1 for v in per_seed[setting][arm]["mcc_at_loss"])
            assert all(-1 <= v <= 1 for v in per_seed[setting][arm]["mcc_step"])
    unit = raw["units"]["relu"][0]
    # matched loss: the intervals starting in [1, 5) (probes at 2 and 4); matched step: 4
    assert sorted({(s["start"], s["why"]) for s in unit["scores"]}) == [
        (2, "loss"),
        (4, "loss+step"),
    ]
    assert set(unit["null"]) == set(shift_mcc.PROBED)
    # the calibration at the first matched-loss probe (2); the long interval 2 vs 6
    assert set(unit["planted"]) == {"0.05", "0.1"}
    assert all(set(v) == set(shift_mcc.PROBED) for v in unit["planted"].values())
    assert set(unit["long"]) == set(shift_mcc.PROBED)
    shown = {c["claim"] for c in raw["shown"]}
    assert "positive control: t0 vs t0 + 4 above the null" in shown
    assert "internal planted shift detected" in shown
    assert len(results["verdicts"]) == 4
    for verdict, claim in zip(results["verdicts"], shift_mcc.CLAIMS, strict=True):
        expected = claim.rule(results)[1]
        assert expected == stats.NO_VERDICT
        assert verdict["measured"].startswith(expected + ":")
        assert verdict["holds"] is None
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 + 2 * 2 * 2  # detector per seed + (setting x arm x seed)
    units[-1].unlink()  # a lost unit is recomputed, the rest reused
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(96, 96), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"]["per_seed"] == json.loads(json.dumps(per_seed))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"planted": (("blur", 0.1),)}, "unknown planted shift 'blur'; choose from brightness"),
        ({"planted": (("class-mix", 1.5),)}, r"class-mix must be a fraction in \[0, 1\], got 1.5"),
        ({"steps": ()}, "steps is empty"),
        ({"steps": (("tanh", 10),)}, r"lrs has no lr for \('tanh', 'none'\)"),
        ({"steps": (("relu", 0),)}, "steps of 'relu' must be an integer >= 1, got 0"),
        ({"step_reads": (15,)}, r"step_reads must be multiples of probe_every \(20\), got 15"),
        ({"hold": -0.1}, r"hold must be in \[0, 1\], got -0.1"),
        ({"sample_size": 0}, "sample_size must be > 0, got 0"),
        ({"internal_voted": 0.2}, r"internal_voted 0.2 is not in internal_planted \(0.05, 0.1\)"),
        (
            {"long_interval": 30},
            r"long_interval must be a positive multiple of probe_every \(20\), got 30",
        ),
        ({"first_seed": -1}, "first_seed must be an int >= 0, got -1"),
    ],
)
def test_config_errors_show_the_value(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        shift_mcc.ShiftMccConfig(**kw)
