"""``gan``: the Fréchet distance against closed forms, the declared rules on synthetic
per-seed numbers whose answer is known (clear effect, equivalence, the null with noise,
too few seeds, collapsed and non-finite runs), one GAN cell, a quick run end to end, config errors.
The networks: tests/models/test_gan_models.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab import gan, stats
from bnlab.lab.claims import spec_record
from bnlab.lab.experiment import get_lab, run_lab, seeded
from bnlab.lab.gan import feature_stats, frechet_distance, frechet_distance_of, sqrtm_psd
from bnlab.lab.runner import Bench, Cell
from bnlab.models.gan import Discriminator, Generator

GBN_DBN, REF, GNONE_DSN = "gbn-dbn", "gbn-dsn", "gnone-dsn"


def tiny_config(**kw) -> gan.GanConfig:
    tiny = {
        "seeds": 2,
        "steps": 6,
        "batch_size": 16,
        "latent": 8,
        "g_hidden": (16, 32),
        "d_hidden": (32, 16),
        "train_size": 96,
        "test_size": 64,
        "fd_samples": 48,
        "log_every": 2,
    }
    return dataclasses.replace(gan.GanConfig.quick(), **(tiny | kw))


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


def synthetic(means: dict[str, float], noise: dict[str, np.ndarray] | None = None) -> dict:
    """Results with 5 seeds per arm: ``mean + small per-seed noise`` of log FD, and every
    run well away from chance."""
    rng = np.random.default_rng(0)
    arms = {}
    for arm, mean in means.items():
        values = mean + (noise or {}).get(arm, rng.normal(0.0, 0.01, 5))
        arms[arm] = {"log_fd": [float(v) for v in values], "fd_drop": [0.9] * 5}
    config = dataclasses.replace(gan.GanConfig(), seeds=5)
    return {
        "raw": {
            "per_seed": {"": arms},
            "specs": [spec_record(s) for s in gan.specs(config)],
        }
    }


def verdicts(results: dict) -> list[str]:
    return [c.rule(results)[1] for c in gan.CLAIMS]


def test_rules_on_known_numbers() -> None:
    # BN in D 0.5 higher than the reference (FD x1.65), G without BN 0.4 higher: both hold
    clear = {GBN_DBN: 0.5, REF: 0.0, GNONE_DSN: 0.4}
    assert verdicts(synthetic(clear)) == [stats.SUPPORTED, stats.SUPPORTED]
    # every arm equal within 0.01 (margin 0.1): both refuted (equivalence shown)
    assert verdicts(synthetic(dict.fromkeys(clear, 0.0))) == [stats.REFUTED, stats.REFUTED]
    # BN in D better by 0.5 and G without BN better by 0.4: refuted (significant, opposite)
    opposite = {GBN_DBN: -0.5, REF: 0.0, GNONE_DSN: -0.4}
    assert verdicts(synthetic(opposite)) == [stats.REFUTED, stats.REFUTED]


def test_rule_on_the_null_with_noise_is_inconclusive() -> None:
    """Equal means, seed noise of about 0.3 in log FD: neither a difference nor
    equivalence within 0.1 is shown; the verdict says how many seeds would decide."""
    noisy = {GBN_DBN: np.array([0.4, -0.2, 0.3, -0.4, 0.1])}
    evidence, verdict = gan.CLAIMS[0].rule(
        synthetic({GBN_DBN: 0.0, REF: 0.0, GNONE_DSN: 0.0}, noisy)
    )
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    assert "would give 80% power" in evidence["budget_advice"]


def test_too_few_seeds_give_no_verdict_and_collapsed_runs_count() -> None:
    results = synthetic({GBN_DBN: 0.5, REF: 0.0, GNONE_DSN: 0.4})
    # a collapsed run (FD hardly dropped) counts at its log FD: not excluded (the rule
    # changed after the b8b3f9c run: it used to be excluded as "at chance")
    results["raw"]["per_seed"][""][GBN_DBN]["fd_drop"][0] = 0.1
    evidence, verdict = gan.CLAIMS[0].rule(results)
    assert verdict == stats.SUPPORTED
    assert not evidence.get("excluded")
    assert evidence["settings"][0]["n"] == 5
    # a non-finite seed (no value) is excluded: 4 pairs left < 5
    results["raw"]["per_seed"][""][GBN_DBN]["log_fd"][0] = None
    evidence, verdict = gan.CLAIMS[0].rule(results)
    assert verdict == stats.NO_VERDICT
    assert evidence["excluded"][0]["seed"] == 0
    assert gan.CLAIMS[1].rule(results)[1] == stats.SUPPORTED  # the other claim's arms are fine
    short = synthetic({GBN_DBN: 0.5, REF: 0.0, GNONE_DSN: 0.4})
    for arm in short["raw"]["per_seed"][""].values():
        for metric in arm:
            arm[metric] = arm[metric][:3]
    assert verdicts(short) == [stats.NO_VERDICT, stats.NO_VERDICT]


def test_a_non_finite_run_counts_at_the_worst_log_fd() -> None:
    arms = {
        GBN_DBN: {"log_fd": [0.5, None, 0.4]},
        REF: {"log_fd": [0.0, 0.1, 2.0]},
        GNONE_DSN: {"log_fd": [None, None, None]},
    }
    nonfinite = {GBN_DBN: [False, True, False], REF: [False] * 3, GNONE_DSN: [True] * 3}
    gan.count_failures(arms, nonfinite)
    assert arms[GBN_DBN]["log_fd"] == [0.5, 2.0, 0.4]
    assert arms[GNONE_DSN]["log_fd"] == [2.0, 2.0, 2.0]
    assert arms[REF]["log_fd"] == [0.0, 0.1, 2.0]
    assert arms[GBN_DBN]["nonfinite"] == [False, True, False]
    # no finite value anywhere: nothing to count them at
    empty = {REF: {"log_fd": [None]}}
    gan.count_failures(empty, {REF: [True]})
    assert empty[REF]["log_fd"] == [None]


def test_bn_against_no_norm_in_d_under_each_generator() -> None:
    per_seed = {
        "gbn-dbn": {"log_fd": [0.3, 0.5, 0.4]},
        "gbn-dnone": {"log_fd": [0.0, 0.3, 0.1]},
        "gnone-dbn": {"log_fd": [2.3, 2.3, 2.3]},
        "gnone-dnone": {"log_fd": [1.0, 1.4, 1.2]},
    }
    rows = {r["arm"]: r for r in gan.bn_against_no_norm_in_d(per_seed)}
    assert rows["gbn-dbn"]["reference"] == "gbn-dnone"
    assert rows["gbn-dbn"]["diff"] == pytest.approx(0.8 / 3)
    assert rows["gbn-dbn"]["ratio"] == pytest.approx(math.exp(0.8 / 3))
    assert rows["gnone-dbn"]["diff"] == pytest.approx(1.1)
    assert rows["gnone-dbn"]["n"] == 3


def test_arms_share_initial_weights_and_data() -> None:
    config = tiny_config()

    def weights(arm: str) -> list[torch.Tensor]:
        g_norm, d_norm = gan.ARMS[arm]
        with seeded(3):
            g = Generator(config.latent, config.g_hidden, g_norm)
            d = Discriminator(d_norm, config.d_hidden)
        linears = [m for m in [*g.modules(), *d.modules()] if isinstance(m, torch.nn.Linear)]
        return [
            m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            for m in linears
        ]

    reference = weights("gnone-dnone")
    for arm in gan.ARMS:
        for a, b in zip(weights(arm), reference, strict=True):
            torch.testing.assert_close(a, b)


def test_one_cell(fake_data) -> None:
    config = tiny_config()
    data = fake_data(96, 64)
    net = gan._load_feature_net(gan._feature_net(config, data, "cpu"))
    real = gan._outputs(net, data["test_images"].float().div(255).unsqueeze(1))[0]
    space = gan.FeatureSpace(net, feature_stats(real))
    bench = Bench(gan.GanData(data["train_images"], space), torch.device("cpu"))
    got = gan.measure(config, Cell("", REF, 0), bench)
    m = got["metrics"]
    assert math.isclose(m["log_fd"], math.log(m["fd"]))
    assert m["fd_drop"] == pytest.approx(max(0.0, 1 - m["fd"] / m["fd_init"]))
    assert m["fd_batch_stats"] is not None
    assert m["fd_batch_stats"] >= 0
    assert 0 <= m["class_entropy"] <= math.log(10) + 1e-9
    assert [h["step"] for h in got["history"]] == [2, 4, 6]
    assert len(got["samples"]) == 16
    assert len(got["samples"][0]) == 784
    # no BN in the generator: no batch-statistics FD
    assert gan.measure(config, Cell("", GNONE_DSN, 0), bench)["metrics"]["fd_batch_stats"] is None
    # the same seed gives the same numbers
    assert gan.measure(config, Cell("", REF, 0), bench)["metrics"] == m


def test_sampling_with_batch_statistics_keeps_the_moving_averages() -> None:
    with seeded(0):
        g = Generator(8, (16,), "bn")
    g.train()
    g(torch.randn(32, 8))
    before = {k: v.clone() for k, v in g.state_dict().items()}
    images = gan._sample(g, 40, 16, seed=5)
    assert images.shape == (40, 1, 28, 28)
    assert images.min() >= 0
    assert images.max() <= 1
    for k, v in g.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert not torch.equal(images, gan._sample(g, 40, None, seed=5))  # eval mode differs


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("gan")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(96, 64), quick=True)
    raw = results["raw"]
    arms = raw["per_seed"][""]
    assert set(arms) == set(gan.ARMS)
    assert all(len(m["log_fd"]) == config.seeds for m in arms.values())
    assert all(v is None or math.isfinite(v) for m in arms.values() for v in m["fd"])
    assert raw["reference"] == REF
    assert [r["arm"] for r in raw["shown_bn_vs_no_norm_in_d"]] == ["gnone-dbn", "gbn-dbn"]
    assert set(raw["collapsed"]) == set(gan.ARMS)
    for figure in ("gan_fd.png", "gan_samples.png"):
        assert (out / figure).is_file()
    for verdict, claim in zip(results["verdicts"], gan.CLAIMS, strict=True):
        shown = claim.rule(results)[1]
        assert shown == stats.NO_VERDICT
        assert verdict["measured"].startswith(shown + ":")
        assert verdict["holds"] is None
    (out / "units" / "gbn-dbn-seed1.json").unlink()
    (out / "units" / "feature-net.json").unlink()  # the feature network is retrained the same
    again = run_lab(spec, config, out, data=fake_data(96, 64), resume=True, quick=True)
    assert again["units_reused"] == 1 + len(gan.ARMS) * config.seeds - 2
    assert again["raw"] == json.loads(json.dumps(raw))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arms": ("gbn-dsn", "bn")}, "unknown arm 'bn'; choose from: gnone-dnone"),
        ({"arms": ("gbn-dsn", "gbn-dbn")}, "must include the claims' arms .* missing gnone-dsn"),
        ({"steps": 0}, "steps must be > 0, got 0"),
        ({"margin": -0.1}, "margin must be > 0, got -0.1"),
        ({"fd_samples": 1}, "fd_samples must be >= 2, got 1"),
        ({"chance_drop": 1.0}, r"chance_drop must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)
