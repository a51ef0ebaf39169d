"""The claims table: each claim of the seed texts, the experiment that tests it, a verdict.

A :class:`Claim` names a statement from the seeds (``../shared/seeds/``), the file it
comes from, the ``bnlab lab`` experiment that measures it, and a *rule*: a function of
that experiment's ``results.json`` returning the evidence (numbers) and a verdict, one
of ``VERDICTS``. The rule's text says in words what it computes, so a reader can check
the verdict by hand. Verdicts are computed from the numbers, never written by hand.

Experiment modules register their claims when imported (``register_claim``);
:func:`evaluate_claims` maps results folders to the table. A claim whose experiment has
no results among the folders is ``"not measured"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "NOT_MEASURED",
    "VERDICTS",
    "Claim",
    "available_claims",
    "evaluate_claims",
    "load_results",
    "register_claim",
]

#: The verdicts a rule may return, and the one for claims without results.
VERDICTS: tuple[str, ...] = ("supported", "not supported", "mixed")
NOT_MEASURED = "not measured"

# ``rule(results) -> (evidence, verdict)``: evidence is a JSON-ready dict of numbers.
Rule = Callable[[Mapping[str, Any]], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class Claim:
    """A claim from the seeds and how bnlab decides it.

    Args:
        key: a short unique id (``"bn-allows-higher-lr"``).
        claim: the statement, in the seeds' sense.
        source: the seed file it comes from (a name in ``../shared/seeds/``).
        experiment: the ``bnlab lab`` experiment whose results decide it.
        rule_text: the rule in words (which numbers, which threshold).
        rule: ``rule(results) -> (evidence, verdict)``.
    """

    key: str
    claim: str
    source: str
    experiment: str
    rule_text: str
    rule: Rule


_CLAIMS: dict[str, Claim] = {}


def register_claim(claim: Claim, *, overwrite: bool = False) -> Claim:
    """Add ``claim`` to the table.

    Raises:
        ValueError: a key already registered (and ``overwrite`` False).
    """
    if claim.key in _CLAIMS and not overwrite:
        raise ValueError(f"claim {claim.key!r} is already registered")
    _CLAIMS[claim.key] = claim
    return claim


def available_claims() -> tuple[Claim, ...]:
    """Registered claims, in registration order."""
    return tuple(_CLAIMS.values())


def load_results(run_dir: Path) -> dict[str, Any]:
    """``run_dir/results.json`` of a lab experiment.

    Raises:
        ValueError: missing, unreadable or not a lab results file (the message names it).
    """
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no results.json (is {run_dir} a 'bnlab lab' results folder?)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable results ({exc})") from exc
    if not isinstance(results, dict) or "experiment" not in results:
        raise ValueError(f"{path}: not a 'bnlab lab' results file (no 'experiment' key)")
    return results


def evaluate_claims(
    results: Iterable[Mapping[str, Any]], claims: Iterable[Claim] | None = None
) -> list[dict[str, Any]]:
    """The claims table for a set of experiment results.

    Args:
        results: ``results.json`` contents (one per experiment; for an experiment given
            twice, the last one counts).
        claims: the claims to decide (default: all registered).

    Returns:
        One dict per claim: ``claim``, ``key``, ``source``, ``experiment``, ``evidence``,
        ``rule``, ``verdict``.

    Raises:
        ValueError: a rule returned a verdict outside ``VERDICTS``.
    """
    by_experiment = {r["experiment"]: r for r in results}
    table: list[dict[str, Any]] = []
    for claim in available_claims() if claims is None else claims:
        found = by_experiment.get(claim.experiment)
        if found is None:
            evidence: dict[str, Any] = {}
            verdict = NOT_MEASURED
        else:
            evidence, verdict = claim.rule(found)
            if verdict not in VERDICTS:
                raise ValueError(
                    f"claim {claim.key!r}: rule returned {verdict!r}; expected one of {VERDICTS}"
                )
            evidence = {"quick": bool(found.get("quick")), **evidence}
        table.append(
            {
                "key": claim.key,
                "claim": claim.claim,
                "source": claim.source,
                "experiment": claim.experiment,
                "evidence": evidence,
                "rule": claim.rule_text,
                "verdict": verdict,
            }
        )
    return table
