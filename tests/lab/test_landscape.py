"""``bnlab lab landscape`` on tiny synthetic data: results, the verdict rule, resume,
figure, and the landscape measures of a linear least-squares model against the algebra."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _shared import one_thread, small_data  # noqa: F401 (fixture)
from torch import nn

from bnlab.lab import landscape
from bnlab.lab.claims import available_claims
from bnlab.lab.experiment import run_lab
from bnlab.lab.kit import build_model

TINY = dataclasses.replace(
    landscape.LandscapeConfig.quick(),
    seeds=2,
    archs=("mlp-relu",),
    train_size=96,
    test_size=32,
    batch_size=16,
    steps=4,
    check_every=2,
    step_multipliers=(0.5, 2.0),
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("landscape") / "run"
    return out, run_lab(landscape.SPEC, TINY, out, data=small_data(), quick=True)


def test_results_structure_and_figure(finished: tuple[Path, dict]) -> None:
    out, _ = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == "landscape"
    per_seed = on_disk["raw"]["per_seed"]
    assert set(per_seed) == {"mlp-relu"}
    assert set(per_seed["mlp-relu"]) == {"none", "bn"}
    for metrics in per_seed["mlp-relu"].values():
        for key in (*landscape.METRICS, "grad_change_rel", "grad_norm", "test_acc"):
            assert len(metrics[key]) == TINY.seeds
            assert all(math.isfinite(v) and v >= 0 for v in metrics[key])
    unit = on_disk["raw"]["units"][0]
    assert [p["step"] for p in unit["points"]] == [0, 2, 4]
    assert unit["step_sizes"] == pytest.approx([0.5 * TINY.lr_mlp, 2.0 * TINY.lr_mlp])
    assert len(unit["points"][0]["losses"]) == 2
    (verdict,) = on_disk["verdicts"]
    expected = landscape.decide_landscape(on_disk)[1]
    assert verdict["measured"].split(":")[0] == expected
    assert verdict["holds"] == {"supported": True, "not supported": False}.get(expected)
    assert [f["file"] for f in on_disk["figures"]] == ["landscape.png"]
    assert (out / "landscape.png").stat().st_size > 1000


def test_claim_decides_the_results(finished: tuple[Path, dict]) -> None:
    _, results = finished
    (claim,) = [c for c in available_claims() if c.experiment == "landscape"]
    assert claim.key == "bn-smoother-landscape"
    assert "1805.11604" in claim.source
    assert claim.rule is landscape.decide_landscape
    evidence, verdict = claim.rule(results)
    assert results["verdicts"][0]["measured"].startswith(verdict + ":")
    assert set(evidence["mlp-relu"]) == set(landscape.METRICS)


def test_resume_after_deleting_a_unit_ends_equal(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    out, whole = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "units" / "mlp-relu-none-seed1.json").unlink()
    (cut / "results.json").unlink()
    resumed = run_lab(landscape.SPEC, TINY, cut, data=small_data(), resume=True, quick=True)
    assert resumed["units_reused"] == 3
    assert resumed["raw"]["per_seed"] == json.loads(json.dumps(whole["raw"]["per_seed"]))


def _results(bn: list[float], none: list[float]) -> dict:
    return {
        "raw": {
            "per_seed": {
                "lenet": {
                    "bn": {k: bn for k in landscape.METRICS},
                    "none": {k: none for k in landscape.METRICS},
                }
            }
        }
    }


def test_rule_on_synthetic_numbers() -> None:
    small, big, noisy = [0.1, 0.11, 0.12], [0.5, 0.52, 0.51], [0.1, 0.9, 0.4]
    assert landscape.decide_landscape(_results(small, big))[1] == "supported"
    assert landscape.decide_landscape(_results(big, small))[1] == "not supported"
    assert landscape.decide_landscape(_results(noisy, big))[1] == "not supported"
    mixed = _results(small, big)
    mixed["raw"]["per_seed"]["lenet"]["bn"]["beta"] = big
    mixed["raw"]["per_seed"]["lenet"]["none"]["beta"] = small
    evidence, verdict = landscape.decide_landscape(mixed)
    assert verdict == "mixed"
    # The null: equal numbers decide nothing.
    same = landscape.decide_landscape(_results(small, small))
    assert same[1] == "not supported"
    assert {e["direction"] for e in same[0]["lenet"].values()} == {"unclear"}
    assert evidence["lenet"]["beta"]["direction"] == "greater"
    assert evidence["lenet"]["loss_range"]["direction"] == "less"


def test_landscape_point_of_least_squares_against_the_algebra() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2, bias=False).double()
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - target) ** 2).sum()

    w = net.weight.detach().clone()
    # L(W) = 1/2 ||X W^T - T||^2, G = (X W^T - T)^T X; one step: G' = G - eta G X^T X.
    g = (x @ w.T - t).T @ x
    h = x.T @ x
    etas = [0.01, 0.05, 0.2]
    got = landscape.landscape_point(net, x, t, etas, loss_fn=mse)
    losses = [float(mse(x @ (w - eta * g).T, t)) for eta in etas]
    changes = [eta * float((g @ h).norm()) for eta in etas]
    assert got["loss0"] == pytest.approx(float(mse(x @ w.T, t)), rel=1e-10)
    assert got["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert got["losses"] == pytest.approx(losses, rel=1e-10)
    assert got["grad_changes"] == pytest.approx(changes, rel=1e-10)
    beta = float((g @ h).norm() / g.norm())  # the same for every step size here
    assert got["betas"] == pytest.approx([beta] * 3, rel=1e-10)
    assert got["beta"] == pytest.approx(beta, rel=1e-10)
    assert got["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-10)
    assert got["grad_change_rel"] == pytest.approx(changes[-1] / float(g.norm()), rel=1e-10)
    assert torch.equal(net.weight, w)
    assert net.weight.grad is None


def test_landscape_point_leaves_the_model_alone() -> None:
    model = build_model("mlp-relu", "bnlab", 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    landscape.landscape_point(model, x, y, [0.1, 0.4])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def test_errors_show_the_value() -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"step sizes must be > 0, got \[0.1, 0.0\]"):
        landscape.landscape_point(
            net, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [0.1, 0.0]
        )
    with pytest.raises(ValueError, match=r"step_multipliers must be > 0, got \(\)"):
        landscape.LandscapeConfig(step_multipliers=())
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        landscape.LandscapeConfig(archs=("vgg",))
