"""A run killed with SIGKILL anywhere resumes to the numbers and weights of an unbroken run.

Each run is a forked child process (no interpreter start-up per run). Kill points are
injected deterministically by patching, inside the child only, the file writers a run
uses: the child SIGKILLs itself

- ``step``: after the k-th optimizer step (mid-epoch, state not saved);
- ``torn``: halfway through the bytes of the k-th ``atomic_write`` (the temporary file
  is torn; the destination must stay whole);
- ``rename``: after the k-th ``atomic_write``'s temporary file is complete, before its
  rename;
- ``append``: halfway through the k-th line appended to ``metrics.jsonl``.

The atomic writes are, in order: the emptied metrics log, the checkpoint of each epoch,
then ``results.json`` (the CLI's final write). After every kill the folder is checked
(each checkpoint loads, ``metrics.jsonl`` parses up to a possibly torn last line,
``results.json`` is absent or whole), the run is resumed (``resume=True`` when a
checkpoint exists, else started again) and its history, final weights and results must
equal the unbroken run's, timings aside. Every kill point of the run is tried (19).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.train.run_dir as run_dir_module
from bnlab import models
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import fake_images_labels
from bnlab.train import TIMING_KEYS, TrainConfig, fit, load_checkpoint, read_jsonl
from bnlab.train import io as train_io

# 48 samples in batches of 16: 3 steps per epoch, 6 in all; a step record every 2 steps.
CONFIG = TrainConfig(lr=0.1, epochs=2, batch_size=16, log_every_steps=2)
STEPS, APPENDS, WRITES = 6, 5, 4  # optimizer steps, metrics lines, atomic writes
ALL_POINTS = (
    [("step", k) for k in range(1, STEPS + 1)]
    + [("append", k) for k in range(1, APPENDS + 1)]
    + [("torn", k) for k in range(1, WRITES + 1)]
    + [("rename", k) for k in range(1, WRITES + 1)]
)
POINTS = ALL_POINTS
SURVIVED: list[str] = []


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(kind: str, k: int) -> Callable[[Any], None] | None:
    """Patch this (child) process so that it SIGKILLs itself at the kill point."""
    calls = {"n": 0}
    if kind in ("torn", "rename"):
        real_write = train_io.atomic_write

        def atomic_write(path: Any, write: Callable[[Any], None]) -> Path:
            calls["n"] += 1
            if calls["n"] != k:
                return real_write(path, write)
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()

            def killing(f: Any) -> None:
                f.write(data if kind == "rename" else data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()

            return real_write(path, killing)

        train_io.atomic_write = atomic_write  # save_checkpoint/write_json look it up here
        return None
    if kind == "append":
        real_append = run_dir_module.append_jsonl

        def append_jsonl(path: Any, record: Any) -> None:
            calls["n"] += 1
            if calls["n"] != k:
                return real_append(path, record)
            line = json.dumps(dict(record)) + "\n"
            with open(path, "a", encoding="utf-8") as f:
                f.write(line[: len(line) // 2])
                f.flush()
                os.fsync(f.fileno())
            _die()

        run_dir_module.append_jsonl = append_jsonl  # RunDir.append_metrics looks it up here
        return None

    def on_step(info: Any) -> None:
        if info.step == k:
            _die()

    return on_step


def _train(run_dir: Path, resume: bool, on_step: Callable[[Any], None] | None) -> None:
    """One run as the CLI does it: fit, then results.json and the final weights."""
    x, y = fake_images_labels(48, seed=0)
    xt, yt = fake_images_labels(16, seed=1)
    train = DeviceLoader(x, y.long(), 16, shuffle=True, seed=0)
    test = DeviceLoader(xt, yt.long(), 16, shuffle=False)
    model = models.create("mlp", hidden=(16,))
    result = fit(model, train, test, CONFIG, run_dir=run_dir, resume=resume, on_step=on_step)
    train_io.write_json(run_dir / "results.json", result.to_dict())
    torch.save(model.state_dict(), run_dir.parent / f"{run_dir.name}-weights.pt")


def _in_child(run_dir: Path, *, resume: bool = False, kill: tuple[str, int] | None = None) -> int:
    """Run ``_train`` in a forked child; its wait status (a signal number, negated)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            torch.set_num_threads(1)
            on_step = _install_kill(*kill) if kill is not None else None
            _train(run_dir, resume, on_step)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the run in {run_dir} hung")
        time.sleep(0.01)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _check_whole(run_dir: Path) -> None:
    """No file a reader would open is half-written after a kill."""
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        if (run_dir / name).exists():
            load_checkpoint(run_dir / name)
    if (run_dir / "metrics.jsonl").exists():
        read_jsonl(run_dir / "metrics.jsonl")  # a torn *last* line is allowed, and skipped
    if (run_dir / "results.json").exists():
        json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("kill") / "reference"
    run_dir.mkdir()
    # In this process: it also warms up torch's lazy imports and kernels before the
    # forks, which then cost milliseconds instead of seconds each.
    _train(run_dir, False, None)
    results = json.loads((run_dir / "results.json").read_text())
    weights = torch.load(run_dir.parent / "reference-weights.pt", weights_only=True)
    metrics = _without_timings(read_jsonl(run_dir / "metrics.jsonl"))
    return {"results": results, "weights": weights, "metrics": metrics}


@pytest.mark.parametrize(("kind", "k"), POINTS, ids=[f"{kind}-{k}" for kind, k in POINTS])
def test_sigkill_then_resume_equals_an_unbroken_run(
    tmp_path: Path, reference: dict[str, Any], kind: str, k: int
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    status = _in_child(run_dir, kill=(kind, k))
    assert status == -signal.SIGKILL, f"the kill point {kind}-{k} was not reached ({status})"
    _check_whole(run_dir)
    resume = (run_dir / "checkpoint.pt").exists()
    assert _in_child(run_dir, resume=resume) == 0
    results = json.loads((run_dir / "results.json").read_text())
    want = reference["results"]
    assert _without_timings(results["history"]) == _without_timings(want["history"])
    assert _without_timings(results["steps"]) == _without_timings(want["steps"])
    assert results["final"] == want["final"]
    weights = torch.load(tmp_path / "run-weights.pt", weights_only=True)
    for key, value in reference["weights"].items():
        assert torch.equal(weights[key], value), key
    metrics = _without_timings(read_jsonl(run_dir / "metrics.jsonl"))
    assert metrics == reference["metrics"], "metrics.jsonl differs (duplicated or lost records)"
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    SURVIVED.append(f"{kind}-{k}")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "bnlab-kill-points.json"
    out.write_text(json.dumps({"survived": len(SURVIVED), "points": SURVIVED}) + "\n")
