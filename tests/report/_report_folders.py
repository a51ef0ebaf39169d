"""Small, hand-written results folders of every kind bnlab writes, for the report tests.

Each ``make_*`` writes the files that the matching command writes (only the keys the
report reads, with the real names and shapes) and returns the folder.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

ENV = {
    "python": "3.11.9",
    "platform": "Linux-6.1-x86_64",
    "cpu_model": "Test CPU 3000",
    "logical_cpus": 2,
    "torch": "2.13.0+cpu",
    "torch_num_threads": 2,
    "cuda_available": False,
    "git_revision": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": False,
    "load_average_1_5_15_min": [0.5, 0.4, 0.3],
}


def tiny_png(width: int = 8, height: int = 6) -> bytes:
    """A valid RGB PNG with a gradient (so a screenshot of it is not blank)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 30 % 256, y * 40 % 256, 120)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


def make_train(folder: Path, *, epochs: int = 3, env: dict[str, Any] | None = None) -> Path:
    """What ``bnlab train`` writes."""
    config = {
        "command": "train",
        "model": "lenet",
        "norm": "bnlab",
        "model_kwargs": {},
        "train": {
            "lr": 1.0,
            "epochs": epochs,
            "batch_size": 256,
            "seed": 0,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "device": "cpu",
            "log_every_steps": 0,
            "init": "xavier_uniform",
        },
        "data": {
            "dataset": "fashion-mnist",
            "data_dir": "/data",
            "limit_train": 512,
            "limit_test": None,
            "train_samples": 512,
            "test_samples": 10000,
        },
    }
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_acc": 0.5 + 0.1 * e,
            "test_acc": 0.45 + 0.1 * e,
            "images_per_s": 1000.0,
        }
        for e in range(1, epochs + 1)
    ]
    _json(folder / "config.json", config)
    _json(folder / "environment.json", {**ENV, "device": "cpu", "threads": 2})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (folder / "checkpoint.pt").write_bytes(b"not read by the report")
    _json(
        folder / "results.json",
        {
            "final": history[-1],
            "wall_time_s": 3.5,
            "train_time_s": 2.5,
            "images_per_s": 1000.0,
            "epochs_run": epochs,
            "history": history,
            "config": config,
            "model": {"name": "lenet", "norm": "bnlab", "num_parameters": 61706},
        },
    )
    (folder / "curves.png").write_bytes(tiny_png(40, 20))
    return folder


def _stats(mean: float) -> dict[str, Any]:
    return {"n": 2, "mean": mean, "std": 0.01, "min": mean - 0.01, "max": mean + 0.01}


def make_d2l(folder: Path) -> Path:
    """What ``bnlab d2l`` writes (two variants, two seeds, three verdicts)."""
    variants = {
        name: {
            "label": name,
            "lr": lr,
            "seeds": [0, 1],
            "metrics": {
                "train_loss": _stats(0.3),
                "train_acc": _stats(0.89),
                "test_acc": _stats(0.85),
                "test_acc_recalibrated": _stats(0.86),
                "test_acc_batch_stats": _stats(0.84),
                "images_per_s": _stats(5000.0),
                "wall_time_s": _stats(30.0),
            },
            "book": {"train_loss": 0.27, "train_acc": 0.9, "test_acc": 0.8},
        }
        for name, lr in (("none", 0.9), ("bnlab", 1.0))
    }
    variants["bnlab"]["first_bn_gamma"] = [1.0, 1.5]
    variants["bnlab"]["first_bn_beta"] = [0.0, -0.5]
    verdicts = [
        {"claim": "BN speeds up training", "holds": True, "measured": "train loss 0.3 vs 0.4"},
        {"claim": "BN makes eval unstable", "holds": False, "measured": "range 0.01"},
        {"claim": "BN helps test accuracy", "holds": None, "measured": "difference within noise"},
    ]
    argv = {
        "command": "d2l",
        "out": str(folder),
        "data_dir": None,
        "epochs": 2,
        "seeds": 2,
        "variants": ["none", "bnlab"],
        "batch_size": 256,
        "recalibrate_batches": 40,
        "device": "cpu",
        "threads": None,
        "limit_train": 6000,
        "limit_test": None,
        "resume": False,
    }
    _json(folder / "config.json", {"command": "d2l", "argv": argv, "d2l": {"epochs": 2}})
    _json(folder / "environment.json", {**ENV, "device": "cpu", "threads": 2})
    _json(
        folder / "summary.json",
        {"config": {"epochs": 2, "batch_size": 256}, "variants": variants, "verdicts": verdicts},
    )
    (folder / "d2l_curves.png").write_bytes(tiny_png(60, 20))
    (folder / "runs" / "none" / "seed0").mkdir(parents=True)
    return folder


