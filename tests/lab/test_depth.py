"""``depth``: the claims' rules on known numbers, a tiny run end to end (tuning, measured
runs, resume), the config and its cuda profile, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.cli.data as cli_data
from bnlab.cli.main import main
from bnlab.data.synthetic import fake_images_labels
from bnlab.lab import depth, stats
from bnlab.lab.claims import FROM_LITERATURE, available_claims
from bnlab.lab.experiment import config_from, get_lab, run_lab
from bnlab.plots.depth import moving_average, plot_depth_curves


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded machine, more only spin (and tests add CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fast_plots(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stub the two figures (most of a tiny run's time); the CLI test draws the real ones."""
    drawn: list[Path] = []

    def stub(data: Any, path: Path, **kwargs: Any) -> Path:
        drawn.append(Path(path))
        Path(path).write_bytes(b"\x89PNG stub")
        return Path(path)

    monkeypatch.setattr(depth, "plot_depth_curves", stub)
    monkeypatch.setattr(depth, "plot_sweep", stub)
    return drawn


TINY = dataclasses.replace(
    depth.DepthConfig.quick(), steps=4, window=2, curve_every=2, train_size=96, test_size=32
)
CONFIG = depth.DepthConfig()
CHANCE = math.log(10)


# --- the rules on synthetic per-seed numbers -----------------------------------------


def _per_seed(values: dict[tuple[str, str], list[float | None]]) -> dict[str, Any]:
    """Both views of ``per_seed`` (as ``depth.per_seed_views``) from ``{(dD, arm): losses}``;
    the test accuracy is a stand-in (the claims do not read it)."""
    out: dict[str, Any] = {}
    for (d, arm), losses in values.items():
        out.setdefault(d, {})[arm] = {
            depth.PRIMARY: list(losses),
            "test_acc": [50.0] * len(losses),
            "test_loss": [1.0] * len(losses),
        }
    arms = {arm for _, arm in values}
    depths = sorted({d for d, _ in values}, key=lambda d: int(d[1:]))
    for arm in arms:
        out[arm] = {d: out[d][arm] for d in depths if arm in out[d]}
    return out


def _around(mean: float, spread: float = 0.01, n: int = 5) -> list[float]:
    """n values around ``mean`` (a fixed pattern: the same pattern in every arm pairs
    exactly, so a difference of means has SD 0 unless ``spread`` differs)."""
    return [mean + spread * k for k in (-2, -1, 0, 1, 2)][:n]


def _base(**overrides: list[float | None]) -> dict[str, Any]:
    """A world where every claim holds: plain-none-56 barely trains, plain-bn-56 degrades
    against plain-bn-20, the ResNets train best, Fixup a little worse than BN."""
    values = {
        ("d20", "plain-bn"): _around(0.30),
        ("d20", "plain-none"): _around(0.45),
        ("d20", "resnet-bn"): _around(0.28),
        ("d20", "resnet-fixup"): _around(0.35),
        ("d56", "plain-bn"): [0.52, 0.50, 0.55, 0.49, 0.53],
        ("d56", "plain-none"): [1.90, 1.70, 2.00, 1.80, 1.95],
        ("d56", "resnet-bn"): [0.25, 0.26, 0.24, 0.27, 0.25],
        ("d56", "resnet-fixup"): [0.40, 0.42, 0.38, 0.41, 0.45],
    }
    for key, losses in overrides.items():
        d, arm = key.split("_", 1)
        values[(d, arm.replace("_", "-"))] = losses
    return _per_seed(values)


def _verdicts(per_seed: dict[str, Any], config: depth.DepthConfig = CONFIG) -> dict[str, Any]:
    return {e["claim"]: e for e in depth.evaluate_claims(depth.specs(config), per_seed)}


