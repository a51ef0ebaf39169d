"""``sequence``: GRU and Transformer with BN, LayerNorm or no norm, each arm at its tuned lr.

A tiny run end to end ("no verdict at this budget", tables, figures, resume), the lr
rule, the GRU's BN gamma chosen on the tuning seed, the fresh measured seeds, the primary
metric and the schedule, the declared rules on synthetic per-seed
numbers whose answer is known (a clear effect, the null within the margin, noise, too
few seeds, a run at chance), the pairing of the arms, the config's errors. The networks:
tests/models/test_sequence_models.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab import sequence, stats
from bnlab.lab.claims import available_claims, spec_record
from bnlab.lab.experiment import get_lab, run_lab
from bnlab.lab.runner import Bench, Cell

SEEDS = Path("/work/shared/seeds")


def tiny_config(**kw) -> sequence.SequenceConfig:
    tiny = {
        "seeds": 2,
        "gru_lrs": (1e-2, 3e-2),
        "transformer_lrs": (3e-3,),
        "steps": 6,
        "warmup": 1,
        "batch": 16,
        "window": 3,
        "curve_every": 2,
        "train_size": 64,
        "test_size": 32,
        "hidden": 8,
        "d_model": 8,
    }
    return dataclasses.replace(sequence.SequenceConfig.quick(), **(tiny | kw))


def test_quick_run_says_no_verdict_and_resumes(tmp_path: Path, fake_data) -> None:
    spec = get_lab("sequence")
    config = tiny_config()
    out = tmp_path / "run"
    results = run_lab(spec, config, out, data=fake_data(64, 32), quick=True)
    raw = results["raw"]
    assert {a: set(arms) for a, arms in raw["lr"].items()} == {
        "gru": {"none", "bn", "ln", "bn-gamma1"},
        "transformer": {"none", "bn", "ln"},
    }
    for arch, arms in raw["lr"].items():
        assert all(lr in sequence.lr_grid(config, arch) for lr in arms.values())
    # two GRU lrs: any choice is at the edge; one Transformer lr: no grid, no edge
    assert sorted(raw["lr_at_grid_edge"]) == [
        "gru/bn",
        "gru/bn-gamma1",
        "gru/ln",
        "gru/none",
    ]
    per_seed = raw["per_seed"]
    assert set(per_seed) == {"gru", "transformer"}
    assert set(per_seed["gru"]) == {"none", "bn", "ln", "bn-gamma1"}
    assert set(per_seed["transformer"]) == {"none", "bn", "ln"}
    for arms in per_seed.values():
        for m in arms.values():
            assert len(m[sequence.PRIMARY]) == 2
            assert all(0 < v <= sequence.CHANCE_LOSS + 1e-9 for v in m[sequence.PRIMARY])
            assert all(0 <= v <= 100 for v in m["test_acc"])
    for figure in ("sequence_loss.png", "sequence_auc_gru.png", "sequence_auc_transformer.png"):
        assert (out / figure).is_file()
    # the voted GRU BN arm is the rule's choice on the tuning seed, and the claims use it
    tuning = {
        a: {n: {float(lr): v for lr, v in by.items()} for n, by in arms.items()}
        for a, arms in raw["tuning"].items()
    }
    assert raw["gru_bn_arm"] == sequence.gru_bn_arm(tuning, raw["lr"])
    stored = {s["name"]: s for s in raw["specs"]}
    assert stored["bn-helps-recurrent"]["arm"] == raw["gru_bn_arm"]
    assert stored["layernorm-suits-sequences-online"]["reference"] == raw["gru_bn_arm"]
    assert raw["seeds"] == [0, 1]  # the quick run keeps seeds 0, 1
    assert len(results["verdicts"]) == 3
    for verdict, claim in zip(results["verdicts"], sequence.CLAIMS, strict=True):
        assert verdict["holds"] is None
        assert verdict["measured"].startswith("no verdict at this budget: ")
        assert verdict["measured"].startswith(claim.rule(results)[1] + ":")
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == (2 * 4 + 1 * 3) + 2 * (4 + 3)  # tuning (lr x arm) + measured
    next(u for u in units if u.name == "gru-bn-seed1.json").unlink()
    (out / "results.json").unlink()
    again = run_lab(spec, config, out, data=fake_data(64, 32), resume=True, quick=True)
    assert again["units_reused"] == len(units) - 1
    assert again["raw"]["per_seed"] == per_seed


def test_tuning_grids_are_per_network() -> None:
    config = tiny_config(gru_lrs=(0.01, 0.1), transformer_lrs=(0.001,))
    cells = sequence.tune_grid(config).cells()
    assert {(c.setting, c.variant) for c in cells} == {
        *((("gru", lr), arm) for lr in (0.01, 0.1) for arm in ("none", "bn", "ln", "bn-gamma1")),
        *((("transformer", 0.001), arm) for arm in ("none", "bn", "ln")),
    }
    assert {c.seed for c in cells} == {config.tune_seed}
    main = sequence.main_grid(config).cells()
    assert len(main) == config.seeds * (4 + 3)
    # the full run's measured seeds are fresh (200-204), not the first run's 0-4
    full = sequence.SequenceConfig()
    assert sequence.main_grid(full).seed_list == (200, 201, 202, 203, 204)
    assert full.tune_seed not in sequence.main_grid(full).seed_list
    assert sequence.main_grid(tiny_config(gamma_one_arm=False)).cells()[0].variant == "none"
    assert sequence.arms(tiny_config(gamma_one_arm=False)) == ("none", "bn", "ln")


def test_loss_area_caps_at_chance_and_counts_divergence() -> None:
    ln10 = math.log(10.0)
    assert sequence.loss_area([1.0, 0.5]) == pytest.approx(0.75)
    assert sequence.loss_area([1.0, 50.0]) == pytest.approx((1.0 + ln10) / 2)
    assert sequence.loss_area([1.0, math.nan, math.inf]) == pytest.approx((1.0 + 2 * ln10) / 3)
    assert math.isnan(sequence.loss_area([]))


def test_schedule_warms_up_then_decays_towards_zero() -> None:
    config = tiny_config(steps=10, warmup=4)
    factors = [sequence._schedule(config, k) for k in range(10)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == 1.0
    assert factors[-1] == pytest.approx(1 / 6)
    assert all(a > b for a, b in itertools.pairwise(factors[4:]))


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_arms_share_their_initial_weights(arch: str) -> None:
    """Paired seeds: every norm of a network draws the same shared weights (the norms
    draw nothing), so arms differ only in their norm."""
    config = tiny_config()
    weights = {}
    for arm in sequence._arm_names(config, arch):
        with sequence.seeded(3):
            model = sequence._model(config, arch, arm)
        weights[arm] = {
            k: v for k, v in model.state_dict().items() if "norm" not in k and "final" not in k
        }
    reference = weights.pop("none")
    for other in weights.values():
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[k], reference[k]) for k in reference)


def test_gru_bn_arms_start_at_their_gamma() -> None:
    config = tiny_config()
    bn = sequence._model(config, "gru", "bn")
    assert torch.all(bn.norm_h.layer.weight == 0.1)
    assert torch.all(bn.norm_x.layer.weight == 0.1)
    one = sequence._model(config, "gru", sequence.GAMMA_ONE)
    assert torch.all(one.norm_h.layer.weight == 1.0)


def test_measure_without_a_tuned_lr_gives_no_numbers(fake_data) -> None:
    config = tiny_config()
    data = sequence.prepare(config, fake_data(64, 32))
    bench = Bench(data, torch.device("cpu"))
    got = sequence.measure(config, {"gru": {"bn": None}}, Cell("gru", "bn", 0), bench)
    assert got["lr"] is None
    assert set(got["metrics"].values()) == {None}
    got = sequence.measure(config, {"gru": {"ln": 0.01}}, Cell("gru", "ln", 0), bench)
    assert got["lr"] == 0.01
    assert len(got["curve"]["loss_ma"]) == config.steps // config.curve_every


NOISE = np.array([0.004, -0.006, 0.002, 0.005, -0.005])
WIDE = np.array([0.15, -0.12, 0.08, -0.16, 0.05])


def synthetic(
    area: dict[tuple[str, str], float],
    noise: dict[tuple[str, str], np.ndarray] | None = None,
    seeds: int = 5,
    gru_bn: str = "bn",
) -> dict:
    """Per-seed numbers with the given mean area per (network, arm) plus noise, the
    claims declared with ``gru_bn`` as the GRU's voted BN arm."""
    config = sequence.SequenceConfig()
    noise = noise or {}
    per_seed: dict = {}
    for (arch, arm), mean in area.items():
        values = mean + noise.get((arch, arm), NOISE)[:seeds]
        per_seed.setdefault(arch, {})[arm] = {
            sequence.PRIMARY: list(values),
            "best_train_loss": list(values - 0.2),
        }
    return {
        "raw": {
            "per_seed": per_seed,
            "specs": [spec_record(s) for s in sequence.specs(config, gru_bn)],
        }
    }


