"""Each reader recognises its kind of results folder by its files and reads what the
page shows; missing and malformed files become warnings that name the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bnlab.report import collect_results
from bnlab.report.readers import bench, claims, d2l, lab, recognise, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report_folders import make_all, make_bench, make_claims, make_d2l, make_lab, make_train


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    return make_all(tmp_path)


@pytest.mark.parametrize(
    ("kind", "reader"),
    [("train", train), ("d2l", d2l), ("lab", lab), ("claims", claims), ("bench", bench)],
)
def test_each_folder_recognised_by_its_reader_only(
    folders: dict[str, Path], kind: str, reader: object
) -> None:
    assert recognise(folders[kind]) == [reader]


def test_unrecognised_and_missing_folders_are_skipped_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    good = make_lab(tmp_path / "lab")
    results, warnings = collect_results(
        [tmp_path / "empty", tmp_path / "other", tmp_path / "absent", good]
    )
    assert [r.kind for r in results] == ["lab"]
    assert warnings == [
        f"skipped {tmp_path / 'empty'}: not a bnlab results folder (expected the files of "
        "bnlab train, d2l, lab, lab claims or a benchmark's bench_*.json)",
        f"skipped {tmp_path / 'other'}: not a bnlab results folder (expected the files of "
        "bnlab train, d2l, lab, lab claims or a benchmark's bench_*.json)",
        f"skipped {tmp_path / 'absent'}: no such file or folder",
    ]


def test_train_run(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "run", epochs=3)
    [result], warnings = collect_results([folder])
    assert warnings == []
    assert result.kind == "train"
    assert result.title == "Training run: lenet + bnlab (run)"
    per_epoch = next(t for t in result.tables if t.title == "per epoch")
    assert [row[0] for row in per_epoch.rows] == [1, 2, 3]
    assert result.command == (
        "bnlab train --model lenet --norm bnlab --lr 1.0 --epochs 3 --batch-size 256 --seed 0 "
        "--momentum 0.0 --weight-decay 0.0 --device cpu --log-every-steps 0 "
        f"--init xavier_uniform --limit-train 512 --out {folder}"
    )
    assert [f.name for f in result.figures] == ["curves.png"]
    assert result.figures[0].data_uri.startswith("data:image/png;base64,iVBORw0KGgo")
    assert result.environment is not None
    assert result.environment["threads"] == 2


def test_train_mlp_command_keeps_hidden_and_position(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "mlp")
    config = json.loads((folder / "config.json").read_text())
    config.update(model="mlp", model_kwargs={"hidden": [256, 128], "norm_position": "before"})
    (folder / "config.json").write_text(json.dumps(config))
    [result], _ = collect_results([folder])
    assert "--model mlp --norm bnlab --hidden 256,128 --norm-position before" in result.command


def test_train_preset_and_resize_in_the_command(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "r18")
    config = json.loads((folder / "config.json").read_text())
    config.update(preset="d2l-resnet18", model="resnet18", model_kwargs={"in_channels": 1})
    config["data"]["resize"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    [result], _ = collect_results([folder])
    assert result.command.startswith(
        "bnlab train --preset d2l-resnet18 --model resnet18 --norm bnlab --lr 1.0"
    )
    assert "--resize 96 --limit-train 512 --out" in result.command


def test_train_distributed_run_in_the_command(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "ddp")
    config = json.loads((folder / "config.json").read_text())
    config["distributed"] = {"world_size": 2, "backend": "gloo", "sync_bn": True}
    (folder / "config.json").write_text(json.dumps(config))
    [result], _ = collect_results([folder])
    assert "--nproc 2 --sync-bn --out" in result.command


def test_train_malformed_results_names_the_file(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "broken")
    (folder / "results.json").write_text("{not json")
    results, warnings = collect_results([folder, make_lab(tmp_path / "lab")])
    assert [r.kind for r in results] == ["lab"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"skipped {folder} (train results): {folder / 'results.json'}: not valid JSON ("
    )


def test_train_unfinished_run_names_the_missing_file(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "unfinished")
    (folder / "results.json").unlink()
    results, warnings = collect_results([folder])
    assert results == []
    assert warnings == [
        f"skipped {folder} (train results): {folder / 'results.json'}: file not found"
    ]


def test_train_missing_figure_is_a_warning_and_the_rest_stays(tmp_path: Path) -> None:
    folder = make_train(tmp_path / "nofig")
    (folder / "curves.png").write_bytes(b"GIF89a not a png")
    [result], warnings = collect_results([folder])
    assert result.figures == []
    assert len(result.tables) == 2
    assert warnings == [
        f"{folder / 'curves.png'}: not a PNG or SVG image (only those are embedded)"
    ]


def test_d2l_experiment(tmp_path: Path) -> None:
    folder = make_d2l(tmp_path / "d2l")
    [result], warnings = collect_results([folder])
    assert warnings == []
    assert result.kind == "d2l"
    main_table, book = result.tables
    assert [row[0] for row in main_table.rows] == ["none", "bnlab"]
    assert main_table.rows[0][3] == "0.300 ± 0.010"  # train loss, 2 seeds
    assert [row[0] for row in book.rows] == ["none", "bnlab"]
    assert [v.holds for v in result.verdicts] == [True, False, None]
    assert result.command == (
        f"bnlab d2l --out {folder} --epochs 2 --seeds 2 --variants none bnlab --batch-size 256 "
        "--recalibrate-batches 40 --device cpu --limit-train 6000"
    )
    assert result.notes == ["bnlab: first BN layer gamma = [1.000, 1.500], beta = [0.000, -0.500]"]
    assert [f.name for f in result.figures] == ["d2l_curves.png"]


def test_lab_experiment(tmp_path: Path) -> None:
    folder = make_lab(tmp_path / "lab", figures=("a.png", "b.png"))
    [result], warnings = collect_results([folder])
    assert warnings == []
    assert result.title == "A toy experiment (lab)"
    assert result.command == "bnlab lab toy --quick --out runs/toy"
    assert ("configuration", "quick (small; the full run may differ)") in result.facts
    [table] = result.tables
    assert table.columns == ("arch", "a", "b")
    assert table.rows == (("lenet", 1.5, 0.5), ("mlp", 2.5, None))
    assert [(f.name, f.caption) for f in result.figures] == [
        ("a.png", "figure a.png"),
        ("b.png", "figure b.png"),
    ]
    assert result.notes == ["quick run: few seeds"]


@pytest.mark.parametrize("environment_file", ["environment.json", "env.json"])
def test_lab_environment_of_the_run_folder_and_of_older_folders(
    tmp_path: Path, environment_file: str
) -> None:
    folder = make_lab(tmp_path / "lab", environment_file=environment_file)
    assert recognise(folder) == [lab]
    [result], warnings = collect_results([folder])
    assert warnings == []
    assert result.environment is not None
    assert result.environment["threads"] == 2


def test_lab_without_environment_warns_naming_the_new_file(tmp_path: Path) -> None:
    folder = make_lab(tmp_path / "lab")
    (folder / "environment.json").unlink()
    [result], warnings = collect_results([folder])
    assert result.environment is None
    assert warnings == [f"{folder / 'environment.json'}: file not found"]


def test_the_report_knows_the_run_folder_names() -> None:
    """The readers repeat bnlab.train.run_dir's file names (the report may not import train)."""
    from bnlab.report.readers import _layout
    from bnlab.train import run_dir

    for name in (
        "CONFIG_NAME",
        "ENVIRONMENT_NAME",
        "METRICS_NAME",
        "CHECKPOINT_NAME",
        "RESULTS_NAME",
        "LEGACY_ENVIRONMENT_NAME",
    ):
        assert getattr(_layout, name) == getattr(run_dir, name), name