def test_rules_on_synthetic_numbers() -> None:
    got = _verdicts(_base())
    assert {k: e["verdict"] for k, e in got.items()} == {
        "bn-trains-deep-plain": stats.SUPPORTED,
        "skip-connections-matter-at-depth": stats.SUPPORTED,
        "no-bn-plain-stops-training-with-depth": stats.SUPPORTED,
        "deeper-plain-degrades-with-bn": stats.SUPPORTED,
        "zero-init-resnet-slower-without-bn": stats.SUPPORTED,
    }
    assert all(e["holm_family"] == 5 for e in got.values())
    assert all(e["whole_arm_at_chance"] is None for e in got.values())
    row = got["skip-connections-matter-at-depth"]["settings"][0]
    assert row["setting"] == "d56"
    assert row["diff"] == pytest.approx(0.254 - 0.518)  # resnet-bn - plain-bn, seed means

    # Equal within the margin (0.05): refuted (TOST shows equivalence).
    same = _verdicts(_base(d56_resnet_fixup=[0.26, 0.27, 0.25, 0.28, 0.26]))
    assert same["zero-init-resnet-slower-without-bn"]["verdict"] == stats.REFUTED
    # The opposite direction, beyond the margin: refuted.
    worse = _verdicts(_base(d56_resnet_bn=[0.62, 0.61, 0.65, 0.60, 0.63]))
    assert worse["skip-connections-matter-at-depth"]["verdict"] == stats.REFUTED
    # Noise: a large difference the seeds do not separate: inconclusive, with advice.
    noisy = _verdicts(_base(d56_plain_bn=[0.2, 0.9, 0.1, 1.0, 0.35]))
    e = noisy["skip-connections-matter-at-depth"]
    assert e["verdict"] == stats.INCONCLUSIVE
    assert e["seeds_needed"] is not None
    assert e["seeds_needed"] > 5
    # Fewer than min_seeds seeds: no verdict at this budget.
    few = {
        k: _around(v[depth.PRIMARY][0], n=3)
        for k, v in (((d, arm), _base()[d][arm]) for d in ("d20", "d56") for arm in depth.ARMS)
    }
    short = _verdicts(_per_seed(few))
    assert {e["verdict"] for e in short.values()} == {stats.NO_VERDICT}


def test_a_whole_arm_at_chance_is_the_outcome_not_an_exclusion() -> None:
    at_chance = [CHANCE + 0.001 * k for k in (-2, -1, 0, 1, 2)]
    got = _verdicts(_base(d56_plain_none=at_chance))
    # plain-none-56 never left chance: claims 1 and 3 are tested on the values as measured.
    for name, arm in (
        ("bn-trains-deep-plain", "plain-none"),
        ("no-bn-plain-stops-training-with-depth", "d56"),
    ):
        assert got[name]["verdict"] == stats.SUPPORTED
        assert got[name]["whole_arm_at_chance"] == arm
        assert got[name]["excluded"] == []
        assert "never left chance in any seed" in got[name]["text"]
    assert got["bn-trains-deep-plain"]["settings"][0]["mean_reference"] == pytest.approx(CHANCE)
    # The claimed arm at chance in every seed: tested as measured, the opposite: refuted.
    flipped = _verdicts(_base(d56_plain_bn=at_chance))
    assert flipped["bn-trains-deep-plain"]["whole_arm_at_chance"] == "plain-bn"
    assert flipped["bn-trains-deep-plain"]["verdict"] == stats.REFUTED
    # Both arms at chance: nothing trains, the seeds are excluded: no verdict.
    both = _verdicts(_base(d56_plain_bn=at_chance, d56_plain_none=at_chance))
    e = both["bn-trains-deep-plain"]
    assert e["whole_arm_at_chance"] is None
    assert e["verdict"] == stats.NO_VERDICT
    assert len(e["excluded"]) == 10
    # Part of an arm at chance: those seeds are excluded (pairs broken), too few remain.
    part = _verdicts(_base(d56_plain_none=[*at_chance[:3], 1.5, 1.6]))
    e = part["bn-trains-deep-plain"]
    assert e["whole_arm_at_chance"] is None
    assert [x["seed"] for x in e["excluded"]] == [0, 1, 2]
    assert e["verdict"] == stats.NO_VERDICT
    # A diverged seed (no loss) has not left chance either.
    diverged = _verdicts(_base(d56_plain_none=[None] * 5))
    assert diverged["bn-trains-deep-plain"]["verdict"] == stats.NO_VERDICT


def test_claims_are_registered_with_their_sources() -> None:
    claims = {c.key: c for c in available_claims() if c.experiment == "depth"}
    assert set(claims) == {s.name for s in depth.specs(CONFIG)}
    assert claims["no-bn-plain-stops-training-with-depth"].source == "004_deb69101c4c8736e.txt"
    assert claims["bn-trains-deep-plain"].source == "004_deb69101c4c8736e.txt"
    assert claims["skip-connections-matter-at-depth"].source == "000_3d8114077ba70cad.txt"
    assert claims["deeper-plain-degrades-with-bn"].source == FROM_LITERATURE
    assert claims["zero-init-resnet-slower-without-bn"].source == FROM_LITERATURE
    seeds = Path(__file__).parents[3] / "shared" / "seeds"
    for c in claims.values():
        assert c.literature is not None
        if c.source == FROM_LITERATURE:
            assert c.sentence == ""
            continue
        assert c.sentence in c.claim
        if (seeds / c.source).exists():  # the quoted sentence is in the seed file, verbatim
            assert c.sentence in (seeds / c.source).read_text()


# --- a tiny run end to end -----------------------------------------------------------


def _without_times(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "train_s"} for r in results]


