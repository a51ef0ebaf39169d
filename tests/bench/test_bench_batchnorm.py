"""Tests of the BatchNorm benchmark: the suite's steps and a smoke run of the script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bnlab.bench.batchnorm import make_modules, make_step, run_case

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_batchnorm.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_batchnorm", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ndim", [2, 4])
def test_train_step_resets_grads_and_updates_running_stats(ndim: int) -> None:
    shape = (4, 3) if ndim == 2 else (4, 3, 2, 2)
    x = torch.randn(shape)
    grad_y = torch.randn(shape)
    for name, module in make_modules(3, ndim).items():
        mean_name = "moving_mean" if name == "textbook" else "running_mean"
        mean = getattr(module, mean_name).clone()
        step = make_step(module, x, grad_y, "train")
        step()
        assert not torch.equal(getattr(module, mean_name), mean), name
        first = x.grad.clone()
        step()
        # Reset before each step: the grad is the same, not accumulated.
        torch.testing.assert_close(x.grad, first, msg=name)
        assert module.training


def test_eval_step_records_no_graph() -> None:
    x = torch.randn(4, 3)
    for module in make_modules(3, 2).values():
        make_step(module, x, x, "eval")()
        assert not module.training
    assert x.grad is None


def test_make_errors() -> None:
    with pytest.raises(ValueError, match=r"^make_modules: ndim must be 2 .* got 3$"):
        make_modules(3, 3)
    with pytest.raises(
        ValueError, match=r"^make_step: mode must be one of train, eval, got 'test'$"
    ):
        make_step(torch.nn.Identity(), torch.ones(1), torch.ones(1), "test")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_run_case_variants_agree(mode: str) -> None:
    result = run_case((8, 3, 4, 4), mode, repeats=2, warmup=0, target_ms=0.1)
    assert set(result["timings"]) == {"ours", "native", "textbook"}
    assert all(diff < 1e-4 for diff in result["max_abs_diff_vs_native"].values())


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _load_script().main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--repeats", "--threads", "--shapes", "--modes", "--warmup"):
        assert option in out


@pytest.mark.parametrize("bad", ["256", "4x3x5", "ax3", "0x3", "1x3"])
def test_bad_shapes_are_rejected(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load_script().main(["--shapes", bad])
    assert "--shapes" in capsys.readouterr().err


def test_smoke_run_writes_json(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--shapes", "4x3x5x5", "--repeats", "2"),
            *("--warmup", "1", "--target-ms", "0.5", "--threads", "1", "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - start < 10
    (path,) = tmp_path.glob("bench_batchnorm_*.json")
    data = json.loads(path.read_text())
    assert data["config"]["shapes"] == [[4, 3, 5, 5]]
    assert data["config"]["threads"] == 1
    assert data["environment"]["torch"] == torch.__version__
    assert "allocator_and_thread_env" in data["environment"]
    rows = {(r["mode"], r["variant"]): r for r in data["results"]}
    assert set(rows) == {(m, v) for m in ("train", "eval") for v in ("ours", "native", "textbook")}
    for row in rows.values():
        assert row["repeats"] == 2
        assert row["median_time_ms"] > 0
        assert len(row["samples_time_ms"]) == 2
    assert len(data["ratios_of_medians"]) == 2
    for line in ("ours/native", "textbook/native", "4x3x5x5"):
        assert line in done.stdout