def _rules() -> dict:
    return {c.key: c.rule for c in sequence.CLAIMS}


def _areas(gru: tuple[float, float, float], transformer: tuple[float, float, float]) -> dict:
    out = {}
    for arch, values in (("gru", gru), ("transformer", transformer)):
        for arm, v in zip(("none", "bn", "ln"), values, strict=True):
            out[(arch, arm)] = v
    return out


def test_rules_on_known_numbers() -> None:
    rules = _rules()
    # BN clearly lowest in both networks: BN claims supported; LayerNorm's refuted
    # (opposite in both).
    clear = synthetic(_areas((0.80, 0.60, 0.70), (0.80, 0.55, 0.70)))
    assert rules["bn-helps-recurrent"](clear)[1] == stats.SUPPORTED
    assert rules["bn-helps-transformer"](clear)[1] == stats.SUPPORTED
    assert rules["layernorm-suits-sequences-online"](clear)[1] == stats.REFUTED
    # LayerNorm lowest in both: supported; BN no better than none in the GRU (equal within
    # the margin, same per-seed noise): refuted.
    ln = synthetic(_areas((0.70, 0.70, 0.60), (0.70, 0.70, 0.60)))
    assert rules["layernorm-suits-sequences-online"](ln)[1] == stats.SUPPORTED
    assert rules["bn-helps-recurrent"](ln)[1] == stats.REFUTED
    assert rules["bn-helps-transformer"](ln)[1] == stats.REFUTED
    # LayerNorm better in the GRU, worse in the Transformer: the LayerNorm claim is the
    # GRU's only (the Transformer's comparison is voted once, in bn-helps-transformer).
    mixed = synthetic(_areas((0.70, 0.70, 0.60), (0.70, 0.60, 0.70)))
    evidence, verdict = rules["layernorm-suits-sequences-online"](mixed)
    assert verdict == stats.SUPPORTED
    assert {r["setting"]: r["status"] for r in evidence["settings"]} == {"gru": "better"}
    assert rules["bn-helps-transformer"](mixed)[1] == stats.SUPPORTED


