"""The family benchmark's pairs compute the same thing and the suite runs (tiny shapes)."""

from __future__ import annotations

import pytest

from bnlab.bench.family import CASES, ratio, run_family_case, run_family_suite


@pytest.mark.parametrize("name", list(CASES))
def test_each_pair_agrees_and_times(name: str) -> None:
    case = CASES[name]
    shape = (6, 4, 3, 3) if 4 in case.ranks else (6, 16)
    result = run_family_case(case, shape, repeats=1, warmup=0, target_ms=0.01)
    assert result["max_abs_diff"] < 1e-5
    assert set(result["timings"]) == {"ours", "torch"}
    assert ratio(result["timings"]) > 0


def test_suite_skips_ranks_a_layer_does_not_take() -> None:
    seen = []
    results = run_family_suite(
        ["layernorm", "groupnorm"],
        [(4, 8), (4, 8, 2, 2)],
        repeats=1,
        warmup=0,
        target_ms=0.01,
        on_case=seen.append,
    )
    assert [(r["layer"], r["shape"]) for r in results] == [
        ("layernorm", (4, 8)),
        ("groupnorm", (4, 8, 2, 2)),
    ]
    assert seen == results


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown layer 'bn'; choose from: batchnorm, "):
        run_family_suite(["bn"], [(4, 8)], repeats=1, warmup=0, target_ms=1)
    with pytest.raises(
        ValueError, match=r"layernorm takes \(2,\)-D inputs, got shape \(4, 8, 2, 2\)"
    ):
        run_family_case(CASES["layernorm"], (4, 8, 2, 2), repeats=1, warmup=0, target_ms=1)
