"""The claims table's short form of a declared claim's numbers, and its figure."""

from __future__ import annotations

import json
from pathlib import Path

from bnlab.lab import stats
from bnlab.lab.claims import (
    RUN_DIR_KEY,
    Claim,
    claim_summary,
    evaluate_claims,
    load_results,
    write_claims,
)

SPEC = stats.ClaimSpec(
    name="c", metric="acc", direction="higher", arm="bn", reference="none", margin=0.5
)


def _evidence(per_seed: dict) -> dict:
    return stats.evaluate_experiment([SPEC], per_seed)[0]


def test_summary_states_the_difference_interval_and_p_of_each_setting() -> None:
    per_seed = {
        "relu": {"bn": {"acc": [90.0, 91.0, 90.5, 90.2, 90.8]}, "none": {"acc": [85.0] * 5}},
        "sigmoid": {"bn": {"acc": [80.0, 80.4, 79.8, 80.1, 80.3]}, "none": {"acc": [70.0] * 5}},
    }
    evidence = _evidence(per_seed)
    lines = claim_summary(evidence)
    assert lines[0] == "acc: bn - none (paired by seed, margin ±0.5)"
    rows = {r["setting"]: r for r in evidence["settings"]}
    for line, setting in zip(lines[1:], ("relu", "sigmoid"), strict=True):
        row = rows[setting]
        assert line.startswith(f"{setting}: {row['diff']:+.4g} [{row['ci_low']:.4g}, ")
        assert f"p_Holm={row['p_holm']:.2g} n=5 ({row['status']})" in line
        # The interval printed is the one the verdict used and it holds the difference.
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]


def test_summary_says_which_seeds_would_decide_and_is_empty_for_first_edition_rules() -> None:
    noisy = {
        "": {
            "bn": {"acc": [1.0, -1.0, 2.0, -2.0, 0.5]},
            "none": {"acc": [0.0, 0.0, 0.0, 0.0, 0.0]},
        }
    }
    evidence = _evidence(noisy)
    lines = claim_summary(evidence)
    assert evidence["verdict"] == stats.INCONCLUSIVE
    # SD of the differences ~1.6 against a margin of 0.5: far more than 5 seeds.
    assert evidence["seeds_needed"] > 5
    assert lines[-1] == f"seeds that would decide: {evidence['seeds_needed']}"
    assert claim_summary({"lenet": {"drift_bn": 0.1}}) == []


def test_the_table_points_at_the_experiments_figure_relative_to_itself(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "toy"
    run.mkdir(parents=True)
    (run / "toy.png").write_bytes(b"png")
    (run / "results.json").write_text(
        json.dumps(
            {
                "experiment": "toy",
                "figures": [{"file": "toy.png", "caption": "the curve"}],
                "raw": {"n": 1},
            }
        )
    )
    results = load_results(run)
    assert results[RUN_DIR_KEY] == str(run)
    claim = Claim("toy-claim", "toy", "paper", "toy", "rule", lambda r: ({"n": 1}, "supported"))
    table = evaluate_claims([results], [claim])
    assert table[0]["figure"] == {"path": str(run / "toy.png"), "caption": "the curve"}
    out = tmp_path / "claims"
    written = json.loads(write_claims(out, table).read_text())
    assert written[0]["figure"]["path"] == "../runs/toy/toy.png"
    assert (out / written[0]["figure"]["path"]).resolve() == (run / "toy.png").resolve()
    # No figure: no entry.
    no_fig = dict(results, figures=[])
    assert evaluate_claims([no_fig], [claim])[0]["figure"] is None


def test_markdown_table_has_one_row_per_claim_with_its_interval_and_literature(
    tmp_path: Path,
) -> None:
    from bnlab.lab.claims import claims_markdown, write_claims_markdown

    rows = [
        {
            "claim": "BN helps | a lot",
            "experiment": "toy",
            "evidence": {"quick": False},
            "summary": ["acc: bn - none", "+1.2 [+0.8, +1.6] p_Holm=0.01"],
            "verdict": "supported",
            "literature": {
                "paper": "Ioffe & Szegedy 2015, 'Batch Normalization'",
                "finding": "supported",
            },
            "agreement": "agrees",
            "why": "",
        },
        {
            "claim": "BN hurts\nsometimes",
            "experiment": "toy",
            "evidence": {},
            "summary": [],
            "verdict": "not measured",
            "literature": None,
        },
    ]
    text = claims_markdown(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    # Every row has the header's five cells (escaped pipes do not split a cell).
    assert all(line.replace("\\|", "").count("|") == 6 for line in lines)
    assert lines[2] == (
        "| BN helps \\| a lot | `toy` | acc: bn - none; +1.2 [+0.8, +1.6] p_Holm=0.01 | "
        "**supported** | Ioffe & Szegedy 2015: supported; ours agrees |"
    )
    assert lines[3] == "| BN hurts sometimes | `toy` | - | **not measured** | - |"
    path = write_claims_markdown(tmp_path / "claims.md", rows)
    assert path.read_text() == text


def test_excluded_runs_and_exact_checks_read_as_short_text() -> None:
    from bnlab.lab.claims import claims_markdown

    evidence = {
        "metric": "loss",
        "arm": "a",
        "reference": "b",
        "settings": [{"setting": "d56", "status": "excluded", "n": 3}],
        "excluded": [{"arm": "a", "seed": 4, "setting": "d56", "reason": "at chance (loss 2.3)"}],
    }
    assert claim_summary(evidence)[-1] == "excluded: a seed 4 (d56): at chance"
    exact = {"quick": False, "raises": True, "max_change": 3.8e-06, "note": "x" * 41}
    row = {"claim": "c", "experiment": "e", "evidence": exact, "verdict": "supported"}
    assert "| raises=True; max_change=3.8e-06 |" in claims_markdown([row])
