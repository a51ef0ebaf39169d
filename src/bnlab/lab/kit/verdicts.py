"""Verdict helpers: numbers for the verdicts' texts and tables, and the claims' rules.

An experiment's claims are decided by rules (``bnlab.lab.claims``) over the per-seed
numbers of its grid, ``per_seed[setting][variant][metric] -> [value per seed]``; a
:class:`ClaimRule` declares a claim once (:func:`register_claims`), :func:`apply_rules`
turns rules into the ``Verdict``s of results.json and :func:`decide` also keeps each
claim's evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bnlab.lab.claims import Claim, Literature, holds_of, register_claim
from bnlab.lab.experiment import Verdict, describe

__all__ = [
    "ClaimRule",
    "apply_rules",
    "decide",
    "finite_mean",
    "mean_std",
    "mean_std_cell",
    "number_or_na",
    "register_claims",
]


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The plain mean of the finite values (None and NaN left out); None if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def number_or_na(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or ``"n/a"`` when it is None."""
    return "n/a" if value is None else format(value, spec)


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