def test_lab_missing_figure_and_bad_row_are_warnings(tmp_path: Path) -> None:
    folder = make_lab(tmp_path / "lab", figures=("a.png", "b.png"))
    (folder / "b.png").unlink()
    results = json.loads((folder / "results.json").read_text())
    results["tables"][0]["rows"].append(["too", "short"])
    results["figures"].append({"file": "../../etc/passwd.png", "caption": "outside"})
    (folder / "results.json").write_text(json.dumps(results))
    [result], warnings = collect_results([folder])
    assert [f.name for f in result.figures] == ["a.png"]
    assert len(result.tables[0].rows) == 2
    assert warnings == [
        f"{folder / 'results.json'}: table 'per arch': a row that does not fit its columns is left out",
        f"{folder / 'b.png'}: figure file not found",
        f"{folder / 'passwd.png'}: figure file not found",
    ]


def test_claims_table_list_and_wrapped_forms(tmp_path: Path) -> None:
    folder = make_claims(tmp_path / "claims")
    [result], warnings = collect_results([folder])
    assert warnings == []
    assert [c["verdict"] for c in result.claims or []] == [
        "not supported",
        "not measured",
        "supported",
    ]
    rows = json.loads((folder / "claims.json").read_text())
    (folder / "claims.json").write_text(json.dumps({"claims": [*rows, {"oops": 1}]}))
    [result], warnings = collect_results([folder])
    assert len(result.claims or []) == 3
    assert warnings == [
        f"{folder / 'claims.json'}: entry 3 is not a claim (no 'claim' key) and is left out"
    ]


