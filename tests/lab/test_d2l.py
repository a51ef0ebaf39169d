"""The d2l experiment runner on tiny synthetic data: records, summary, verdicts, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bnlab.lab.d2l import BOOK_RESULTS, VARIANTS, D2LConfig, run_d2l, summarize


def _data(n_train: int = 192, n_test: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n_train + n_test,), generator=g)
    # Learnable: brightness of a label-dependent patch.
    images = torch.randint(0, 60, (n_train + n_test, 28, 28), generator=g, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label : 2 * label + 6, 4:20] = 250
    return {
        "train_images": images[:n_train],
        "train_labels": labels[:n_train],
        "test_images": images[n_train:],
        "test_labels": labels[n_train:],
    }


CONFIG = D2LConfig(
    epochs=2, batch_size=64, variants=("none", "bnlab", "torch"), recalibrate_batches=2
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("d2l")
    return out, run_d2l(_data(), CONFIG, out)


def test_writes_summary_with_every_variant(finished: tuple[Path, dict]) -> None:
    out, summary = finished
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["variants"]) == {"none", "bnlab", "torch"}
    assert on_disk == json.loads(json.dumps(summary))
    bnlab = on_disk["variants"]["bnlab"]
    assert bnlab["book"] is None
    assert on_disk["variants"]["torch"]["book"] == BOOK_RESULTS["torch"]
    assert len(bnlab["first_bn_gamma"]) == 6
    for metric in ("train_loss", "train_acc", "test_acc", "test_acc_recalibrated", "images_per_s"):
        assert bnlab["metrics"][metric]["n"] == 1
        assert math.isfinite(bnlab["metrics"][metric]["mean"])
    # "none" has no BN: no recalibrated accuracy, stored as None (JSON has no NaN).
    assert on_disk["variants"]["none"]["metrics"]["test_acc_recalibrated"]["mean"] is None
    assert len(bnlab["curves"]["test_acc"][0]) == CONFIG.epochs


def test_bnlab_and_torch_bn_train_alike(finished: tuple[Path, dict]) -> None:
    _, summary = finished
    a = summary["variants"]["bnlab"]["metrics"]["train_loss"]["mean"]
    b = summary["variants"]["torch"]["metrics"]["train_loss"]["mean"]
    assert abs(a - b) < 1e-3


def test_verdicts_are_computed(finished: tuple[Path, dict]) -> None:
    _, summary = finished
    claims = {v["claim"]: v for v in summary["verdicts"]}
    assert len(claims) == 4
    for verdict in claims.values():
        assert verdict["holds"] in (True, False, None)
        assert verdict["measured"]
    # Two epochs cannot say anything about the last five.
    unstable = next(v for c, v in claims.items() if "unstable" in c)
    assert unstable["holds"] is None


def test_refuses_existing_runs_without_resume(finished: tuple[Path, dict]) -> None:
    out, _ = finished
    with pytest.raises(FileExistsError, match="--resume"):
        run_d2l(_data(), CONFIG, out)


def test_resume_reuses_finished_runs_and_matches(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    out, summary = finished
    again = run_d2l(_data(), CONFIG, out, resume=True)
    assert again["variants"]["bnlab"]["metrics"] == summary["variants"]["bnlab"]["metrics"]


def test_interrupted_run_resumes_to_the_same_numbers(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    _, summary = finished
    config = D2LConfig(epochs=2, batch_size=64, variants=("bnlab",), recalibrate_batches=2)
    calls = {"n": 0}

    def stop_in_epoch_two(info) -> None:
        calls["n"] += 1
        if info.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_d2l(_data(), config, tmp_path, on_step=stop_in_epoch_two)
    resumed = run_d2l(_data(), config, tmp_path, resume=True)
    want = summary["variants"]["bnlab"]["metrics"]
    got = resumed["variants"]["bnlab"]["metrics"]
    for key in (
        "train_loss",
        "train_acc",
        "test_acc",
        "test_acc_recalibrated",
        "test_acc_batch_stats",
    ):
        assert got[key]["mean"] == want[key]["mean"], key


def test_config_errors() -> None:
    with pytest.raises(
        ValueError, match="unknown d2l variant 'batchnrom'; choose from: none, textbook"
    ):
        D2LConfig(variants=("batchnrom",))
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        D2LConfig(epochs=0)
    with pytest.raises(ValueError, match="seeds is empty"):
        D2LConfig(seeds=())


def test_summarize_spreads_over_seeds() -> None:
    records = [
        {"variant": "none", "seed": s, "train_loss": 1.0 + s, "history": [{"train_loss": 1.0}]}
        for s in range(3)
    ]
    summary = summarize(records, D2LConfig(variants=("none",), seeds=(0, 1, 2)))
    stats = summary["variants"]["none"]["metrics"]["train_loss"]
    assert stats == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert set(VARIANTS) == {"none", "textbook", "bnlab", "torch"}


def test_resume_accepts_a_folder_from_before_the_sample_counts(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    # Folders written before config.json recorded the sample counts resume as before;
    # a setting that changes the numbers is still compared.
    import shutil

    out, summary = finished
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    config = json.loads((legacy / "config.json").read_text())
    assert config.pop("data")
    (legacy / "config.json").write_text(json.dumps(config))
    again = run_d2l(_data(), CONFIG, legacy, resume=True)
    assert again["variants"]["bnlab"]["metrics"] == summary["variants"]["bnlab"]["metrics"]
    (legacy / "config.json").write_text(json.dumps(config))
    other = D2LConfig(epochs=3, batch_size=64, variants=CONFIG.variants, recalibrate_batches=2)
    with pytest.raises(ValueError, match="other settings"):
        run_d2l(_data(), other, legacy, resume=True)


_TIMINGS = ("images_per_s", "wall_time_s", "train_time_s", "time_s", "elapsed_s")


def _numbers(summary: dict) -> list[dict]:
    """Each run's record without its timings (the numbers a layout must not change)."""
    out = []
    for run in summary["runs"]:
        out.append({k: v for k, v in run.items() if k not in _TIMINGS})
    return out


