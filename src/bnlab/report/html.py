"""Rendering results as one self-contained HTML page.

Everything the page needs is inside it: the CSS inline, figures as data URIs, no
scripts, fonts or links that load anything. Every piece of text that comes from a
results file or a folder name goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from bnlab.report.environment import environment_key, environment_rows
from bnlab.report.model import Result, Table, Verdict

__all__ = ["render_page"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 4rem}
h1{font-size:1.7rem;margin:.2rem 0}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:2px solid #d8dce3;padding-bottom:.2rem}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
section.result,section.block{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:.6rem 1.2rem 1rem;margin:1rem 0}
.meta{color:#5b6474;font-size:.9rem}
nav ol{font-size:.95rem}
table{border-collapse:collapse;margin:.4rem 0 .8rem;font-size:.88rem}
caption{caption-side:top;text-align:left;font-weight:600;padding:.2rem 0}
th,td{border:1px solid #d8dce3;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.tablenote{color:#5b6474;font-size:.82rem;margin-top:-.5rem}
pre.cmd{background:#1d2330;color:#e8ecf2;padding:.55rem .8rem;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85rem}
figure{margin:.6rem 0}img.thumb{width:100%;height:auto;border:1px solid #e3e6eb}figure img{max-width:100%;height:auto;border:1px solid #e3e6eb}
figcaption{color:#5b6474;font-size:.85rem}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:4px;font-weight:600;font-size:.85rem;white-space:nowrap}
.v-holds,.v-supported{background:#dff3e4;color:#145c2a;border:1px solid #8fcf9f}
.v-fails,.v-not-supported{background:#fbe0e0;color:#8a1c1c;border:1px solid #e59c9c}
.v-undecided,.v-mixed{background:#fff3cd;color:#6b5000;border:1px solid #e6cf7a}
.v-not-measured{background:#eceff3;color:#49515e;border:1px solid #c5cbd4}
ul.verdicts{list-style:none;padding-left:0}ul.verdicts li{margin:.3rem 0}
.warnings li{color:#8a1c1c}
section.result,section.block{overflow-x:auto}
table.claims{width:100%;table-layout:fixed;font-size:.8rem}
table.claims td{overflow-wrap:anywhere}
table.claims td:nth-child(5),table.claims td:nth-child(8){color:#3c4452;font-size:.76rem}table.claims summary{cursor:pointer;color:#3c4452}
table.claims .badge{white-space:normal;overflow-wrap:normal}
"""

_DASH = "\u2013"  # an en dash for missing values

