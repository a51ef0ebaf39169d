"""Faults around a training run: damaged, foreign and code-carrying checkpoints, a full
disk and a read-only folder (issue 10).

What must hold: a checkpoint is read with ``torch.load(weights_only=True)``, so a pickle
that carries code is refused before any of it runs; a torn checkpoint falls back to the
previous good one (``checkpoint.prev.pt``) and says so, or fails with one line naming the
file; a checkpoint of another model or format says which; a write that fails for lack of
space or permission names the file and leaves its previous content as it was.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab import models
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import fake_images_labels
from bnlab.train import TIMING_KEYS, TrainConfig, fit, load_checkpoint
from bnlab.train import io as train_io

CONFIG = TrainConfig(lr=0.1, epochs=2, batch_size=16, log_every_steps=2)


def _loaders() -> tuple[DeviceLoader, DeviceLoader]:
    x, y = fake_images_labels(48, seed=0)
    xt, yt = fake_images_labels(16, seed=1)
    train = DeviceLoader(x, y.long(), 16, shuffle=True, seed=0)
    return train, DeviceLoader(xt, yt.long(), 16, shuffle=False)


def _model() -> torch.nn.Module:
    return models.create("mlp", hidden=(8,))


def _run(run_dir: Path, config: TrainConfig = CONFIG, **kwargs: Any) -> tuple[Any, Any]:
    model = _model()
    train, test = _loaders()
    return fit(model, train, test, config, run_dir=run_dir, **kwargs), model


def _same(a: Any, b: Any) -> None:
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in b.history]


def test_a_torn_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    reference, ref_model = _run(tmp_path / "ref", CONFIG.replace(epochs=3))
    run = tmp_path / "run"
    _run(run)  # 2 epochs: checkpoint.pt at epoch 2, checkpoint.prev.pt at epoch 1
    assert load_checkpoint(run / "checkpoint.prev.pt")["epoch"] == 1
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # torn
    with pytest.warns(RuntimeWarning, match=r"checkpoint.pt.*resuming from the previous"):
        result, model = _run(run, CONFIG.replace(epochs=3), resume=True)
    assert result.resumed_from_epoch == 1
    _same(result, reference)
    for key, value in ref_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "zeroed"])
def test_a_damaged_checkpoint_without_a_previous_one_is_named_in_one_line(
    tmp_path: Path, damage: str
) -> None:
    _run(tmp_path, CONFIG.replace(epochs=1))
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(
        {
            "truncated": data[: len(data) // 3],
            "garbage": b"not a checkpoint at all",
            "empty": b"",
            "zeroed": bytes(len(data)),
        }[damage]
    )
    with pytest.raises(RuntimeError) as exc:
        _run(tmp_path, resume=True)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"cannot read checkpoint {path}: it is truncated, corrupted")


class _Payload:
    """A pickle that would create a marker file when loaded (code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_carries_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    _run(tmp_path, CONFIG.replace(epochs=1))
    marker = tmp_path / "pwned"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, tmp_path / "checkpoint.pt")
    # The payload works when unpickled the unsafe way (so the test means something).
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    (tmp_path / "checkpoint.prev.pt").unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*pickled code"):
        _run(tmp_path, resume=True)
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_named(tmp_path: Path) -> None:
    _run(tmp_path, CONFIG.replace(epochs=1))
    train, test = _loaders()
    with pytest.raises(RuntimeError) as exc:
        fit(models.create("mlp", hidden=(5,)), train, test, CONFIG, run_dir=tmp_path, resume=True)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(
        f"checkpoint {tmp_path / 'checkpoint.pt'} holds the weights of another model"
    )
    assert "resume with the model it was trained with" in message