def make_lab(
    folder: Path,
    *,
    figures: tuple[str, ...] = ("drift.png",),
    environment_file: str = "environment.json",
) -> Path:
    """What ``bnlab lab NAME`` writes (the results.json schema of bnlab.lab.experiment);
    ``environment_file="env.json"`` makes a folder of the layout before the run folder."""
    _json(folder / "config.json", {"experiment": "toy", "quick": True, "config": {}, "command": ""})
    _json(folder / environment_file, {**ENV, "device": "cpu", "threads": 2})
    for name in figures:
        (folder / name).write_bytes(tiny_png(30, 30))
    _json(
        folder / "results.json",
        {
            "experiment": "toy",
            "title": "A toy experiment",
            "summary": "a exceeds b by the shift",
            "command": "bnlab lab toy --quick --out runs/toy",
            "quick": True,
            "config": {"size": 50},
            "elapsed_s": 1.25,
            "tables": [
                {
                    "title": "per arch",
                    "columns": ["arch", "a", "b"],
                    "rows": [["lenet", 1.5, 0.5], ["mlp", 2.5, None]],
                }
            ],
            "verdicts": [{"claim": "a > b", "holds": True, "measured": "1.0 +- 0.1"}],
            "figures": [{"file": name, "caption": f"figure {name}"} for name in figures],
            "notes": ["quick run: few seeds"],
            "raw": {},
        },
    )
    return folder


CLAIMS = [
    {
        "claim": "BN reduces internal covariate shift",
        "source": "ioffe2015.md",
        "experiment": "ics",
        "evidence": {"quick": True, "drift_ratio": 0.42},
        "rule": "drift with BN < drift without in every arch",
        "verdict": "not supported",
    },
    {
        "claim": "BN allows higher learning rates",
        "source": "ioffe2015.md",
        "experiment": "lr_sweep",
        "evidence": {},
        "rule": "largest stable lr with BN > without",
        "verdict": "not measured",
    },
    {
        "claim": "BN smooths the loss landscape",
        "source": "santurkar2018.md",
        "experiment": "smoothness",
        "evidence": {"ratio": 0.5},
        "rule": "gradient predictiveness higher with BN",
        "verdict": "supported",
    },
]


def make_claims(folder: Path) -> Path:
    """What ``bnlab lab claims ... --out DIR`` writes."""
    _json(folder / "claims.json", CLAIMS)
    return folder


def _timing(median: float) -> dict[str, Any]:
    return {
        "median_time_ms": median,
        "q1_time_ms": median * 0.9,
        "q3_time_ms": median * 1.1,
        "iqr_time_ms": median * 0.2,
        "min_time_ms": median * 0.8,
        "max_time_ms": median * 1.3,
        "samples_time_ms": [median] * 5,
        "calls_per_sample": 10,
        "repeats": 5,
    }


def make_bench(folder: Path) -> Path:
    """Two runs of the family benchmark (the newer one has 3 layers) and one batchnorm run."""
    folder.mkdir(parents=True, exist_ok=True)
    for stamp, layers in (("20260101T000000Z", 2), ("20260102T000000Z", 3)):
        rows = [
            {
                "layer": f"layer{i}",
                "shape": [8, 4, 6, 6],
                "max_abs_diff": 1e-7,
                "ours": _timing(1.0 + i),
                "torch": _timing(1.0),
                "ours_over_torch": 1.0 + i,
            }
            for i in range(layers)
        ]
        _json(
            folder / f"bench_family_{stamp}.json",
            {
                "benchmark": "family",
                "schema_version": 1,
                "config": {
                    "threads": 1,
                    "argv": ["--out", str(folder), "--repeats", "2"],
                    "script": "bench_family.py",
                    "started_utc": f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T00:00:00+00:00",
                },
                "environment": ENV,
                "results": rows,
            },
        )
    _json(
        folder / "bench_batchnorm_20260101T000000Z.json",
        {
            "benchmark": "batchnorm",
            "schema_version": 1,
            "config": {"threads": 1, "argv": [], "script": "bench_batchnorm.py"},
            "environment": ENV,
            "results": [
                {"shape": [8, 4], "mode": "train", "variant": v, **_timing(t)}
                for v, t in (("ours", 2.0), ("native", 1.0))
            ],
            "ratios_of_medians": [
                {
                    "shape": [8, 4],
                    "mode": "train",
                    "ours_over_native": 2.0,
                    "textbook_over_native": 3.0,
                }
            ],
        },
    )
    return folder


def make_all(root: Path) -> dict[str, Path]:
    """One folder of each kind under ``root``."""
    return {
        "train": make_train(root / "train"),
        "d2l": make_d2l(root / "d2l"),
        "lab": make_lab(root / "lab"),
        "claims": make_claims(root / "claims"),
        "bench": make_bench(root / "bench"),
    }