def _histories(out: Path) -> dict[str, list[dict]]:
    return {
        str(p.relative_to(out)): [
            {k: v for k, v in r.items() if not any(t in k for t in ("time", "per_s"))}
            for r in json.loads(p.read_text())["history"]
        ]
        for p in sorted(out.glob("runs/*/seed*/result.json"))
    }


def test_parallel_workers_give_the_digits_of_a_serial_run_at_one_thread(
    tmp_path: Path,
) -> None:
    # Two spawned single-thread workers vs this process at one thread: same numbers.
    from bnlab.lab.kit import cpu_threads

    config = D2LConfig(
        epochs=2, batch_size=64, seeds=(0, 1), variants=("none", "bnlab"), recalibrate_batches=2
    )
    with cpu_threads(1):
        serial = run_d2l(_data(), config, tmp_path / "serial")
    started: list[tuple[str, int]] = []
    steps: list[tuple[str, int, int]] = []
    parallel = run_d2l(
        _data(),
        config,
        tmp_path / "parallel",
        workers=2,
        threads=1,
        on_run_start=lambda v, s: started.append((v, s)),
        on_run_step=lambda v, s, info: steps.append((v, s, info.step)),
    )
    assert _numbers(parallel) == _numbers(serial)
    assert _histories(tmp_path / "parallel") == _histories(tmp_path / "serial")
    assert (
        parallel["variants"]["bnlab"]["metrics"]["test_acc_recalibrated"]
        == (serial["variants"]["bnlab"]["metrics"]["test_acc_recalibrated"])
    )
    # Runs listed in the serial order; every run started and reported its 6 steps.
    assert [(r["variant"], r["seed"]) for r in parallel["runs"]] == [
        ("none", 0),
        ("none", 1),
        ("bnlab", 0),
        ("bnlab", 1),
    ]
    assert sorted(started) == sorted([("none", 0), ("none", 1), ("bnlab", 0), ("bnlab", 1)])
    for run in started:
        assert sorted(s for v, k, s in steps if (v, k) == run) == list(range(1, 7))
    layout = json.loads((tmp_path / "parallel" / "config.json").read_text())["layout"]
    assert layout == {"workers": 2, "threads_per_worker": 1}
    # A resume with another layout reuses the finished runs.
    again = run_d2l(_data(), config, tmp_path / "parallel", resume=True)
    assert _numbers(again) == _numbers(parallel)


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers and threads must be >= 1, got 0, None"):
        run_d2l(_data(), CONFIG, tmp_path, workers=0)