def test_a_checkpoint_of_another_format_is_named(tmp_path: Path) -> None:
    _run(tmp_path, CONFIG.replace(epochs=1))
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        if (tmp_path / name).exists():
            state = torch.load(tmp_path / name, weights_only=True)
            torch.save({**state, "format": 99}, tmp_path / name)
    with pytest.raises(RuntimeError, match=r"has format 99, this bnlab reads format 1"):
        _run(tmp_path, resume=True)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOSPC, "No space left on device (disk full)"),
        (errno.EROFS, "Read-only file system"),
    ],
)
def test_a_full_disk_or_read_only_folder_names_the_file_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    path = tmp_path / "results.json"
    train_io.write_json(path, {"earlier": True})
    real_open = os.open

    def failing_open(name: Any, flags: int, *args: Any) -> int:
        if str(name).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(name))
        return real_open(name, flags, *args)

    monkeypatch.setattr(train_io.os, "open", failing_open)
    with pytest.raises(OSError, match="cannot write") as exc:
        train_io.write_json(path, {"later": True})
    assert exc.value.errno == code
    assert str(exc.value) == (
        f"[Errno {code}] cannot write {path}: {text}; results.json is unchanged. Free some "
        "space or make the folder writable, or choose another output folder"
    )
    assert path.read_text() == '{\n  "earlier": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_disk_that_fills_mid_checkpoint_keeps_both_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(tmp_path, CONFIG.replace(epochs=1))
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def full(obj: Any, f: Any) -> None:
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(train_io.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write .*checkpoint.pt: No space left on device"):
        _run(tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anyway")
def test_a_read_only_folder_really(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    train_io.write_json(path, {"earlier": True})
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OSError, match=r"results.json is unchanged"):
            train_io.write_json(path, {"later": True})
    finally:
        tmp_path.chmod(0o755)
    assert "earlier" in path.read_text()


def test_stale_temporaries_of_a_killed_write_are_removed_on_resume(tmp_path: Path) -> None:
    _run(tmp_path, CONFIG.replace(epochs=1))
    stale = tmp_path / ".checkpoint.pt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.tmp"  # not ours: kept
    other.write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(tmp_path, resume=True)
    assert not stale.exists()
    assert other.exists()


# Numerical faults: where NaN/inf first appears.


def _list_loaders(x: torch.Tensor) -> tuple[list[Any], list[Any]]:
    y = torch.arange(x.shape[0]) % 10
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, x.shape[0], 8)]
    return batches, batches[:1]


def _bn_model() -> torch.nn.Module:
    from bnlab.nn import BatchNorm1d

    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(12, 6),
        BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 10),
    )


def test_anomaly_mode_names_the_layer_where_inf_first_appears() -> None:
    from bnlab.train import NonFiniteActivationError

    model = _bn_model()
    with torch.no_grad():
        model[2].weight[1] = float("inf")  # BN's gamma: finite inputs, infinite output
    train, test = _list_loaders(torch.randn(24, 12, generator=torch.Generator().manual_seed(0)))
    config = TrainConfig(lr=0.1, epochs=1, batch_size=8)
    with pytest.raises(NonFiniteActivationError) as exc:
        fit(model, train, test, config, detect_anomaly=True)
    message = str(exc.value)
    assert message.startswith(
        "non-finite values first appear in the output of layer '2' (BatchNorm1d) at epoch 1 "
        "step 1 ("
    )
    # inf * x_hat + shift: inf where the signs agree, NaN (inf - inf) where not.
    assert message.endswith(
        " of 48 values, shape (8, 6)); lower the learning rate, or check this layer's "
        "weights and eps"
    )
    assert (exc.value.layer, exc.value.layer_type, exc.value.step) == ("2", "BatchNorm1d", 1)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_anomaly_mode_names_a_non_finite_input_batch() -> None:
    from bnlab.train import NonFiniteActivationError

    x = torch.randn(24, 12)
    x[13, 4] = float("nan")  # second batch
    train, test = _list_loaders(x)
    config = TrainConfig(lr=0.1, epochs=1, batch_size=8)
    with pytest.raises(NonFiniteActivationError) as exc:
        fit(_bn_model(), train, test, config, detect_anomaly=True)
    assert str(exc.value).startswith(
        "non-finite values in the input batch at epoch 1 step 2 (1 NaN and 0 inf of 96 values"
    )
    # Without the mode, the loss check stops the run (no layer named).
    with pytest.raises(RuntimeError, match=r"training loss is nan at epoch 1, step 2"):
        fit(_bn_model(), train, test, config)