def test_the_transformer_comparison_is_voted_once() -> None:
    declared = sequence.specs(sequence.SequenceConfig())
    assert len(declared) == 3  # Holm over three tests
    transformer = [(s.arm, s.reference) for s in declared if "transformer" in (s.settings or ())]
    assert transformer == [("bn", "ln")]


def test_gru_bn_gamma_is_chosen_on_the_tuning_seed() -> None:
    tuning = {"gru": {"bn": {0.01: 0.64, 0.03: 0.57}, "bn-gamma1": {0.01: 0.53, 0.03: 0.50}}}
    lrs = {"gru": {"bn": 0.03, "bn-gamma1": 0.03}}
    assert sequence.gru_bn_arm(tuning, lrs) == sequence.GAMMA_ONE
    tuning["gru"]["bn-gamma1"][0.03] = 0.60
    lrs["gru"]["bn-gamma1"] = 0.01
    tuning["gru"]["bn-gamma1"][0.01] = 0.58
    assert sequence.gru_bn_arm(tuning, lrs) == "bn"
    # a tie goes to gamma 0.1, Cooijmans et al.'s value; so does a diverged gamma-1 arm
    tuning["gru"]["bn-gamma1"][0.01] = 0.57
    assert sequence.gru_bn_arm(tuning, lrs) == "bn"
    assert sequence.gru_bn_arm(tuning, {"gru": {"bn": 0.03, "bn-gamma1": None}}) == "bn"
    # without the gamma-1 arm the GRU's BN is gamma 0.1
    assert sequence.gru_bn_arm({"gru": {"bn": {0.03: 0.6}}}, {"gru": {"bn": 0.03}}) == "bn"


def test_rules_vote_the_chosen_gamma() -> None:
    """The first run's pattern: BN with gamma 0.1 equal to no norm, gamma 1 clearly lower,
    LayerNorm between. With gamma 1 chosen, BN helps the GRU and LayerNorm does not beat
    BN; with gamma 0.1 chosen, the opposite."""
    area = _areas((0.56, 0.57, 0.52), (0.62, 0.59, 0.59)) | {("gru", "bn-gamma1"): 0.49}
    rules = _rules()
    one = synthetic(area, gru_bn=sequence.GAMMA_ONE)
    evidence, verdict = rules["bn-helps-recurrent"](one)
    assert verdict == stats.SUPPORTED
    assert evidence["arm"] == sequence.GAMMA_ONE
    assert evidence["holm_family"] == 3
    assert rules["layernorm-suits-sequences-online"](one)[1] == stats.REFUTED
    tenth = synthetic(area, gru_bn="bn")
    assert rules["bn-helps-recurrent"](tenth)[1] == stats.REFUTED
    assert rules["layernorm-suits-sequences-online"](tenth)[1] == stats.SUPPORTED