def test_quick_run_writes_results_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_plots: list[Path], fake_data
) -> None:
    spec = get_lab("depth")
    out = tmp_path / "run"
    data = fake_data(96, 32)
    results = run_lab(spec, TINY, out, data=data, quick=True)
    units = sorted(p.name for p in (out / "units").iterdir())
    n_tune = len(TINY.depths) * len(TINY.lrs) * len(depth.ARMS)
    n_main = len(TINY.depths) * len(depth.ARMS) * TINY.seeds
    assert len(units) == n_tune + n_main
    assert "tune-d8-lr0.03-plain-bn.json" in units
    assert "d14-resnet-fixup-seed1.json" in units
    raw = results["raw"]
    assert set(raw["per_seed"]) == {"d8", "d14", *depth.ARMS}
    for arm in depth.ARMS:
        m = raw["per_seed"]["d14"][arm]
        assert len(m[depth.PRIMARY]) == TINY.seeds
        assert all(0.0 <= a <= 100.0 for a in m["test_acc"] if a is not None)
        assert raw["lr"]["d14"][arm] in TINY.lrs
        assert len(m[depth.BATCH_LOSS]) == TINY.seeds
        assert all(0.0 <= a <= 100.0 for a in m["train_acc"] if a is not None)
    assert all(len(c) == TINY.steps // TINY.curve_every for c in raw["curves"]["d8"]["plain-bn"])
    # The quick run has 2 seeds: no verdict, and the shown verdicts are the rules'.
    saved = json.loads((out / "results.json").read_text())
    assert [p.name for p in fast_plots] == ["depth_loss.png", "depth_curves.png"]
    for v, c in zip(saved["verdicts"], depth.CLAIMS, strict=True):
        _evidence, verdict = c.rule(saved)
        assert verdict == stats.NO_VERDICT
        assert v["measured"].startswith(verdict + ":")
        assert v["holds"] is None
    assert saved["tables"][0]["title"].startswith("Learning-rate tuning")
    assert saved["tables"][2]["columns"][-1] == "verdict"

    # Delete one finished unit: the resumed run recomputes it to the same numbers.
    (out / "units" / "d14-plain-none-seed0.json").unlink()
    again = run_lab(spec, TINY, out, data=data, resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    # Exact: the same seeded computation on the same machine, one thread.
    assert again["raw"]["per_seed"] == json.loads(json.dumps(raw["per_seed"]))


def test_a_nan_loss_is_recorded_as_diverged_not_raised(
    tmp_path: Path, fast_plots: list[Path], fake_data
) -> None:
    config = dataclasses.replace(TINY, lrs=(1e30,), seeds=2)
    results = run_lab(get_lab("depth"), config, tmp_path / "run", data=fake_data(96, 32))
    raw = results["raw"]
    # Every lr of the grid diverged for some arm: no lr is chosen, its runs are recorded.
    assert None in [lr for by in raw["lr"].values() for lr in by.values()]
    losses = [v for d in ("d8", "d14") for m in raw["per_seed"][d].values() for v in m[PRIMARY]]
    assert None in losses
    json.dumps(results, allow_nan=False)  # JSON-ready: no NaN left in it


PRIMARY = depth.PRIMARY


def test_a_diverging_run_stops_and_says_so(fake_data) -> None:
    from bnlab.lab.runner import Bench

    data = depth.prepare(TINY, fake_data(96, 32))
    got = depth.train_run(
        TINY, "plain-none", 8, 1e30, 0, Bench(data, torch.device("cpu")), test=True
    )
    assert got["diverged"] is True
    assert got[depth.PRIMARY] is None
    assert got[depth.BATCH_LOSS] is None
    assert got["steps_done"] < TINY.steps  # stopped at the first non-finite loss
    assert got["test_acc"] is None


def test_prepare_pools_and_standardizes(fake_data) -> None:
    data = depth.prepare(TINY, fake_data(96, 32))
    assert tuple(data["train_images"].shape) == (96, 1, 14, 14)
    assert tuple(data["test_images"].shape) == (32, 1, 14, 14)
    assert data["train_images"].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert data["train_images"].std().item() == pytest.approx(1.0, abs=1e-5)
    full = depth.prepare(dataclasses.replace(TINY, image_size=28), fake_data(96, 32))
    assert tuple(full["train_images"].shape) == (96, 1, 28, 28)


def test_the_fixup_arm_starts_as_the_identity_through_its_blocks() -> None:
    model = depth.build_model(CONFIG, "resnet-fixup", 20)
    assert all(p.abs().sum() == 0 for p in model.fc.parameters())  # exact zeros
    x = torch.randn(4, 1, 14, 14)
    assert torch.equal(model(x), torch.zeros(4, 10))
    block = model.stages[0][0]
    assert torch.count_nonzero(block.conv2.weight) == 0
    plain_none = depth.build_model(CONFIG, "plain-none", 20)
    assert not any("norm" in type(m).__name__.lower() for m in plain_none.modules())


# --- the config ----------------------------------------------------------------------


def test_full_config_is_the_declared_design() -> None:
    full, quick = depth.DepthConfig(), depth.DepthConfig.quick()
    # Exact: the config's literal defaults.
    assert full.depths == (20, 56)
    assert (full.seeds, full.min_seeds, full.threads) == (5, 5, 1)
    assert full.train_size is None
    assert full.test_size is None
    assert (full.steps, full.batch, full.width, full.image_size) == (500, 64, 8, 14)
    assert full.train_eval_size == 10000
    assert full.lrs == (0.01, 0.03, 0.1, 0.3)
    assert full.tune_seed not in range(full.seeds)
    assert quick.seeds < quick.min_seeds  # the quick run decides nothing
    assert quick.steps * quick.batch < full.steps * full.batch


def test_cuda_profile_fills_the_settings_left_at_their_cpu_defaults() -> None:
    cuda = depth.DepthConfig(profile="cuda")
    for name, value in depth.CUDA_PROFILE.items():
        assert getattr(cuda, name) == value
    assert cuda.deep == 110
    # An explicit setting wins over the preset.
    assert depth.DepthConfig(profile="cuda", seeds=6).seeds == 6
    # From the command line: --set profile=cuda.
    spec = get_lab("depth")
    got = config_from(spec, quick=False, overrides={"profile": "cuda", "steps": "100"})
    assert (got.depths, got.steps, got.width) == ((20, 56, 110), 100, 16)
    # replace keeps the preset's values.
    assert dataclasses.replace(cuda, seeds=3).depths == (20, 56, 110)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"depths": (20, 21)},
            r"depth must be 6n \+ 2 \(8, 14, 20, 26, 32, 44, 56, \.\.\.\), got 21",
        ),
        ({"depths": ()}, r"depths must name at least one depth, got \(\)"),
        ({"depths": (56, 20)}, r"at least two increasing depths without repeats, got \(56, 20\)"),
        ({"depths": (20,)}, r"at least two increasing depths without repeats, got \(20,\)"),
        ({"norm": "none"}, r"norm is the BN arms' norm and cannot be 'none'"),
        ({"steps": 0}, r"depth: steps must be > 0, got 0"),
        ({"window": 700}, r"window must be in 1\.\.steps \(500\), got 700"),
        ({"image_size": 32}, r"image_size must be 14 or 28, got 32"),
        ({"lrs": (0.1, -1.0)}, r"lrs must be positive values, got \(0\.1, -1\.0\)"),
        ({"tune_seed": 3}, r"tune_seed 3 is one of the measured seeds 0\.\.4"),
        ({"profile": "tpu"}, r"profile must be 'cpu' or 'cuda', got 'tpu'"),
    ],
)
def test_config_errors_show_the_value_and_fix(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(depth.DepthConfig(), **changes)


# --- figures and the CLI -------------------------------------------------------------


def test_moving_average_skips_missing_values() -> None:
    got = moving_average([1.0, 3.0, None, 5.0], 2)
    assert got == [1.0, 2.0, 3.0, 5.0]  # exact: small integers and their halves are exact
    assert math.isnan(moving_average([None], 3)[0])
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        moving_average([1.0], 0)
    with pytest.raises(ValueError, match="no panels to draw"):
        plot_depth_curves({}, Path("unused.png"))


def test_cli_quick_run_writes_results_and_figures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[Any] = []

    def fake_dir(flag: Any, **kwargs: Any) -> Path:
        asked.append(flag)
        return tmp_path / "data"

    def fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return fake_images_labels(96 if split == "train" else 32, seed=0 if split == "train" else 1)

    monkeypatch.setattr(cli_data, "data_dir_from_env", fake_dir)
    monkeypatch.setattr(cli_data, "load_fashion_mnist", fake_load)
    out = tmp_path / "run"
    argv = ["lab", "depth", "--quick", "--data-dir", "somewhere", "--out", str(out)]
    for setting in ("steps=2", "window=1", "curve_every=1", "lrs=0.1", "depths=8,14"):
        argv += ["--set", setting]
    assert main([*argv, "--no-progress"]) == 0
    assert asked == ["somewhere"]
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == "depth"
    assert results["quick"] is True
    assert results["config"]["depths"] == [8, 14]
    assert results["config"]["steps"] == 2
    for f in results["figures"]:
        assert (out / f["file"]).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "BN lets a deep plain network train" in printed
    assert "no verdict at this budget" in printed
    assert "(results.json and 2 figures)" in printed
