"""Tests of the BatchNorm benchmark: the suite's steps and a smoke run of the script."""

from __future__ import annotations

import importlib.util
import json
import resource
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bnlab.bench.batchnorm import (
    fraction_of_bound,
    make_modules,
    make_step,
    measure_bandwidth,
    peak_rss_growth,
    run_case,
    step_bytes,
)

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
    result = run_case((8, 3, 4, 4), mode, repeats=2, warmup=0, target_ms=0.1, measure_memory=True)
    variants = {"ours", "ours-fast", "ours-function", "native", "textbook"}
    assert set(result["timings"]) == variants
    assert set(result["minor_faults_per_call"]) == variants
    assert set(result["peak_rss_growth_bytes"]) == variants
    assert all(diff < 1e-4 for diff in result["max_abs_diff_vs_native"].values())


def test_byte_model_and_bound() -> None:
    assert step_bytes((8, 3, 4, 4), "train") == 5 * 384 * 4
    assert step_bytes((8, 3), "eval", itemsize=8) == 2 * 24 * 8
    # 1 GB at 10 GB/s takes 100 ms: a 200 ms step reaches half the bound.
    assert fraction_of_bound(10**9, 10.0, 200.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"^step_bytes: mode must be one of train, eval, got 'x'$"):
        step_bytes((8, 3), "x")


def test_bandwidth_and_peak_memory_helpers() -> None:
    bandwidth = measure_bandwidth(nbytes=1 << 20, repeats=2)
    assert bandwidth["copy_gb_per_s"] > 0
    assert bandwidth["read_gb_per_s"] > 0
    grown = peak_rss_growth(lambda: torch.ones(16 << 20, dtype=torch.uint8).sum())
    if grown is not None:  # Linux: a fresh 16 MiB tensor shows in the resident set
        assert grown >= 8 << 20


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
    # CPU time of the child, not wall time: the check must hold on a loaded machine.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--shapes", "4x3x5x5", "--repeats", "2"),
            *("--warmup", "1", "--target-ms", "0.5", "--threads", "1", "--out", str(tmp_path)),
            *("--bandwidth-mib", "4", "--no-memory"),  # no fresh child processes
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 10
    (path,) = tmp_path.glob("bench_batchnorm_*.json")
    data = json.loads(path.read_text())
    assert data["config"]["shapes"] == [[4, 3, 5, 5]]
    assert data["config"]["threads"] == 1
    assert data["environment"]["torch"] == torch.__version__
    assert "allocator_and_thread_env" in data["environment"]
    rows = {(r["mode"], r["variant"]): r for r in data["results"]}
    variants = ("ours", "ours-fast", "ours-function", "native", "textbook")
    assert set(rows) == {(m, v) for m in ("train", "eval") for v in variants}
    for row in rows.values():
        assert row["repeats"] == 2
        assert row["median_time_ms"] > 0
        assert len(row["samples_time_ms"]) == 2
    assert len(data["ratios_of_medians"]) == 2
    assert data["bandwidth"]["start"]["copy_gb_per_s"] > 0
    assert {r["mode"] for r in data["bandwidth_bound"]} == {"train", "eval"}
    assert "compulsory bytes" in data["config"]["byte_model"]
    assert "available" in data["fast_path"]
    assert data["peak_rss_fresh_process"] == []
    for line in ("ours/native", "ours-fast/native", "ours-function/native", "4x3x5x5"):
        assert line in done.stdout
