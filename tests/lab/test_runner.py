"""The grid runner: cells in order, one stored unit per cell, resume, tables, grid_lab."""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bnlab.lab import experiment as ex
from bnlab.lab.runner import (
    Bench,
    Cell,
    Grid,
    GridRun,
    cell_key,
    grid_lab,
    layer_table,
    run_grid,
    seed_range,
    summary_table,
)


def test_cells_follow_the_order_and_the_filter() -> None:
    grid = Grid(variants=("none", "bn"), seeds=2, settings=("a", "b"))
    assert [(c.setting, c.variant, c.seed) for c in grid.cells()] == [
        ("a", "none", 0),
        ("a", "none", 1),
        ("a", "bn", 0),
        ("a", "bn", 1),
        ("b", "none", 0),
        ("b", "none", 1),
        ("b", "bn", 0),
        ("b", "bn", 1),
    ]
    seed_first = Grid(
        ("none", "bn"),
        (3, 5),
        settings=(8, 32),
        order=("seed", "variant", "setting"),
        include=lambda c: not (c.variant == "bn" and c.setting == 8),
    )
    assert [(c.seed, c.variant, c.setting) for c in seed_first.cells()] == [
        (3, "none", 8),
        (3, "none", 32),
        (3, "bn", 32),
        (5, "none", 8),
        (5, "none", 32),
        (5, "bn", 32),
    ]
    assert cell_key(Cell("lenet", "bn", 2)) == "lenet-bn-seed2"
    assert cell_key(Cell("", "train-test", 0)) == "train-test-seed0"


