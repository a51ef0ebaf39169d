"""``bnlab lab convergence``: does BN make the d2l LeNet converge in fewer steps?

The seeds' headline claim: batch normalization "可以持续加速深度网络的收敛" (consistently
accelerates the convergence of deep networks; ``004_deb69101c4c8736e.txt``, the d2l
chapter, after Ioffe & Szegedy 2015, arXiv 1502.03167: their BN-x5, BN with a 5 times
larger learning rate and other changes, reached Inception's accuracy in 14 times fewer
steps).

Design (second edition, issue 17): the d2l chapter's LeNet (sigmoid, average pooling,
the norm before every activation; ``bnlab.models.lenet.LeNet``) with and without BN,
plain SGD at batch 256 for 2,340 steps (10 epochs of the 60,000 training images, d2l's
recipe), the d2l Xavier init from the seed (the same weights in both arms) and the
same data order per seed (paired seeds, 5 of them).

Each arm runs at its own best learning rate from the grid 0.1, 0.3, 1, 3, chosen before
the measured runs by a declared rule on a separate tuning seed (1000): the lr with the
lowest final training loss (mean of the last 50 mini-batch losses); a diverged run
(non-finite loss) is never chosen.

Measures, per run: the steps until the training loss (the moving average of the last
50 mini-batch losses) first reaches 0.6 (**primary**), the steps until the test
accuracy on the full 10,000-image test set (evaluated every 78 steps, a third of an
epoch) first reaches 75 %, and both in training seconds (evaluation time excluded).

Censoring: a run that never reaches a target is censored at the budget: its value is
the budget (2,340 steps), a lower bound of its true time. In the reference arm (no BN)
that understates BN's advantage (conservative for the claim); in the BN arm it would
overstate it, so the declared rule turns a "supported" into "inconclusive" when any BN
seed is censored. A seed whose final test accuracy is within 2 points of chance (10 %)
never left chance and is excluded (``bnlab.lab.stats``); censored seeds are listed.

Claim (``SPECS``): primary metric ``steps_to_loss``, BN lower than no BN, paired t
interval, TOST margin 234 steps (one epoch), at least 5 seeds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bnlab.lab import kit, stats
from bnlab.lab.claims import Literature, spec_record, stats_rule
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab, seeded
from bnlab.lab.kit.probed import shown_differences
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.models.lenet import LeNet
from bnlab.plots.effects import plot_to_target
from bnlab.train import init_weights
from bnlab.train.steps import run_steps

__all__ = [
    "ARMS",
    "CLAIMS",
    "ConvergenceConfig",
    "convergence_rule",
    "first_reach",
    "main_cell",
    "main_grid",
    "measure",
    "specs",
    "summarize",
    "train_run",
    "tune_cell",
    "tune_grid",
]

SOURCE = "004_deb69101c4c8736e.txt"
SENTENCE = "批量归一化,这是一种流行且有效的技术,可以持续加速深度网络的收敛"
#: arm -> the model registry's norm.
ARMS: dict[str, str] = {"none": "none", "bn": "bnlab"}
PRIMARY = "steps_to_loss"
TUNE_RULE = (
    "each arm's lr: the grid value with the lowest final training loss (mean of the last "
    "{window} mini-batch losses) on tuning seed {seed}, same steps as the measured runs; a "
    "run with a non-finite loss is never chosen"
)


@dataclass(frozen=True)
class ConvergenceConfig(kit.paired.TunedConfig):
    """Settings of ``convergence`` (defaults: the full run, about 11 min on 2 quiet CPU cores).

    Args:
        seeds, train_size, test_size, min_seeds, threads, tune_seed: as in
            ``kit.paired.TunedConfig`` (5 measured seeds, all images, 1 thread).
        lrs: the learning-rate grid (each arm picks one by ``TUNE_RULE``).
        margin: the claim's equivalence margin, in steps.
        batch: SGD batch.
        steps: the step budget of every run (censoring point).
        momentum: SGD momentum (0: d2l's plain SGD).
        activation: LeNet's activation (d2l's sigmoid).
        loss_target: the training-loss target (primary).
        acc_target: the test-accuracy target, in percent (secondary).
        window: mini-batch losses in the training-loss moving average.
        eval_every: steps between test evaluations.

    Raises:
        ValueError: a setting that is not > 0, or an empty or non-positive lr grid.
    """

    lrs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    margin: float = 234.0
    batch: int = 256
    steps: int = 2340
    momentum: float = 0.0
    activation: str = "sigmoid"
    loss_target: float = 0.6
    acc_target: float = 75.0
    window: int = 50
    eval_every: int = 78

    #: A smoke test: 2 seeds (below min_seeds: no verdict), two lrs, 60 steps.
    QUICK = kit.paired.TunedConfig.quick_settings(
        lrs=(0.3, 1.0), steps=60, window=10, eval_every=20, train_size=2048, margin=6.0
    )
    POSITIVE = (
        "seeds",
        "batch",
        "steps",
        "loss_target",
        "acc_target",
        "window",
        "eval_every",
        "margin",
    )


def specs(config: ConvergenceConfig) -> list[stats.ClaimSpec]:
    """The claim, declared before the run (see the module docstring)."""
    return kit.paired.claim_specs(
        config,
        PRIMARY,
        [("bn-accelerates-convergence", "lower", "bn", "none", None)],
        chance=kit.paired.chance_near("final_test_acc"),
    )


def tune_grid(config: ConvergenceConfig) -> Grid:
    """The tuning runs: arm x lr on the tuning seed (units ``tune-lrLR-ARM-seedS``); each
    arm's lr is then the one with the lowest final training loss (``TUNE_RULE``,
    ``kit.paired.choose_lrs``)."""
    return kit.paired.tune_grid(
        ("",),
        ARMS,
        config.lrs,
        config.tune_seed,
        key=lambda c: f"tune-lr{c.setting[1]:g}-{c.variant}-seed{c.seed}",
        order=("variant", "setting", "seed"),
    )


def main_grid(config: ConvergenceConfig) -> Grid:
    """The measured runs: arm x seed (units ``ARM-seedN``), seeds outermost."""
    return kit.paired.measured_grid(ARMS, config.seeds, order=("seed", "variant", "setting"))


def first_reach(
    values: Sequence[float | None], steps: Sequence[int], target: float, *, below: bool
) -> int | None:
    """The first step whose value reaches ``target`` (``<=`` when ``below``, else ``>=``);
    None when none does."""
    for v, s in zip(values, steps, strict=True):
        if v is not None and math.isfinite(v) and (v <= target if below else v >= target):
            return s
    return None


def train_run(
    config: ConvergenceConfig,
    arm: str,
    lr: float,
    seed: int,
    bench: Bench,
    *,
    evaluate_test: bool,
) -> dict[str, Any]:
    """One LeNet run: the moving-average training loss at every step and, with
    ``evaluate_test``, the test accuracy every ``eval_every`` steps, the training
    seconds (evaluation excluded) at each."""
    data, device = bench.data, bench.device
    with kit.cpu_threads(config.threads):
        with seeded(seed):
            model = LeNet(ARMS[arm], activation=config.activation)
        init_weights(model, seed)
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum)
        window: deque[float] = deque(maxlen=config.window)
        loss_ma: list[float] = []
        clock: list[float] = []
        evals: dict[str, list[Any]] = {"steps": [], "test_acc": [], "train_s": []}
        spent = 0.0  # evaluation seconds, excluded from the training clock
        start = time.perf_counter()

        def on_step(s: Any) -> None:
            nonlocal spent
            window.append(s.loss_value)
            loss_ma.append(sum(window) / len(window))
            clock.append(time.perf_counter() - start - spent)
            if evaluate_test and (s.done % config.eval_every == 0 or s.done == config.steps):
                t0 = time.perf_counter()
                acc = 100.0 * kit.accuracy_on_test(model, data, device)
                model.train()
                spent += time.perf_counter() - t0
                evals["steps"].append(s.done)
                evals["test_acc"].append(acc)
                evals["train_s"].append(clock[-1])
            bench.advance(1)

        model.train()
        run_steps(
            model,
            kit.batches(data["train_images"], data["train_labels"], config.batch, seed, device),
            opt,
            steps=config.steps,
            loss_fn=F.cross_entropy,
            on_step=on_step,
        )
    return {"loss_ma": loss_ma, "clock": clock, "evals": evals}


def _to_target(config: ConvergenceConfig, run: Mapping[str, Any]) -> dict[str, Any]:
    """Steps and seconds to each target; censored at the budget."""
    steps = list(range(1, len(run["loss_ma"]) + 1))
    at_loss = first_reach(run["loss_ma"], steps, config.loss_target, below=True)
    ev = run["evals"]
    at_acc = first_reach(ev["test_acc"], ev["steps"], config.acc_target, below=False)
    total_s = run["clock"][-1] if run["clock"] else math.nan
    acc_s = None if at_acc is None else ev["train_s"][ev["steps"].index(at_acc)]
    final_loss = run["loss_ma"][-1] if run["loss_ma"] else math.nan
    return {
        "steps_to_loss": config.steps if at_loss is None else at_loss,
        "steps_to_acc": config.steps if at_acc is None else at_acc,
        "seconds_to_loss": total_s if at_loss is None else run["clock"][at_loss - 1],
        "seconds_to_acc": total_s if acc_s is None else acc_s,
        "final_train_loss": kit.json_float(final_loss),
        "final_test_acc": ev["test_acc"][-1] if ev["test_acc"] else None,
        "censored_loss": at_loss is None,
        "censored_acc": at_acc is None,
    }


def _thin(values: Sequence[float], every: int) -> list[Any]:
    return [kit.json_float(v) for v in values[every - 1 :: every]]


def tune_cell(config: ConvergenceConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    lr = cell.setting[1]
    got = train_run(config, cell.variant, lr, cell.seed, bench, evaluate_test=False)
    final = got["loss_ma"][-1] if got["loss_ma"] else math.nan
    return {"lr": lr, "final_train_loss": kit.json_float(final)}


def main_cell(
    config: ConvergenceConfig,
    lrs: kit.paired.ChosenLrs,
    cell: Cell,
    bench: Bench,
) -> dict[str, Any]:
    lr = lrs[""][cell.variant]
    if lr is None:
        return {"lr": None, "metrics": None}
    got = train_run(config, cell.variant, lr, cell.seed, bench, evaluate_test=True)
    return {
        "lr": lr,
        "metrics": _to_target(config, got),
        "curves": {
            "every": config.eval_every,
            "loss_ma": _thin(got["loss_ma"], config.eval_every),
            "test_steps": got["evals"]["steps"],
            "test_acc": got["evals"]["test_acc"],
        },
    }


def measure(config: ConvergenceConfig, cell: Cell, bench: Bench, lr: float) -> dict[str, Any]:
    """One measured run of ``cell`` at ``lr``: steps and seconds to each target."""
    got = train_run(config, cell.variant, lr, cell.seed, bench, evaluate_test=True)
    return _to_target(config, got)


_EMPTY = {
    k: math.nan
    for k in (
        "steps_to_loss",
        "steps_to_acc",
        "seconds_to_loss",
        "seconds_to_acc",
        "final_train_loss",
        "final_test_acc",
    )
}


def convergence_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The declared rule: ``bnlab.lab.stats`` on the primary metric, then "supported"
    becomes "inconclusive" when a BN seed is censored (its value understates its time)."""
    evidence, verdict = _stats_rule(results)
    censored = results["raw"]["censored_loss"].get("bn", [])
    evidence = dict(evidence, censored_bn_seeds=[i for i, c in enumerate(censored) if c])
    if verdict == stats.SUPPORTED and any(censored):
        verdict = stats.INCONCLUSIVE
        evidence["censoring"] = (
            "a BN seed never reached the target: its value (the budget) understates its "
            "time, so the difference cannot support the claim"
        )
    return evidence, verdict


