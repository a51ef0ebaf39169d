"""The claims table: each claim, where it comes from, the experiment that tests it, a verdict,
and what the literature found.

A :class:`Claim` names a statement, its origin (a seed file in ``../shared/seeds/`` and
the sentence quoted from it, or "from the literature" with the paper), the ``bnlab
lab`` experiment that measures it, and a *rule*: a function of that experiment's
``results.json`` returning the evidence (numbers) and a verdict, one of ``VERDICTS``.
The rule's text says in words what it computes, so a reader can check the verdict by
hand. Verdicts are computed from the numbers, never written by hand.

Beside each claim, :data:`LITERATURE` (or the claim's own ``literature``) says what
the papers found (paper, setting, numbers) and the verdict that finding gives; the
table says whether ours agrees and, where it does not, why (budget, scale, setting).

Two generations of rules coexist: the first edition's ("supported", "not supported",
"mixed": a 2-standard-error rule) and the second edition's, declared as
``bnlab.lab.stats.ClaimSpec`` before the run (:func:`stats_rule`: "supported",
"refuted", "context-dependent", "inconclusive", "no verdict at this budget").

Experiment modules register their claims when imported (``register_claim``);
:func:`evaluate_claims` maps results folders to the table. A claim whose experiment has
no results among the folders is ``"not measured"``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.lab import stats
from bnlab.train.io import atomic_write, write_json

__all__ = [
    "FROM_LITERATURE",
    "LITERATURE",
    "NOT_MEASURED",
    "VERDICTS",
    "Claim",
    "Literature",
    "agreement",
    "available_claims",
    "claim_summary",
    "claims_markdown",
    "evaluate_claims",
    "holds_of",
    "load_many",
    "load_results",
    "register_claim",
    "spec_from_record",
    "spec_record",
    "stats_rule",
    "write_claims",
    "write_claims_markdown",
]

#: The verdicts a rule may return: the first edition's three, then the second edition's
#: (``bnlab.lab.stats``); and the one for claims without results.
VERDICTS: tuple[str, ...] = (
    "supported",
    "not supported",
    "mixed",
    stats.REFUTED,
    stats.CONTEXT_DEPENDENT,
    stats.INCONCLUSIVE,
    stats.NO_VERDICT,
)
NOT_MEASURED = "not measured"
#: The ``source`` of a claim that the seeds do not make.
FROM_LITERATURE = "from the literature"

# ``rule(results) -> (evidence, verdict)``: evidence is a JSON-ready dict of numbers.
Rule = Callable[[Mapping[str, Any]], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class Literature:
    """What the literature found about a claim.

    Args:
        paper: authors, year, title or arXiv id (and the section or figure).
        setting: the setting they measured (model, data, scale).
        numbers: what they found, in numbers where there are some.
        finding: the verdict their finding gives to our claim: ``"supported"``,
            ``"refuted"`` or ``"context-dependent"``.
        differs: how our setting differs from theirs (budget, scale, setting), the
            reason shown where our verdict disagrees or does not decide.
    """

    paper: str
    setting: str
    numbers: str
    finding: str
    differs: str = ""

    def __post_init__(self) -> None:
        if self.finding not in _FINDINGS:
            raise ValueError(
                f"Literature {self.paper!r}: finding must be one of {', '.join(_FINDINGS)}, "
                f"got {self.finding!r}"
            )

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


_FINDINGS = ("supported", "refuted", "context-dependent")


@dataclass(frozen=True)
class Claim:
    """A claim, where it comes from, and how bnlab decides it.

    Args:
        key: a short unique id (``"bn-allows-higher-lr"``).
        claim: the statement, in the seeds' sense.
        source: the seed file it comes from (a name in ``../shared/seeds/``), or
            ``FROM_LITERATURE`` for a claim the seeds do not make (then ``literature``
            names the paper).
        experiment: the ``bnlab lab`` experiment whose results decide it.
        rule_text: the rule in words (which numbers, which threshold).
        rule: ``rule(results) -> (evidence, verdict)``.
        sentence: the sentence of ``source`` the claim quotes (empty for
            ``FROM_LITERATURE``).
        literature: what the papers found (None: ``LITERATURE[key]`` if any).
    """

    key: str
    claim: str
    source: str
    experiment: str
    rule_text: str
    rule: Rule
    sentence: str = ""
    literature: Literature | None = None


_CLAIMS: dict[str, Claim] = {}


def holds_of(verdict: str) -> bool | None:
    """A claims-table verdict as a lab ``Verdict.holds``: True (supported), False (not
    supported, refuted), or None (mixed, context-dependent, inconclusive, no verdict)."""
    return {"supported": True, "not supported": False, stats.REFUTED: False}.get(verdict)


def agreement(verdict: str, literature: Literature | None) -> str:
    """Whether our verdict agrees with the literature's finding.

    ``"agrees"`` when they are the same; ``"disagrees"`` when ours is decisive
    (supported, refuted, context-dependent) and another; ``"undecided"`` when ours does
    not decide (not supported, mixed, inconclusive, no verdict, not measured: the first
    edition's "not supported" means only "not significant"); ``"no literature"``
    without an entry.
    """
    if literature is None:
        return "no literature"
    if verdict == literature.finding:
        return "agrees"
    if verdict in ("supported", stats.REFUTED, stats.CONTEXT_DEPENDENT):
        return "disagrees"
    return "undecided"


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
    # Where it was read from, for the claims table's figure (not part of the file).
    results[RUN_DIR_KEY] = str(run_dir)
    return results


#: The key :func:`load_results` adds: the folder the results were read from.
RUN_DIR_KEY = "_run_dir"


def _sig(x: Any) -> str:
    return "n/a" if not isinstance(x, int | float) or not math.isfinite(x) else f"{x:.4g}"


def _p(x: Any) -> str:
    return "n/a" if not isinstance(x, int | float) or not math.isfinite(x) else f"{x:.2g}"


def _excluded(entry: Any) -> str:
    """One excluded run as ``arm seed S (setting): reason``."""
    if not isinstance(entry, Mapping):
        return str(entry)
    where = f" ({entry['setting']})" if entry.get("setting") not in (None, "") else ""
    reason = str(entry.get("reason", "")).split(" (", 1)[0]
    return f"{entry.get('arm', '?')} seed {entry.get('seed', '?')}{where}: {reason}"


def claim_summary(evidence: Mapping[str, Any]) -> list[str]:
    """The numbers behind a declared claim's verdict, one short line each: the metric and
    comparison, then per setting the difference with its 95% interval and Holm p-value;
    excluded seeds and the seeds that would decide where there are any.

    Returns:
        The lines; empty for evidence that is not a ``bnlab.lab.stats`` evaluation (the
        first edition's rules), which the tables show key by key instead.
    """
    settings = evidence.get("settings")
    if not isinstance(settings, list) or "metric" not in evidence:
        return []
    lines = [
        f"{evidence['metric']}: {evidence.get('arm')} - {evidence.get('reference')} "
        f"({evidence.get('pairing', '')}, margin ±{_sig(evidence.get('margin'))})"
    ]
    for row in settings:
        if not isinstance(row, Mapping):
            continue
        where = f"{row['setting']}: " if row.get("setting") not in (None, "") else ""
        if row.get("diff") is None:
            lines.append(f"{where}{row.get('status', 'n/a')} (n={row.get('n', 0)})")
            continue
        lines.append(
            f"{where}{row['diff']:+.4g} [{_sig(row.get('ci_low'))}, {_sig(row.get('ci_high'))}]"
            f" p_Holm={_p(row.get('p_holm'))} n={row.get('n')} ({row.get('status')})"
        )
    if evidence.get("excluded"):
        lines.append("excluded: " + "; ".join(_excluded(e) for e in evidence["excluded"]))
    if evidence.get("seeds_needed"):
        lines.append(f"seeds that would decide: {evidence['seeds_needed']}")
    return lines


def _figure(found: Mapping[str, Any]) -> dict[str, str] | None:
    """The experiment's first figure, as a path beside the claims table (None: none)."""
    figures = found.get("figures") or []
    folder = found.get(RUN_DIR_KEY)
    if not figures or folder is None or not isinstance(figures[0], Mapping):
        return None
    name = str(figures[0].get("file", ""))
    if not name:
        return None
    return {"path": str(Path(folder) / name), "caption": str(figures[0].get("caption", ""))}


def evaluate_claims(
    results: Iterable[Mapping[str, Any]], claims: Iterable[Claim] | None = None
) -> list[dict[str, Any]]:
    """The claims table for a set of experiment results.

    Args:
        results: ``results.json`` contents (one per experiment; for an experiment given
            twice, the last one counts).
        claims: the claims to decide (default: all registered).

    Returns:
        One dict per claim: ``claim``, ``key``, ``source``, ``sentence``, ``experiment``,
        ``evidence``, ``summary`` (:func:`claim_summary`), ``figure`` (the experiment's
        first figure, ``{path, caption}``, when the results came from a folder; else
        None), ``rule``, ``verdict``, ``literature`` (the paper, setting, numbers and
        finding, or None), ``agreement`` (:func:`agreement`) and ``why`` (how our setting
        differs, where the verdict disagrees or does not decide; else "").

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
        figure = None
        if found is None:
            evidence: dict[str, Any] = {}
            verdict = NOT_MEASURED
        else:
            figure = _figure(found)
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
        literature = claim.literature or LITERATURE.get(claim.key)
        agrees = agreement(verdict, literature)
        table.append(
            {
                "key": claim.key,
                "claim": claim.claim,
                "source": claim.source,
                "sentence": claim.sentence,
                "experiment": claim.experiment,
                "evidence": evidence,
                "summary": claim_summary(evidence),
                "figure": figure,
                "rule": claim.rule_text,
                "verdict": verdict,
                "literature": None if literature is None else literature.to_dict(),
                "agreement": agrees,
                "why": literature.differs
                if literature is not None and agrees in ("disagrees", "undecided")
                else "",
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

    Each entry keeps its keys (``claim``, ``key``, ``source``, ``experiment``,
    ``evidence``, ``rule``, ``verdict``, and the literature columns); NaN and infinite numbers in the evidence are written as null. A figure's path is written relative to
    ``out_dir``.

    Returns:
        The path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in table:
        row = dict(row)
        if row.get("figure"):
            # Relative to the table's folder, so the folders can move together.
            path = os.path.relpath(Path(row["figure"]["path"]).resolve(), out.resolve())
            row["figure"] = {**row["figure"], "path": path}
        rows.append(_finite(row))
    return write_json(out / "claims.json", rows)


# --- second-edition rules: declared ClaimSpecs over the per-seed numbers ----------------


def spec_record(spec: stats.ClaimSpec) -> dict[str, Any]:
    """A ``ClaimSpec`` as JSON (results.json stores the specs the run declared)."""
    record = dataclasses.asdict(spec)
    record["settings"] = None if spec.settings is None else list(spec.settings)
    return record


def spec_from_record(record: Mapping[str, Any]) -> stats.ClaimSpec:
    """The ``ClaimSpec`` of :func:`spec_record`'s dict.

    Raises:
        ValueError: a field is missing or not a ClaimSpec field (the message names it).
    """
    fields = {f.name for f in dataclasses.fields(stats.ClaimSpec)}
    unknown = sorted(set(record) - fields)
    if unknown:
        raise ValueError(f"spec_from_record: unknown ClaimSpec fields {unknown}")
    values = dict(record)
    if values.get("chance") is not None:
        values["chance"] = stats.ChanceRule(**values["chance"])
    if values.get("settings") is not None:
        values["settings"] = tuple(values["settings"])
    try:
        return stats.ClaimSpec(**values)
    except TypeError as exc:
        raise ValueError(f"spec_from_record: {exc}") from None


def stats_rule(name: str) -> Rule:
    """The rule of a declared claim: ``bnlab.lab.stats.evaluate_experiment`` of the
    specs stored in ``results["raw"]["specs"]`` (Holm over all of them, as in the run)
    over ``results["raw"]["per_seed"]``; the evidence is claim ``name``'s evaluation.

    Raises (when the rule runs):
        KeyError: the results have no specs, per-seed numbers or claim ``name``.
    """

    def rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        raw = results["raw"]
        specs = [spec_from_record(r) for r in raw["specs"]]
        evaluated = {e["claim"]: e for e in stats.evaluate_experiment(specs, raw["per_seed"])}
        found = evaluated[name]
        return found, found["verdict"]

    return rule


# --- what the literature found, for the claims whose rules predate the literature column --

_ICS = "Santurkar, Tsipras, Ilyas & Madry 2018, 'How Does Batch Normalization Help Optimization?', arXiv 1805.11604"
_IOFFE = "Ioffe & Szegedy 2015, 'Batch Normalization', arXiv 1502.03167"
_SMALL_SCALE = (
    "ours: small networks on Fashion-MNIST, a few hundred to a few thousand steps on a CPU, "
    "a handful of seeds; theirs: larger networks trained to convergence"
)

#: What the papers found, by claim key (a claim's own ``literature`` takes precedence).
#: Only entries whose paper, setting and finding we could state; no entry, no column.
LITERATURE: dict[str, Literature] = {
    "bn-alleviates-vanishing-gradients": Literature(
        "Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, 'A Mean Field Theory of "
        "Batch Normalization', arXiv 1902.08129",
        "deep fully connected networks with BN and no skip connections, at initialization",
        "BN causes gradient explosion at initialization, growing with depth (theory and "
        "experiments); in shallow networks and with residual connections it does not",
        "context-dependent",
        _SMALL_SCALE + "; the answer depends on depth and architecture",
    ),
}


def _md(text: Any) -> str:
    """``text`` for one Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _short_paper(literature: Mapping[str, Any]) -> str:
    """The paper's authors and year: the text before its first quoted title or comma."""
    paper = str(literature.get("paper", "?"))
    for stop in (", '", ' "', ", arXiv"):
        if stop in paper:
            paper = paper.split(stop, 1)[0]
    return paper


def _scalar_evidence(evidence: Mapping[str, Any]) -> list[str]:
    """``key=value`` for the short scalar entries of a rule's evidence that is not a
    ``bnlab.lab.stats`` evaluation (exact checks, the first edition's rules)."""
    out = []
    for key, value in evidence.items():
        if key == "quick" or isinstance(value, Mapping | list | tuple):
            continue
        text = _sig(value) if isinstance(value, float) else str(value)
        if len(text) <= 40:
            out.append(f"{key}={text}")
    return out


def claims_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The claims table as Markdown: one row per claim with its experiment, the numbers
    behind the verdict (:func:`claim_summary`; the first edition's evidence is not
    shown), the verdict, and what the literature found with our agreement.

    Returns:
        The table, header included, ending in a newline.
    """
    lines = [
        "| claim | experiment | result (difference [95% CI], Holm p) | verdict | literature |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        summary = list(row.get("summary") or []) or _scalar_evidence(row.get("evidence") or {})
        result = "; ".join(summary) if summary else "-"
        if row.get("evidence", {}).get("quick"):
            result = "(quick run) " + result
        found = row.get("literature")
        if isinstance(found, Mapping):
            lit = f"{_short_paper(found)}: {found.get('finding')}; ours {row.get('agreement')}"
            if row.get("why") and row.get("verdict") != NOT_MEASURED:
                lit += f" ({row['why']})"
        else:
            lit = "-"
        lines.append(
            f"| {_md(row['claim'])} | `{_md(row['experiment'])}` | {_md(result)} | "
            f"**{_md(row['verdict'])}** | {_md(lit)} |"
        )
    return "\n".join(lines) + "\n"


def write_claims_markdown(path: str | os.PathLike[str], table: Sequence[Mapping[str, Any]]) -> Path:
    """Write :func:`claims_markdown` to ``path`` atomically."""
    text = claims_markdown(table).encode()
    return atomic_write(path, lambda f: f.write(text))