# (css class, mark, text) per verdict: colour is never the only signal.
_HOLDS = {
    True: ("v-holds", "✓", "holds"),
    False: ("v-fails", "✗", "does not hold"),
    None: ("v-undecided", "?", "undecided"),
}
_CLAIM_VERDICTS = {
    "supported": ("v-supported", "✓"),
    "not supported": ("v-not-supported", "✗"),
    "mixed": ("v-mixed", "±"),
    # The second edition's verdicts (bnlab.lab.stats).
    "refuted": ("v-not-supported", "✗"),
    "context-dependent": ("v-mixed", "±"),
    "inconclusive": ("v-undecided", "?"),
    "no verdict at this budget": ("v-not-measured", _DASH),
    "not measured": ("v-not-measured", _DASH),
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> tuple[str, bool]:
    """The text of a table cell and whether it is a number (right-aligned)."""
    if value is None:
        return _DASH, False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        return f"{value:.4g}", True
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str), False
    return str(value), False


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for value in row:
            text, numeric = _cell(value)
            cells.append(f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    caption = f"<caption>{_e(table.title)}</caption>" if table.title else ""
    note = f'<p class="tablenote">{_e(table.caption)}</p>' if table.caption else ""
    return (
        f"<table>{caption}<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{note}"
    )


def _verdicts(verdicts: Sequence[Verdict]) -> str:
    items = []
    for v in verdicts:
        css, mark, text = _HOLDS[v.holds]
        items.append(
            f'<li><span class="badge {css}">{mark} {text}</span> {_e(v.claim)}'
            f' <span class="meta">({_e(v.measured)})</span></li>'
        )
    return f'<h3>Verdicts</h3><ul class="verdicts">{"".join(items)}</ul>'


def _evidence(value: Any) -> str:
    """Evidence numbers as text, nested dicts in brackets: ``lenet: (drift_bn = 0.1388)``."""
    if isinstance(value, dict):
        return ", ".join(
            f"{k}: ({_evidence(v)})" if isinstance(v, dict) else f"{k} = {_evidence(v)}"
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_evidence(v) for v in value) + "]"
    return _cell(value)[0]


def _literature(row: Mapping[str, Any]) -> str:
    """What the literature found, and whether our verdict agrees (why, where it does not)."""
    found = row.get("literature")
    if not isinstance(found, Mapping):
        return _DASH
    text = f"{found.get('paper', '?')}: {found.get('numbers', '')} ({found.get('setting', '')})"
    agreement = row.get("agreement")
    if agreement:
        text += f"; ours {agreement}"
        if agreement != "agrees" and row.get("why"):
            text += f" ({row['why']})"
    return text


def _claim_figure(row: Mapping[str, Any]) -> str:
    """The experiment's figure of the claim (inlined by the claims reader), or a dash."""
    uri = row.get("figure_uri")
    if not isinstance(uri, str) or not uri.startswith("data:image/"):
        return _DASH
    figure = row.get("figure") if isinstance(row.get("figure"), Mapping) else {}
    caption = str(figure.get("caption", "")) or "the experiment's figure"
    return f'<img class="thumb" src="{_e(uri)}" alt="{_e(caption)}" title="{_e(caption)}">'


def _claims(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{c}</th>"
        for c in (
            "claim",
            "source",
            "experiment",
            "verdict",
            "evidence",
            "figure",
            "literature",
            "rule",
        )
    )
    body = []
    for row in rows:
        verdict = str(row.get("verdict", "not measured"))
        css, mark = _CLAIM_VERDICTS.get(verdict, ("v-undecided", "?"))
        summary = row.get("summary")
        if isinstance(summary, list) and summary:
            evidence = "; ".join(str(line) for line in summary)
        else:
            evidence = _evidence(row.get("evidence")) if row.get("evidence") else None
        rule = row.get("rule")
        # The declared rules run to a paragraph: folded, so the rows stay readable.
        rule_cell = f"<details><summary>the rule</summary>{_e(rule)}</details>" if rule else _DASH
        body.append(
            "<tr>"
            + "".join(
                f"<td>{_e(row.get(k) if row.get(k) is not None else _DASH)}</td>"
                for k in ("claim", "source", "experiment")
            )
            + f'<td><span class="badge {css}">{mark} {_e(verdict)}</span></td>'
            + f"<td>{_e(evidence or _DASH)}</td><td>{_claim_figure(row)}</td>"
            + f"<td>{_e(_literature(row))}</td><td>{rule_cell}</td></tr>"
        )
    # Widths in percent: claim, evidence and literature carry the most text.
    widths = "".join(f'<col style="width:{w}%">' for w in (16, 8, 7, 11, 17, 14, 17, 10))
    return (
        f'<table class="claims"><colgroup>{widths}</colgroup><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _result(result: Result, anchor: str, env_anchor: str | None) -> str:
    parts = [f'<section class="result" id="{anchor}"><h3>{_e(result.title)}</h3>']
    parts.append(f'<p class="meta">from <code>{_e(result.source)}</code>')
    if env_anchor:
        parts.append(f' · environment <a href="#{env_anchor}">{env_anchor.upper()}</a>')
    parts.append("</p>")
    if result.summary:
        parts.append(f"<p>{_e(result.summary)}</p>")
    if result.facts:
        facts = "; ".join(f"{_e(k)}: {_e(v)}" for k, v in result.facts)
        parts.append(f'<p class="meta">{facts}</p>')
    if result.command:
        parts.append(
            f'<p class="meta">reproduce with:</p><pre class="cmd">{_e(result.command)}</pre>'
        )
    else:
        parts.append('<p class="meta">reproduce with: (the command was not recorded)</p>')
    if result.verdicts:
        parts.append(_verdicts(result.verdicts))
    for figure in result.figures:
        alt = figure.caption or figure.name
        parts.append(
            f'<figure><img src="{figure.data_uri}" alt="{_e(alt)}">'
            f"<figcaption>{_e(figure.name)}: {_e(figure.caption)}</figcaption></figure>"
        )
    parts += [_table(t) for t in result.tables]
    if result.notes:
        parts.append(
            "<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in result.notes) + "</ul>"
        )
    parts.append("</section>")
    return "".join(parts)


def _environments(envs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One table, a column per distinct environment, so they compare at a glance."""
    columns = [dict(environment_rows(record)) for _, record in envs]
    labels: list[str] = []
    for column in columns:
        labels += [label for label in column if label not in labels]
    head = "".join(f'<th id="{anchor}">{anchor.upper()}</th>' for anchor, _ in envs)
    rows = "".join(
        f"<tr><th>{_e(label)}</th>"
        + "".join(f"<td>{_e(column.get(label, _DASH))}</td>" for column in columns)
        + "</tr>"
        for label in labels
    )
    return (
        f'<section class="block"><table class="env"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def render_page(
    results: Sequence[Result], warnings: Sequence[str], *, title: str, generated: str = ""
) -> str:
    """The whole page.

    Args:
        results: what the readers returned, in order; claims results go to the claims
            table section, the rest to the results section.
        warnings: shown in their own section (folders skipped, files missing).
        title: the page's title (escaped).
        generated: when the page was made, shown under the title when given.

    Returns:
        The HTML document as a string.
    """
    claims = [r for r in results if r.claims is not None]
    others = [r for r in results if r.claims is None]
    envs: dict[str, tuple[str, dict[str, Any]]] = {}
    env_of: list[str | None] = []
    for result in others:
        if result.environment is None:
            env_of.append(None)
            continue
        key = environment_key(result.environment)
        if key not in envs:
            envs[key] = (f"e{len(envs) + 1}", result.environment)
        env_of.append(envs[key][0])

    toc, body = [], []
    if claims:
        toc.append('<li><a href="#claims">Claims table</a></li>')
        body.append('<h2 id="claims">Claims table</h2>')
        for c in claims:
            body.append(
                f'<section class="block"><p class="meta">from <code>{_e(c.source)}</code></p>'
                f"{_claims(c.claims or [])}</section>"
            )
    if others:
        toc.append('<li><a href="#results">Results</a><ol>')
        body.append('<h2 id="results">Results</h2>')
        for i, (result, env) in enumerate(zip(others, env_of, strict=True), start=1):
            anchor = f"r{i}"
            toc.append(f'<li><a href="#{anchor}">{_e(result.title)}</a></li>')
            body.append(_result(result, anchor, env))
        toc.append("</ol></li>")
    if envs:
        toc.append('<li><a href="#environments">Environments</a></li>')
        body.append('<h2 id="environments">Environments</h2>')
        body.append(_environments(list(envs.values())))
    if warnings:
        toc.append('<li><a href="#warnings">Warnings</a></li>')
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        body.append(f'<h2 id="warnings">Warnings</h2><ul class="warnings">{items}</ul>')
    stamp = f'<p class="meta">generated {_e(generated)}</p>' if generated else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network at all, even if something slipped through: only data: images.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1>{stamp}"
        f"<nav><h2>Contents</h2><ol>{''.join(toc)}</ol></nav>"
        f"{''.join(body)}</main></body></html>\n"
    )