_stats_rule = stats_rule("bn-accelerates-convergence")


def summarize(
    config: ConvergenceConfig, ctx: LabContext, run: GridRun, tuned: kit.paired.Tuned
) -> LabOutcome:
    """Steps and seconds to the targets per arm, the verdict, the curves."""
    tuning, lrs = tuned.values[""], tuned.lrs[""]
    per_seed = run.per_seed(missing=_EMPTY)
    declared = specs(config)
    censored = {
        arm: [bool(r["metrics"] and r["metrics"]["censored_loss"]) for r in run.select(variant=arm)]
        for arm in ARMS
    }
    raw = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in declared],
        "tuning": tuned.stored(""),
        "tune_rule": TUNE_RULE.format(window=config.window, seed=config.tune_seed),
        "lr": dict(lrs),
        "targets": {"train_loss": config.loss_target, "test_acc": config.acc_target},
        "budget_steps": config.steps,
        "censored_loss": censored,
        "censored_acc": {
            arm: [
                bool(r["metrics"] and r["metrics"]["censored_acc"]) for r in run.select(variant=arm)
            ]
            for arm in ARMS
        },
    }
    verdicts = kit.decide(raw, CLAIMS)
    variants = per_seed.get("", {})
    shown = shown_differences(
        per_seed,
        [
            (metric, "", metric)
            for metric in ("steps_to_acc", "seconds_to_loss", "seconds_to_acc", "final_test_acc")
        ],
        digits=4,
    )
    raw["shown"] = shown
    tables = [
        tuned.table(
            "Learning-rate tuning (final training loss on the tuning seed; the lowest is chosen)",
            ["arm"],
            config.lrs,
            [((arm,), tuning[arm], lrs[arm]) for arm in ARMS],
        ),
        Table(
            f"To the targets (training loss {config.loss_target:g}, test accuracy "
            f"{config.acc_target:g} %), mean ± std over seeds; censored at {config.steps} steps",
            [
                "arm",
                "lr",
                "steps to loss",
                "steps to acc",
                "s to loss",
                "s to acc",
                "censored (loss/acc)",
                "final test acc %",
            ],
            [
                [
                    arm,
                    lrs[arm],
                    kit.mean_std_cell(m.get("steps_to_loss", [])),
                    kit.mean_std_cell(m.get("steps_to_acc", [])),
                    kit.mean_std_cell(m.get("seconds_to_loss", [])),
                    kit.mean_std_cell(m.get("seconds_to_acc", [])),
                    f"{sum(censored[arm])}/{sum(raw['censored_acc'][arm])} of {len(censored[arm])}",
                    kit.mean_std_cell(m.get("final_test_acc", [])),
                ]
                for arm, m in variants.items()
            ],
        ),
        Table(
            "Shown, not voted: paired differences BN - no BN (unadjusted 95% t intervals)",
            ["metric", "n", "diff", "95% CI"],
            shown,
        ),
    ]
    curves = {
        "training loss (moving average)": {},
        "test accuracy (%)": {},
    }
    for arm in ARMS:
        results = [r for r in run.select(variant=arm) if r.get("curves")]
        if not results:
            continue
        every = results[0]["curves"]["every"]
        n = len(results[0]["curves"]["loss_ma"])
        curves["training loss (moving average)"][arm] = {
            "steps": [every * (i + 1) for i in range(n)],
            "runs": [r["curves"]["loss_ma"] for r in results],
        }
        curves["test accuracy (%)"][arm] = {
            "steps": results[0]["curves"]["test_steps"],
            "runs": [r["curves"]["test_acc"] for r in results],
        }
    plot_to_target(
        curves,
        ctx.out_dir / "convergence.png",
        targets={
            "training loss (moving average)": config.loss_target,
            "test accuracy (%)": config.acc_target,
        },
        title="d2l LeNet (sigmoid), each arm at its tuned lr; dashed: the targets",
    )
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "convergence.png",
                "Training loss (moving average of the mini-batch losses) and test accuracy "
                "against the step, per arm at its tuned lr: thin lines per seed, thick the mean; "
                "dashed: the targets.",
            )
        ],
        raw=raw,
        notes=[
            raw["tune_rule"],
            f"Censoring: a run that never reaches a target counts as {config.steps} steps "
            "(the budget, a lower bound); a 'supported' with a censored BN seed becomes "
            "'inconclusive'.",
        ],
    )


