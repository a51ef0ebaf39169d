"""``shift-mcc``: the MCC against its formula, the shift score, verdict rules, a tiny run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlab.lab import shift_mcc
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.shift_mcc import (
    adversarial_mcc,
    matthews_corrcoef,
    null_threshold,
    shift_images,
)


def tiny() -> shift_mcc.ShiftMccConfig:
    return dataclasses.replace(
        shift_mcc.ShiftMccConfig.quick(),
        sample_size=40,
        calibration_seeds=2,
        hidden=8,
        classifier_steps=10,
        ics_train_size=64,
        probe_size=32,
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


def test_null_threshold() -> None:
    assert null_threshold([0.0, 0.1, -0.1], 3.0) == pytest.approx(0.3)
    assert null_threshold([], 3.0) is None


def _ics_units(bn: list[float], none: list[float]) -> dict[str, list]:
    def unit(v: float) -> dict:
        scores = {n: [{"step": 0, "step_to": 1, "mcc": v}] for n in ("fc1", "fc2")}
        return {"scores": scores, "null": {"fc1": [0.0], "fc2": [0.0]}}

    return {"bn": [unit(v) for v in bn], "none": [unit(v) for v in none]}


def test_verdict_rules_on_synthetic_numbers() -> None:
    raw = {
        "threshold": 0.1,
        "monotone_tolerance": 0.03,
        "dose": {
            "brightness": {
                "levels": [0.0, 0.1, 0.2],
                "mcc": {"0.0": [0.0, 0.0], "0.1": [0.5, 0.5], "0.2": [0.9, 0.9]},
            },
            "noise": {
                "levels": [0.0, 0.1, 0.2],
                "mcc": {"0.0": [0.0, 0.0], "0.1": [0.5, 0.5], "0.2": [0.3, 0.3]},
            },
        },
        "train_test": [0.01, 0.05],
        "internal": _ics_units([0.2, 0.21, 0.19], [0.8, 0.82, 0.79]),
        "layers": ["fc1", "fc2"],
    }
    evidence, verdict = shift_mcc.decide_detects_shift({"raw": raw})
    assert verdict == "mixed"  # noise drops from 0.5 to 0.3: not monotone
    assert evidence["brightness"]["monotone"]
    assert evidence["brightness"]["detected"]
    raw["dose"]["noise"]["mcc"]["0.2"] = [0.6, 0.6]
    assert shift_mcc.decide_detects_shift({"raw": raw})[1] == "supported"
    raw["threshold"] = 0.95
    assert shift_mcc.decide_detects_shift({"raw": raw})[1] == "not supported"
    assert shift_mcc.decide_bn_reduces_ics({"raw": raw})[1] == "supported"
    raw["internal"] = _ics_units([0.8, 0.82, 0.79], [0.2, 0.21, 0.19])
    assert shift_mcc.decide_bn_reduces_ics({"raw": raw})[1] == "not supported"
    assert shift_mcc.decide_train_test({"raw": raw})[1] == "supported"
    raw["train_test"] = [0.99, 0.98]
    assert shift_mcc.decide_train_test({"raw": raw})[1] == "not supported"


def test_tiny_run_writes_results_figures_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("shift-mcc")
    config = tiny()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(96, 96), quick=True)
    for figure in ("shift_dose_response.png", "shift_internal.png"):
        assert (out / figure).is_file()
    raw = results["raw"]
    assert len(raw["calibration"]) == 2
    assert set(raw["dose"]) == set(shift_mcc.SHIFT_KINDS)
    assert len(raw["internal"]["bn"]) == config.seeds
    assert len(results["verdicts"]) == 3
    rules = (
        shift_mcc.decide_detects_shift,
        shift_mcc.decide_bn_reduces_ics,
        shift_mcc.decide_train_test,
    )
    for verdict, rule in zip(results["verdicts"], rules, strict=True):
        expected = rule(results)[1]
        assert verdict["measured"].startswith(expected + ":")
        assert verdict["holds"] == {"supported": True, "not supported": False}.get(expected)
    units = sorted((out / "units").glob("*.json"))
    units[-1].unlink()  # a lost unit is recomputed, the rest reused
    again = run_lab(spec, config, out, data=fake_data(96, 96), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"] == json.loads(json.dumps(raw))


def test_verdict_rules_on_the_null_and_on_split_layers() -> None:
    flat = {"levels": [0.0, 0.1], "mcc": {"0.0": [0.0, 0.01], "0.1": [0.01, -0.01]}}
    raw = {
        "threshold": 0.1,
        "monotone_tolerance": 0.03,
        "dose": {"brightness": flat, "noise": flat},
        "train_test": [0.0, 0.02],
        "internal": _ics_units([0.5, 0.51, 0.49], [0.5, 0.49, 0.51]),
        "layers": ["fc1", "fc2"],
    }
    # The null: no shift scores above the threshold, BN and no BN score alike.
    evidence, verdict = shift_mcc.decide_detects_shift({"raw": raw})
    assert verdict == "not supported"
    assert evidence["noise"] == {"means": [0.005, 0.0], "monotone": True, "detected": False}
    evidence, verdict = shift_mcc.decide_bn_reduces_ics({"raw": raw})
    assert verdict == "not supported"
    assert evidence["direction"] == "unclear"
    # Lower with BN overall, but one layer clearly higher: mixed.
    raw["internal"] = _ics_units([0.2, 0.21, 0.19], [0.8, 0.82, 0.79])
    for u in raw["internal"]["bn"]:
        u["scores"]["fc2"][0]["mcc"] = 0.95
    evidence, verdict = shift_mcc.decide_bn_reduces_ics({"raw": raw})
    assert evidence["by_layer"]["fc2"]["direction"] == "greater"
    assert evidence["by_layer"]["fc1"]["direction"] == "less"
    assert verdict == "mixed"
    # No threshold (no calibration draw): the splits' rule cannot decide.
    raw["threshold"] = None
    assert shift_mcc.decide_train_test({"raw": raw})[1] == "mixed"
