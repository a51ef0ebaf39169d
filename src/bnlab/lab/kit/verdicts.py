"""Verdict helpers: per-seed numbers by setting and variant, comparisons, rules.

An experiment's claims are decided by rules (``bnlab.lab.claims``) over the per-seed
numbers of its grid, ``per_seed[setting][variant][metric] -> [value per seed]``.
:func:`compare_variants` compares two variants of every setting with
:func:`bnlab.lab.experiment.compare` (Welch's standard error, 2-sigma rule),
:func:`directions_verdict` turns the comparisons into "supported", "not supported" or
"mixed", :func:`apply_rules` turns rules into the ``Verdict``s of results.json, and
:func:`trainable_values` says which values of a sweep train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bnlab.lab.claims import Claim, Literature, holds_of, register_claim
from bnlab.lab.experiment import Comparison, Verdict, compare, describe
from bnlab.lab.kit.models import arch_label

__all__ = [
    "TRAINS_RULE",
    "ClaimRule",
    "apply_rules",
    "compare_variants",
    "comparison_fields",
    "decide",
    "difference_text",
    "directions_verdict",
    "evidence_text",
    "finite_mean",
    "hits_verdict",
    "ladder_verdict",
    "mean_std",
    "mean_std_cell",
    "number_or_na",
    "pick",
    "plateau_notes",
    "register_claims",
    "trainable_values",
    "variant_mean",
]

#: When a grid value counts as training (``trainable_values``).
TRAINS_RULE = (
    "a setting trains when no seed diverged and its mean final test accuracy is at least "
    "{fraction:.0%} of the best mean test accuracy of {reference}"
)

PerSeed = Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]]


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The plain mean of the finite values (None and NaN left out); None if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def number_or_na(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or ``"n/a"`` when it is None."""
    return "n/a" if value is None else format(value, spec)


def directions_verdict(directions: Sequence[str], wanted: str) -> str:
    """``supported`` if every comparison went the ``wanted`` way, ``not supported`` if none
    did, ``mixed`` otherwise (``directions`` from :func:`compare`).

    Raises:
        ValueError: no comparisons.
    """
    if not directions:
        raise ValueError("directions_verdict: no comparisons to decide from")
    hits = sum(d == wanted for d in directions)
    if hits == len(directions):
        return "supported"
    if hits == 0:
        return "not supported"
    return "mixed"


def hits_verdict(hits: int, total: int) -> str:
    """``supported`` when all ``total`` tests hit (also when there are none), ``not
    supported`` when none did, ``mixed`` otherwise."""
    if hits == total:
        return "supported"
    return "mixed" if hits else "not supported"


def ladder_verdict(supported: bool, not_supported: bool) -> str:
    """``supported`` when ``supported`` holds, else ``not supported`` when
    ``not_supported`` holds, else ``mixed``."""
    if supported:
        return "supported"
    return "not supported" if not_supported else "mixed"


def comparison_fields(c: Comparison) -> dict[str, Any]:
    """``{"difference", "se", "direction"}`` of a comparison, for evidence."""
    return {"difference": c.diff, "se": c.se, "direction": c.direction}


def difference_text(entry: Mapping[str, Any] | None, key: str = "diff") -> str:
    """``"+0.123 (se 0.045)"`` for evidence ``{key: difference, "se": ...}`` (3 decimals);
    ``"n/a"`` without a difference."""
    if not entry or entry.get(key) is None:
        return "n/a"
    se = "n/a" if entry["se"] is None else f"{entry['se']:.3f}"
    return f"{entry[key]:+.3f} (se {se})"


