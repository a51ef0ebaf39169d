"""Claims decided by ``bnlab.lab.stats``: the claims-table entry of a declared claim whose
verdict is its ``stats.evaluate_experiment`` evaluation (``bnlab.lab.claims.stats_rule``)
and whose measured text is that evaluation's line (``kit.paired.measured_text``).

Most experiments' claims are of this kind; each declares them with :func:`stats_claim`
instead of spelling out the rule and the text per claim.
"""

from __future__ import annotations

from bnlab.lab.claims import Literature, stats_rule
from bnlab.lab.kit.paired import measured_text
from bnlab.lab.kit.verdicts import ClaimRule, Rule

__all__ = ["stats_claim"]


def stats_claim(
    key: str,
    claim: str,
    source: str,
    rule_text: str,
    *,
    rule: Rule | None = None,
    sentence: str = "",
    literature: Literature | None = None,
) -> ClaimRule:
    """The ``ClaimRule`` of claim ``key``, decided by its ``stats`` evaluation.

    Args:
        key, claim, source, rule_text, sentence, literature: as in ``kit.ClaimRule``.
        rule: the verdict's rule (default ``stats_rule(key)``: the declared claim ``key``
            evaluated over the stored specs and per-seed numbers).
    """
    return ClaimRule(
        key,
        claim,
        source,
        rule_text,
        stats_rule(key) if rule is None else rule,
        measured_text,
        sentence=sentence,
        literature=literature,
    )