def test_grid_errors_show_the_value() -> None:
    with pytest.raises(ValueError, match="Grid: no variants"):
        Grid((), 2)
    with pytest.raises(ValueError, match=r"Grid: no seeds, got \(\)"):
        Grid(("a",), ())
    with pytest.raises(ValueError, match="Grid: no settings"):
        Grid(("a",), 1, settings=())
    with pytest.raises(ValueError, match=r"order must be a permutation of .* got \('seed',\)"):
        Grid(("a",), 1, order=("seed",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="GridRun: 2 cells but 1 results"):
        GridRun([Cell("", "a", 0), Cell("", "a", 1)], [{}])


def _measure(calls: list[str], *, fail_at: str | None = None):
    def measure(cell: Cell, bench: Bench) -> dict:
        key = cell_key(cell)
        calls.append(key)
        if key == fail_at:
            raise KeyboardInterrupt  # as if the run were killed here
        with ex.seeded(cell.seed) as gen:
            x = torch.randn(50, generator=gen)
        shift = {"none": 0.0, "bn": 1.0}[cell.variant]
        bench.advance(2)
        return {"metrics": {"m": float(x.mean()) + shift, "n": len(bench.data)}, "layers": ["l1"]}

    return measure


GRID = Grid(("none", "bn"), 3, settings=("a", "b"))


class Bar:
    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def start(self, total: int, description: str) -> None:
        self.total = total

    def advance(self, steps: int = 1) -> None:
        self.done += steps


def test_a_killed_grid_resumed_ends_with_the_numbers_of_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    data = [1, 2, 3]
    whole = run_grid(ex.LabContext(tmp_path / "whole"), GRID, _measure([]), data=data)
    out = tmp_path / "cut"
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_grid(ex.LabContext(out), GRID, _measure(calls, fail_at="b-none-seed1"), data=data)
    assert calls[-1] == "b-none-seed1"
    assert len(list((out / "units").iterdir())) == 7  # the cells before the kill
    again: list[str] = []
    bar = Bar()
    ctx = ex.LabContext(out, progress=bar)
    resumed = run_grid(ctx, GRID, _measure(again), data=data, steps=5, description="grid")
    assert again == ["b-none-seed1", "b-none-seed2", "b-bn-seed0", "b-bn-seed1", "b-bn-seed2"]
    assert ctx.units_reused == 7
    assert resumed.results == whole.results
    assert resumed.cells == whole.cells
    assert (bar.total, bar.done) == (60, 60)  # measured cells are made up to 5 steps
    stored = json.loads((out / "units" / "a-bn-seed2.json").read_text())
    assert stored == {"key": "a-bn-seed2", "value": whole.results[5]}


def test_per_seed_counts_a_cell_without_metrics_as_missing() -> None:
    cells = [Cell("a", "bn", seed) for seed in range(4)]
    results = [{"metrics": {"m": 1.0}}, {"metrics": None}, {"lr": None}, {"metrics": {"m": 4.0}}]
    run = GridRun(cells, results)
    per_seed = run.per_seed(missing={"m": math.nan})
    assert per_seed["a"]["bn"]["m"][::3] == [1.0, 4.0]
    assert all(math.isnan(v) for v in per_seed["a"]["bn"]["m"][1:3])
    with pytest.raises((TypeError, AttributeError, KeyError)):
        run.per_seed()  # without ``missing`` a cell with no metrics is an error


def test_grid_run_views_and_tables(tmp_path: Path) -> None:
    run = run_grid(ex.LabContext(tmp_path), GRID, _measure([]), data=[0])
    assert len(run) == 12
    assert run.settings() == ["a", "b"]
    per_seed = run.per_seed()
    assert list(per_seed) == ["a", "b"]
    assert list(per_seed["a"]) == ["none", "bn"]
    assert per_seed["a"]["bn"]["m"] == pytest.approx([v + 1.0 for v in per_seed["a"]["none"]["m"]])
    assert run.select(setting="b", variant="bn", seed=1) == [run.results[10]]
    curves = run.curves("layers", settings=("a", "c"), variants=("bn", "gone"))
    assert curves == {"a": {"bn": [["l1"]] * 3, "gone": []}, "c": {"bn": [], "gone": []}}
    table = summary_table("t", per_seed, [("mean m", "m")], label=str.upper, missing="-")
    assert table.columns == ["network", "variant", "mean m"]
    assert [row[:2] for row in table.rows] == [
        ["A", "none"],
        ["A", "bn"],
        ["B", "none"],
        ["B", "bn"],
    ]
    assert table.rows[1][2] == ex.mean_std_text(per_seed["a"]["bn"]["m"])
    layers = layer_table(
        "per layer",
        run,
        [("m", lambda r, layer: r["metrics"]["m"]), ("none", lambda r, layer: math.nan)],
        layers=lambda r: r["layers"],
        variants=("bn", "gone"),
        missing="-",
    )
    assert layers.columns == ["network", "variant", "layer", "m", "none"]
    assert layers.rows == [
        ["a", "bn", "l1", ex.mean_std_text(per_seed["a"]["bn"]["m"]), "-"],
        ["b", "bn", "l1", ex.mean_std_text(per_seed["b"]["bn"]["m"]), "-"],
    ]


@dataclass(frozen=True)
class GridConfig:
    seeds: int = 3

    @classmethod
    def quick(cls) -> GridConfig:
        return cls(seeds=2)


def _spec(calls: list[str], fail_at: str | None = None) -> ex.LabSpec:
    measure = _measure(calls, fail_at=fail_at)

    def summarize(config: GridConfig, ctx: ex.LabContext, run: GridRun) -> ex.LabOutcome:
        per_seed = run.per_seed()
        c = ex.compare(per_seed["a"]["bn"]["m"], per_seed["a"]["none"]["m"])
        return ex.LabOutcome(
            tables=[summary_table("m", per_seed, [("m", "m")])],
            verdicts=[ex.Verdict("bn raises m", c.direction == "greater", c.text())],
            raw={"per_seed": per_seed},
        )

    return grid_lab(
        name="grid-test",
        title="A grid",
        summary="m by variant",
        config_type=GridConfig,
        grid=lambda config: Grid(("none", "bn"), config.seeds, settings=("a",)),
        measure=lambda config, cell, bench: measure(cell, bench),
        summarize=summarize,
        prepare=lambda config, data: list(range(config.seeds)),
        needs_data=False,
    )


def test_grid_lab_runs_and_resumes_through_run_lab(tmp_path: Path) -> None:
    config = GridConfig()
    whole = ex.run_lab(_spec([]), config, tmp_path / "whole")
    assert whole["verdicts"][0]["holds"] is True
    assert len(whole["tables"][0]["rows"]) == 2
    assert whole["raw"]["per_seed"]["a"]["none"]["n"] == [3, 3, 3]  # prepare's data
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        ex.run_lab(_spec([], fail_at="a-bn-seed0"), config, out)
    calls: list[str] = []
    resumed = ex.run_lab(_spec(calls), config, out, resume=True)
    assert calls == ["a-bn-seed0", "a-bn-seed1", "a-bn-seed2"]
    assert resumed["units_reused"] == 3
    assert resumed["raw"] == whole["raw"]
    assert resumed["verdicts"] == whole["verdicts"]


def test_grid_lab_needs_data_when_it_says_so(tmp_path: Path) -> None:
    spec = _spec([])
    needy = grid_lab(
        name="needy",
        title="t",
        summary="s",
        config_type=GridConfig,
        grid=lambda config: GRID,
        measure=lambda config, cell, bench: {},
        summarize=lambda config, ctx, run: ex.LabOutcome([], []),
    )
    assert needy.needs_data
    assert not spec.needs_data
    with pytest.raises(ValueError, match="lab needy needs Fashion-MNIST data"):
        needy.run(GridConfig(), ex.LabContext(tmp_path))


def test_grid_lab_takes_the_parts_it_is_not_given_from_the_config_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("toy_grid_lab")
    config_type = type("ToyConfig", (GridConfig,), {"__module__": module.__name__})
    module.grid = lambda config: Grid(("none", "bn"), 2)
    module.measure = lambda config, cell, bench: {
        "metrics": {"m": cell.seed + (cell.variant == "bn")}
    }
    module.summarize = lambda config, ctx, run: ex.LabOutcome([], [], raw=run.per_seed())
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec = grid_lab(name="toy", title="t", summary="s", config_type=config_type, needs_data=False)
    raw = ex.run_lab(spec, config_type(), tmp_path)["raw"]
    assert raw == {"": {"none": {"m": [0, 1]}, "bn": {"m": [1, 2]}}}
    del module.summarize
    message = (
        "grid_lab: ToyConfig's module toy_grid_lab defines no function summarize\\(\\); "
        "define one or pass it to grid_lab"
    )
    with pytest.raises(TypeError, match=message):
        grid_lab(name="toy", title="t", summary="s", config_type=config_type)


def test_seed_range_checks_the_first_seed() -> None:
    assert seed_range("C", 200, 3) == (200, 201, 202)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=f"C: first_seed must be an int >= 0, got {bad!r}"):
            seed_range("C", bad, 3)


