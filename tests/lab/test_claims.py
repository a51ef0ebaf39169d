"""The claims of the lr-sweep, init, input-norm, placement and regularization experiments.

Each rule maps synthetic results to the verdict the stated rule gives; a claim without
its experiment is "not measured"; the table is written atomically as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bnlab.lab  # noqa: F401  (registers every experiment and claim)
from bnlab.lab import placement
from bnlab.lab.claims import (
    NOT_MEASURED,
    Claim,
    available_claims,
    evaluate_claims,
    load_many,
    spec_record,
    write_claims,
)

MINE = {
    "bn-allows-higher-lr": "lr-sweep",
    "bn-eases-initialization": "init",
    "input-standardization-helps-shallow": "input-norm",
    "bn-before-activation": "placement",
    "bn-regularizes": "regularization",
}


def seeds(mean: float, spread: float = 0.005) -> list[float]:
    """Three per-seed values around ``mean``."""
    return [mean - spread, mean, mean + spread]


def results(experiment: str, cells: list[dict[str, Any]], **raw: Any) -> dict[str, Any]:
    return {"experiment": experiment, "quick": False, "raw": {"cells": cells, **raw}}


# --- lr-sweep, init, regularization ---------------------------------------------------
# Their second-edition rules (declared ClaimSpecs) are tested on synthetic numbers in
# tests/lab/test_lr_sweep.py, tests/lab/test_init_scale.py and tests/lab/test_regularization.py.


# --- input-norm, placement -------------------------------------------------------------
# Their second-edition rules (declared ClaimSpecs) are tested on synthetic numbers in
# tests/lab/test_input_norm.py and tests/lab/test_placement.py.


def placement_results(before: float, after: float) -> dict[str, Any]:
    """Second-edition placement results: five paired seeds per activation."""
    spread = [-0.02, 0.01, 0.0, 0.02, -0.01]
    per_seed = {
        a: {
            "before": {"test_acc": [before + d for d in spread]},
            "after": {"test_acc": [after] * 5},
        }
        for a in ("relu", "sigmoid")
    }
    specs = [spec_record(s) for s in placement.specs(placement.PlacementConfig())]
    return {
        "experiment": "placement",
        "quick": False,
        "raw": {"per_seed": per_seed, "specs": specs},
    }


# --- the table --------------------------------------------------------------------------


def test_my_claims_are_registered_with_their_seed_source() -> None:
    claims = {c.key: c for c in available_claims()}
    seeds_dir = Path("/work/shared/seeds")
    for key, experiment in MINE.items():
        assert claims[key].experiment == experiment
        assert claims[key].source.endswith(".txt")
        if seeds_dir.is_dir():
            assert (seeds_dir / claims[key].source).is_file()


def test_missing_experiments_are_not_measured() -> None:
    mine = [c for c in available_claims() if c.key in MINE]
    table = evaluate_claims([placement_results(89.0, 88.0)], mine)
    verdicts = {row["key"]: row["verdict"] for row in table}
    assert verdicts["bn-before-activation"] == "supported"
    for key in MINE.keys() - {"bn-before-activation"}:
        assert verdicts[key] == NOT_MEASURED
    assert {row["key"]: row["evidence"] for row in table}["bn-allows-higher-lr"] == {}


def test_results_the_rule_cannot_read_are_not_measured() -> None:
    claim = next(c for c in available_claims() if c.key == "bn-regularizes")
    (row,) = evaluate_claims([{"experiment": "regularization", "raw": {}}], [claim])
    assert row["verdict"] == NOT_MEASURED
    assert row["evidence"]["error"] == "KeyError: 'specs'"


def test_a_rule_with_a_bad_verdict_is_an_error() -> None:
    claim = Claim("k", "c", "s.txt", "x", "r", lambda r: ({}, "probably"))
    with pytest.raises(ValueError, match="rule returned 'probably'; expected one of"):
        evaluate_claims([{"experiment": "x"}], [claim])


def test_load_many_names_bad_folders_and_keeps_the_others(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "results.json").write_text(json.dumps({"experiment": "placement"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{")
    loaded, problems = load_many([good, empty, broken])
    assert [r["experiment"] for r in loaded] == ["placement"]
    assert (
        problems[0]
        == f"{empty / 'results.json'}: no results.json (is {empty} a 'bnlab lab' results folder?)"
    )
    assert problems[1].startswith(f"{broken / 'results.json'}: unreadable results")


def test_write_claims_is_json_with_nulls_for_nan(tmp_path: Path) -> None:
    table = [{"claim": "c", "key": "k", "source": "s", "experiment": "e",
              "evidence": {"x": float("nan"), "y": [1.0, float("inf")]}, "rule": "r",
              "verdict": "mixed"}]  # fmt: skip
    path = write_claims(tmp_path / "out", table)
    assert path == tmp_path / "out" / "claims.json"
    saved = json.loads(path.read_text())
    assert saved[0]["evidence"] == {"x": None, "y": [1.0, None]}
    assert not [p for p in path.parent.iterdir() if p.name != "claims.json"]  # no temp left


# --- second edition: attribution, literature, declared rules ----------------------------

SECOND_EDITION = {
    "bn-degrades-small-batch": "batch-size",
    "groupnorm-beats-bn-small-batch": "batch-size",
    "bn-accelerates-convergence": "convergence",
}


def test_second_edition_claims_name_their_sentence_or_paper() -> None:
    from bnlab.lab.claims import FROM_LITERATURE

    claims = {c.key: c for c in available_claims()}
    seeds_dir = Path("/work/shared/seeds")
    for key, experiment in SECOND_EDITION.items():
        c = claims[key]
        assert c.experiment == experiment
        assert c.literature is not None
        assert c.literature.paper
        if c.source == FROM_LITERATURE:
            assert c.sentence == ""
        else:
            assert c.sentence
            assert c.sentence in c.claim
            if seeds_dir.is_dir():  # the quoted sentence is in the seed file, verbatim
                assert c.sentence in (seeds_dir / c.source).read_text()


def test_literature_entries_are_for_registered_claims() -> None:
    from bnlab.lab.claims import LITERATURE

    claims = {c.key: c for c in available_claims()}
    assert set(LITERATURE) <= set(claims)
    # An entry here is for a claim without its own, or the base its own refines (same
    # paper): one the claim overrides with another paper is dead data.
    own = {k: claims[k].literature for k in LITERATURE}
    assert not [k for k, lit in own.items() if lit is not None and lit.paper != LITERATURE[k].paper]
    # Every claim but the ones no paper measured states what the literature found.
    unpublished = {"bn-fewer-relu-zeros"}
    missing = {k for k, c in claims.items() if c.literature is None and k not in LITERATURE}
    assert missing == unpublished


@pytest.mark.parametrize(
    ("verdict", "finding", "expected"),
    [
        ("supported", "supported", "agrees"),
        ("refuted", "supported", "disagrees"),
        ("context-dependent", "refuted", "disagrees"),
        ("context-dependent", "context-dependent", "agrees"),
        ("inconclusive", "supported", "undecided"),
        ("no verdict at this budget", "supported", "undecided"),
        ("not supported", "supported", "undecided"),  # first edition: only "not significant"
        ("mixed", "refuted", "undecided"),
        (NOT_MEASURED, "supported", "undecided"),
    ],
)
def test_agreement(verdict: str, finding: str, expected: str) -> None:
    from bnlab.lab.claims import Literature, agreement

    assert agreement(verdict, Literature("p", "s", "n", finding, "why")) == expected
    assert agreement(verdict, None) == "no literature"


def test_literature_finding_must_be_a_verdict() -> None:
    from bnlab.lab.claims import Literature

    with pytest.raises(ValueError, match=r"finding must be one of .* got .probably."):
        Literature("p", "s", "n", "probably")


def test_table_rows_carry_the_literature_and_why() -> None:
    from bnlab.lab.claims import Literature

    lit = Literature("Paper 2020", "ImageNet", "1.0 vs 2.0", "supported", "ours is tiny")
    agree = Claim("a", "c", "s.txt", "x", "r", lambda r: ({}, "supported"), literature=lit)
    differ = Claim("b", "c", "s.txt", "x", "r", lambda r: ({}, "refuted"), literature=lit)
    rows = {r["key"]: r for r in evaluate_claims([{"experiment": "x"}], [agree, differ])}
    assert rows["a"]["literature"]["numbers"] == "1.0 vs 2.0"
    assert (rows["a"]["agreement"], rows["a"]["why"]) == ("agrees", "")
    assert (rows["b"]["agreement"], rows["b"]["why"]) == ("disagrees", "ours is tiny")
    # a first-edition claim without its own entry takes LITERATURE's
    reg = next(c for c in available_claims() if c.key == "bn-regularizes")
    (row,) = evaluate_claims([], [reg])
    assert row["literature"]["paper"].startswith("Bjorck")
    assert row["agreement"] == "undecided"


def test_spec_record_round_trip() -> None:
    from bnlab.lab import stats
    from bnlab.lab.claims import spec_from_record, spec_record

    spec = stats.ClaimSpec(
        "k", "acc", "lower", "a", "b", 0.5, settings=("s",),
        chance=stats.ChanceRule("acc", 10.0, 2.0),
    )  # fmt: skip
    record = json.loads(json.dumps(spec_record(spec)))
    assert spec_from_record(record) == spec
    with pytest.raises(ValueError, match=r"unknown ClaimSpec fields \['extra'\]"):
        spec_from_record({**record, "extra": 1})


def test_stats_rule_decides_from_the_stored_numbers() -> None:
    from bnlab.lab import stats
    from bnlab.lab.claims import spec_record, stats_rule

    spec = stats.ClaimSpec("k", "acc", "higher", "bn", "none", 0.01)
    noise = [0.001, -0.002, 0.0005, 0.0015, -0.001]
    per_seed = {"": {"bn": {"acc": [0.9 + n for n in noise]}, "none": {"acc": [0.8] * 5}}}
    results = {"raw": {"specs": [spec_record(spec)], "per_seed": per_seed}}
    evidence, verdict = stats_rule("k")(results)
    assert verdict == stats.SUPPORTED
    assert evidence["settings"][0]["diff"] == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(KeyError):
        stats_rule("other")(results)
