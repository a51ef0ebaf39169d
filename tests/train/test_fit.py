"""fit: overfits a tiny set, same seed same numbers, exact resume, NaN stop, files, errors."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bnlab import models
from bnlab.train import (
    TIMING_KEYS,
    NonFiniteLossError,
    StepInfo,
    TrainConfig,
    evaluate,
    fit,
    init_weights,
    load_checkpoint,
    read_jsonl,
)
from bnlab.train import io as train_io


class TensorLoader:
    """The loader interface fit relies on: (x, y) batches, len, batch_size, set_epoch.

    The order of an epoch depends only on (seed, epoch), as DeviceLoader's does.
    """

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, seed: int = 0, shuffle: bool = True
    ):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(len(self.y), generator=g)
        else:
            order = torch.arange(len(self.y))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.x[index], self.y[index]


def _data(n: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loaders(
    n_train: int = 64, n_test: int = 32, batch_size: int = 16
) -> tuple[TensorLoader, TensorLoader]:
    x, y = _data(n_train, seed=1)
    xt, yt = _data(n_test, seed=2)
    return TensorLoader(x, y, batch_size), TensorLoader(xt, yt, 64, shuffle=False)


def _strip_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def test_fit_overfits_a_tiny_random_set() -> None:
    train, _ = _loaders(n_train=64)
    config = TrainConfig(lr=1.0, epochs=15, batch_size=16)
    result = fit(models.create("lenet", norm="bnlab"), train, train, config)
    assert result.history[0]["train_loss"] > 1.5
    assert result.final["train_acc"] == 1.0
    assert result.final["train_loss"] < 0.2
    # Evaluated in eval mode (running statistics) on the same samples.
    assert result.final["test_acc"] >= 0.95
    assert [r["epoch"] for r in result.history] == list(range(1, 16))
    assert result.history[-1]["step"] == 15 * 4
    assert result.epochs_run == 15
    assert result.resumed_from_epoch is None


def test_result_fields_and_timings() -> None:
    train, test = _loaders()
    result = fit(
        models.create("mlp", norm="torch", hidden=(16,)),
        train,
        test,
        TrainConfig(lr=0.1, epochs=2, batch_size=16),
    )
    record = result.history[-1]
    assert set(record) == {
        "kind",
        "epoch",
        "step",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "train_samples",
        "test_samples",
        "train_time_s",
        "eval_time_s",
        "epoch_time_s",
        "images_per_s",
        "time_s",
    }
    assert record["train_samples"] == 64
    assert record["test_samples"] == 32
    assert result.final == {
        k: record[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")
    }
    assert 0 < result.train_time_s <= result.wall_time_s
    assert result.wall_time_s == pytest.approx(sum(r["epoch_time_s"] for r in result.history))
    assert result.images_per_s == pytest.approx(128 / result.train_time_s)
    assert "forward" in result.images_per_s_definition
    # JSON-ready (no NaN, no tensors).
    json.dumps(result.to_dict(), allow_nan=False)


def _fit_twice(
    seed_a: int, seed_b: int, global_a: int, global_b: int
) -> tuple[Any, Any, nn.Module, nn.Module]:
    out = []
    for seed, global_seed in ((seed_a, global_a), (seed_b, global_b)):
        torch.manual_seed(global_seed)  # construction-time init differs; fit re-draws it
        model = models.create("lenet", norm="bnlab")
        train, test = _loaders()
        result = fit(
            model,
            train,
            test,
            TrainConfig(lr=0.5, epochs=2, batch_size=16, seed=seed, log_every_steps=3),
        )
        out.append((result, model))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def test_same_seed_same_numbers() -> None:
    a, b, model_a, model_b = _fit_twice(7, 7, global_a=0, global_b=123)
    assert _strip_timings(a.history) == _strip_timings(b.history)
    assert _strip_timings(a.steps) == _strip_timings(b.steps)
    _assert_same_state(model_a, model_b)


def test_other_seed_other_numbers() -> None:
    a, b, _, _ = _fit_twice(7, 8, global_a=0, global_b=0)
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]


def test_init_weights_depends_on_the_seed_only() -> None:
    torch.manual_seed(0)
    a = models.create("lenet", norm="torch")
    torch.manual_seed(1)
    b = models.create("lenet", norm="torch")
    init_weights(a, 3)
    init_weights(b, 3)
    _assert_same_state(a, b)
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) for fc1: 256 -> 120.
    bound = math.sqrt(6 / (256 + 120))
    assert a.fc1.weight.abs().max() <= bound
    assert a.fc1.weight.abs().max() > 0.9 * bound
    assert a.fc1.bias.abs().max() <= 1 / math.sqrt(256)
    # Conv: fan_in = 1 * 5 * 5, fan_out = 6 * 5 * 5.
    assert a.conv1.weight.abs().max() <= math.sqrt(6 / (25 + 150))
    # Norm layers keep gamma = 1, beta = 0.
    assert torch.equal(a.norm1.weight, torch.ones(6))


def test_fresh_start_reinitialises_and_default_init_does_not() -> None:
    train, test = _loaders()
    torch.manual_seed(0)
    model = models.create("mlp", hidden=(8,))
    before = model.fc1.weight.detach().clone()
    initialised = models.create("mlp", hidden=(8,))
    init_weights(initialised, 0)
    fit(model, train, test, TrainConfig(lr=1e-9, epochs=1, batch_size=16))
    # lr ~ 0: the weights are the initialisation, which came from init_weights(seed=0).
    torch.testing.assert_close(model.fc1.weight, initialised.fc1.weight, rtol=0, atol=1e-6)
    assert not torch.allclose(model.fc1.weight, before)

    torch.manual_seed(0)
    kept = models.create("mlp", hidden=(8,))
    fit(kept, train, test, TrainConfig(lr=1e-9, epochs=1, batch_size=16, init="default"))
    torch.testing.assert_close(kept.fc1.weight, before, rtol=0, atol=1e-6)


def test_fit_restores_the_global_rngs() -> None:
    train, test = _loaders()
    model = models.create("mlp", hidden=(8,))
    torch.manual_seed(42)
    random.seed(42)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(42)
    random.seed(42)
    fit(model, train, test, TrainConfig(lr=0.1, epochs=1, batch_size=16))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]


class _Interrupt(Exception):
    """Stands for a crash or a Ctrl-C in the middle of an epoch."""


def _interrupt_at(step: int):
    def on_step(info: StepInfo) -> None:
        if info.step == step:
            raise _Interrupt

    return on_step


RESUME_NORMS = ["bnlab", "textbook", "torch"]


@pytest.mark.parametrize("norm", RESUME_NORMS)
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, norm: str) -> None:
    # Momentum and dropout make the optimizer state and the global RNG state matter.
    config = TrainConfig(
        lr=0.3, epochs=3, batch_size=16, momentum=0.9, weight_decay=1e-4, seed=5, log_every_steps=3
    )

    def build() -> nn.Module:
        return nn.Sequential(models.create("lenet", norm=norm), nn.Dropout(0.2))

    train, test = _loaders()
    full_model = build()
    full = fit(full_model, train, test, config, run_dir=tmp_path / "full")

    # Stopped after epoch 1, then crashed in the middle of epoch 2 (after a step log).
    train, test = _loaders()
    run = tmp_path / "resumed"
    first = fit(build(), train, test, config.replace(epochs=1), run_dir=run)
    assert [r["epoch"] for r in first.history] == [1]
    with pytest.raises(_Interrupt):
        fit(build(), train, test, config, run_dir=run, resume=True, on_step=_interrupt_at(7))
    logged = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in logged if r["kind"] == "step"] == [3, 6]  # step 6 is in epoch 2

    resumed_model = build()
    resumed = fit(resumed_model, train, test, config, run_dir=run, resume=True)
    assert resumed.resumed_from_epoch == 1
    assert resumed.epochs_run == 2

    assert _strip_timings(resumed.history) == _strip_timings(full.history)
    assert _strip_timings(resumed.steps) == _strip_timings(full.steps)
    _assert_same_state(resumed_model, full_model)
    full_log = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    resumed_log = read_jsonl(run / "metrics.jsonl")
    assert _strip_timings(resumed_log) == _strip_timings(full_log)
    epochs = [r["epoch"] for r in resumed_log if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    steps = [r["step"] for r in resumed_log if r["kind"] == "step"]
    assert steps == sorted(set(steps)) == [3, 6, 9, 12]


def test_resume_extends_a_finished_run_and_a_finished_run_is_a_no_op(tmp_path: Path) -> None:
    config = TrainConfig(lr=0.3, epochs=2, batch_size=16)
    train, test = _loaders()
    model = models.create("lenet", norm="bnlab")
    done = fit(model, train, test, config, run_dir=tmp_path)
    again_model = models.create("lenet", norm="bnlab")
    again = fit(again_model, train, test, config, run_dir=tmp_path, resume=True)
    assert again.epochs_run == 0
    assert again.history == done.history
    _assert_same_state(again_model, model)
    longer = fit(
        models.create("lenet", norm="bnlab"),
        train,
        test,
        config.replace(epochs=3),
        run_dir=tmp_path,
        resume=True,
    )
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path: Path) -> None:
    config = TrainConfig(lr=0.3, epochs=1, batch_size=16, log_every_steps=1)
    train, test = _loaders()
    with pytest.raises(_Interrupt):
        fit(
            models.create("mlp", hidden=(8,)),
            train,
            test,
            config,
            run_dir=tmp_path,
            on_step=_interrupt_at(2),
        )
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(models.create("mlp", hidden=(8,)), train, test, config, run_dir=tmp_path, resume=True)
    result = fit(models.create("mlp", hidden=(8,)), train, test, config, run_dir=tmp_path)
    assert _strip_timings(read_jsonl(tmp_path / "metrics.jsonl")) == _strip_timings(
        result.steps + result.history
    )


def test_checkpoint_holds_plain_data_and_loads_weights_only(tmp_path: Path) -> None:
    train, test = _loaders()
    config = TrainConfig(lr=0.1, epochs=1, batch_size=16, momentum=0.5)
    model = models.create("lenet", norm="textbook")
    fit(model, train, test, config, run_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(state) == {
        "format",
        "model",
        "optimizer",
        "scaler",
        "rng",
        "config",
        "identity",
        "epoch",
        "step",
        "metrics",
    }
    assert state["identity"] == {"model_class": "bnlab.models.lenet.LeNet"}
    assert state["epoch"] == 1
    assert state["step"] == 4
    assert state["config"] == config.to_dict()
    assert "norm1.moving_mean" in state["model"]
    assert set(state["rng"]) == {"python", "torch", "cuda"}
    assert state["metrics"] == read_jsonl(tmp_path / "metrics.jsonl")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_run_dir_holds_no_temporary_files(tmp_path: Path) -> None:
    train, test = _loaders()
    fit(
        models.create("mlp", hidden=(8,)),
        train,
        test,
        TrainConfig(lr=0.1, epochs=2, batch_size=16),
        run_dir=tmp_path,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".bnlab-run", "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl"]
    )


def test_a_failed_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = _loaders()
    config = TrainConfig(lr=0.1, epochs=2, batch_size=16)
    fit(models.create("mlp", hidden=(8,)), train, test, config.replace(epochs=1), run_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def broken_save(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(train_io.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(models.create("mlp", hidden=(8,)), train, test, config, run_dir=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # checkpoint.prev.pt: the epoch-1 checkpoint kept before the failed write (the same).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".bnlab-run", "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl"]
    )


def test_atomic_json_writes(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    train_io.write_json(path, {"a": 1, "path": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1, "path": str(tmp_path)}
    # NaN and infinities are not JSON: written as strings, read back as floats (issue 19).
    other = tmp_path / "other" / "nan.json"
    other.parent.mkdir()
    train_io.write_json(other, {"a": math.nan, "b": [math.inf, -math.inf]})
    assert json.loads(other.read_text()) == {"a": "NaN", "b": ["Infinity", "-Infinity"]}
    back = train_io.read_json(other)
    assert math.isnan(back["a"])
    assert back["b"] == [math.inf, -math.inf]
    with pytest.raises(TypeError, match="cannot write a object to JSON"):
        train_io.write_json(path, {"a": object()})
    # The failed writes left the old file and nothing else.
    assert json.loads(path.read_text())["a"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "results.json"]


def test_read_jsonl_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)


def test_nan_loss_stops_with_epoch_step_and_advice(tmp_path: Path) -> None:
    train, test = _loaders()
    config = TrainConfig(lr=1e20, epochs=3, batch_size=16)
    with pytest.raises(NonFiniteLossError) as exc:
        fit(models.create("mlp", hidden=(32,)), train, test, config, run_dir=tmp_path)
    err = exc.value
    assert isinstance(err, RuntimeError)
    assert not math.isfinite(err.loss)
    assert err.step == (err.epoch - 1) * 4 + int(str(err).split("(batch ")[1].split(" ")[0])
    message = str(err)
    assert message.startswith(
        f"training loss is {err.loss} at epoch {err.epoch}, step {err.step} (batch "
    )
    assert message.endswith(
        "; stopped before that update. Lower the learning rate (lr=1e+20), or check the inputs for NaN/inf"
    )


def test_nan_input_stops_at_the_first_step() -> None:
    x, y = _data(32)
    x[5, 0, 3, 3] = math.nan
    with pytest.raises(NonFiniteLossError) as exc:
        fit(
            models.create("lenet"),
            TensorLoader(x, y, 16, shuffle=False),
            TensorLoader(x, y, 16),
            TrainConfig(lr=0.1, epochs=1, batch_size=16),
        )
    assert (exc.value.epoch, exc.value.step) == (1, 1)
    assert "at epoch 1, step 1 (batch 1 of 2)" in str(exc.value)


def test_callbacks() -> None:
    train, test = _loaders()
    steps: list[StepInfo] = []
    epochs: list[dict[str, Any]] = []
    result = fit(
        models.create("mlp", hidden=(8,)),
        train,
        test,
        TrainConfig(lr=0.1, epochs=2, batch_size=16),
        on_step=steps.append,
        on_epoch=epochs.append,
    )
    assert [(s.epoch, s.step, s.batch, s.num_batches, s.batch_size) for s in steps[:5]] == [
        (1, 1, 1, 4, 16),
        (1, 2, 2, 4, 16),
        (1, 3, 3, 4, 16),
        (1, 4, 4, 4, 16),
        (2, 5, 1, 4, 16),
    ]
    assert all(math.isfinite(s.loss) for s in steps)
    assert epochs == result.history


def test_step_records_are_running_means_of_the_epoch(tmp_path: Path) -> None:
    train, test = _loaders()
    result = fit(
        models.create("mlp", hidden=(8,)),
        train,
        test,
        TrainConfig(lr=0.1, epochs=2, batch_size=16, log_every_steps=4),
        run_dir=tmp_path,
    )
    # Every 4th step is the end of an epoch: the step record equals the epoch's train metrics.
    assert [r["step"] for r in result.steps] == [4, 8]
    for step, epoch in zip(result.steps, result.history, strict=True):
        assert step["train_loss"] == epoch["train_loss"]
        assert step["train_acc"] == epoch["train_acc"]
    kinds = [r["kind"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert kinds == ["step", "epoch", "step", "epoch"]


def test_evaluate_restores_the_mode_and_uses_eval() -> None:
    x, y = _data(32)
    model = models.create("lenet", norm="torch")
    model.train()
    with torch.no_grad():
        model.norm1.running_mean.fill_(100.0)  # eval output depends on it, train's does not
    result = evaluate(model, TensorLoader(x, y, 10, shuffle=False))
    assert model.training
    assert result["samples"] == 32
    model.eval()
    with torch.no_grad():
        logits = model(x)
    expected_acc = (logits.argmax(1) == y).double().mean().item()
    assert result["acc"] == pytest.approx(expected_acc)
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    model.eval()
    evaluate(model, TensorLoader(x, y, 10))
    assert not model.training


class _Empty:
    batch_size = 16

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class _Triples:
    def __iter__(self) -> Iterator[Any]:
        yield torch.zeros(2, 784), torch.zeros(2, dtype=torch.int64), None


FIT_ERRORS = [
    (
        {"config": TrainConfig(lr=0.1, epochs=1, batch_size=32)},
        ValueError,
        "fit: train_loader.batch_size is 16 but config.batch_size is 32; build the loader with the config's batch size",
    ),
    ({"config": {"lr": 0.1}}, TypeError, "fit: config must be a TrainConfig, got dict"),
    ({"model": "lenet"}, TypeError, "fit: model must be a torch.nn.Module, got str"),
    ({"resume": True}, ValueError, "fit: resume=True needs the run_dir of the run to continue"),
    ({"train": _Empty()}, ValueError, "fit: the training loader yielded no samples in epoch 1"),
    ({"test": _Empty()}, ValueError, "evaluate: the loader yielded no samples"),
    ({"train": _Triples()}, TypeError, "a loader must yield (x, y) pairs, got a tuple of length 3"),
]


@pytest.mark.parametrize(
    ("overrides", "error", "message"), FIT_ERRORS, ids=[m[:40] for _, _, m in FIT_ERRORS]
)
def test_fit_errors(overrides: dict[str, Any], error: type[Exception], message: str) -> None:
    train, test = _loaders()
    with pytest.raises(error) as exc:
        fit(
            overrides.get("model", models.create("mlp", hidden=(4,))),
            overrides.get("train", train),
            overrides.get("test", test),
            overrides.get("config", TrainConfig(lr=0.1, epochs=1, batch_size=16)),
            resume=overrides.get("resume", False),
        )
    assert str(exc.value) == message


def test_run_dir_errors(tmp_path: Path) -> None:
    train, test = _loaders()
    config = TrainConfig(lr=0.1, epochs=1, batch_size=16)
    with pytest.raises(FileNotFoundError) as missing:
        fit(models.create("mlp", hidden=(4,)), train, test, config, run_dir=tmp_path, resume=True)
    assert str(missing.value) == (
        f"fit: no checkpoint at {tmp_path / 'checkpoint.pt'} to resume from; start without resume=True"
    )
    fit(models.create("mlp", hidden=(4,)), train, test, config, run_dir=tmp_path)
    with pytest.raises(FileExistsError) as exists:
        fit(models.create("mlp", hidden=(4,)), train, test, config, run_dir=tmp_path)
    assert str(exists.value) == (
        f"fit: {tmp_path} already holds a run (checkpoint.pt); pass resume=True to continue it, "
        "or use another directory"
    )
    with pytest.raises(ValueError, match="different config") as changed:
        fit(
            models.create("mlp", hidden=(4,)),
            train,
            test,
            config.replace(lr=0.2, seed=3),
            run_dir=tmp_path,
            resume=True,
        )
    assert str(changed.value) == (
        f"cannot resume {tmp_path / 'checkpoint.pt'} with a different config (lr: 0.1 -> 0.2, seed: 0 -> 3); "
        "only device, epochs may change. Use the saved settings or start a new run in another directory"
    )
    longer = config.replace(epochs=2)
    fit(models.create("mlp", hidden=(4,)), train, test, longer, run_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="past epochs") as past:
        fit(models.create("mlp", hidden=(4,)), train, test, config, run_dir=tmp_path, resume=True)
    assert str(past.value) == (
        f"checkpoint {tmp_path / 'checkpoint.pt'} is at epoch 2, past epochs=1; pass epochs >= 2"
    )
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoint.prev.pt").unlink()  # else fit falls back to it (test_faults.py)
    with pytest.raises(RuntimeError, match=r"^cannot read checkpoint .*checkpoint.pt: "):
        fit(models.create("mlp", hidden=(4,)), train, test, longer, run_dir=tmp_path, resume=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda() -> None:
    train, test = _loaders()
    with pytest.raises(RuntimeError) as exc:
        fit(
            models.create("mlp"),
            train,
            test,
            TrainConfig(lr=0.1, epochs=1, batch_size=16, device="cuda"),
        )
    assert (
        str(exc.value) == "fit: config.device is 'cuda' but CUDA is not available; use device='cpu'"
    )


def test_fit_with_the_device_loader() -> None:
    loader_module = pytest.importorskip(
        "bnlab.data.loader", reason="bnlab.data.loader not written yet"
    )
    images = torch.randint(
        0, 256, (48, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(1))
    config = TrainConfig(lr=0.5, epochs=2, batch_size=16, seed=3)

    def run() -> Any:
        train = loader_module.DeviceLoader(images, labels, 16, shuffle=True, seed=config.seed)
        test = loader_module.DeviceLoader(images, labels, 32, shuffle=False)
        return fit(models.create("lenet", norm="bnlab"), train, test, config)

    a, b = run(), run()
    assert a.history[-1]["train_samples"] == 48
    assert _strip_timings(a.history) == _strip_timings(b.history)


def test_cosine_lr_schedule_sets_each_epochs_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(lr=0.4, epochs=4, batch_size=16, lr_schedule="cosine")
    expected = [0.4 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert [config.lr_at(e) for e in range(1, 5)] == pytest.approx(expected)
    assert config.lr_at(1) == 0.4
    assert TrainConfig(lr=0.4).lr_at(7) == 0.4  # constant: d2l's
    seen: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    train, test = _loaders(n_train=32)  # 2 steps per epoch
    fit(models.create("mlp", hidden=(4,)), train, test, config)
    assert seen == pytest.approx([lr for lr in expected for _ in range(2)])


def test_unknown_lr_schedule_names_the_choices() -> None:
    with pytest.raises(ValueError, match="lr_schedule") as exc:
        TrainConfig(lr_schedule="step")
    assert str(exc.value) == (
        "TrainConfig: unknown lr_schedule 'step'; choose one of: constant, cosine"
    )


def test_on_start_gets_the_steps_done_of_the_checkpoint_resumed_from(tmp_path: Path) -> None:
    # 64 samples in batches of 16: 4 steps an epoch. A damaged last checkpoint resumes
    # from the previous one, and on_start must say so (a warm-up starts there).
    config = TrainConfig(lr=0.3, epochs=2, batch_size=16)
    train, test = _loaders()
    starts: list[int] = []
    fit(
        models.create("mlp", hidden=(8,)),
        train,
        test,
        config,
        run_dir=tmp_path,
        on_start=starts.append,
    )
    assert starts == [0]
    fit(
        models.create("mlp", hidden=(8,)),
        train,
        test,
        config.replace(epochs=3),
        run_dir=tmp_path,
        resume=True,
        on_start=starts.append,
    )
    assert starts == [0, 8]
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        fit(
            models.create("mlp", hidden=(8,)),
            train,
            test,
            config.replace(epochs=3),
            run_dir=tmp_path,
            resume=True,
            on_start=starts.append,
        )
    assert starts == [0, 8, 8]
