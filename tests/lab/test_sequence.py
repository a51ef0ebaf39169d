"""``sequence``: the networks, the norms' statistics, verdict rules, a tiny run and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import sequence
from bnlab.lab.claims import VERDICTS, available_claims
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.sequence import SequenceNorm, build


def fake_data(train: int = 64, test: int = 32) -> dict[str, torch.Tensor]:
    x, y = fake_images_labels(train, seed=0)
    tx, ty = fake_images_labels(test, seed=1)
    return {
        "train_images": x,
        "train_labels": y.long(),
        "test_images": tx,
        "test_labels": ty.long(),
    }


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


@pytest.mark.parametrize("arch", ["gru", "transformer"])
@pytest.mark.parametrize("norm", ["none", "bn", "ln"])
def test_networks_give_logits_and_every_parameter_a_gradient(arch: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build(arch, norm, hidden=8, d_model=8, layers=1)
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name


def test_sequence_norm_statistics() -> None:
    x = 3.0 + 2.0 * torch.randn(6, 5, 4, dtype=torch.float64)
    bn = SequenceNorm("bn", 4, 5).double().train()(x)  # over batch and time, per feature
    assert torch.allclose(bn.mean(dim=(0, 1)), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    step = SequenceNorm("bn-step", 4, 5).double().train()(x)  # over the batch, per step
    assert torch.allclose(step.mean(dim=0), torch.zeros(5, 4, dtype=torch.float64), atol=1e-12)
    ln = SequenceNorm("ln", 4, 5).double()(x)  # over the features of each (example, step)
    assert torch.allclose(ln.mean(dim=2), torch.zeros(6, 5, dtype=torch.float64), atol=1e-12)
    assert torch.equal(SequenceNorm("none", 4, 5)(x), x)


def test_per_step_bn_cannot_train_at_batch_one_but_bn_over_time_can() -> None:
    gru = build("gru", "bn", hidden=8).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        gru(torch.randn(1, 1, 28, 28))
    transformer = build("transformer", "bn", d_model=8, layers=1).train()
    assert transformer(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown sequence norm 'gn'; choose one of: none, ln"):
        SequenceNorm("gn", 4, 5)
    with pytest.raises(ValueError, match="unknown sequence network 'lstm'; choose one of: gru"):
        build("lstm", "none")
    with pytest.raises(ValueError, match="unknown norm 'gn'; choose one of: none, bn, ln"):
        build("gru", "gn")
    with pytest.raises(ValueError, match=r"expected images \(N, 1, H, W\), got shape \(2, 28\)"):
        build("gru", "none")(torch.zeros(2, 28))


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


def test_claims_are_registered_with_their_seed() -> None:
    keys = {c.key: c for c in available_claims()}
    for key in ("bn-helps-recurrent", "bn-helps-transformer", "layernorm-suits-sequences-online"):
        assert keys[key].experiment == "sequence"
        assert keys[key].source == "003_8a52002564f5ba9e.txt"


def test_tiny_run_writes_results_figures_and_resumes(tmp_path: Path) -> None:
    spec = get_lab("sequence")
    config = tiny()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(), quick=True)
    raw = results["raw"]
    assert len(raw["cells"]) == 2 * 3 * 2 * config.seeds
    assert len(raw["stream"]) == 2 * 3 * config.seeds
    gru_bn = [s for s in raw["stream"] if s["arch"] == "gru" and s["norm"] == "bn"]
    assert all(not s["trained"] and "per channel" in s["error"] for s in gru_bn)
    assert any("At batch size 1" in n for n in results["notes"])
    for figure in ("sequence_batch_sizes.png", "sequence_streaming.png"):
        assert (out / figure).is_file()
    assert len(results["verdicts"]) == 3
    assert sequence.decide_ln_suits_sequences(results)[1] in VERDICTS
    units = sorted((out / "units").glob("*.json"))
    units[0].unlink()
    again = run_lab(spec, config, out, data=fake_data(), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    strip = lambda cells: [{k: v for k, v in c.items() if k != "wall_time_s"} for c in cells]  # noqa: E731
    assert strip(again["raw"]["cells"]) == strip(json.loads(json.dumps(raw["cells"])))
