"""``batch-of-one``: tiny run (results, figures, resume), the B=1 error texts, eval
predictions independent of the batch, and the verdict rules on synthetic numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bnlab.lab import batch_of_one
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.models import create
from bnlab.models.small_cnn import SmallReluCNN


def test_quick_run_writes_results_figures_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("batch-of-one")
    config = dataclasses.replace(
        batch_of_one.BatchOfOneConfig.quick(),
        norms=("none", "bnlab", "layernorm", "instancenorm"),
        online_steps=8,
        predict_train_size=32,
        predict_examples=4,
        test_size=32,
    )
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(48, 32), quick=True)
    raw = results["raw"]
    assert len(raw["online"]) == len(raw["predict"]) == 4 * config.seeds
    assert (out / "online.png").is_file()
    assert (out / "predict_single.png").is_file()
    failed = {(e["model"], e["norm"]) for e in raw["errors"] if not e["train_ok"]}
    assert failed == {("lenet", n) for n in ("bnlab", "torch", "batchrenorm", "ghost")}
    assert all(e["eval_ok"] for e in raw["errors"])
    for verdict, rule in zip(
        results["verdicts"],
        (
            batch_of_one.cannot_train_rule,
            batch_of_one.online_rule,
            batch_of_one.predict_single_rule,
        ),
        strict=True,
    ):
        assert verdict["holds"] == {"supported": True, "not supported": False}.get(rule(results)[1])
    assert results["verdicts"][2]["holds"] is True  # eval BN: batch-independent
    unit = out / "units" / "online-bnlab-seed1.json"
    unit.unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(48, 32), resume=True, quick=True)
    assert again["units_reused"] == 1 + 2 * 4 * config.seeds - 1
    assert again["raw"]["online"] == json.loads(json.dumps(raw["online"]))
    keys = [c.setting + "-" + c.variant for c in batch_of_one.grid(config).cells()]
    assert keys[:3] == ["online-none", "predict-none", "online-bnlab"]  # the old unit order


def test_batch_of_one_error_texts_are_kept() -> None:
    x = torch.rand(1, 1, 28, 28)
    torch_bn = batch_of_one.try_batch_of_one(create("lenet", norm="torch"), x)
    assert torch_bn["train"] == (
        "ValueError: Expected more than 1 value per channel when training, got input size "
        "torch.Size([1, 120])"
    )
    assert torch_bn["eval_ok"]
    ours = batch_of_one.try_batch_of_one(create("lenet", norm="bnlab"), x)
    assert ours["train"].startswith(
        "ValueError: BatchNorm1d: expected more than 1 value per channel when training, got "
        "input of shape (1, 120)"
    )
    assert batch_of_one.try_batch_of_one(SmallReluCNN("bnlab"), x)["train_ok"]


def test_eval_prediction_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = SmallReluCNN("bnlab")
    with torch.no_grad():  # running statistics unlike any batch's
        model.norm1.running_mean.uniform_(-1, 1)
        model.norm1.running_var.uniform_(0.5, 2)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    facts = batch_of_one.prediction_facts(model, x, y, torch.randn(20, 1, 28, 28))
    assert facts["eval_single_vs_batch"] < 1e-5
    assert facts["eval_companions"] < 1e-5
    assert facts["train_companions"] > 1e-3  # batch statistics depend on the companions
    assert not model.training
    lenet = create("lenet", norm="bnlab")
    facts = batch_of_one.prediction_facts(lenet, x, y, torch.randn(20, 1, 28, 28))
    assert facts["train_acc_single"].startswith("ValueError: BatchNorm1d: expected more than 1")


def _results(
    errors_ok: bool,
    online: dict[str, list[float]],
    eval_change: float,
    train_change: float | None = 0.5,
) -> dict:
    errors = [
        {"model": "lenet", "norm": n, "train_ok": errors_ok, "eval_ok": True}
        for n in ("bnlab", "torch")
    ]
    cells = [
        {"norm": n, "seed": s, "test_acc": v} for n, vs in online.items() for s, v in enumerate(vs)
    ]
    predict = [
        {
            "norm": "bnlab",
            "eval_single_vs_batch": eval_change,
            "eval_companions": 0.0,
            "train_companions": train_change,
        }
    ]
    return {
        "raw": {
            "errors": errors,
            "online": cells,
            "predict": predict,
            "learn_threshold": 0.5,
            "min_effect": 0.01,
        }
    }


def test_rules_on_synthetic_numbers() -> None:
    low, high = [0.2, 0.21, 0.19], [0.7, 0.72, 0.71]
    r = _results(False, {"bnlab": low, "layernorm": high, "instancenorm": high}, 1e-7)
    assert batch_of_one.cannot_train_rule(r)[1] == "supported"
    assert batch_of_one.online_rule(r)[1] == "supported"
    assert batch_of_one.predict_single_rule(r)[1] == "supported"
    r = _results(False, {"bnlab": high, "layernorm": high, "instancenorm": low}, 1e-2)
    assert batch_of_one.cannot_train_rule(r)[1] == "mixed"
    assert batch_of_one.online_rule(r)[1] == "not supported"
    assert batch_of_one.predict_single_rule(r)[1] == "not supported"
    r = _results(True, {"bnlab": low, "layernorm": high, "instancenorm": low}, 0.0)
    assert batch_of_one.cannot_train_rule(r)[1] == "not supported"
    assert batch_of_one.online_rule(r)[1] == "mixed"
    # Eval is batch-independent, but train mode is too (or raises: None): no contrast.
    assert batch_of_one.predict_single_rule(_results(False, {}, 0.0, 1e-5))[1] == "mixed"
    assert batch_of_one.predict_single_rule(_results(False, {}, 0.0, None))[1] == "mixed"
    assert batch_of_one.predict_single_rule({"raw": {"predict": []}})[1] == "not supported"


def test_rules_on_the_null() -> None:
    """Every norm equally good online: no advantage for LayerNorm or InstanceNorm."""
    same = [0.6, 0.62, 0.61]
    r = _results(False, {"bnlab": same, "layernorm": same, "instancenorm": same}, 0.0)
    evidence, verdict = batch_of_one.online_rule(r)
    assert verdict == "not supported"
    for norm in ("layernorm", "instancenorm"):
        assert evidence[norm]["minus_bn"] == pytest.approx(0.0, abs=1e-12)
        assert evidence[norm]["direction"] == "unclear"
    # BN at chance-level online accuracy and LeNet's BN raising: the claim as stated.
    assert batch_of_one.cannot_train_rule(r)[1] == "mixed"  # 0.61 >= learn_threshold 0.5
    at_chance = _results(False, {"bnlab": [0.1, 0.1, 0.1]}, 0.0)
    assert batch_of_one.cannot_train_rule(at_chance)[1] == "supported"