def toy_cell(cell: Cell, bench: Bench) -> dict:
    """A module-level measurement (a spawned worker imports it by name): a tiny training
    run whose numbers depend on torch's arithmetic, not only on the seed."""
    with ex.seeded(cell.seed):
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 1),
        )
        x = torch.randn(64, 8) * (1.0 + {"none": 0.0, "bn": 1.0}[cell.variant])
        y = x.sum(1, keepdim=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bench.advance(1)
    return {
        "metrics": {"loss": loss.item(), "n": len(bench.data)},
        "weights": model[0].weight.detach().flatten()[:4].tolist(),
        "threads": torch.get_num_threads(),
    }


def test_cells_in_two_processes_give_the_serial_digits_at_one_thread(tmp_path: Path) -> None:
    from bnlab.lab.kit import cpu_threads

    data = [1, 2, 3]
    with cpu_threads(1):
        serial = run_grid(ex.LabContext(tmp_path / "serial"), GRID, toy_cell, data=data)
    bar = Bar()
    ctx = ex.LabContext(tmp_path / "parallel", progress=bar, workers=2, threads=1)
    parallel = run_grid(ctx, GRID, toy_cell, data=data, steps=7, description="grid")
    assert parallel.cells == serial.cells
    assert parallel.results == serial.results
    assert {r["threads"] for r in parallel.results} == {1}
    assert (bar.total, bar.done) == (84, 84)  # 5 steps reported from workers, 2 made up
    assert ctx.units_reused == 0
    for cell, result in parallel:
        stored = json.loads(
            (tmp_path / "parallel" / "units" / f"{cell_key(cell)}.json").read_text()
        )
        assert stored == {"key": cell_key(cell), "value": result}
    # A resume in parallel computes only the missing cells.
    (tmp_path / "parallel" / "units" / "b-bn-seed1.json").unlink()
    (tmp_path / "parallel" / "units" / "a-none-seed0.json").unlink()
    ctx = ex.LabContext(tmp_path / "parallel", workers=2, threads=1)
    again = run_grid(ctx, GRID, toy_cell, data=data)
    assert again.results == serial.results
    assert ctx.units_reused == 10


def test_a_closure_measurement_runs_in_this_process(tmp_path: Path) -> None:
    calls: list[str] = []
    run = run_grid(ex.LabContext(tmp_path, workers=2), GRID, _measure(calls), data=[0])
    assert calls == [cell_key(c) for c in GRID.cells()]
    assert len(run) == 12


def test_progress_messages_after_their_result_do_not_overrun_the_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool delivers results and progress messages on separate channels: a cell's
    # last messages may arrive after its result. Each cell still moves the bar by
    # exactly its steps.
    import bnlab.lab.runner as runner

    def results_first(fn, calls, *, on_result, on_message, **kwargs) -> None:
        for index, (_measure, cell, _device) in enumerate(calls):
            on_result(index, {"cell": GRID.key(cell)})
            on_message(index, 5)  # late: already made up when the result came
        for index in range(len(calls)):
            on_message(index, 3)

    monkeypatch.setattr(runner, "run_in_pool", results_first)
    bar = Bar()
    ctx = ex.LabContext(tmp_path, progress=bar, workers=2, threads=1)
    run_grid(ctx, GRID, toy_cell, data=[1], steps=7, description="grid")
    assert (bar.total, bar.done) == (84, 84)
