"""``gan``: the Fréchet distance against closed forms, the verdict rule on synthetic
numbers and the null, a tiny run. The networks: tests/models/test_gan_models.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from bnlab.lab import gan
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.gan import feature_stats, frechet_distance, frechet_distance_of, sqrtm_psd


def spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_sqrtm_psd_squares_back_and_clips_rounding_noise() -> None:
    m = spd(5, 0)
    root = sqrtm_psd(m)
    assert torch.allclose(root @ root, m, atol=1e-10)
    assert torch.allclose(root, root.T)
    v = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64) - 1e-14 * torch.eye(2)
    assert torch.isfinite(sqrtm_psd(v)).all()


def test_identical_sets_have_distance_zero() -> None:
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-9)


def test_shifted_samples_give_the_squared_shift() -> None:
    x = torch.randn(300, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    assert frechet_distance_of(x, x + shift) == pytest.approx(5.25, rel=1e-9)


def test_gaussians_against_the_closed_forms() -> None:
    mu1 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    a = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)
    # diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    # general covariances: tr((S1 S2)^{1/2}) = sum of sqrt of the eigenvalues of S1 S2
    s1, s2 = spd(4, 2), spd(4, 3)
    m1 = torch.zeros(4, dtype=torch.float64)
    m2 = torch.ones(4, dtype=torch.float64)
    cross = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    direct = 4.0 + s1.trace() + s2.trace() - 2 * cross
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(float(direct), rel=1e-9)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(
        frechet_distance(m2, s2, m1, s1), rel=1e-9
    )


def test_feature_stats_match_torch_cov() -> None:
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(4))
    mu, cov = feature_stats(x)
    assert mu.dtype == torch.float64
    assert torch.allclose(cov, torch.cov(x.double().T), atol=1e-12)


def test_errors_show_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected a square matrix, got shape \(2, 3\)"):
        sqrtm_psd(torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match=r"expected features \(N, D\) with N >= 2, got shape \(1, 3\)"
    ):
        feature_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"cov2 must have shape \(2, 2\), got \(3, 3\)"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="unknown gan variant 'bn'; choose one of: none"):
        gan.grid(dataclasses.replace(gan.GanConfig.quick(), variants=("bn",)))


def test_verdict_rule_on_synthetic_numbers() -> None:
    fd = {
        "none": [10.0, 11.0, 10.5],
        "ln": [12.0, 12.5, 11.5],
        "bn-separate": [20.0, 21.0, 19.0],
        "bn-joint": [30.0, 31.0, 29.0],
    }
    evidence, verdict = gan.decide_bn_unsuited({"raw": {"fd": fd}})
    assert verdict == "supported"
    assert evidence["reference"] == "none"
    assert evidence["joint_vs_separate"]["direction"] == "greater"
    fd["bn-joint"] = [5.0, 5.5, 4.5]
    assert gan.decide_bn_unsuited({"raw": {"fd": fd}})[1] == "not supported"
    fd["bn-joint"] = [10.0, 12.0, 11.0]
    assert gan.decide_bn_unsuited({"raw": {"fd": fd}})[1] == "mixed"
    fd["bn-joint"] = [None, None, None]  # every BN run diverged: BN is worse
    assert gan.decide_bn_unsuited({"raw": {"fd": fd}})[1] == "supported"
    # The reference is the better non-BN discriminator (here LayerNorm): BN with separate
    # batches is as good as it, with one joint batch worse: mixed.
    fd["ln"], fd["none"] = [8.0, 8.5, 7.5], [10.0, 11.0, 10.5]
    fd["bn-separate"], fd["bn-joint"] = [8.2, 8.0, 8.4], [20.0, 21.0, 19.0]
    evidence, verdict = gan.decide_bn_unsuited({"raw": {"fd": fd}})
    assert evidence["reference"] == "ln"
    assert evidence["bn-separate"]["direction"] == "unclear"
    assert evidence["bn-joint"]["direction"] == "greater"
    assert verdict == "mixed"
    # No non-BN reference: nothing to compare with.
    assert gan.decide_bn_unsuited({"raw": {"fd": {"bn-joint": [1.0]}}})[1] == "mixed"


def test_verdict_rule_on_the_null() -> None:
    """Every discriminator equally good: BN is neither worse nor better."""
    same = [10.0, 11.0, 10.5]
    fd = dict.fromkeys(("none", "ln", "bn-separate", "bn-joint"), same)
    evidence, verdict = gan.decide_bn_unsuited({"raw": {"fd": fd}})
    assert verdict == "mixed"
    for v in ("bn-separate", "bn-joint", "joint_vs_separate"):
        assert evidence[v]["diff"] == pytest.approx(0.0, abs=1e-12)
        assert evidence[v]["direction"] == "unclear"


def test_tiny_run_writes_results_figures_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("gan")
    config = dataclasses.replace(
        gan.GanConfig.quick(),
        steps=5,
        batch_size=16,
        train_size=64,
        fd_samples=32,
        feature_train_size=64,
        log_every=2,
    )
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(96, 64), quick=True)
    raw = results["raw"]
    assert set(raw["fd"]) == set(gan.VARIANTS)
    assert all(len(v) == config.seeds for v in raw["fd"].values())
    assert all(v is None or (math.isfinite(v) and v >= 0) for vs in raw["fd"].values() for v in vs)
    for figure in ("gan_fd.png", "gan_samples.png"):
        assert (out / figure).is_file()
    shown = gan.decide_bn_unsuited(results)[1]
    assert results["verdicts"][0]["measured"].startswith(shown + ": mean FD ")
    assert results["verdicts"][0]["holds"] == {"supported": True, "not supported": False}.get(shown)
    (out / "units" / "bn-joint-seed1.json").unlink()
    (out / "units" / "feature-net.json").unlink()  # the feature network is retrained the same
    again = run_lab(spec, config, out, data=fake_data(96, 64), resume=True, quick=True)
    assert again["units_reused"] == 1 + len(gan.VARIANTS) * config.seeds - 2
    assert again["raw"] == json.loads(json.dumps(raw))