def test_benchmarks_newest_run_per_benchmark(tmp_path: Path) -> None:
    folder = make_bench(tmp_path / "bench")
    results, warnings = collect_results([folder])
    assert warnings == []
    batchnorm, family = results
    assert family.title == "Benchmark: family (bench_family_20260102T000000Z.json)"
    assert ("older runs in the folder", "1 (not shown)") in family.facts
    [rows] = family.tables
    assert rows.columns == (
        "layer",
        "shape",
        "max_abs_diff",
        "ours: median ms (IQR)",
        "torch: median ms (IQR)",
        "ours_over_torch",
    )
    assert len(rows.rows) == 3
    assert rows.rows[1][:2] == ("layer1", "8x4x6x6")
    assert rows.rows[1][3] == "2 (0.4)"
    assert family.command == f"python benchmarks/bench_family.py --out {folder} --repeats 2"
    timings, ratios = batchnorm.tables
    assert timings.columns == ("shape", "mode", "variant", "median_time_ms", "iqr_time_ms")
    assert ratios.title == "ratios of medians"
    assert ratios.rows == (("8x4", "train", 2.0, 3.0),)


def test_benchmark_of_unknown_kind_gets_a_generic_table(tmp_path: Path) -> None:
    path = tmp_path / "bench_newthing_20260101T000000Z.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "newthing",
                "config": {"threads": 4},
                "results": {"fast": {"time_s": 1.0}, "slow": {"time_s": 3.0}},
                "slow_over_fast_ratio": 3.0,
                "max_abs_diff": 0.0,
            }
        )
    )
    [result], warnings = collect_results([path])  # a file is read as well as a folder
    assert warnings == []
    [table] = result.tables
    assert table.columns == ("variant", "time_s")
    assert table.rows == (("fast", 1.0), ("slow", 3.0))
    assert ("slow over fast ratio", "3") in result.facts
    assert result.command == "python benchmarks/bench_newthing.py --threads 4"


def test_malformed_benchmark_file_is_named_and_others_read(tmp_path: Path) -> None:
    folder = make_bench(tmp_path / "bench")
    (folder / "bench_loader_20260101T000000Z.json").write_text("[1, 2]")
    results, warnings = collect_results([folder])
    assert len(results) == 2
    assert warnings == [
        f"{folder / 'bench_loader_20260101T000000Z.json'}: expected a JSON object, got list"
    ]