def _measured(e: Mapping[str, Any]) -> str:
    text = e["text"].removeprefix(f"{e['verdict']}: ")
    if e.get("censoring"):
        text += f"; {e['censoring']}"
    return text


CLAIMS = kit.register_claims(
    "convergence",
    kit.ClaimRule(
        "bn-accelerates-convergence",
        f"BN accelerates convergence: with BN the d2l LeNet reaches a stated training loss in "
        f"fewer steps, each arm at its best learning rate ({SENTENCE})",
        SOURCE,
        "declared ClaimSpec (bnlab.lab.stats): primary metric steps until the 50-step moving "
        "average of the training loss reaches 0.6 (censored at the 2,340-step budget), BN "
        "against no BN, direction lower, paired by seed, TOST margin ±234 steps (one epoch), "
        "at least 5 seeds, runs within 2 points of chance excluded; each arm at the lr of the "
        "grid 0.1/0.3/1/3 with the lowest final training loss on tuning seed 1000; "
        "'supported' becomes 'inconclusive' if a BN seed is censored.",
        convergence_rule,
        _measured,
        sentence=SENTENCE,
        literature=Literature(
            "Ioffe & Szegedy 2015, 'Batch Normalization', arXiv 1502.03167, section 4.2, "
            "figure 2 and table 2",
            "Inception on ImageNet, SGD with momentum, BN-Inception with the learning rate "
            "raised and dropout removed",
            "BN-x5 reached Inception's 72.2% accuracy in 2.1M steps against 31.0M (14 times "
            "fewer); BN-Baseline (same lr) in 13.3M",
            "supported",
            "ours: the 4-norm sigmoid LeNet on Fashion-MNIST, 10 epochs, lrs from a 4-value "
            "grid; theirs: Inception trained to convergence with other changes beside BN",
        ),
    ),
)

SPEC = register_lab(
    kit.paired.tuned_lab(
        name="convergence",
        title="Steps to a training loss and a test accuracy, LeNet with and without BN",
        summary=(
            "Tests the seeds' headline claim 'BN accelerates convergence': d2l's sigmoid LeNet "
            "with and without BN, SGD batch 256, 2,340 steps (10 epochs), each arm at its best "
            "lr from 0.1/0.3/1/3 (lowest final training loss on a separate tuning seed); 5 "
            "paired seeds; primary metric the steps until the 50-step moving-average training "
            "loss reaches 0.6 (censored at the budget), secondary the steps to 75% test "
            "accuracy on the full test set and both in seconds; paired t interval, TOST margin "
            "one epoch."
        ),
        config_type=ConvergenceConfig,
        full_time=(
            "about 11 min on 2 quiet CPU cores (18 runs of 2,340 steps; a timed sub-run of 4 "
            "runs x 780 steps: 48 s of CPU, 1:53 wall at load ~7)"
        ),
    )
)