def test_rules_on_the_null_with_wide_noise_and_too_few_seeds() -> None:
    rules = _rules()
    noisy = synthetic(_areas((0.70, 0.70, 0.70), (0.70, 0.70, 0.70)), noise={("gru", "bn"): WIDE})
    evidence, verdict = rules["bn-helps-recurrent"](noisy)
    assert verdict == stats.INCONCLUSIVE
    assert evidence["seeds_needed"] > 5
    few = synthetic(_areas((0.80, 0.60, 0.70), (0.80, 0.55, 0.70)), seeds=4)
    for rule in rules.values():
        assert rule(few)[1] == stats.NO_VERDICT


def test_a_run_that_never_left_chance_is_excluded() -> None:
    results = synthetic(_areas((0.80, 0.60, 0.70), (0.80, 0.55, 0.70)))
    results["raw"]["per_seed"]["gru"]["none"]["best_train_loss"][2] = 2.2  # within 0.3 of ln 10
    evidence, verdict = _rules()["bn-helps-recurrent"](results)
    assert verdict == stats.NO_VERDICT  # 4 pairs left < 5
    assert evidence["excluded"][0]["arm"] == "none"
    assert evidence["excluded"][0]["seed"] == 2
    assert "never left chance" in evidence["excluded"][0]["reason"]


def test_claims_are_registered_with_their_seed_sentence() -> None:
    keys = {c.key: c for c in available_claims()}
    for key in ("bn-helps-recurrent", "bn-helps-transformer", "layernorm-suits-sequences-online"):
        claim = keys[key]
        assert claim.experiment == "sequence"
        assert claim.source == "003_8a52002564f5ba9e.txt"
        assert claim.literature is not None
        if SEEDS.is_dir():
            assert claim.sentence in (SEEDS / claim.source).read_text()
    specs = {s.name: s for s in sequence.specs(sequence.SequenceConfig())}
    assert specs["bn-helps-transformer"].reference == "ln"
    assert specs["layernorm-suits-sequences-online"].settings == ("gru",)
    assert specs["layernorm-suits-sequences-online"].reference == "bn"
    chosen = {s.name: s for s in sequence.specs(sequence.SequenceConfig(), sequence.GAMMA_ONE)}
    assert chosen["bn-helps-recurrent"].arm == sequence.GAMMA_ONE
    assert chosen["layernorm-suits-sequences-online"].reference == sequence.GAMMA_ONE
    assert chosen["bn-helps-transformer"].arm == "bn"
    assert all(s.metric == sequence.PRIMARY and s.margin == 0.03 for s in specs.values())


def test_a_run_of_one_network_declares_only_its_claims(tmp_path: Path, fake_data) -> None:
    config = tiny_config(archs=("gru",), gamma_one_arm=False, gru_lrs=(0.01,))
    assert [s.name for s in sequence.specs(config)] == [
        "bn-helps-recurrent",
        "layernorm-suits-sequences-online",
    ]
    assert sequence.specs(tiny_config(norms=("none", "ln"))) == []
    assert [s.name for s in sequence.specs(tiny_config(archs=("transformer",)))] == [
        "bn-helps-transformer"
    ]
    results = run_lab(get_lab("sequence"), config, tmp_path, data=fake_data(64, 32), quick=True)
    assert [v["claim"] for v in results["verdicts"]] == [
        sequence.CLAIMS[0].claim,
        sequence.CLAIMS[2].claim,
    ]
    assert results["raw"]["gru_bn_arm"] == "bn"  # no gamma-1 arm: gamma 0.1
    assert set(results["raw"]["per_seed"]) == {"gru"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"archs": ("lstm",)}, "unknown sequence network 'lstm'; choose one of: gru, transformer"),
        ({"norms": ("none", "gn")}, "unknown norm 'gn'; choose one of: none, bn, ln"),
        ({"gru_lrs": (0.01, -1.0)}, r"gru_lrs must be positive values, got \(0.01, -1.0\)"),
        ({"transformer_lrs": ()}, r"transformer_lrs must be positive values, got \(\)"),
        ({"warmup": 6}, r"warmup must be in \[0, steps=6\), got 6"),
        ({"batch": 1}, r"batch must be >= 2 \(per-step BN\), got 1"),
        ({"margin": 0.0}, "margin must be > 0, got 0.0"),
        ({"first_seed": -1}, "first_seed must be an int >= 0, got -1"),
    ],
)
def test_config_errors_name_the_value(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sequence.main_grid(tiny_config(**change))
