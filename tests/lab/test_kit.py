"""The lab kit: data helpers, probes on a copy, functional losses, verdict helpers,
thread settings and the tuned-lr paired experiments' skeleton."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.lab import kit


def test_batches_are_endless_full_and_seeded(fake_data) -> None:
    data = fake_data(40, 8)
    got = list(itertools.islice(kit.batches(data["train_images"], data["train_labels"], 16, 3), 5))
    assert [x.shape for x, _ in got] == [torch.Size([16, 1, 28, 28])] * 5  # drop_last
    assert all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x, _ in got)
    again = list(
        itertools.islice(kit.batches(data["train_images"], data["train_labels"], 16, 3), 5)
    )
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again, strict=True))
    (big,) = itertools.islice(kit.batches(data["train_images"], data["train_labels"], 99, 0), 1)
    assert big[0].shape[0] == 40  # a batch larger than the subset is cut to it


def test_split_probe_batch_and_float_images(fake_data) -> None:
    data = fake_data(40, 8)
    part = kit.split(data, 10, 4)
    assert part["train_images"].shape[0] == 10
    assert part["test_labels"].dtype == torch.int64
    assert torch.equal(part["test_images"], data["test_images"][:4])
    probe = kit.probe_batch(data, 6, "cpu")
    assert torch.equal(probe, kit.float_images(data["train_images"][:6]))
    assert probe.shape == (6, 1, 28, 28)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_probe_copy_sees_train_mode_and_leaves_the_model_alone() -> None:
    model = _net().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 4) * 3 + 1
    seen = kit.probe_copy(model, x, ["2", "3"])
    # Train mode: BN uses the probe batch's statistics, so the ReLU input is normalized.
    h = model[0](x)
    expected = (h - h.mean(0)) / (h.var(0, unbiased=False) + model[1].eps).sqrt()
    expected = expected * model[1].weight + model[1].bias
    torch.testing.assert_close(seen["2"], expected.detach())
    zeros = kit.probe_copy(
        model, x, ["2"], what="output", reduce=lambda t: float((t == 0).float().mean())
    )
    assert 0.0 < zeros["2"] < 1.0
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks for m in model.modules())


def test_loss_at_and_loss_and_grad_match_autograd_and_keep_buffers() -> None:
    model = _net().train()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    params, buffers = kit.detached_state(model)
    running = buffers["1.running_mean"].clone()
    loss, grads = kit.loss_and_grad(model, params, buffers, x, y, F.cross_entropy)
    direct = F.cross_entropy(model(x), y)
    direct.backward()
    assert loss == pytest.approx(float(direct.detach()))
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    assert torch.equal(buffers["1.running_mean"], running)  # copies were updated, not these
    moved = {n: p + 1.0 for n, p in params.items()}
    assert float(kit.loss_at(model, moved, buffers, x, y, F.cross_entropy)) != pytest.approx(loss)


def test_finite_mean() -> None:
    assert kit.finite_mean([1.0, None, math.nan, 3.0]) == 2.0
    assert kit.finite_mean([None, math.inf]) is None


def test_cpu_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with kit.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with kit.cpu_threads(0):
        assert torch.get_num_threads() == before


# --- kit.paired: the tuned-lr paired skeleton ------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tuned(kit.paired.EpochsConfig):
    width: int = 4

    POSITIVE = ("seeds", "batch", "epochs", "margin", "width")


def test_tuned_config_checks_at_construction_and_counts_steps() -> None:
    config = _Tuned.quick()
    assert (config.seeds, config.train_size, config.test_size, config.epochs) == (2, 1024, 500, 1)
    assert config.tune_seed == 1000
    assert config.steps == 1024 // 128
    assert config.steps_for(300) == 2
    assert _Tuned().steps == 2 * (60_000 // 128)
    with pytest.raises(ValueError, match=r"_Tuned: lrs must be positive values, got \(\)"):
        _Tuned(lrs=())
    with pytest.raises(ValueError, match="_Tuned: width must be > 0, got 0"):
        _Tuned(width=0)


def test_tuned_record_table_and_notes() -> None:
    config = _Tuned(lrs=(0.1, 1.0))
    tuned = kit.paired.Tuned(
        {"s": {"a": {0.1: 0.5, 1.0: None}, "b": {0.1: 0.7, 1.0: 0.4}}},
        {"s": {"a": 0.1, "b": 1.0}},
    )
    raw = tuned.record(config, "final loss")
    assert raw["tuning"] == {"s": {"a": {"0.1": 0.5, "1.0": None}, "b": {"0.1": 0.7, "1.0": 0.4}}}
    assert raw["lr"] == {"s": {"a": 0.1, "b": 1.0}}
    assert raw["lr_at_grid_edge"] == ["s/a", "s/b"]
    assert "0.1/1" in raw["tune_rule"]
    assert "final loss" in raw["tune_rule"]
    assert tuned.record(config, "x", lr={"a": 0.1})["lr"] == {"a": 0.1}
    assert tuned.stored("s") == raw["tuning"]["s"]
    assert (tuned.lr("s", "b"), tuned.lr("t", "b"), tuned.criterion("s", "b", 1)) == (
        1.0,
        None,
        0.4,
    )
    table = tuned.table("T", ["arm"], config.lrs, [(("a",), tuned.values["s"]["a"], 0.1)])
    assert table.columns == ["arm", "lr=0.1", "lr=1", "chosen lr"]
    assert table.rows == [["a", 0.5, None, 0.1]]
    assert kit.paired.Tuned.notes(raw)[1] == "lr at the grid's edge: s/a, s/b"


def test_claim_specs_and_grids() -> None:
    config = _Tuned()
    one, two = kit.paired.claim_specs(
        config,
        "acc",
        [("c1", "higher", "x", "y", ["s"]), ("c2", "lower", "y", "x", None)],
        chance=kit.paired.chance_near("acc"),
        margin=0.5,
    )
    assert (one.settings, two.settings, one.margin, one.min_seeds) == (("s",), None, 0.5, 5)
    assert one.chance == two.chance == kit.paired.chance_near("acc", 10.0, 2.0)
    assert kit.paired.claim_spec(
        config, "c1", "acc", "higher", "x", "y", ["s"], chance_metric="acc"
    ) == dataclasses.replace(one, margin=config.margin)
    grid = kit.paired.measured_grid(("a", "b"), 2, ("s",))
    assert [grid.key(c) for c in grid.cells()] == [
        "s-a-seed0",
        "s-b-seed0",
        "s-a-seed1",
        "s-b-seed1",
    ]
    tune = kit.paired.tune_grid(("",), ("a",), (0.1, 1.0), 7)
    assert [tune.key(c) for c in tune.cells()] == ["tune-lr0.1-a", "tune-lr1-a"]
    keyed = kit.paired.tune_grid(("",), ("a",), (0.1,), 7, key=lambda c: f"k{c.seed}")
    assert [keyed.key(c) for c in keyed.cells()] == ["k7"]
