"""``input-norm``: the standardizers, the models, the conditioning, the lr rule, a tiny run
end to end (no verdict, figures, resume), the declared rule on synthetic per-seed numbers
whose answer is known (including the null and too few seeds), config errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab import input_norm, kit, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab


def test_standardizers_give_mean_zero_std_one(fake_data) -> None:
    images = fake_data()["train_images"]
    x = images.float().div(255).unsqueeze(1)
    assert input_norm.standardizer(images, "raw", 0.05) is None
    g = input_norm.standardizer(images, "global", 1e-6)(x)
    assert abs(float(g.mean())) < 1e-4
    assert abs(float(g.std()) - 1) < 1e-4
    p = input_norm.standardizer(images, "per_pixel", 1e-6)(x)
    varying = x.std(0)[0] > 1e-3
    torch.testing.assert_close(
        p.mean(0)[0][varying], torch.zeros(int(varying.sum())), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        p.std(0)[0][varying], torch.ones(int(varying.sum())), atol=1e-3, rtol=0
    )


def test_per_pixel_std_is_clamped() -> None:
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)  # constant pixels: std 0
    s = input_norm.standardizer(images, "per_pixel", 0.05)
    assert float(s.std.min()) == pytest.approx(0.05)


def test_errors_name_the_value() -> None:
    with pytest.raises(
        ValueError, match="unknown inputs 'zca'; choose one of: raw, global, per_pixel"
    ):
        input_norm.standardizer(torch.zeros(2, 28, 28, dtype=torch.uint8), "zca", 0.05)
    with pytest.raises(ValueError, match=r"std must be > 0 everywhere, got minimum 0\.0"):
        input_norm.Standardize(torch.zeros(()), torch.zeros(()))
    with pytest.raises(ValueError, match="unknown model 'cnn'; choose one of: softmax, mlp"):
        input_norm.build_model(input_norm.InputNormConfig.quick(), "cnn", None)


def test_models_have_no_norm_and_take_the_transform_first(fake_data) -> None:
    config = input_norm.InputNormConfig.quick()
    pre = input_norm.standardizer(fake_data()["train_images"], "global", 0.05)
    softmax = input_norm.build_model(config, "softmax", pre)
    assert softmax[0] is pre
    assert sum(p.numel() for p in softmax.parameters()) == 784 * 10 + 10
    mlp = input_norm.build_model(config, "mlp", None)
    assert not any("Norm" in type(m).__name__ for m in mlp.modules())
    assert mlp(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_conditioning_of_standardized_inputs(fake_data) -> None:
    images = fake_data(256, 8)["train_images"]
    raw = input_norm.conditioning(images, None)
    per = input_norm.conditioning(images, input_norm.standardizer(images, "per_pixel", 1e-3))
    # per-pixel standardization gives unit variances: the covariance's trace is the count
    # of varying pixels, and its median eigenvalue spread is smaller than raw pixels'
    assert per["covariance_condition_median"] < raw["covariance_condition_median"]
    assert raw["second_moment_max"] > raw["covariance_max"]  # the mean adds a direction
    # an exact case: two independent unit-variance inputs have condition 1
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    ev = torch.linalg.eigvalsh(x.T @ x / 3)
    assert float(ev.max() / ev.min()) == pytest.approx(1.0)


def test_choose_lrs_and_grid_edges() -> None:
    tuning = {"softmax": {"raw": {0.1: 0.5, 1.0: math.nan, 0.01: 0.6}, "global": {0.1: None}}}
    lrs = kit.paired.choose_lrs(tuning)
    assert lrs == {"softmax": {"raw": 0.1, "global": None}}
    assert kit.paired.at_edge((0.01, 0.1, 1.0), {"m": {"a": 0.01, "b": 0.1, "c": 1.0}}) == [
        "m/a",
        "m/c",
    ]


def tiny_config(**kw) -> input_norm.InputNormConfig:
    tiny = {"train_size": 64, "test_size": 32, "batch": 16, "hidden": 8}
    return dataclasses.replace(input_norm.InputNormConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("input-norm")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    raw = results["raw"]
    for figure in ("input_norm.png", "input_norm_tuning.png"):
        assert (out / figure).is_file()
    assert set(raw["conditioning"]) == set(input_norm.INPUTS)
    assert set(raw["lr"]) == set(input_norm.MODELS)
    for arms in raw["lr"].values():
        assert set(arms) == set(input_norm.INPUTS)
        assert all(lr in config.lrs for lr in arms.values())
    assert set(raw["per_seed"]) == {
        "softmax, global",
        "softmax, per_pixel",
        "mlp, global",
        "mlp, per_pixel",
    }
    (verdict,) = results["verdicts"]
    assert verdict["holds"] is None
    assert verdict["measured"].startswith("no verdict at this budget: ")
    assert verdict["measured"].startswith(input_norm.CLAIMS[0].rule(results)[1] + ":")
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 3 * 2 + 2 * 3 * 2 + 1  # tuning + measured + conditioning
    (out / "units" / "mlp-per_pixel-seed1.json").unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"]["per_seed"]["mlp, per_pixel"] == raw["per_seed"]["mlp, per_pixel"]


NOISE = np.array([0.002, -0.004, 0.001, 0.003, -0.002])


def synthetic(standardized: dict[tuple[str, str], float], *, noise=NOISE, raw_loss=0.5) -> dict:
    """Five seeds: raw loss ``raw_loss``, each (model, standardization) its given loss
    (``raw_loss`` where not given) plus ``noise``; test accuracy 80 %."""
    config = input_norm.InputNormConfig()
    per_seed = {}
    for m in input_norm.MODELS:
        for i in ("global", "per_pixel"):
            value = standardized.get((m, i), raw_loss)
            per_seed[f"{m}, {i}"] = {
                "standardized": {
                    "train_loss": list(value + noise),
                    "test_acc": [80.0] * len(noise),
                },
                "raw": {"train_loss": [raw_loss] * len(noise), "test_acc": [80.0] * len(noise)},
            }
    return {
        "raw": {"per_seed": per_seed, "specs": [spec_record(s) for s in input_norm.specs(config)]}
    }


LOWER = {(m, i): 0.4 for m in input_norm.MODELS for i in ("global", "per_pixel")}


@pytest.mark.parametrize(
    ("loss", "verdict"),
    [
        (LOWER, stats.SUPPORTED),  # lower in every setting
        ({}, stats.REFUTED),  # the null: equal within the margin everywhere
        ({k: 0.6 for k in LOWER}, stats.REFUTED),  # higher everywhere
        ({("softmax", "per_pixel"): 0.4}, stats.CONTEXT_DEPENDENT),  # lower in one, equal in 3
    ],
)
def test_rule_on_known_numbers(loss: dict, verdict: str) -> None:
    evidence, got = input_norm.CLAIMS[0].rule(synthetic(loss))
    assert got == verdict
    assert len(evidence["settings"]) == 4


def test_rule_on_noise_and_too_few_seeds() -> None:
    wide = np.array([0.05, -0.08, 0.06, -0.04, 0.01])
    evidence, verdict = input_norm.CLAIMS[0].rule(synthetic({}, noise=wide))
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    assert input_norm.CLAIMS[0].rule(synthetic(LOWER, noise=NOISE[:3]))[1] == stats.NO_VERDICT


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lrs": ()}, r"lrs must be positive values, got \(\)"),
        ({"lrs": (0.1, -1.0)}, "lrs must be positive values"),
        ({"epochs": 0}, "epochs must be > 0, got 0"),
        ({"margin": 0.0}, "margin must be > 0, got 0.0"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        input_norm.main_grid(tiny_config(**kw))
