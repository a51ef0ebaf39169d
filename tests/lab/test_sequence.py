"""``sequence``: verdict rules on synthetic numbers and the null, a tiny run and resume.
The networks: tests/models/test_sequence.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bnlab.lab import sequence
from bnlab.lab.claims import available_claims
from bnlab.lab.experiment import get_lab, run_lab


def tiny() -> sequence.SequenceConfig:
    return dataclasses.replace(
        sequence.SequenceConfig.quick(),
        batch_sizes=(8, 16),
        train_size=32,
        test_size=32,
        stream_size=4,
        hidden=8,
        d_model=8,
    )


def _cells(bn: list[float], none: list[float], ln: list[float], b: int) -> list[dict]:
    out = []
    for norm, vals in (("bn", bn), ("none", none), ("ln", ln)):
        out += [
            {"arch": "gru", "norm": norm, "batch_size": b, "seed": i, "test_acc": v}
            for i, v in enumerate(vals)
        ]
    return out


def test_verdict_rules_on_synthetic_numbers() -> None:
    cells = _cells([0.8, 0.81, 0.79], [0.5, 0.52, 0.51], [0.7, 0.71, 0.69], 8)
    cells += _cells([0.8, 0.81, 0.79], [0.5, 0.52, 0.51], [0.7, 0.71, 0.69], 32)
    stream = [
        {"arch": "gru", "norm": "bn", "seed": i, "test_acc": None, "trained": False}
        for i in range(3)
    ] + [
        {"arch": "gru", "norm": "ln", "seed": i, "test_acc": 0.6, "trained": True} for i in range(3)
    ]
    raw = {"cells": cells, "stream": stream, "archs": ["gru"], "batch_sizes": [8, 32]}
    assert sequence.decide_bn_helps({"raw": raw}, "gru")[1] == "supported"
    evidence, verdict = sequence.decide_ln_suits_sequences({"raw": raw})
    assert verdict == "mixed"  # LN wins streaming (BN failed) but loses at B=8
    assert evidence["gru"]["bn_failed_at_batch_1"]
    raw["cells"] = _cells([0.5, 0.51, 0.49], [0.8, 0.82, 0.81], [0.9, 0.91, 0.89], 8)
    raw["batch_sizes"] = [8]
    assert sequence.decide_bn_helps({"raw": raw}, "gru")[1] == "not supported"
    assert sequence.decide_ln_suits_sequences({"raw": raw})[1] == "supported"
    # BN better at one batch size, unclear at the other: mixed.
    raw["cells"] = _cells([0.8, 0.81, 0.79], [0.5, 0.52, 0.51], [0.7, 0.71, 0.69], 8)
    raw["cells"] += _cells([0.5, 0.9, 0.1], [0.5, 0.52, 0.51], [0.7, 0.71, 0.69], 32)
    raw["batch_sizes"] = [8, 32]
    assert sequence.decide_bn_helps({"raw": raw}, "gru")[1] == "mixed"


def test_verdict_rules_on_the_null() -> None:
    """Every norm equally good everywhere, BN trains at batch 1: nothing decides."""
    same = [0.7, 0.72, 0.71]
    cells = _cells(same, same, same, 8) + _cells(same, same, same, 32)
    stream = [
        {"arch": "gru", "norm": n, "seed": i, "test_acc": v, "trained": True}
        for n in ("bn", "ln")
        for i, v in enumerate(same)
    ]
    raw = {"cells": cells, "stream": stream, "archs": ["gru"], "batch_sizes": [8, 32]}
    evidence, verdict = sequence.decide_bn_helps({"raw": raw}, "gru")
    assert verdict == "not supported"
    assert {v["direction"] for v in evidence["by_batch"].values()} == {"unclear"}
    evidence, verdict = sequence.decide_ln_suits_sequences({"raw": raw})
    assert verdict == "mixed"  # LayerNorm wins nothing, loses nothing
    assert evidence["gru"]["stream"] == evidence["gru"]["batch_8"] == "unclear"
    assert evidence["gru"]["bn_failed_at_batch_1"] is False


def test_claims_are_registered_with_their_seed() -> None:
    keys = {c.key: c for c in available_claims()}
    for key in ("bn-helps-recurrent", "bn-helps-transformer", "layernorm-suits-sequences-online"):
        assert keys[key].experiment == "sequence"
        assert keys[key].source == "003_8a52002564f5ba9e.txt"


def test_tiny_run_writes_results_figures_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("sequence")
    config = tiny()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    raw = results["raw"]
    assert len(raw["cells"]) == 2 * 3 * 2 * config.seeds
    assert len(raw["stream"]) == 2 * 3 * config.seeds
    gru_bn = [s for s in raw["stream"] if s["arch"] == "gru" and s["norm"] == "bn"]
    assert all(not s["trained"] and "per channel" in s["error"] for s in gru_bn)
    assert any("At batch size 1" in n for n in results["notes"])
    for figure in ("sequence_batch_sizes.png", "sequence_streaming.png"):
        assert (out / figure).is_file()
    assert len(results["verdicts"]) == 3
    for verdict, rule in zip(
        results["verdicts"],
        (
            lambda r: sequence.decide_bn_helps(r, "gru"),
            lambda r: sequence.decide_bn_helps(r, "transformer"),
            sequence.decide_ln_suits_sequences,
        ),
        strict=True,
    ):
        shown = rule(results)[1]
        assert verdict["measured"].startswith(shown + ":")
        assert verdict["holds"] == {"supported": True, "not supported": False}.get(shown)
    units = sorted((out / "units").glob("*.json"))
    units[0].unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    strip = lambda cells: [{k: v for k, v in c.items() if k != "wall_time_s"} for c in cells]  # noqa: E731
    assert strip(again["raw"]["cells"]) == strip(json.loads(json.dumps(raw["cells"])))