def test_a_run_stopped_before_its_extra_evaluations_resumes_with_them(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    # Killed after the last epoch's checkpoint, before extra_eval.json had that epoch.
    import shutil

    out, summary = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    run = cut / "runs" / "bnlab" / "seed0"
    (run / "result.json").unlink()
    extra = json.loads((run / "extra_eval.json").read_text())
    del extra[str(CONFIG.epochs)]
    (run / "extra_eval.json").write_text(json.dumps(extra))
    again = run_d2l(_data(), CONFIG, cut, resume=True)
    _assert_same_numbers(again["variants"]["bnlab"], summary["variants"]["bnlab"])


@pytest.mark.parametrize("variant", ["none", "bnlab"])
def test_a_run_stopped_after_its_first_checkpoint_resumes(
    finished: tuple[Path, dict], tmp_path: Path, variant: str
) -> None:
    # Stopped in epoch 2: the checkpoint of epoch 1 is there; "none" never writes
    # extra_eval.json, and a BN run stopped before its first extras has none either.
    _, summary = finished
    config = D2LConfig(epochs=2, batch_size=64, variants=(variant,), recalibrate_batches=2)

    def stop_in_epoch_two(info) -> None:
        if info.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_d2l(_data(), config, tmp_path, on_step=stop_in_epoch_two)
    (tmp_path / "runs" / variant / "seed0" / "extra_eval.json").unlink(missing_ok=True)
    resumed = run_d2l(_data(), config, tmp_path, resume=True)
    _assert_same_numbers(resumed["variants"][variant], summary["variants"][variant])


def _assert_same_numbers(got: dict, want: dict) -> None:
    """Same metrics (timings aside) and curves."""
    timings = ("images_per_s", "wall_time_s")
    assert {k: v for k, v in got["metrics"].items() if k not in timings} == {
        k: v for k, v in want["metrics"].items() if k not in timings
    }
    assert got["curves"] == want["curves"]


_DEFER_CONFIG = D2LConfig(epochs=2, batch_size=64, variants=("bnlab",), recalibrate_batches=2)
_EXTRA_KEYS = (
    "test_acc_recalibrated",
    "test_acc_batch_stats",
    "test_acc_recalibrated_spread_last5",
)


def _inline_and_deferred(tmp_path: Path) -> tuple[dict, dict]:
    """A BN run with its extra evaluations inline (folder a), and the same run deferring
    them (folder b: each epoch's model saved, nothing evaluated), at one thread."""
    from bnlab.lab.d2l import _run_one

    variant, data = VARIANTS["bnlab"], _data()
    inline = _run_one(variant, 0, data, _DEFER_CONFIG, tmp_path / "a", resume=False, on_step=None)
    (tmp_path / "b").mkdir()
    deferred = _run_one(
        variant,
        0,
        data,
        _DEFER_CONFIG,
        tmp_path / "b",
        resume=False,
        on_step=None,
        defer_extras=True,
    )
    return inline, deferred


def test_deferred_extra_evaluations_equal_the_inline_ones_and_resume(tmp_path: Path) -> None:
    # What parallel workers do: the run saves each epoch's model, another task evaluates.
    from bnlab.lab.d2l import _run_extras, _with_extras
    from bnlab.lab.kit import cpu_threads

    with cpu_threads(1):
        inline, run = _inline_and_deferred(tmp_path)
        assert run["test_acc_recalibrated"] is None
        states = sorted(p.name for p in (tmp_path / "b" / "epochs").iterdir())
        assert states == ["epoch1.pt", "epoch2.pt"]
        variant, data = VARIANTS["bnlab"], _data()
        by_epoch = _run_extras(variant, 0, data, _DEFER_CONFIG, tmp_path / "b")
        # Stopped after epoch 1's evaluations: the resumed task computes epoch 2 only.
        saved = tmp_path / "b" / "extra_eval.json"
        saved.write_text(json.dumps({"1": by_epoch[1]}))
        assert _run_extras(variant, 0, data, _DEFER_CONFIG, tmp_path / "b") == by_epoch
    deferred = _with_extras(run, by_epoch, _DEFER_CONFIG)
    assert [deferred[k] for k in _EXTRA_KEYS] == [inline[k] for k in _EXTRA_KEYS]
    assert list(deferred) == list(inline)  # the record's fields in the same order
    extras = ("test_acc_recalibrated", "test_acc_batch_stats")
    assert [[r[k] for k in extras] for r in deferred["history"]] == [
        [r[k] for k in extras] for r in inline["history"]
    ]


def test_a_serial_resume_evaluates_the_epochs_a_parallel_session_saved(tmp_path: Path) -> None:
    from bnlab.lab.d2l import _run_one
    from bnlab.lab.kit import cpu_threads

    with cpu_threads(1):
        inline, _ = _inline_and_deferred(tmp_path)
        assert not (tmp_path / "b" / "extra_eval.json").exists()  # stopped before evaluating
        resumed = _run_one(
            VARIANTS["bnlab"], 0, _data(), _DEFER_CONFIG, tmp_path / "b", resume=True, on_step=None
        )
    assert [resumed[k] for k in _EXTRA_KEYS] == [inline[k] for k in _EXTRA_KEYS]
    assert [r["test_acc_recalibrated"] for r in resumed["history"]] == [
        r["test_acc_recalibrated"] for r in inline["history"]
    ]
