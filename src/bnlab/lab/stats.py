"""Statistics of the lab's claims: per-seed numbers -> effect sizes, tests, a verdict.

Pure functions over plain numbers (no torch). A claim is declared before its experiment
runs as a :class:`ClaimSpec` (primary metric, direction, arm vs reference, alpha,
equivalence margin, minimum seeds, pairing); :func:`evaluate_experiment` turns the
experiment's per-seed numbers, ``per_seed[setting][arm][metric] -> [value per seed]``
(``GridRun.per_seed()``), into one JSON-ready dict per claim.

Methods:

- Effect size: the mean difference ``arm - reference`` with a 95% t interval, paired
  by seed (the t interval of the per-seed differences; effect size Cohen's d_z = mean
  difference / SD of the differences) when the arms share init and data order, else
  Welch's unequal-variance t interval (Welch 1947; effect size Cohen's d with the pooled
  SD). Optionally a percentile or BCa bootstrap interval (Efron 1987,
  ``scipy.stats.bootstrap``), shown beside the t interval; the verdict uses the t tests.
- Multiplicity: Holm's step-down correction (Holm 1979, "A simple sequentially
  rejective multiple test procedure", Scand. J. Statist. 6:65-70) over every
  setting x claim of one experiment, separately for the difference tests and for the
  equivalence tests.
- Equivalence: two one-sided tests, TOST (Schuirmann 1987, J. Pharmacokin. Biopharm.
  15:657-680; Lakens 2017, "Equivalence tests: a practical primer for t tests,
  correlations, and meta-analyses", Soc. Psychol. Personal. Sci. 8:355-362), against the
  declared margin ``±margin`` in the metric's units: equivalence is shown when both
  one-sided p-values are below alpha (the 1 - 2 alpha interval lies inside the margin).
- Budget: the seeds a t test (paired, or two-sample with that many seeds per arm)
  needs for 80% power against an effect the size of the margin at the observed SD, from
  the noncentral t distribution (``scipy.stats.nct``), at the Bonferroni level
  alpha / m of the experiment's m tests (the strictest level Holm's procedure uses).

The verdict rule (:data:`VERDICT_RULE`) is stated in :func:`evaluate_experiment`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

__all__ = [
    "CONTEXT_DEPENDENT",
    "INCONCLUSIVE",
    "NO_VERDICT",
    "REFUTED",
    "SUPPORTED",
    "VERDICT_RULE",
    "ChanceRule",
    "ClaimSpec",
    "Difference",
    "bootstrap_interval",
    "claim_rows",
    "compare_arms",
    "evaluate_claim",
    "evaluate_experiment",
    "finite_paired_difference",
    "holm",
    "interval_cells",
    "left_chance",
    "paired_difference",
    "power",
    "seeds_for_power",
    "tost",
    "welch_difference",
]

SUPPORTED = "supported"
REFUTED = "refuted"
CONTEXT_DEPENDENT = "context-dependent"
INCONCLUSIVE = "inconclusive"
NO_VERDICT = "no verdict at this budget"

#: The rule of :func:`evaluate_experiment`, as shown beside a verdict.
VERDICT_RULE = (
    "per setting (Holm-corrected within the experiment, alpha {alpha}): 'better' if the "
    "difference is significant in the claimed direction and its {tost_level:.0%} interval "
    "is not inside ±{margin} (TOST), 'opposite' if significant the other way and not "
    "inside the margin, 'equivalent' if TOST shows it inside ±{margin}, else 'undecided'; "
    "supported: every included setting better; refuted: every included setting "
    "equivalent or opposite; context-dependent: some setting better and another "
    "opposite or equivalent; inconclusive: otherwise. A seed whose value is not finite or "
    "that never left chance is excluded; a setting left with fewer than {min_seeds} seeds "
    "does not vote; fewer than {min_seeds} seeds run gives no verdict at this budget"
)

Direction = Literal["higher", "lower", "differs"]
Bootstrap = Literal["percentile", "BCa"]


# Student's t CDF and quantile: the functions scipy.stats.t evaluates (scipy.special
# stdtr, stdtrit), called directly since the simulations of the tests call them
# thousands of times and scipy.stats adds ~60 us of argument checks to each call.
def _t_cdf(x: Any, df: Any) -> Any:
    return _sp.stdtr(df, x)


def _t_sf(x: Any, df: Any) -> Any:
    return _sp.stdtr(df, -x)


def _t_ppf(q: Any, df: Any) -> Any:
    return _sp.stdtrit(df, q)


@dataclass(frozen=True)
class ChanceRule:
    """When a seed's run counts as never having left chance.

    A seed is at chance when ``|value - level| <= tolerance`` for its ``metric`` (e.g.
    final test accuracy within 0.02 of 0.1 on Fashion-MNIST's ten classes).

    Attributes:
        metric: the metric that shows chance (e.g. ``"test_accuracy"``).
        level: its value at chance (0.1 for ten balanced classes, ln 10 for their loss).
        tolerance: how close to ``level`` still counts as chance (>= 0).
    """

    metric: str
    level: float
    tolerance: float

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError(f"ChanceRule: tolerance must be >= 0, got {self.tolerance!r}")


@dataclass(frozen=True)
class ClaimSpec:
    """A claim, declared before the run that decides it.

    Attributes:
        name: the claim's id (e.g. ``"small-batch-bn"``).
        metric: the primary metric, a key of ``per_seed[setting][arm]``.
        direction: ``"higher"`` or ``"lower"`` (the arm's metric is claimed to be higher
            / lower than the reference's), or ``"differs"`` (two-sided).
        arm: the arm the claim is about.
        reference: the arm it is compared with, chosen before the run.
        margin: the equivalence margin in the metric's units (> 0): differences inside
            ``±margin`` are too small to matter (the smallest effect of interest).
        alpha: the familywise error rate of the experiment's tests.
        min_seeds: the fewest seeds that may decide a setting (>= 2).
        paired: pair the arms by seed (they share init and data order) and use the
            paired t test; False: Welch's t test.
        settings: the settings that decide the claim, in order (None: every setting of
            the per-seed numbers that has both arms).
        chance: the rule that marks a seed as never having left chance (None: none is).
        bootstrap: also show a ``"percentile"`` or ``"BCa"`` bootstrap interval.
        power: the power the budget advice aims for.
    """

    name: str
    metric: str
    direction: Direction
    arm: str
    reference: str
    margin: float
    alpha: float = 0.05
    min_seeds: int = 5
    paired: bool = True
    settings: tuple[str, ...] | None = None
    chance: ChanceRule | None = None
    bootstrap: Bootstrap | None = None
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower", "differs"):
            raise ValueError(
                f"ClaimSpec {self.name!r}: direction must be 'higher', 'lower' or 'differs', "
                f"got {self.direction!r}"
            )
        if not (isinstance(self.margin, int | float) and self.margin > 0):
            raise ValueError(
                f"ClaimSpec {self.name!r}: margin must be > 0 (in {self.metric}'s units), "
                f"got {self.margin!r}"
            )
        if not 0 < self.alpha < 0.5:
            raise ValueError(
                f"ClaimSpec {self.name!r}: alpha must be in (0, 0.5), got {self.alpha!r}"
            )
        if not 0 < self.power < 1:
            raise ValueError(
                f"ClaimSpec {self.name!r}: power must be in (0, 1), got {self.power!r}"
            )
        if (
            isinstance(self.min_seeds, bool)
            or not isinstance(self.min_seeds, int)
            or self.min_seeds < 2
        ):
            raise ValueError(
                f"ClaimSpec {self.name!r}: min_seeds must be an integer >= 2, got {self.min_seeds!r}"
            )
        if self.arm == self.reference:
            raise ValueError(
                f"ClaimSpec {self.name!r}: arm and reference are both {self.arm!r}; "
                "compare two different arms"
            )
        if self.bootstrap not in (None, "percentile", "BCa"):
            raise ValueError(
                f"ClaimSpec {self.name!r}: bootstrap must be None, 'percentile' or 'BCa', "
                f"got {self.bootstrap!r}"
            )


@dataclass(frozen=True)
class Difference:
    """``arm - reference`` of one setting: estimate, interval and tests.

    Attributes:
        method: ``"paired t"`` or ``"Welch t"``.
        n: seeds per arm that entered (pairs when paired; the smaller arm for Welch).
        n_arm, n_reference: values of each arm that entered.
        mean_arm, mean_reference: their means.
        diff: mean difference ``arm - reference``.
        se: its standard error.
        df: degrees of freedom (n - 1 paired; Welch-Satterthwaite otherwise).
        t: ``diff / se`` (inf when se is 0 and diff is not).
        p: two-sided p-value of ``diff == 0``.
        ci_low, ci_high: the ``confidence`` t interval of ``diff``.
        confidence: its level (1 - alpha).
        tost_p: the TOST p-value of ``|diff| >= margin`` (the larger one-sided p).
        sd: the SD behind the effect size (of the differences; pooled for Welch).
        effect_size: ``diff / sd`` (Cohen's d_z paired, d with the pooled SD for Welch).
        effect_size_kind: ``"d_z"`` or ``"d"``.
    """

    method: str
    n: int
    n_arm: int
    n_reference: int
    mean_arm: float
    mean_reference: float
    diff: float
    se: float
    df: float
    t: float
    p: float
    ci_low: float
    ci_high: float
    confidence: float
    tost_p: float
    sd: float
    effect_size: float
    effect_size_kind: str


def _floats(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got shape {a.shape}")
    return a


def _t_test(diff: float, se: float, df: float) -> tuple[float, float]:
    """``(t, two-sided p)``; se 0 gives p 0 for a nonzero diff and p 1 for diff 0."""
    if se > 0:
        t = diff / se
        return t, float(2 * _t_sf(abs(t), df))
    if diff == 0:
        return 0.0, 1.0
    return math.copysign(math.inf, diff), 0.0


def tost(diff: float, se: float, df: float, margin: float) -> float:
    """TOST p-value for equivalence within ``±margin`` (Schuirmann 1987; Lakens 2017).

    The larger of the one-sided p-values of ``H0: diff <= -margin`` and
    ``H0: diff >= margin``; equivalence is shown at level alpha when it is below alpha,
    i.e. when the ``1 - 2 alpha`` t interval lies inside ``(-margin, margin)``.

    Args:
        diff: the estimated difference.
        se: its standard error (>= 0).
        df: its degrees of freedom.
        margin: the equivalence margin (> 0), in the same units as ``diff``.

    Raises:
        ValueError: margin <= 0 or se < 0.
    """
    if not margin > 0:
        raise ValueError(f"tost: margin must be > 0, got {margin!r}")
    if not se >= 0:
        raise ValueError(f"tost: se must be >= 0, got {se!r}")
    if se == 0:
        return 0.0 if abs(diff) < margin else 1.0
    p_lower = _t_sf((diff + margin) / se, df)  # H0: diff <= -margin
    p_upper = _t_cdf((diff - margin) / se, df)  # H0: diff >= +margin
    return float(max(p_lower, p_upper))


def _difference(
    method: str,
    n: int,
    a: np.ndarray,
    r: np.ndarray,
    diff: float,
    se: float,
    df: float,
    sd: float,
    kind: str,
    alpha: float,
    margin: float,
) -> Difference:
    t, p = _t_test(diff, se, df)
    half = float(_t_ppf(1 - alpha / 2, df)) * se
    return Difference(
        method=method,
        n=n,
        n_arm=a.size,
        n_reference=r.size,
        mean_arm=float(a.mean()),
        mean_reference=float(r.mean()),
        diff=diff,
        se=se,
        df=df,
        t=t,
        p=p,
        ci_low=diff - half,
        ci_high=diff + half,
        confidence=1 - alpha,
        tost_p=tost(diff, se, df, margin),
        sd=sd,
        effect_size=diff / sd if sd > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
        effect_size_kind=kind,
    )


def paired_difference(
    arm: Sequence[float], reference: Sequence[float], *, margin: float, alpha: float = 0.05
) -> Difference:
    """Paired t analysis of ``arm[i] - reference[i]`` (seed i in both arms).

    Student's t interval ``mean(d) ± t_{1-alpha/2, n-1} sd(d)/sqrt(n)`` of the per-seed
    differences d, its two-sided p-value (as ``scipy.stats.ttest_rel``), TOST within
    ``±margin``, and Cohen's d_z = mean(d) / sd(d).

    Raises:
        ValueError: the arms differ in length, fewer than 2 pairs, or a value is not finite.
    """
    a, r = _floats(arm, "paired_difference"), _floats(reference, "paired_difference")
    if a.size != r.size:
        raise ValueError(
            f"paired_difference: the arms must have one value per seed each, got "
            f"{a.size} and {r.size} values"
        )
    if a.size < 2:
        raise ValueError(f"paired_difference: needs at least 2 pairs, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        raise ValueError("paired_difference: every value must be finite")
    d = a - r
    n = d.size
    sd = float(d.std(ddof=1))
    return _difference(
        "paired t", n, a, r, float(d.mean()), sd / math.sqrt(n), n - 1, sd, "d_z", alpha, margin
    )


def welch_difference(
    arm: Sequence[float], reference: Sequence[float], *, margin: float, alpha: float = 0.05
) -> Difference:
    """Welch's unequal-variance t analysis of ``mean(arm) - mean(reference)``.

    Standard error ``sqrt(s_a^2/n_a + s_r^2/n_r)`` with Welch-Satterthwaite degrees of
    freedom (as ``scipy.stats.ttest_ind(equal_var=False)``), TOST within ``±margin``,
    and Cohen's d with the pooled SD.

    Raises:
        ValueError: an arm has fewer than 2 values, or a value is not finite.
    """
    a, r = _floats(arm, "welch_difference"), _floats(reference, "welch_difference")
    if a.size < 2 or r.size < 2:
        raise ValueError(
            f"welch_difference: needs at least 2 values per arm, got {a.size} and {r.size}"
        )
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        raise ValueError("welch_difference: every value must be finite")
    va, vr = float(a.var(ddof=1)), float(r.var(ddof=1))
    wa, wr = va / a.size, vr / r.size
    se = math.sqrt(wa + wr)
    if se > 0:
        df = (wa + wr) ** 2 / (wa**2 / (a.size - 1) + wr**2 / (r.size - 1))
    else:  # both arms constant: Welch's df is 0/0; the pooled df
        df = float(a.size + r.size - 2)
    pooled = math.sqrt(((a.size - 1) * va + (r.size - 1) * vr) / (a.size + r.size - 2))
    diff = float(a.mean() - r.mean())
    return _difference(
        "Welch t", min(a.size, r.size), a, r, diff, se, df, pooled, "d", alpha, margin
    )


def finite_paired_difference(
    arm: Sequence[Any], reference: Sequence[Any], *, alpha: float = 0.05
) -> tuple[int, Difference | None]:
    """A difference shown beside the claims, not voted: :func:`paired_difference` of
    ``arm - reference`` over the seeds where both values are finite (None, NaN and inf
    left out), with its unadjusted ``1 - alpha`` t interval (its TOST is not used).

    Returns:
        ``(pairs, difference)``: the seeds that entered, and None for fewer than 2.
    """
    pairs = [
        (float(x), float(y))
        for x, y in zip(arm, reference, strict=False)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    if len(pairs) < 2:
        return len(pairs), None
    d = paired_difference([x for x, _ in pairs], [y for _, y in pairs], margin=1.0, alpha=alpha)
    return len(pairs), d


def compare_arms(
    arm: Sequence[float],
    reference: Sequence[float],
    *,
    margin: float,
    alpha: float = 0.05,
    paired: bool = True,
) -> Difference:
    """:func:`paired_difference` if ``paired``, else :func:`welch_difference`."""
    f = paired_difference if paired else welch_difference
    return f(arm, reference, margin=margin, alpha=alpha)


def bootstrap_interval(
    arm: Sequence[float],
    reference: Sequence[float],
    *,
    paired: bool = True,
    method: Bootstrap = "BCa",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """A bootstrap interval of the mean difference (Efron 1987; ``scipy.stats.bootstrap``).

    Paired: the per-seed differences resampled as one sample; unpaired: each arm
    resampled on its own, statistic ``mean(arm) - mean(reference)``. With 5-10 seeds a
    bootstrap interval is too narrow (it ignores the t distribution's tails); it is
    shown beside the t interval, not used for the verdict.

    Returns:
        ``(low, high)``; NaN where the bootstrap distribution is degenerate (all
        values equal).

    Raises:
        ValueError: an unknown method, or too few values.
    """
    if method not in ("percentile", "BCa"):
        raise ValueError(
            f"bootstrap_interval: method must be 'percentile' or 'BCa', got {method!r}"
        )
    a, r = _floats(arm, "bootstrap_interval"), _floats(reference, "bootstrap_interval")
    if paired:
        if a.size != r.size or a.size < 2:
            raise ValueError(
                f"bootstrap_interval: paired arms need equal lengths >= 2, got {a.size} and {r.size}"
            )
        data: tuple[np.ndarray, ...] = (a - r,)

        def statistic(d: np.ndarray, axis: int) -> np.ndarray:
            return d.mean(axis=axis)
    else:
        if a.size < 2 or r.size < 2:
            raise ValueError(
                f"bootstrap_interval: needs at least 2 values per arm, got {a.size} and {r.size}"
            )
        data = (a, r)

        def statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
            return x.mean(axis=axis) - y.mean(axis=axis)

    if all(np.ptp(x) == 0 for x in data):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on few distinct values warns and gives NaN
        res = _st.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input's order.

    With the m p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting every hypothesis with
    ``p~ <= alpha`` is Holm's procedure at familywise level alpha.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = [float(x) for x in p_values]
    bad = [x for x in p if not 0 <= x <= 1]
    if bad:
        raise ValueError(f"holm: p-values must lie in [0, 1], got {bad[0]!r}")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _power(effect: float, sd: float, n: np.ndarray, alpha: float, paired: bool) -> np.ndarray:
    """:func:`power` for an array of seed counts ``n`` (each >= 2)."""
    n = n.astype(np.float64)
    if paired:
        df, ncp = n - 1, effect / sd * np.sqrt(n)
    else:
        df, ncp = 2 * n - 2, effect / (sd * np.sqrt(2 / n))
    crit = _t_ppf(1 - alpha / 2, df)
    return _st.nct.sf(crit, df, ncp) + _st.nct.cdf(-crit, df, ncp)


def power(effect: float, sd: float, n: int, *, alpha: float = 0.05, paired: bool = True) -> float:
    """Power of the two-sided t test at level alpha for a true difference ``effect``.

    Paired (one-sample on the differences, SD ``sd`` of a difference): noncentrality
    ``effect / sd * sqrt(n)``, df n - 1. Unpaired (two-sample, n per arm, common SD
    ``sd``): noncentrality ``effect / (sd * sqrt(2 / n))``, df 2n - 2. Power is
    ``P(|T'| > t_{1-alpha/2, df})`` under the noncentral t ``T'`` (``scipy.stats.nct``).

    Raises:
        ValueError: n < 2, or sd <= 0.
    """
    if n < 2:
        raise ValueError(f"power: needs n >= 2, got {n!r}")
    if not sd > 0:
        raise ValueError(f"power: sd must be > 0, got {sd!r}")
    return float(_power(effect, sd, np.array([n]), alpha, paired)[0])


def seeds_for_power(
    effect: float,
    sd: float,
    *,
    alpha: float = 0.05,
    target: float = 0.8,
    paired: bool = True,
    max_seeds: int = 100_000,
) -> int | None:
    """The fewest seeds (pairs, or per arm when unpaired) for which :func:`power` reaches
    ``target``; None if more than ``max_seeds`` would be needed.

    ``sd`` 0 needs 2 seeds (any nonzero effect is then certain).

    Raises:
        ValueError: effect == 0, or sd < 0.
    """
    if effect == 0:
        raise ValueError("seeds_for_power: effect must be nonzero")
    if not sd >= 0:
        raise ValueError(f"seeds_for_power: sd must be >= 0, got {sd!r}")
    if sd == 0:
        return 2
    # The z test's n is a lower bound (the t test has heavier tails): start there and
    # scan upward in vectorized windows; power grows with n, so the first hit is the fewest.
    z = _sp.ndtri(1 - alpha / 2) + _sp.ndtri(target)
    start = max(2, math.floor((1 if paired else 2) * (z * sd / effect) ** 2))
    width = 16
    while start <= max_seeds:
        ns = np.arange(start, min(start + width, max_seeds + 1))
        hits = np.flatnonzero(_power(effect, sd, ns, alpha, paired) >= target)
        if hits.size:
            return int(ns[hits[0]])
        start, width = int(ns[-1]) + 1, 2 * width
    return None


def left_chance(values: Sequence[float], rule: ChanceRule) -> list[bool]:
    """Per seed, whether its run left chance: ``|value - level| > tolerance``.

    A non-finite value (a diverged run) has not left chance.
    """
    return [bool(math.isfinite(v) and abs(v - rule.level) > rule.tolerance) for v in values]


def _json(x: Any) -> Any:
    """None for non-finite floats (JSON has no NaN/inf)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _usable(
    spec: ClaimSpec, variants: Mapping[str, Any], arm: str
) -> tuple[list[float], list[bool], list[dict[str, Any]]]:
    """An arm's values, a keep flag per seed, and the excluded seeds with the reason."""
    values = [math.nan if v is None else float(v) for v in variants[arm][spec.metric]]
    chance_ok = [True] * len(values)
    why_chance = ""
    if spec.chance is not None:
        rule = spec.chance
        if rule.metric not in variants[arm]:
            raise ValueError(
                f"claim {spec.name!r}: arm {arm!r} has no chance metric {rule.metric!r}; "
                f"it has {sorted(variants[arm])}"
            )
        chance_values = [math.nan if v is None else float(v) for v in variants[arm][rule.metric]]
        if len(chance_values) != len(values):
            raise ValueError(
                f"claim {spec.name!r}: arm {arm!r} has {len(values)} values of {spec.metric!r} "
                f"but {len(chance_values)} of {rule.metric!r}"
            )
        chance_ok = left_chance(chance_values, rule)
        why_chance = f"never left chance ({rule.metric} within {rule.tolerance} of {rule.level})"
    keep, excluded = [], []
    for seed, (v, ok) in enumerate(zip(values, chance_ok, strict=True)):
        reason = "non-finite value" if not math.isfinite(v) else None if ok else why_chance
        keep.append(reason is None)
        if reason is not None:
            excluded.append({"arm": arm, "seed": seed, "reason": reason})
    return values, keep, excluded


def _setting_row(spec: ClaimSpec, setting: str, variants: Mapping[str, Any]) -> dict[str, Any]:
    """One setting's row, before Holm: counts, exclusions and the difference."""
    for arm in (spec.arm, spec.reference):
        if arm not in variants:
            raise ValueError(
                f"claim {spec.name!r}: setting {setting!r} has no arm {arm!r}; it has "
                f"{sorted(variants)}"
            )
        if spec.metric not in variants[arm]:
            raise ValueError(
                f"claim {spec.name!r}: arm {arm!r} in setting {setting!r} has no metric "
                f"{spec.metric!r}; it has {sorted(variants[arm])}"
            )
    n_a, n_r = len(variants[spec.arm][spec.metric]), len(variants[spec.reference][spec.metric])
    if spec.paired and n_a != n_r:
        raise ValueError(
            f"claim {spec.name!r}: setting {setting!r} pairs {spec.arm!r} ({n_a} seeds) with "
            f"{spec.reference!r} ({n_r} seeds); paired arms need the same seeds"
        )
    a, keep_a, excl_a = _usable(spec, variants, spec.arm)
    r, keep_r, excl_r = _usable(spec, variants, spec.reference)
    if spec.paired:
        keep = [x and y for x, y in zip(keep_a, keep_r, strict=True)]
        a_in = [v for v, k in zip(a, keep, strict=True) if k]
        r_in = [v for v, k in zip(r, keep, strict=True) if k]
        n_run, n_in = n_a, len(a_in)
    else:
        a_in = [v for v, k in zip(a, keep_a, strict=True) if k]
        r_in = [v for v, k in zip(r, keep_r, strict=True) if k]
        n_run, n_in = min(n_a, n_r), min(len(a_in), len(r_in))
    row: dict[str, Any] = {
        "setting": setting,
        "status": None,
        "n_run": n_run,
        "n": n_in,
        "p_holm": None,
        "tost_p_holm": None,
        "seeds_needed": None,
        "excluded": excl_a + excl_r,
    }
    d = None
    if min(len(a_in), len(r_in)) >= 2:
        d = compare_arms(a_in, r_in, margin=spec.margin, alpha=spec.alpha, paired=spec.paired)
        row.update(
            method=d.method,
            n_arm=d.n_arm,
            n_reference=d.n_reference,
            mean_arm=d.mean_arm,
            mean_reference=d.mean_reference,
            diff=d.diff,
            se=d.se,
            df=d.df,
            t=d.t,
            ci_low=d.ci_low,
            ci_high=d.ci_high,
            confidence=d.confidence,
            p=d.p,
            tost_p=d.tost_p,
            sd=d.sd,
            effect_size=d.effect_size,
            effect_size_kind=d.effect_size_kind,
        )
        if spec.bootstrap is not None:
            low, high = bootstrap_interval(
                a_in, r_in, paired=spec.paired, method=spec.bootstrap, confidence=1 - spec.alpha
            )
            row["bootstrap"] = {"method": spec.bootstrap, "ci_low": low, "ci_high": high}
    row["_difference"] = d
    return row


def _status(spec: ClaimSpec, row: Mapping[str, Any]) -> str:
    """A decided setting's status from its Holm-adjusted p-values (see VERDICT_RULE)."""
    d: Difference = row["_difference"]
    equivalent = row["tost_p_holm"] < spec.alpha
    significant = row["p_holm"] < spec.alpha
    if equivalent:  # significant or not, the difference is inside the margin (Lakens 2017)
        return "equivalent"
    if not significant:
        return "undecided"
    if spec.direction == "differs":
        return "better"
    sign = 1 if spec.direction == "higher" else -1
    return "better" if d.diff * sign > 0 else "opposite"


def _verdict(statuses: Sequence[str]) -> str:
    s = set(statuses)
    if s == {"better"}:
        return SUPPORTED
    if s <= {"equivalent", "opposite"}:
        return REFUTED
    if "better" in s and s & {"equivalent", "opposite"}:
        return CONTEXT_DEPENDENT
    return INCONCLUSIVE


#: The order of a setting row's keys in the results.
_ROW_ORDER = {
    k: i
    for i, k in enumerate(
        [
            "setting",
            "status",
            "n_run",
            "n",
            "method",
            "n_arm",
            "n_reference",
            "mean_arm",
            "mean_reference",
            "diff",
            "ci_low",
            "ci_high",
            "confidence",
            "p",
            "p_holm",
            "tost_p",
            "tost_p_holm",
            "effect_size",
            "effect_size_kind",
            "sd",
            "se",
            "df",
            "t",
            "bootstrap",
            "seeds_needed",
            "excluded",
        ]
    )
}


def _fmt(x: float) -> str:
    return f"{x:+.4g}"


def interval_cells(row: Mapping[str, Any], digits: int = 2) -> list[str | None]:
    """A difference and its 95% t interval as table text, signed, ``digits`` decimals
    (None where missing): ``["+0.50", "[+0.25, +0.75]"]``, from a row with ``diff``,
    ``ci_low`` and ``ci_high`` (a setting of :func:`evaluate_experiment`'s output)."""
    diff, low, high = row.get("diff"), row.get("ci_low"), row.get("ci_high")
    return [
        None if diff is None else f"{diff:+.{digits}f}",
        None if low is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]",
    ]


def _ratio_text(diff: float | None) -> str | None:
    return None if diff is None else f"{math.exp(diff):.2f}"


def claim_rows(
    evaluated: Sequence[Mapping[str, Any]], *, digits: int = 2, ratio: bool = False
) -> list[list[Any]]:
    """One table row per claim and setting of :func:`evaluate_experiment`'s output:
    claim, ``arm - reference``, the difference and its 95% t interval
    (:func:`interval_cells`), with ``ratio`` the difference's exponential (a metric in
    logs: the ratio it means), Holm's p, the seeds and the claim's verdict."""
    return [
        [
            e["claim"],
            f"{e['arm']} - {e['reference']}",
            *interval_cells(row, digits),
            *([_ratio_text(row.get("diff"))] if ratio else []),
            None if row.get("p_holm") is None else f"{row['p_holm']:.3g}",
            row["n"],
            e["verdict"],
        ]
        for e in evaluated
        for row in e["settings"]
    ]


def _row_text(row: Mapping[str, Any]) -> str:
    if row.get("diff") is None:
        return f"{row['setting']}: n={row['n']}"
    return (
        f"{row['setting']}: {_fmt(row['diff'])} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
        + (f" p_holm={row['p_holm']:.2g}" if row.get("p_holm") is not None else "")
        + f" ({row['status']})"
    )


def _claim_result(
    spec: ClaimSpec, rows: list[dict[str, Any]], budget_ok: bool, m: int
) -> dict[str, Any]:
    rule = VERDICT_RULE.format(
        alpha=spec.alpha,
        tost_level=1 - 2 * spec.alpha,
        margin=spec.margin,
        min_seeds=spec.min_seeds,
    )
    included = [r for r in rows if r["status"] not in ("excluded", "too few seeds")]
    seeds_needed = None
    advice = None
    if not budget_ok:
        verdict = NO_VERDICT
        fewest = min(r["n_run"] for r in rows)
        reason = f"{fewest} seeds run, fewer than the declared minimum of {spec.min_seeds}"
    elif not included:
        verdict = NO_VERDICT
        reason = f"every setting has fewer than {spec.min_seeds} seeds that left chance"
    else:
        verdict = _verdict([r["status"] for r in included])
        counts = {
            s: sum(r["status"] == s for r in included)
            for s in ("better", "opposite", "equivalent", "undecided")
        }
        reason = ", ".join(f"{k} in {v}/{len(included)}" for k, v in counts.items() if v)
        if verdict == INCONCLUSIVE:
            # alpha / m: Holm's strictest level (its first step), which decides a test whatever
            # the other tests of the experiment show
            needs = [
                seeds_for_power(
                    spec.margin,
                    r["sd"],
                    alpha=spec.alpha / m,
                    target=spec.power,
                    paired=spec.paired,
                )
                for r in included
                if r["status"] == "undecided"
            ]
            for r, n in zip(
                [r for r in included if r["status"] == "undecided"], needs, strict=True
            ):
                r["seeds_needed"] = n
            seeds_needed = None if None in needs else max(needs)
            per = "pairs of seeds" if spec.paired else "seeds per arm"
            advice = (
                f"about {seeds_needed} {per} would give {spec.power:.0%} power to detect a "
                f"difference of {spec.margin} (the margin) at the observed SD"
                if seeds_needed is not None
                else "more than 100,000 seeds would be needed at the observed SD"
            )
    for r in rows:
        r.pop("_difference", None)
    rows_json = [
        {k: _json(r[k]) for k in sorted(r, key=lambda k: _ROW_ORDER.get(k, len(_ROW_ORDER)))}
        for r in rows
    ]
    for r in rows_json:
        if "bootstrap" in r:
            r["bootstrap"] = {k: _json(v) for k, v in r["bootstrap"].items()}
    comparison = f"{spec.metric}: {spec.arm} - {spec.reference}"
    text = f"{verdict}: {comparison} ({reason}); " + "; ".join(_row_text(r) for r in rows_json)
    if advice:
        text += f"; {advice}"
    excluded = [dict(e, setting=r["setting"]) for r in rows_json for e in r["excluded"]]
    return {
        "claim": spec.name,
        "metric": spec.metric,
        "direction": spec.direction,
        "arm": spec.arm,
        "reference": spec.reference,
        "alpha": spec.alpha,
        "margin": spec.margin,
        "min_seeds": spec.min_seeds,
        "pairing": "paired by seed" if spec.paired else "Welch",
        "holm_family": m,
        "verdict": verdict,
        "reason": reason,
        "rule": rule,
        "settings": rows_json,
        "excluded": excluded,
        "seeds_needed": seeds_needed,
        "budget_advice": advice,
        "text": text,
    }


def evaluate_experiment(
    specs: Sequence[ClaimSpec],
    per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
) -> list[dict[str, Any]]:
    """The verdicts of one experiment's claims, Holm-corrected together.

    Per claim and setting: the paired t (or Welch) difference ``arm - reference`` of the
    primary metric with its interval and p-value, and the TOST p-value within
    ``±margin``. Values are per seed, in the same seed order for every arm.

    Exclusion: a seed whose value is not finite, or that the claim's ``chance`` rule
    says never left chance, is excluded (when paired, from both arms: the pair is
    broken) and listed with its reason. A setting with fewer than ``min_seeds`` seeds
    left has status ``"excluded"`` (its numbers are shown, it does not vote).

    Holm: the p-values of every included setting of every claim with enough seeds form
    one family of m tests (``p_holm``); the TOST p-values form a second (``tost_p_holm``).

    Status of an included setting (alpha the claim's):

    - ``"equivalent"``: ``tost_p_holm < alpha``; the difference lies within the margin
      (also when it is significant: smaller than the smallest effect of interest,
      Lakens 2017).
    - ``"better"``: otherwise ``p_holm < alpha`` with the difference in the claimed
      direction (any direction for ``"differs"``).
    - ``"opposite"``: otherwise ``p_holm < alpha`` against the claimed direction.
    - ``"undecided"``: neither.

    Verdict over the included settings:

    - ``supported``: every one is ``better``.
    - ``refuted``: every one is ``equivalent`` or ``opposite``.
    - ``context-dependent``: at least one is ``better`` and at least one is
      ``opposite`` or ``equivalent`` (undecided ones are shown beside).
    - ``inconclusive``: otherwise; ``seeds_needed`` is the largest, over the undecided
      settings, of :func:`seeds_for_power` for an effect of ``margin`` at the setting's
      observed SD, power ``spec.power``, level ``alpha / m``.
    - ``no verdict at this budget``: any setting ran fewer than ``min_seeds`` seeds
      (e.g. ``--quick``), or no setting is left after exclusion.

    Args:
        specs: the experiment's claims, declared before the run.
        per_seed: ``setting -> arm -> metric -> [value per seed]``.

    Returns:
        One JSON-ready dict per claim, in order: ``verdict``, ``reason``, ``rule``,
        ``settings`` (rows with ``status``, ``n_run``, ``n``, ``diff``, ``ci_low``,
        ``ci_high``, ``p``, ``p_holm``, ``tost_p``, ``tost_p_holm``, ``effect_size``, ...,
        ``excluded``), ``excluded``, ``seeds_needed``, ``budget_advice``, ``text`` (one
        line), and the spec's fields.

    Raises:
        ValueError: a claim names a setting, arm or metric that is missing, paired arms
            have different seed counts, or a claim has no settings.
    """
    work: list[tuple[ClaimSpec, list[dict[str, Any]], bool]] = []
    for spec in specs:
        names = (
            list(spec.settings)
            if spec.settings is not None
            else [s for s, v in per_seed.items() if spec.arm in v and spec.reference in v]
        )
        if not names:
            raise ValueError(
                f"claim {spec.name!r}: no setting has both {spec.arm!r} and {spec.reference!r}"
            )
        for s in names:
            if s not in per_seed:
                raise ValueError(
                    f"claim {spec.name!r}: unknown setting {s!r}; choose from {list(per_seed)}"
                )
        rows = [_setting_row(spec, s, per_seed[s]) for s in names]
        budget_ok = all(r["n_run"] >= spec.min_seeds for r in rows)
        for r in rows:
            if not budget_ok:
                r["status"] = "too few seeds"
            elif r["n"] < spec.min_seeds:
                r["status"] = "excluded"
        work.append((spec, rows, budget_ok))

    family = [r for _, rows, _ in work for r in rows if r["status"] is None]
    m = len(family)
    for key in ("p", "tost_p"):
        for r, adj in zip(family, holm([r[key] for r in family]), strict=True):
            r[f"{key}_holm"] = adj
    for spec, rows, _ in work:
        for r in rows:
            if r["status"] is None:
                r["status"] = _status(spec, r)
    return [_claim_result(spec, rows, ok, max(m, 1)) for spec, rows, ok in work]


def evaluate_claim(
    spec: ClaimSpec, per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]]
) -> dict[str, Any]:
    """:func:`evaluate_experiment` of one claim (Holm over its settings only)."""
    return evaluate_experiment([spec], per_seed)[0]
