"""``benchmarks/bench_gpu.py`` in its CPU dry run: the script's code paths stay working
where CI has no GPU (the GPU numbers come from ``benchmarks/gpu_checks.sh``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_variant_and_ratio(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_gpu.py"),
            "--device",
            "cpu",
            "--shapes",
            "4x3x2x2",
            "8x5",
            "--dtypes",
            "float32",
            "--repeats",
            "1",
            "--number",
            "1",
            "--warmup",
            "0",
            "--bandwidth-mib",
            "4",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("bench_gpu_*.json")
    record = json.loads(path.read_text())
    assert record["copy_bandwidth_gb_per_s"] > 0
    cases = {(tuple(r["shape"]), r["mode"]) for r in record["runs"]}
    assert cases == {
        ((4, 3, 2, 2), "train"),
        ((4, 3, 2, 2), "eval"),
        ((8, 5), "train"),
        ((8, 5), "eval"),
    }
    for row in record["runs"]:
        assert row["max_abs_diff_ours_vs_native"] < 1e-5
        names = set(row["variants"])
        assert {"ours", "ours-ref", "native", "textbook"} <= names
        if row["mode"] == "train":
            assert "aten-kernels" in names
        for timing in row["variants"].values():
            assert timing["median_time_ms"] > 0
            assert timing["ratio_to_native"] > 0
    assert "BatchNorm on cpu (dry run)" in proc.stdout
    assert len(record["summary"]) == 4
    assert all(row["ours/native"] > 0 for row in record["summary"])