def compare_variants(
    per_seed: PerSeed,
    metric: str,
    *,
    variant: str = "bn",
    baseline: str = "none",
    settings: Sequence[str] | None = None,
    skip_empty: bool = False,
    entry: Callable[[Mapping[str, Any], Comparison], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """``compare(variant, baseline)`` of ``metric`` in every setting that has both.

    Args:
        per_seed: setting -> variant -> metric -> per-seed values.
        metric: the metric compared.
        variant, baseline: the two variants (``mean(variant) - mean(baseline)``).
        settings: the settings to compare, in this order (default: all, in order).
        skip_empty: leave out settings where a side has no finite value (else
            ``compare`` raises).
        entry: ``entry(variants, comparison)`` -> a setting's evidence, from its
            variants (``per_seed[setting]``); default ``{"<metric>_<variant>": mean,
            "<metric>_<baseline>": mean, "difference", "se", "direction"}``.

    Returns:
        ``(evidence by setting, directions)``: the directions for
        :func:`directions_verdict`, in the settings' order.
    """
    evidence: dict[str, Any] = {}
    directions: list[str] = []
    for setting in per_seed if settings is None else settings:
        variants = per_seed.get(setting, {})
        if variant not in variants or baseline not in variants:
            continue
        a, b = variants[variant][metric], variants[baseline][metric]
        if skip_empty and (describe(a)["n"] == 0 or describe(b)["n"] == 0):
            continue
        c = compare(a, b)
        if entry is None:
            evidence[setting] = {
                f"{metric}_{variant}": describe(a)["mean"],
                f"{metric}_{baseline}": describe(b)["mean"],
                **comparison_fields(c),
            }
        else:
            evidence[setting] = entry(variants, c)
        directions.append(c.direction)
    return evidence, directions


def variant_mean(variants: Mapping[str, Any], variant: str, metric: str) -> float | None:
    """The mean over seeds of ``metric`` of ``variant`` (None without a finite value)."""
    return describe(variants.get(variant, {}).get(metric, []))["mean"]


def evidence_text(
    evidence: Mapping[str, Mapping[str, Any]],
    label: Callable[[str], str] = arch_label,
    *,
    skip: Sequence[str] = ("se",),
) -> str:
    """``"<label>: key value, ...; ..."`` for evidence by setting (floats to 4 digits)."""
    return "; ".join(
        f"{label(setting)}: "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in entry.items()
            if k not in skip
        )
        for setting, entry in evidence.items()
    )


def plateau_notes(per_seed: PerSeed, label: Callable[[str], str] = arch_label) -> list[str]:
    """Notes for (setting, variant) pairs whose final train loss stayed near ln(10).

    A 10-class network that has not left its initial plateau (loss within 5 % of
    ln 10 = 2.303, chance level) barely moves, so a small shift or a flat landscape there
    says that it does not learn, not that it is well conditioned.
    """
    notes = []
    for setting, variants in per_seed.items():
        for variant, metrics in variants.items():
            mean = describe(metrics.get("train_loss", []))["mean"]
            if mean is not None and mean > 0.95 * math.log(10):
                notes.append(
                    f"{label(setting)}, {variant}: final train loss {mean:.3f} is at "
                    "chance level (ln 10 = 2.303): it has not left the initial plateau, so its "
                    "small changes reflect a network that barely learns"
                )
    return notes


def pick(cells: Iterable[Mapping[str, Any]], metric: str, **where: Any) -> list[float]:
    """``metric`` of the cells matching every ``key=value`` in ``where`` (None -> NaN).

    Grid values are compared as floats when both sides are numbers.
    """
    out: list[float] = []
    for cell in cells:
        if all(_same(cell.get(k), v) for k, v in where.items()):
            value = cell.get(metric)
            out.append(math.nan if value is None else float(value))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (None when unknown)."""
    stats = describe(values)
    return stats["mean"], stats["std"]


def mean_std_cell(values: Iterable[Any]) -> str | None:
    """``"mean ± std"`` (3 decimals) of the numbers among ``values`` (strings, such as an
    error text, and non-finite values left out); the mean alone for one; None for none."""
    mean, std = mean_std([float(v) for v in values if isinstance(v, int | float)])
    if mean is None:
        return None
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def trainable_values(
    cells: Sequence[Mapping[str, Any]],
    *,
    group_key: str,
    grid_key: str,
    fraction: float,
    metric: str = "test_acc",
    per_group: bool = False,
    min_value: float = -math.inf,
) -> dict[str, Any]:
    """Which grid values train, per group, by ``TRAINS_RULE``.

    Args:
        cells: one dict per run with ``group_key`` (e.g. "variant"), ``grid_key`` (e.g.
            "lr"), ``metric`` and ``diverged``.
        fraction: a grid value trains when no seed diverged and its mean ``metric`` is
            at least ``fraction`` times the best mean over all groups and values (with
            ``per_group``: the best mean of its own group), and at least ``min_value``.

    Returns:
        ``{"best": best mean, "threshold": fraction * best, "groups": {group: {"trains":
        [values, ascending], "mean": {repr(value): mean}, "diverged": {repr(value):
        count}, "best": ..., "threshold": ...}}}`` (the top-level best and threshold are
        over all groups; each group's own are beside its values).
    """
    groups: dict[str, dict[float, list[Mapping[str, Any]]]] = {}
    for cell in cells:
        groups.setdefault(str(cell[group_key]), {}).setdefault(float(cell[grid_key]), []).append(
            cell
        )
    means: dict[str, dict[float, float | None]] = {}
    best = -math.inf
    for group, by_value in groups.items():
        means[group] = {}
        for value, runs in by_value.items():
            mean = describe([math.nan if r.get(metric) is None else r[metric] for r in runs])[
                "mean"
            ]
            means[group][value] = mean
            if mean is not None:
                best = max(best, mean)
    threshold = fraction * best if math.isfinite(best) else math.inf
    out: dict[str, Any] = {
        "best": best if math.isfinite(best) else None,
        "threshold": threshold if math.isfinite(threshold) else None,
        "groups": {},
    }
    for group, by_value in groups.items():
        group_means = [m for m in means[group].values() if m is not None]
        group_best = max(group_means) if group_means else None
        if per_group:
            limit = fraction * group_best if group_best is not None else math.inf
        else:
            limit = threshold
        limit = max(limit, min_value)
        trains, diverged = [], {}
        for value in sorted(by_value):
            runs = by_value[value]
            n_div = sum(1 for r in runs if r.get("diverged"))
            diverged[repr(value)] = n_div
            mean = means[group][value]
            if n_div == 0 and mean is not None and mean >= limit:
                trains.append(value)
        out["groups"][group] = {
            "trains": trains,
            "best": group_best,
            "threshold": limit if math.isfinite(limit) else None,
            "mean": {repr(v): means[group][v] for v in sorted(by_value)},
            "diverged": diverged,
        }
    return out


Rule = Callable[[Mapping[str, Any]], tuple[Any, str]]


@dataclass(frozen=True)
class ClaimRule:
    """A claim an experiment decides, declared once: its claims-table entry
    (``bnlab.lab.claims.Claim`` without the experiment) and how its verdict reads.

    Attributes:
        key, claim, source, rule_text, rule: as in ``Claim``.
        measured: evidence -> the numbers behind the verdict, as text.
        sentence, literature: as in ``Claim`` (the quoted seed sentence; the papers).
    """

    key: str
    claim: str
    source: str
    rule_text: str
    rule: Rule
    measured: Callable[[Any], str]
    sentence: str = ""
    literature: Literature | None = None


def apply_rules(
    results: Mapping[str, Any],
    rules: Iterable[ClaimRule | tuple[str, Rule, Callable[[Any], str]]],
) -> tuple[list[Verdict], dict[str, Any]]:
    """Each claim's verdict from its claims-table rule: ``(claim, rule, measured)`` (or a
    ``ClaimRule``) gives ``Verdict(claim, holds_of(verdict), "<verdict>:
    <measured(evidence)>")``.

    Returns:
        ``(verdicts, evidences)``: the verdicts in order, and each claim's evidence.
    """
    verdicts, evidences = [], {}
    for item in rules:
        if isinstance(item, ClaimRule):
            claim, rule, measured = item.claim, item.rule, item.measured
        else:
            claim, rule, measured = item
        evidence, verdict = rule(results)
        evidences[claim] = evidence
        verdicts.append(Verdict(claim, holds_of(verdict), f"{verdict}: {measured(evidence)}"))
    return verdicts, evidences


def decide(
    raw: dict[str, Any], rules: Iterable[ClaimRule | tuple[str, Rule, Callable[[Any], str]]]
) -> list[Verdict]:
    """The verdicts of ``rules`` on the results ``{"raw": raw}`` (:func:`apply_rules`),
    each claim's evidence kept, in order, as ``raw["claims"]`` (what the tables and the
    claims table read)."""
    verdicts, evidences = apply_rules({"raw": raw}, rules)
    raw["claims"] = list(evidences.values())
    return verdicts


def register_claims(experiment: str, *claims: ClaimRule) -> tuple[ClaimRule, ...]:
    """Put the claims ``experiment`` decides in the claims table (``bnlab.lab.claims``).

    Returns:
        ``claims``, for the experiment's ``apply_rules``.
    """
    for c in claims:
        register_claim(
            Claim(
                c.key,
                c.claim,
                c.source,
                experiment,
                c.rule_text,
                c.rule,
                sentence=c.sentence,
                literature=c.literature,
            )
        )
    return claims