def test_anomaly_mode_changes_nothing_on_a_healthy_run(tmp_path: Path) -> None:
    train, test = _list_loaders(torch.randn(24, 12, generator=torch.Generator().manual_seed(0)))
    config = TrainConfig(lr=0.1, epochs=2, batch_size=8)
    a = fit(_bn_model(), train, test, config)
    b = fit(_bn_model(), train, test, config, detect_anomaly=True)
    _same(a, b)


# Reduced precision.


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_and_resumes_exactly(tmp_path: Path, precision: str) -> None:
    config = CONFIG.replace(precision=precision, lr=0.05)
    unbroken, model = _run(tmp_path / "a", config)
    assert all(math.isfinite(r["train_loss"]) for r in unbroken.history)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _run(tmp_path / "b", config.replace(epochs=1))
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 1.0  # the loss scale is saved for an exact resume
    resumed, resumed_model = _run(tmp_path / "b", config, resume=True)
    _same(resumed, unbroken)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_reduced_precision_follows_float32_closely() -> None:
    full, _ = _run(None, CONFIG.replace(lr=0.05))  # type: ignore[arg-type]
    half, _ = _run(None, CONFIG.replace(lr=0.05, precision="bf16"))  # type: ignore[arg-type]
    assert abs(full.final["train_loss"] - half.final["train_loss"]) < 0.05


def test_unknown_precision_is_named() -> None:
    with pytest.raises(ValueError, match="unknown precision") as exc:
        TrainConfig(precision="fp8")
    assert str(exc.value) == "TrainConfig: unknown precision 'fp8'; choose one of: 32, bf16, fp16"


@pytest.mark.parametrize("norm", ["bnlab", "torch"])
def test_a_last_batch_of_one_sample_is_skipped_as_if_it_were_not_there(norm: str) -> None:
    # Issue 19: LeNet's BatchNorm1d cannot normalize one sample in training. The batch
    # is skipped, and the running statistics of the layers before it are put back: the
    # run equals one without that sample.
    x, y = fake_images_labels(33, seed=0)
    xt, yt = fake_images_labels(16, seed=1)
    config = TrainConfig(lr=0.1, epochs=2, batch_size=16)
    test = [(xt.float().unsqueeze(1) / 255, yt.long())]

    def run(n: int) -> tuple[Any, torch.nn.Module]:
        batches = [
            (x[i : i + 16].float().unsqueeze(1) / 255, y[i : i + 16].long())
            for i in range(0, n, 16)
        ]
        model = models.create("lenet", norm=norm)
        return fit(model, batches, test, config), model

    skipped, model = run(33)
    whole, reference = run(32)
    assert [r["skipped_samples"] for r in skipped.history] == [1, 1]
    assert [r["train_samples"] for r in skipped.history] == [32, 32]
    assert [r["step"] for r in skipped.history] == [2, 4]
    for record, other in zip(skipped.history, whole.history, strict=True):
        trimmed = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        trimmed.pop("skipped_samples")
        assert trimmed == {k: v for k, v in other.items() if k not in TIMING_KEYS}
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_batch_size_of_one_with_batch_norm_still_raises() -> None:
    # Not a short last batch: every batch has one sample, which is the caller's choice.
    x, y = fake_images_labels(4, seed=0)
    batches = [(x[i : i + 1].float().unsqueeze(1) / 255, y[i : i + 1].long()) for i in range(4)]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fit(
            models.create("lenet", norm="bnlab"),
            batches,
            batches,
            TrainConfig(lr=0.1, epochs=1, batch_size=1),
        )
