"""Tests of bnlab.lab.stats: known answers, Holm, TOST, the four verdicts, the null, power."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as st

from bnlab.lab.stats import (
    CONTEXT_DEPENDENT,
    INCONCLUSIVE,
    NO_VERDICT,
    REFUTED,
    SUPPORTED,
    ChanceRule,
    ClaimSpec,
    bootstrap_interval,
    claim_rows,
    evaluate_claim,
    evaluate_experiment,
    finite_paired_difference,
    holm,
    interval_cells,
    left_chance,
    paired_difference,
    power,
    seeds_for_power,
    tost,
    welch_difference,
)

# A fixed zero-mean pattern of per-seed noise (SD ~0.0016), so synthetic answers are known.
NOISE = np.array([0.001, -0.002, 0.0005, 0.0015, -0.001, 0.002, -0.002])


def spec(**kw) -> ClaimSpec:
    base = {
        "name": "c",
        "metric": "acc",
        "direction": "higher",
        "arm": "bn",
        "reference": "none",
        "margin": 0.01,
    }
    return ClaimSpec(**(base | kw))


def grid(diffs: dict[str, float], *, n: int = 5, noise=NOISE, base: float = 0.8) -> dict:
    """per_seed with ``arm - reference = diffs[setting] + noise`` per seed."""
    ref = base + np.roll(noise, 3)[:n]
    return {
        s: {
            "bn": {"acc": list(ref + d + noise[:n])},
            "none": {"acc": list(ref)},
        }
        for s, d in diffs.items()
    }


# ---- known answers -------------------------------------------------------------------


def test_paired_interval_and_p_by_hand_and_scipy():
    reference = [10.0, 11.0, 9.0, 12.0, 10.5]
    arm = [r + d for r, d in zip(reference, [1, 2, 3, 4, 5], strict=True)]
    d = paired_difference(arm, reference, margin=1.0)
    # differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), df 4, t_{0.975,4} = 2.776445
    assert d.diff == pytest.approx(3.0)
    assert d.se == pytest.approx(math.sqrt(0.5))
    assert d.df == 4
    assert d.t == pytest.approx(4.242641, rel=1e-6)
    assert d.ci_low == pytest.approx(3 - 1.963243, abs=1e-6)
    assert d.ci_high == pytest.approx(3 + 1.963243, abs=1e-6)
    assert d.effect_size == pytest.approx(3 / math.sqrt(2.5))
    assert d.effect_size_kind == "d_z"
    ref = st.ttest_rel(arm, reference)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert d.p == pytest.approx(0.0132356, rel=1e-5)
    ci = ref.confidence_interval(0.95)
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_welch_matches_scipy():
    arm = [0.81, 0.84, 0.79, 0.86, 0.83, 0.85]
    reference = [0.78, 0.80, 0.71, 0.79, 0.74]
    d = welch_difference(arm, reference, margin=0.01)
    ref = st.ttest_ind(arm, reference, equal_var=False)
    assert d.method == "Welch t"
    assert d.diff == pytest.approx(np.mean(arm) - np.mean(reference))
    assert d.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert d.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    pooled = math.sqrt((5 * np.var(arm, ddof=1) + 4 * np.var(reference, ddof=1)) / 9)
    assert d.effect_size == pytest.approx(d.diff / pooled)
    assert (d.n_arm, d.n_reference, d.n) == (6, 5, 5)


def test_holm_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # the step-down procedure at 0.05 rejects 0.005 (< 0.05/4), 0.01 (< 0.05/3), then stops
    assert [q <= 0.05 for q in holm(p)] == [True, False, False, True]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_tost_on_fixed_numbers():
    # diff 0.2, se 0.1, df 9, margin 0.5: one-sided p's t.sf(7, 9) and t.cdf(-3, 9)
    assert tost(0.2, 0.1, 9, 0.5) == pytest.approx(0.00747818, rel=1e-5)
    # the 90% interval 0.2 ± 0.1833 reaches 0.383 > 0.35: not equivalent at margin 0.35
    assert tost(0.2, 0.1, 9, 0.35) > 0.05
    # equivalent at level alpha exactly when the 1 - 2 alpha interval is inside the margin
    for diff in np.linspace(-0.6, 0.6, 25):
        for margin in (0.2, 0.4, 0.8):
            half = st.t.ppf(0.95, 9) * 0.1
            inside = -margin < diff - half and diff + half < margin
            assert (tost(diff, 0.1, 9, margin) < 0.05) == inside
    assert tost(0.05, 0.0, 4, 0.1) == 0.0
    assert tost(0.2, 0.0, 4, 0.1) == 1.0


def test_power_and_seeds_known_answers():
    # G*Power 3.1, two-tailed alpha 0.05, power 0.8: paired d_z 0.5 -> 34, 0.8 -> 15;
    # two independent groups d 0.5 -> 64 per group
    assert seeds_for_power(0.5, 1.0) == 34
    assert seeds_for_power(0.8, 1.0) == 15
    assert seeds_for_power(0.5, 1.0, paired=False) == 64
    assert power(0.5, 1.0, 34) >= 0.8 > power(0.5, 1.0, 33)
    assert seeds_for_power(1.0, 0.0) == 2
    assert seeds_for_power(1e-4, 1.0, max_seeds=1000) is None


def test_budget_advice_grows_with_sd():
    needs = [seeds_for_power(0.01, sd) for sd in (0.005, 0.01, 0.02, 0.04)]
    assert needs == sorted(needs)
    assert len(set(needs)) == 4
    # the same through a verdict: an undecided claim, its noise scaled up
    advice = []
    for scale in (5, 10, 20):
        out = evaluate_claim(spec(margin=0.01), grid({"a": 0.004}, n=7, noise=NOISE * scale))
        assert out["verdict"] == INCONCLUSIVE
        advice.append(out["seeds_needed"])
        assert out["settings"][0]["seeds_needed"] == out["seeds_needed"]
        assert f"about {out['seeds_needed']} pairs of seeds" in out["text"]
    assert advice[0] < advice[1] < advice[2]


# ---- the four verdicts on numbers whose answer is known ------------------------------


@pytest.mark.parametrize(
    ("direction", "diffs", "verdict", "statuses"),
    [
        ("higher", {"a": 0.05, "b": 0.03, "c": 0.08}, SUPPORTED, ["better"] * 3),
        ("lower", {"a": -0.05, "b": -0.03}, SUPPORTED, ["better"] * 2),
        ("differs", {"a": 0.05, "b": -0.03}, SUPPORTED, ["better"] * 2),
        ("higher", {"a": 0.0, "b": 0.001}, REFUTED, ["equivalent"] * 2),
        ("higher", {"a": -0.05, "b": -0.04}, REFUTED, ["opposite"] * 2),
        ("higher", {"a": -0.05, "b": 0.0}, REFUTED, ["opposite", "equivalent"]),
        ("differs", {"a": 0.0, "b": -0.001}, REFUTED, ["equivalent"] * 2),
        ("higher", {"a": 0.05, "b": -0.05}, CONTEXT_DEPENDENT, ["better", "opposite"]),
        ("higher", {"a": 0.05, "b": 0.0}, CONTEXT_DEPENDENT, ["better", "equivalent"]),
        ("differs", {"a": 0.05, "b": 0.0}, CONTEXT_DEPENDENT, ["better", "equivalent"]),
        ("higher", {"noisy": 0.009}, INCONCLUSIVE, ["undecided"]),
        ("higher", {"a": 0.05, "noisy": 0.009}, INCONCLUSIVE, ["better", "undecided"]),
        ("higher", {"a": -0.05, "noisy": 0.009}, INCONCLUSIVE, ["opposite", "undecided"]),
        ("higher", {"a": 0.0, "noisy": 0.009}, INCONCLUSIVE, ["equivalent", "undecided"]),
    ],
)
def test_verdicts_on_known_numbers(direction, diffs, verdict, statuses):
    # noise SD ~0.0016, n 5: a 0.03 difference is far beyond any doubt, 0.0 and 0.001
    # are well inside the 0.01 margin. The "noisy" setting has 5 times the noise (SD
    # ~0.008): its 0.009 is neither significant (p ~0.07) nor inside the margin.
    per_seed = grid(diffs)
    if "noisy" in diffs:
        per_seed["noisy"] = grid({"noisy": diffs["noisy"]}, noise=NOISE * 5)["noisy"]
    out = evaluate_claim(spec(direction=direction), per_seed)
    assert out["verdict"] == verdict, out["text"]
    assert [r["status"] for r in out["settings"]] == statuses
    assert out["text"].startswith(f"{verdict}: acc: bn - none")
    assert (out["seeds_needed"] is not None) == (verdict == INCONCLUSIVE)
    for row, d in zip(out["settings"], diffs.values(), strict=True):
        assert row["ci_low"] < row["diff"] < row["ci_high"]
        assert row["diff"] == pytest.approx(d, abs=1e-3)


def test_significant_but_inside_margin_is_equivalent():
    # difference 0.004 with SD ~0.0016: significant, but inside the 0.01 margin
    out = evaluate_claim(spec(), grid({"a": 0.004}, n=7))
    row = out["settings"][0]
    assert row["p_holm"] < 0.05
    assert row["tost_p_holm"] < 0.05
    assert row["status"] == "equivalent"
    assert out["verdict"] == REFUTED


def test_welch_claim_and_bootstrap_rows():
    out = evaluate_claim(spec(paired=False, bootstrap="percentile"), grid({"a": 0.05}))
    row = out["settings"][0]
    assert out["pairing"] == "Welch"
    assert row["method"] == "Welch t"
    assert out["verdict"] == SUPPORTED
    boot = row["bootstrap"]
    assert boot["method"] == "percentile"
    assert row["ci_low"] <= boot["ci_low"] < row["diff"] < boot["ci_high"] <= row["ci_high"]


def test_bootstrap_interval():
    rng = np.random.default_rng(3)
    a, r = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 40)
    t = paired_difference(a, r, margin=0.1)
    for method in ("percentile", "BCa"):
        low, high = bootstrap_interval(a, r, method=method)
        assert low < t.diff < high
        assert (low, high) == pytest.approx((t.ci_low, t.ci_high), abs=0.15)
        assert bootstrap_interval(a, r, method=method) == (low, high)  # seeded
    low, high = bootstrap_interval(a, r, paired=False)
    w = welch_difference(a, r, margin=0.1)
    assert (low, high) == pytest.approx((w.ci_low, w.ci_high), abs=0.15)
    assert all(math.isnan(x) for x in bootstrap_interval([1.0, 1.0], [0.0, 0.0]))


# ---- the null and power --------------------------------------------------------------


def _rate(hits: int, trials: int) -> float:
    return hits / trials


def _binomial_margin(p: float, trials: int) -> float:
    """Three binomial standard errors: the simulated rate stays within it (p ~ 0.997)."""
    return 3 * math.sqrt(p * (1 - p) / trials)


def _simulate(
    claim: ClaimSpec, trials: int, seed: int, effect: float, settings: int, n: int, sd_ref=1.0
) -> list[str]:
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(trials):
        ref = rng.normal(0.0, sd_ref, (settings, n))
        arm = rng.normal(effect, 1.0, (settings, n))
        if claim.paired:  # a shared per-seed component, as with shared init and data order
            shared = rng.normal(0.0, 1.0, (settings, n))
            ref, arm = ref + shared, arm + shared
        per_seed = {
            str(k): {"bn": {"acc": list(arm[k])}, "none": {"acc": list(ref[k])}}
            for k in range(settings)
        }
        verdicts.append(evaluate_claim(claim, per_seed)["verdict"])
    return verdicts


def test_null_supported_rate_at_most_alpha():
    # equal distributions: a two-sided claim in one setting is "supported" at rate alpha
    trials = 2000
    v = _simulate(spec(direction="differs", margin=0.1), trials, 0, 0.0, 1, 5)
    rate = _rate(v.count(SUPPORTED), trials)
    assert abs(rate - 0.05) <= _binomial_margin(0.05, trials), rate
    # a directional claim over three settings, Holm-corrected, Welch with unequal SDs
    v = _simulate(spec(paired=False, margin=0.1), trials // 2, 1, 0.0, 3, 5, sd_ref=2.0)
    rate = _rate(v.count(SUPPORTED), trials // 2)
    assert rate <= 0.05 + _binomial_margin(0.05, trials // 2), rate


def test_tost_rarely_refutes_a_true_effect_at_the_margin():
    # the true difference equals the margin: "refuted" by equivalence at most alpha
    trials = 1000
    v = _simulate(spec(margin=1.0), trials, 2, 1.0, 1, 8)
    rate = _rate(v.count(REFUTED), trials)
    assert rate <= 0.05 + _binomial_margin(0.05, trials), rate


def test_power_for_a_large_effect():
    # d_z = 2 with 5 pairs: power of the two-sided paired t test from the noncentral t
    trials = 1000
    claim = spec(margin=0.1, paired=True)
    # the difference of two unit-SD arms sharing a component has SD sqrt(2)
    effect = 2 * math.sqrt(2)
    v = _simulate(claim, trials, 3, effect, 1, 5)
    rate = _rate(v.count(SUPPORTED), trials)
    expected = power(effect, math.sqrt(2), 5)  # 0.909; the wrong tail adds ~0
    assert expected == pytest.approx(0.9089, abs=1e-3)
    assert abs(rate - expected) <= _binomial_margin(expected, trials), rate
    assert rate >= 0.85


# ---- exclusion and budget ------------------------------------------------------------


def test_runs_at_chance_are_excluded_and_shown():
    chance = ChanceRule(metric="test_accuracy", level=0.1, tolerance=0.02)
    per_seed = grid({"a": 0.05, "b": 0.05}, n=7)
    for s in per_seed:
        for arm in ("bn", "none"):
            per_seed[s][arm]["test_accuracy"] = [0.8] * 7
    per_seed["a"]["none"]["test_accuracy"][:2] = [0.105, 0.09]  # 2 seeds at chance: 5 left
    per_seed["b"]["none"]["test_accuracy"][:3] = [0.1, 0.1, 0.11]  # 3 at chance: 4 left
    out = evaluate_claim(spec(chance=chance), per_seed)
    a, b = out["settings"]
    assert (a["n_run"], a["n"], a["status"]) == (7, 5, "better")
    assert (b["n_run"], b["n"], b["status"]) == (7, 4, "excluded")
    assert b["p_holm"] is None
    assert b["diff"] is not None  # shown, not voted
    assert out["holm_family"] == 1
    assert out["verdict"] == SUPPORTED
    assert [(e["setting"], e["arm"], e["seed"]) for e in out["excluded"]] == [
        ("a", "none", 0),
        ("a", "none", 1),
        ("b", "none", 0),
        ("b", "none", 1),
        ("b", "none", 2),
    ]
    assert out["excluded"][0]["reason"] == "never left chance (test_accuracy within 0.02 of 0.1)"
    # every setting excluded: no verdict
    per_seed["a"]["bn"]["test_accuracy"] = [0.1] * 7
    out = evaluate_claim(spec(chance=chance), per_seed)
    assert out["verdict"] == NO_VERDICT
    assert "left chance" in out["reason"]


def test_left_chance_and_non_finite():
    rule = ChanceRule(metric="acc", level=0.1, tolerance=0.02)
    assert left_chance([0.1, 0.119, 0.121, 0.05, math.nan], rule) == [
        False,
        False,
        True,
        True,
        False,
    ]
    per_seed = grid({"a": 0.05}, n=7)
    per_seed["a"]["bn"]["acc"][6] = math.nan  # a diverged run
    out = evaluate_claim(spec(), per_seed)
    assert out["excluded"] == [
        {"arm": "bn", "seed": 6, "reason": "non-finite value", "setting": "a"}
    ]
    assert out["settings"][0]["n"] == 6


def test_too_few_seeds_gives_no_verdict():
    out = evaluate_claim(spec(), grid({"a": 0.05, "b": 0.05}, n=3))
    assert out["verdict"] == NO_VERDICT
    assert out["text"].startswith("no verdict at this budget: ")
    assert out["reason"] == "3 seeds run, fewer than the declared minimum of 5"
    assert [r["status"] for r in out["settings"]] == ["too few seeds"] * 2
    assert all(r["p_holm"] is None for r in out["settings"])
    assert out["settings"][0]["diff"] == pytest.approx(0.05, abs=1e-3)  # still shown
    assert evaluate_claim(spec(min_seeds=3), grid({"a": 0.05}, n=3))["verdict"] == SUPPORTED


def test_holm_family_spans_the_experiment():
    per_seed = grid({"a": 0.004, "b": 0.006}, noise=NOISE * 2)
    for s in per_seed:
        per_seed[s]["gn"] = {"acc": list(np.array(per_seed[s]["none"]["acc"]) + 0.002)}
    claims = [spec(name="bn"), spec(name="gn", arm="gn")]
    out = evaluate_experiment(claims, per_seed)
    rows = [r for o in out for r in o["settings"]]
    assert all(o["holm_family"] == 4 for o in out)
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p"] for r in rows]))
    assert [r["tost_p_holm"] for r in rows] == pytest.approx(holm([r["tost_p"] for r in rows]))
    alone = evaluate_claim(claims[0], per_seed)["settings"]
    assert [r["p_holm"] for r in alone] == pytest.approx(holm([r["p"] for r in alone]))


def test_result_is_json_ready():
    per_seed = {"a": {"bn": {"acc": [0.9] * 5}, "none": {"acc": [0.8] * 5}}}  # SD 0: t inf
    out = evaluate_claim(spec(bootstrap="BCa"), per_seed)
    assert out["verdict"] == SUPPORTED
    row = out["settings"][0]
    assert row["t"] is None
    assert row["bootstrap"]["ci_low"] is None
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert "\n" not in out["text"]
    assert out["rule"].startswith("per setting (Holm-corrected within the experiment, alpha 0.05)")


# ---- errors, one per message ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"direction": "up"}, "direction must be 'higher', 'lower' or 'differs', got 'up'"),
        ({"margin": 0}, r"margin must be > 0 \(in acc's units\), got 0"),
        ({"alpha": 0.5}, r"alpha must be in \(0, 0.5\), got 0.5"),
        ({"power": 1.0}, r"power must be in \(0, 1\), got 1.0"),
        ({"min_seeds": 1}, "min_seeds must be an integer >= 2, got 1"),
        ({"arm": "none"}, "arm and reference are both 'none'"),
        ({"bootstrap": "bca"}, "bootstrap must be None, 'percentile' or 'BCa', got 'bca'"),
    ],
)
def test_spec_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        spec(**kw)


def test_chance_rule_error():
    with pytest.raises(ValueError, match=r"tolerance must be >= 0, got -0\.1"):
        ChanceRule(metric="acc", level=0.1, tolerance=-0.1)


@pytest.mark.parametrize(
    ("claim", "per_seed", "match"),
    [
        (spec(), {"a": {"bn": {"acc": [1.0] * 5}}}, "no setting has both 'bn' and 'none'"),
        (spec(settings=("z",)), grid({"a": 0.0}), r"unknown setting 'z'; choose from \['a'\]"),
        (
            spec(settings=("a",)),
            {"a": {"bn": {"acc": [1.0] * 5}, "gn": {}}},
            r"setting 'a' has no arm 'none'; it has \['bn', 'gn'\]",
        ),
        (
            spec(metric="loss"),
            grid({"a": 0.0}),
            r"arm 'bn' in setting 'a' has no metric 'loss'; it has \['acc'\]",
        ),
        (
            spec(),
            {"a": {"bn": {"acc": [1.0] * 5}, "none": {"acc": [1.0] * 6}}},
            r"pairs 'bn' \(5 seeds\) with 'none' \(6 seeds\)",
        ),
        (
            spec(chance=ChanceRule("test_accuracy", 0.1, 0.02)),
            grid({"a": 0.0}),
            "arm 'bn' has no chance metric 'test_accuracy'",
        ),
    ],
)
def test_evaluate_errors(claim, per_seed, match):
    with pytest.raises(ValueError, match=match):
        evaluate_claim(claim, per_seed)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: paired_difference([1, 2], [1, 2, 3], margin=1), "got 2 and 3 values"),
        (lambda: paired_difference([1], [1], margin=1), "needs at least 2 pairs, got 1"),
        (lambda: paired_difference([1, math.nan], [1, 2], margin=1), "every value must be finite"),
        (lambda: welch_difference([1], [1, 2], margin=1), "at least 2 values per arm, got 1 and 2"),
        (lambda: tost(0.0, 1.0, 4, 0.0), "margin must be > 0, got 0.0"),
        (lambda: holm([0.5, 1.5]), r"p-values must lie in \[0, 1\], got 1.5"),
        (lambda: power(1.0, 1.0, 1), "needs n >= 2, got 1"),
        (lambda: seeds_for_power(0.0, 1.0), "effect must be nonzero"),
        (lambda: bootstrap_interval([1, 2], [1, 2], method="x"), "got 'x'"),
    ],
)
def test_function_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_finite_paired_difference_leaves_out_non_finite_seeds():
    n, d = finite_paired_difference([1.0, None, 3.0, math.nan, 6.0], [0.0, 1.0, 1.0, 2.0, math.inf])
    assert n == 2
    want = paired_difference([1.0, 3.0], [0.0, 1.0], margin=1.0)
    assert (d.diff, d.ci_low, d.ci_high, d.p) == (want.diff, want.ci_low, want.ci_high, want.p)
    assert finite_paired_difference([1.0, None], [0.0, 1.0]) == (1, None)


def test_claim_rows_text():
    evaluated = [
        {
            "claim": "c",
            "arm": "a",
            "reference": "r",
            "verdict": "supported",
            "settings": [
                {"diff": 0.5, "ci_low": 0.25, "ci_high": 0.75, "p_holm": 0.01234, "n": 5},
                {"diff": None, "n": 1},
            ],
        }
    ]
    assert claim_rows(evaluated) == [
        ["c", "a - r", "+0.50", "[+0.25, +0.75]", "0.0123", 5, "supported"],
        ["c", "a - r", None, None, None, 1, "supported"],
    ]
    assert claim_rows(evaluated, digits=3, ratio=True)[0] == [
        *["c", "a - r", "+0.500", "[+0.250, +0.750]", f"{math.exp(0.5):.2f}"],
        *["0.0123", 5, "supported"],
    ]
    assert claim_rows(evaluated, ratio=True)[1][4] is None


def test_interval_cells_text():
    assert interval_cells({"diff": -0.5, "ci_low": -0.75, "ci_high": -0.25}, 3) == [
        "-0.500",
        "[-0.750, -0.250]",
    ]
    assert interval_cells({"diff": None, "ci_low": None}) == [None, None]
