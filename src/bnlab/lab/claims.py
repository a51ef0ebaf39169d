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
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.train.io import write_json

__all__ = [
    "NOT_MEASURED",
    "VERDICTS",
    "Claim",
    "available_claims",
    "evaluate_claims",
    "holds_of",
    "load_many",
    "load_results",
    "register_claim",
    "write_claims",
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


def holds_of(verdict: str) -> bool | None:
    """A claims-table verdict as a lab ``Verdict.holds``: True, False, or None (mixed)."""
    return {"supported": True, "not supported": False}.get(verdict)


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

        A rule that cannot read its experiment's results (it raises ``KeyError``,
        ``IndexError``, ``TypeError`` or ``ValueError``) gives ``"not measured"`` with the
        error in ``evidence["error"]``.

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
            try:
                evidence, verdict = claim.rule(found)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                # Results of another layout (an older run, a cut-down config): the rule
                # cannot read them, so the claim is not measured by them; say why.
                evidence = {"error": f"{type(exc).__name__}: {exc}"}
                verdict = NOT_MEASURED
            else:
                if verdict not in VERDICTS:
                    raise ValueError(
                        f"claim {claim.key!r}: rule returned {verdict!r}; "
                        f"expected one of {VERDICTS}"
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


def load_many(run_dirs: Sequence[str | os.PathLike[str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """``results.json`` of every folder that has a readable one, and a message per other.

    Args:
        run_dirs: ``bnlab lab`` results folders.

    Returns:
        ``(results, problems)``: the loaded results in the order given, and for each
        folder that is not a lab results folder the message of :func:`load_results`
        (which names the file).
    """
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    for run_dir in run_dirs:
        try:
            results.append(load_results(Path(run_dir)))
        except ValueError as exc:
            problems.append(str(exc))
    return results, problems


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, recursively (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_claims(out_dir: str | os.PathLike[str], table: Sequence[Mapping[str, Any]]) -> Path:
    """Write the claims table to ``out_dir/claims.json`` atomically (the folder is made).

    Each entry keeps ``claim``, ``key``, ``source``, ``experiment``, ``evidence``, ``rule``
    and ``verdict``; NaN and infinite numbers in the evidence are written as null.

    Returns:
        The path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / "claims.json", [_finite(dict(row)) for row in table])
