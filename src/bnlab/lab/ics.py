"""``bnlab lab ics``: does batch normalization reduce internal covariate shift?

Internal covariate shift (ICS) is the change of the distribution of a layer's input
while the layers before it train. Ioffe & Szegedy ("Batch Normalization: Accelerating
Deep Network Training by Reducing Internal Covariate Shift", arXiv 1502.03167) give its
reduction as BN's motivation, and two seeds repeat it (``000_3d8114077ba70cad.txt``,
``002_adae9b0709a5d84d.txt``); the d2l chapter (``004_deb69101c4c8736e.txt``) calls it
the inventors' informal hypothesis. Santurkar, Tsipras, Ilyas & Madry ("How Does Batch
Normalization Help Optimization?", arXiv 1805.11604) found that BN does not reduce ICS
in their gradient sense, and that BN with noise injected after it (more shift, on
purpose) still trains as well as BN.

Design (second edition, issue 17). The first edition compared a learning network with
one that did not move (the sigmoid LeNet without BN at lr 0.9 stayed at chance), so
every network is now trained, two ways (the settings):

- ``relu``: the d2l LeNet with ReLU, every arm at the same lr (``common_lr`` 0.1): a
  recipe that trains all arms, so no step-size difference enters the measures;
- ``sigmoid``: d2l's sigmoid LeNet, each arm at its own lr from the grid ``lrs``
  (0.3, 1, 3, 10), chosen before the measured runs on a separate tuning seed (1000):
  the lr with the lowest final training loss; a diverged run is never chosen, a choice
  at the grid's edge is flagged.

Arms: ``none`` (no norm), ``bn`` (BN before every activation), ``bn-noise`` (BN with a
random per-channel scale ``s`` (log-uniform in [1/2, 2]) and shift ``b`` (uniform in
[-1, 1]) after every BN layer, redrawn every step: Santurkar et al.'s "noisy BN",
section 2.1; probes and evaluation run without noise). SGD at batch 128 on the 60,000
training images, the lr held for the first 75% of the steps then decayed linearly to 0;
5 paired seeds (the same initial weights and data order in every arm); the full
10,000-image test set once at the end.

Measures, recorded along training:

1. Distribution drift (the seeds' definition). Every ``probe_every`` steps a fixed
   probe batch of training images goes through a train-mode copy of the network; the
   input of every weight layer but the first is summarized per channel (mean, std).
   The drift of an interval is ``mean_c(|mu_c' - mu_c| + |sd_c' - sd_c|) / S`` (the
   1-Wasserstein distance of same-shaped distributions, in units of ``S``, the std of
   the layer's input at the earlier probe), averaged over layers.
2. Gradient ICS (Santurkar et al., section 2.2). Every ``grad_every`` steps, per
   weight layer but the first, ``G`` = the gradient of the loss with respect to the
   layer's weight on the step's batch, ``G'`` = the same after every earlier layer
   took the step's SGD update (the lr in use); reported ``cos(G, G')`` (1: no shift)
   and ``||G - G'|| / ||G||``, averaged over layers.

Reading (declared): **at matched training loss (primary)**: the mean of the
measurements taken in the ``read_steps`` (100) steps from the first step where the
run's moving-average training loss (last ``window`` = 25 mini-batches) reaches
``loss_level`` (0.8), so every arm is compared at the same progress; a run that never
reaches it has no value there (excluded, listed). **At matched step (secondary, shown)**:
the mean over the whole run.

Claims (``specs``; Holm over the three, paired t by seed, TOST margins):

- ``bn-reduces-ics``: log drift at matched loss, BN lower than none; margin ln 1.25
  (a drift ratio within 0.8-1.25 is too small to matter).
- ``bn-reduces-gradient-ics``: ``cos(G, G')`` at matched loss, BN higher than none;
  margin 0.05 (of the cosine: an angle change of a few degrees near cos 0.9 is too
  small to matter).
- ``bn-benefit-survives-covariate-shift``: final test accuracy (%), noisy BN higher
  than none; margin 1 point (about three times the paired test-sampling noise of the
  10,000 test images).

A seed whose final test accuracy is within 2 points of chance (10 %) never left chance
and is excluded from every claim (``stats.ChanceRule``), and shown as such.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import kit, stats
from bnlab.lab.claims import Literature, spec_record, stats_rule
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.kit import matched
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.plots.ics import plot_drift_vs_loss, plot_grad_ics
from bnlab.train.steps import StepState, every

__all__ = [
    "ARMS",
    "CLAIMS",
    "ICSConfig",
    "distribution_drift",
    "gradient_shift",
    "main_grid",
    "measure",
    "noisy_outputs",
    "read_metrics",
    "specs",
    "train_run",
    "tune_grid",
]

#: arm -> the model registry's norm.
ARMS: dict[str, str] = {"none": "none", "bn": kit.BN_NORM, "bn-noise": kit.BN_NORM}
ACC = "final_test_acc"
CHANCE = kit.paired.chance_near(ACC)
TUNE_RULE = (
    "settings {tuned}: each arm's lr is the grid value of {grid} with the lowest final "
    "training loss (mean of the last {window} steps' moving averages) on the separate tuning "
    "seed {seed}, same steps and schedule as the measured runs; a non-finite loss is never "
    "chosen; other settings: every arm at lr {common}"
)


# --- measures -------------------------------------------------------------------------


def _channel_moments(x: Tensor) -> tuple[Tensor, Tensor, float]:
    """Per-channel mean and (biased) std over every dim but 1, and the std of all of ``x``.

    Shape:
        ``(N, C, *) -> (C,), (C,), float``.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    mean = x.mean(dim=dims)
    std = x.var(dim=dims, unbiased=False).sqrt()
    return mean, std, float(x.std(unbiased=False))


def distribution_drift(
    before: tuple[Tensor, Tensor, float], after: tuple[Tensor, Tensor, float]
) -> float:
    """How far a layer input's per-channel distributions moved, in units of its spread.

    ``mean_c(|mu_c' - mu_c| + |sd_c' - sd_c|) / S``, where ``S`` is the std of all the
    layer's input values at the earlier probe: the 1-Wasserstein distance between two
    distributions of the same shape is ``|mu' - mu| + |sd' - sd|``; dividing by ``S``
    makes the drift independent of the layer's scale (sigmoid and ReLU layers compare)
    without blowing up on single collapsed channels.

    Args:
        before, after: ``(mean (C,), std (C,), S)`` at two probes (``_channel_moments``).

    Returns:
        The drift (0 when nothing moved; inf when the layer was constant before and moved).
    """
    mu0, sd0, spread = before
    mu1, sd1, _ = after
    moved = float(((mu1 - mu0).abs() + (sd1 - sd0).abs()).mean())
    if spread <= 0:
        return 0.0 if moved == 0 else math.inf
    return moved / spread


def gradient_shift(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    layers: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Santurkar et al.'s ICS: how much a layer's gradient changes when earlier layers step.

    For each weight layer ``i`` (``layers``; default every weight layer but the first):
    ``G`` = d loss / d ``W_i`` at the current parameters, ``G'`` = the same after every
    parameter registered before ``W_i`` moved by ``-lr`` times its gradient on the same
    batch. The model is evaluated functionally: its parameters and buffers are unchanged.

    Args:
        model: in the mode to measure (train mode: BN uses batch statistics).
        x, y: the batch.
        lr: the SGD step of the earlier layers.
        loss_fn: ``loss_fn(output, y)`` (default cross-entropy).
        layers: names of weight layers to measure.

    Returns:
        layer name -> ``{"l2": ||G - G'||, "rel": ||G - G'|| / ||G||, "cos": cos(G, G')}``.
    """
    wl = kit.weight_layers(model)
    names = list(wl)[1:] if layers is None else list(layers)
    params, buffers = kit.detached_state(model)
    order = list(params)
    grads = dict(
        zip(order, kit.loss_and_grad(model, params, buffers, x, y, loss_fn)[1], strict=True)
    )
    out: dict[str, dict[str, float]] = {}
    for name in names:
        key = f"{name}.weight"
        if key not in params:
            raise ValueError(f"gradient_shift: {name!r} is not a weight layer of the model")
        earlier = set(order[: order.index(key)])
        shifted = {n: (p - lr * grads[n] if n in earlier else p) for n, p in params.items()}
        w = shifted[key].clone().requires_grad_(True)
        shifted[key] = w
        (g_after,) = torch.autograd.grad(kit.loss_at(model, shifted, buffers, x, y, loss_fn), [w])
        g = grads[key]
        diff = float((g - g_after).norm())
        gn, an = float(g.norm()), float(g_after.norm())
        cos = float((g * g_after).sum()) / (gn * an) if gn > 0 and an > 0 else math.nan
        out[name] = {"l2": diff, "rel": diff / gn if gn > 0 else math.nan, "cos": cos}
    return out


@contextmanager
def noisy_outputs(
    layers: Mapping[str, nn.Module],
    *,
    shift: float,
    scale: float,
    generator: torch.Generator,
) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """Apply one random per-channel affine map ``y -> s * y + b`` to each layer's output.

    One ``(s, b)`` per channel and layer is drawn on entry (so entering once per step
    gives noise that changes every step): ``log s`` uniform in
    ``[-log scale, log scale]``, ``b`` uniform in ``[-shift, shift]``. The hooks are
    removed on exit, also after an error.

    Args:
        layers: name -> module whose output (``(N, C, *)``) is perturbed.
        shift: half-width of the shift's range (>= 0).
        scale: the scale's range is ``[1/scale, scale]`` (>= 1).
        generator: CPU generator for the draws.

    Yields:
        name -> the ``(s, b)`` drawn, each ``(C,)``.

    Raises:
        ValueError: ``shift`` < 0 or ``scale`` < 1.
    """
    if shift < 0 or scale < 1:
        raise ValueError(
            f"noisy_outputs: need shift >= 0 and scale >= 1, got shift={shift}, scale={scale}"
        )
    drawn: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    try:
        for name, module in layers.items():
            c = module.num_features
            log_s = (torch.rand(c, generator=generator) * 2 - 1) * math.log(scale)
            b = (torch.rand(c, generator=generator) * 2 - 1) * shift
            drawn[name] = (log_s.exp(), b)

            def hook(mod: nn.Module, inputs: Any, output: Tensor, name: str = name) -> Tensor:
                s, b = drawn[name]
                shape = (1, -1) + (1,) * (output.dim() - 2)
                return output * s.to(output).view(shape) + b.to(output).view(shape)

            handles.append(module.register_forward_hook(hook))
        yield drawn
    finally:
        for handle in handles:
            handle.remove()


# --- the experiment -------------------------------------------------------------------


@dataclass(frozen=True)
class ICSConfig(matched.MatchedConfig):
    """Settings of ``bnlab lab ics`` (defaults: the full run).

    Args:
        seeds, train_size, test_size, min_seeds, threads, steps, batch, hold, window,
            loss_level, read_steps, probe_every, probe_size: ``kit.matched.MatchedConfig``
            (5 paired seeds, all images, ReLU 800 and sigmoid 2,000 steps of batch 128,
            loss level 0.8 read over 100 steps, probes of 256 images every 10 steps).
        tuned: settings whose arms each take their own lr from ``lrs`` (``TUNE_RULE``).
        lrs: the tuning grid.
        tune_seed: the separate seed of the tuning runs.
        common_lr: the lr of every arm in the settings not tuned.
        grad_every: steps between gradient-ICS measurements.
        noise_shift, noise_scale: the noisy-BN ranges.
        drift_margin, cos_margin, acc_margin: the claims' equivalence margins (log drift
            ratio, cosine, test-accuracy points).
    """

    # The lrs: tuned settings from the grid on the tuning seed, the others at common_lr.
    tuned: tuple[str, ...] = ("sigmoid",)
    lrs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    tune_seed: int = 1000
    common_lr: float = 0.1
    # The measures and the noisy BN arm.
    grad_every: int = 25
    noise_shift: float = 1.0
    noise_scale: float = 2.0
    # The claims' margins.
    drift_margin: float = math.log(1.25)
    cos_margin: float = 0.05
    acc_margin: float = 1.0

    #: A smoke test: 2 seeds (below min_seeds: no verdict), 30 steps, two lrs.
    QUICK = matched.MatchedConfig.quick_settings(
        lrs=(0.3, 1.0), test_size=500, read_steps=15, probe_size=64, grad_every=10
    )
    POSITIVE = (
        *matched.MatchedConfig.POSITIVE,
        *("common_lr", "grad_every", "drift_margin", "cos_margin", "acc_margin"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for act in self.tuned:
            if act not in self.settings:
                raise ValueError(
                    f"{owner}: tuned setting {act!r} is not in steps' settings {self.settings!r}"
                )
        if self.tuned and (not self.lrs or any(not lr > 0 for lr in self.lrs)):
            raise ValueError(f"{owner}: lrs must be positive values, got {self.lrs!r}")
        if self.noise_scale < 1 or self.noise_shift < 0:
            raise ValueError(
                f"{owner}: need noise_scale >= 1 and noise_shift >= 0, got "
                f"{self.noise_scale} and {self.noise_shift}"
            )


def _declare(config: ICSConfig, rows: Sequence[tuple[str, str, Any, str, str, float]]) -> list:
    """``(name, metric, direction, arm, reference, margin)`` rows as ClaimSpecs over every
    setting, with the chance rule."""
    return [
        kit.paired.claim_spec(
            config, name, metric, direction, arm, ref, config.settings, chance_metric=ACC, margin=m
        )
        for name, metric, direction, arm, ref, m in rows
    ]


def specs(config: ICSConfig) -> list[stats.ClaimSpec]:
    """The three claims, declared before the run (see the module docstring)."""
    return _declare(
        config,
        [
            ("bn-reduces-ics", "log_drift_at_loss", "lower", "bn", "none", config.drift_margin),
            (
                "bn-reduces-gradient-ics",
                "grad_cos_at_loss",
                "higher",
                "bn",
                "none",
                config.cos_margin,
            ),
            (
                "bn-benefit-survives-covariate-shift",
                ACC,
                "higher",
                "bn-noise",
                "none",
                config.acc_margin,
            ),
        ],
    )


def shown_specs(config: ICSConfig) -> list[stats.ClaimSpec]:
    """Secondary comparisons: shown with their intervals, not voted (their own Holm
    family): the claims' measures at matched step, and noisy BN against BN."""
    drift, cos, acc = config.drift_margin, config.cos_margin, config.acc_margin
    return _declare(
        config,
        [
            ("drift at matched step", "log_drift_run", "lower", "bn", "none", drift),
            ("grad cos at matched step", "grad_cos_run", "higher", "bn", "none", cos),
            (
                "noisy BN drifts more (matched loss)",
                "log_drift_at_loss",
                "higher",
                "bn-noise",
                "bn",
                drift,
            ),
            ("noisy BN vs BN, test accuracy", ACC, "differs", "bn-noise", "bn", acc),
        ],
    )


def tune_grid(config: ICSConfig) -> Grid | None:
    """The tuning runs of the tuned settings: (setting, lr) x arm on the tuning seed
    (units ``tune-SETTING-lrLR-ARM``); None when no setting is tuned."""
    if not config.tuned:
        return None
    return kit.paired.tune_grid(config.tuned, ARMS, config.lrs, config.tune_seed)


def main_grid(config: ICSConfig) -> Grid:
    """The measured runs: setting by setting, seed x arm (units ``SETTING-ARM-seedN``)."""
    return kit.paired.measured_grid(
        ARMS, config.seeds, config.settings, order=("setting", "seed", "variant")
    )


def train_run(config: ICSConfig, cell: Cell, lr: float, bench: Bench, *, probes: bool) -> dict:
    """One LeNet run of ``cell`` (setting: LeNet's activation; arm; seed) for
    ``config.steps_of(setting)`` SGD steps at ``lr`` (held, then decayed to 0), with the
    drift and gradient-ICS measures as hooks when ``probes``.

    Returns:
        ``loss_ma`` (per step), and with ``probes``: ``drift`` (``{"steps", "values"}``
        per probe interval, by its start step), ``grad`` (``{"steps", "layers": {name:
        [{"l2", "rel", "cos"}]}}``), ``final_test_acc`` (%).
    """
    arm = cell.variant
    with matched.lenet_run(config, cell.setting, ARMS[arm], lr, cell.seed, bench) as run:
        model = run.model
        probe_x = kit.probe_batch(bench.data, config.probe_size, bench.device)
        watched = list(kit.weight_layers(model))[1:]
        norms = kit.norm_layers(model)
        previous: dict[str, tuple[Tensor, Tensor, float]] = {}
        drift: dict[str, list[Any]] = {"steps": [], "values": []}
        grad: dict[str, Any] = {"steps": [], "layers": {n: [] for n in watched}}

        def probe(step: int) -> None:  # measure 1
            seen = kit.probe_copy(model, probe_x, watched)
            moved = []
            for name, x in seen.items():
                moments = _channel_moments(x)
                if name in previous:
                    moved.append(distribution_drift(previous[name], moments))
                previous[name] = moments
            if moved:
                drift["steps"].append(step - config.probe_every)
                drift["values"].append(kit.json_float(sum(moved) / len(moved)))

        def grad_shift(state: StepState) -> None:  # measure 2
            got = gradient_shift(model, state.x, state.y, run.opt.param_groups[0]["lr"])
            for name, m in got.items():
                grad["layers"][name].append({k: kit.json_float(v) for k, v in m.items()})
            grad["steps"].append(state.step)

        def noisy(model: nn.Module, x: Tensor) -> Tensor:
            with noisy_outputs(
                norms, shift=config.noise_shift, scale=config.noise_scale, generator=run.generator
            ):
                return model(x)

        hooks = [
            every(config.probe_every, lambda s: probe(s.step)),
            every(config.grad_every, grad_shift),
        ]
        run.train(on_batch=hooks if probes else [], forward=noisy if arm == "bn-noise" else None)
        out: dict[str, Any] = {"loss_ma": [kit.json_float(v) for v in run.loss_ma.values]}
        if probes:
            if run.steps % config.probe_every == 0:
                probe(run.steps)
            out.update(drift=drift, grad=grad, final_test_acc=run.test_accuracy())
    return out


def _log(x: float | None) -> float | None:
    return math.log(x) if x is not None and x > 0 else None


def read_metrics(config: ICSConfig, run: Mapping[str, Any]) -> dict[str, Any]:
    """The per-run numbers the claims read: each measure at matched loss (the
    ``read_steps`` from the first step the moving-average loss reaches
    ``loss_level``) and over the whole run (matched step), final loss and accuracy."""
    loss_ma = [math.nan if v is None else v for v in run["loss_ma"]]
    reach = matched.first_reach(loss_ma, config.loss_level)
    grad = run["grad"]
    per_step = list(zip(*grad["layers"].values(), strict=True))  # layers -> steps
    cos = [kit.finite_mean(m["cos"] for m in ms) for ms in per_step]
    rel = [kit.finite_mean(m["rel"] for m in ms) for ms in per_step]

    def at_loss(steps: Sequence[int], values: Sequence[Any]) -> float | None:
        return matched.window_mean(steps, values, reach, config.read_steps)

    drift_at_loss = at_loss(run["drift"]["steps"], run["drift"]["values"])
    whole = kit.finite_mean(run["drift"]["values"])
    return {
        "steps_to_level": reach,
        "drift_at_loss": drift_at_loss,
        "log_drift_at_loss": _log(drift_at_loss),
        "drift_run": whole,
        "log_drift_run": _log(whole),
        "grad_cos_at_loss": at_loss(grad["steps"], cos),
        "grad_cos_run": kit.finite_mean(cos),
        "grad_rel_at_loss": at_loss(grad["steps"], rel),
        "grad_rel_run": kit.finite_mean(rel),
        "final_train_loss": _final_loss(run["loss_ma"]),
        ACC: run[ACC],
    }


def _final_loss(loss_ma: Sequence[float | None]) -> float | None:
    """The mean of the last 50 moving averages; None if one is not finite (diverged)."""
    tail = [math.nan if v is None else v for v in loss_ma[-50:]]
    if not tail or not all(math.isfinite(v) for v in tail):
        return None
    return sum(tail) / len(tail)


def _tune_cell(config: ICSConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    setting, lr = cell.setting
    got = train_run(config, dataclasses.replace(cell, setting=setting), lr, bench, probes=False)
    return {"lr": lr, "final_train_loss": _final_loss(got["loss_ma"])}


def _lr(config: ICSConfig, lrs: Mapping[str, Mapping[str, float | None]], setting: str, arm: str):
    return lrs[setting][arm] if setting in config.tuned else config.common_lr


def measure(
    config: ICSConfig, lrs: Mapping[str, Mapping[str, float | None]], cell: Cell, bench: Bench
) -> dict[str, Any]:
    """One measured run of ``cell`` (setting, arm, seed) at its lr: the curves and
    ``read_metrics``."""
    lr = _lr(config, lrs, cell.setting, cell.variant)
    if lr is None:  # every tuning lr diverged
        return {"lr": None, "metrics": None}
    got = train_run(config, cell, lr, bench, probes=True)
    thin = max(1, config.steps_of(cell.setting) // 200)
    return {
        "lr": lr,
        "metrics": read_metrics(config, got),
        "loss_ma": {"every": thin, "values": got["loss_ma"][thin - 1 :: thin]},
        "drift": {
            **got["drift"],
            "loss": [got["loss_ma"][s - 1] if s >= 1 else None for s in got["drift"]["steps"]],
        },
        "grad": got["grad"],
    }


# --- summary --------------------------------------------------------------------------

_EMPTY = dict.fromkeys(
    (
        "steps_to_level",
        "drift_at_loss",
        "log_drift_at_loss",
        "drift_run",
        "log_drift_run",
        "grad_cos_at_loss",
        "grad_cos_run",
        "grad_rel_at_loss",
        "grad_rel_run",
        "final_train_loss",
        ACC,
    )
)
_COLUMNS = [
    ("steps to loss level", "steps_to_level"),
    ("drift at loss (1)", "drift_at_loss"),
    ("drift, whole run (1)", "drift_run"),
    ("grad cos at loss (2)", "grad_cos_at_loss"),
    ("grad cos, whole run (2)", "grad_cos_run"),
    ("grad rel. change at loss (2)", "grad_rel_at_loss"),
    ("final train loss", "final_train_loss"),
    ("final test acc %", ACC),
]
_UNIT = "(ln drift, cosine, points)"


def summarize(
    config: ICSConfig, ctx: LabContext, run: GridRun, tuned: kit.paired.Tuned
) -> LabOutcome:
    """Tables, verdicts and figures of the finished runs."""
    per_seed = run.per_seed(lambda r: r["metrics"] or _EMPTY)
    raw: dict[str, Any] = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in specs(config)],
        **tuned.record(
            config,
            "final training loss",
            tune_rule=TUNE_RULE.format(
                tuned=", ".join(config.tuned) or "none",
                grid="/".join(f"{lr:g}" for lr in config.lrs),
                window=50,
                seed=config.tune_seed,
                common=config.common_lr,
            ),
            lr={s: {a: _lr(config, tuned.lrs, s, a) for a in ARMS} for s in config.settings},
        ),
        "loss_level": config.loss_level,
        "read_steps": config.read_steps,
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)
    raw["claims"] = list(evidences.values())
    raw["shown"] = stats.evaluate_experiment(shown_specs(config), per_seed)
    tables = []
    if tuned.values:
        tables.append(
            tuned.table(
                "Learning-rate tuning (final training loss on the tuning seed; the lowest "
                "is chosen)",
                ["setting", "arm"],
                config.lrs,
                [
                    ((s, a), by, tuned.lr(s, a))
                    for s, arms in tuned.values.items()
                    for a, by in arms.items()
                ],
            )
        )
    excluded = [
        [
            s,
            a,
            seed,
            "never left chance" if at_chance else "trained",
            _NEVER if reach is None else reach,
            acc,
        ]
        for s, a, seed, reach, acc, at_chance in matched.excluded_runs(
            per_seed, config.settings, ARMS, CHANCE
        )
    ]
    raw["excluded_runs"] = excluded
    tables += [
        matched.arm_table(
            f"Per arm (mean ± std over seeds; 'at loss': the {config.read_steps} steps from "
            f"the first step the {config.window}-step moving-average training loss reaches "
            f"{config.loss_level:g})",
            per_seed,
            raw["lr"],
            _COLUMNS,
            config.settings,
            ARMS,
        ),
        kit.paired.claims_table(raw["claims"], _UNIT, 3),
        matched.shown_table(
            "Shown, not voted (their own Holm family): the measures at matched step, noisy "
            "BN against BN",
            raw["shown"],
            _UNIT,
        ),
        Table(
            "Runs excluded from a claim (at chance: from every claim; never at the loss "
            "level: from the matched-loss claims)",
            ["setting", "arm", "seed", "status", "steps to loss level", "final test acc %"],
            excluded or [["-", "-", "-", "none excluded", "-", "-"]],
        ),
    ]
    _figures(config, ctx, run, per_seed)
    notes = [
        raw["tune_rule"],
        f"SGD batch {config.batch}, "
        + ", ".join(f"{s}: {n} steps" for s, n in config.steps)
        + f"; lr held for {config.hold:.0%} of the steps, then linear to 0",
        f"noisy BN: per step and channel s log-uniform in [1/{config.noise_scale:g}, "
        f"{config.noise_scale:g}], b uniform in [-{config.noise_shift:g}, "
        f"{config.noise_shift:g}]; probes and evaluation without noise",
    ]
    if raw["lr_at_grid_edge"]:
        edges = ", ".join(raw["lr_at_grid_edge"])
        notes.append(f"lr chosen at the grid's edge (the best may lie beyond): {edges}")
    return LabOutcome(
        tables=tables, verdicts=verdicts, figures=_captions(config), raw=raw, notes=notes
    )


_NEVER = "never reached the loss level"


def _figures(config: ICSConfig, ctx: LabContext, run: GridRun, per_seed: Mapping[str, Any]) -> None:
    """The three figures (captions: :func:`_captions`)."""
    out = ctx.out_dir
    matched.plot_primary(
        per_seed,
        "log_drift_at_loss",
        config.settings,
        ARMS,
        out / "ics_matched.png",
        ylabel="ln drift per probe interval, at matched loss",
        what="layer-input drift",
        level=config.loss_level,
    )
    curves = {
        field: {
            s: {
                a: [r[field] for r in run.select(setting=s, variant=a) if r.get(field)]
                for a in ARMS
            }
            for s in config.settings
        }
        for field in ("drift", "grad")
    }
    plot_drift_vs_loss(curves["drift"], out / "ics_drift_vs_loss.png", level=config.loss_level)
    plot_grad_ics(
        curves["grad"], {s: f"LeNet ({s})" for s in config.settings}, out / "ics_gradient.png"
    )


def _captions(config: ICSConfig) -> list[Figure]:
    return [
        Figure(
            "ics_matched.png",
            "Primary metric: ln of the mean drift of the weight layers' input distributions "
            f"per {config.probe_every}-step probe interval, read in the {config.read_steps} "
            f"steps after the training loss first reaches {config.loss_level:g}; per setting, "
            "one point per seed (a seed's arms joined), mean ± 95% t interval",
        ),
        Figure(
            "ics_drift_vs_loss.png",
            "Drift per probe interval against the moving-average training loss at its start "
            "(one line per seed; dashed: the matched loss level): the arms compared at equal "
            "progress",
        ),
        Figure(
            "ics_gradient.png",
            "Gradient ICS: cosine between a layer's gradient before and after the earlier "
            "layers' SGD step, per layer over training (mean over seeds)",
        ),
    ]


_SANTURKAR = (
    "Santurkar, Tsipras, Ilyas & Madry 2018, 'How Does Batch Normalization Help "
    "Optimization?', arXiv 1805.11604"
)
_OURS = (
    "ours: d2l's LeNet (ReLU at one lr; sigmoid at each arm's tuned lr) on Fashion-MNIST, "
    "800-2,000 SGD steps, 5 paired seeds, read at matched training loss"
)

CLAIMS = kit.register_claims(
    "ics",
    kit.ClaimRule(
        "bn-reduces-ics",
        "BN reduces internal covariate shift: each layer's input distribution drifts less "
        "during training with BN (在深度模型中,批量归一化被应用到每一层的激活函数之前,以稳定网络"
        "的中间输出。这种做法可以减少内部协变量位移)",
        "000_3d8114077ba70cad.txt",
        "declared ClaimSpec (bnlab.lab.stats): primary metric ln of the mean drift "
        "(mean_c(|d mu_c| + |d sd_c|) / S per 10-step probe interval, averaged over the "
        "weight layers' inputs but the first) in the 100 steps after the 25-step "
        "moving-average training loss first reaches 0.8 (matched loss; the whole-run mean "
        "at matched step is shown, not voted), BN against no BN, direction lower, per "
        "setting (ReLU LeNet at lr 0.1 for all arms; sigmoid LeNet at each arm's lr tuned "
        "on seed 1000 from 0.3/1/3/10), paired by seed, Holm over the experiment's 3 "
        "claims, TOST margin ±ln 1.25, at least 5 seeds; runs within 2 points of chance "
        "or never at the loss level excluded",
        stats_rule("bn-reduces-ics"),
        kit.paired.measured_text,
        sentence="在深度模型中,批量归一化被应用到每一层的激活函数之前,以稳定网络的中间输出。"
        "这种做法可以减少内部协变量位移(Internal Covariate Shift),即随着网络深度增加,每一层"
        "输入分布的变化。",
        literature=Literature(
            "Ioffe & Szegedy 2015, 'Batch Normalization', arXiv 1502.03167, figure 1(b, c); "
            + _SANTURKAR
            + ", figure 2",
            "Ioffe: a 3-layer sigmoid MLP on MNIST, the 15/50/85th percentiles of one "
            "last-layer sigmoid input over training; Santurkar: VGG on CIFAR-10, layer "
            "activation histograms with BN, noisy BN and no BN",
            "Ioffe: the percentiles drift without BN and stay nearly fixed with BN (figure "
            "only, no numbers); Santurkar: noisy BN shows drifting distributions yet trains "
            "like BN, so less drift is not why BN helps",
            "supported",
            _OURS + "; theirs a figure at matched step, not a test",
        ),
    ),
    kit.ClaimRule(
        "bn-reduces-gradient-ics",
        "BN reduces internal covariate shift in the gradient sense: a layer's gradient "
        "changes less when the earlier layers take their update (Santurkar et al.'s "
        "definition of ICS)",
        "from the literature",
        "declared ClaimSpec: primary metric cos(G, G') (G: the gradient of a weight "
        "layer's weight on the step's batch; G': the same after every earlier layer took "
        "the step's SGD update), averaged over the weight layers but the first and over "
        "the measurements (every 25 steps) in the 100 steps after the training loss first "
        "reaches 0.8, BN against no BN, direction higher, per setting as bn-reduces-ics, "
        "paired by seed, Holm over the 3 claims, TOST margin ±0.05, at least 5 seeds",
        stats_rule("bn-reduces-gradient-ics"),
        kit.paired.measured_text,
        literature=Literature(
            _SANTURKAR + ", section 2.2, figure 3",
            "VGG on CIFAR-10 and a 25-layer deep linear network, trained with and without "
            "BN at their standard learning rates",
            "the gradient change (l2 difference and cosine between G and G') of BN networks "
            "is as large as or larger than without BN; for the deep linear network the "
            "cosine with BN is near 0 while without BN it stays near 1 (figure only)",
            "refuted",
            _OURS,
        ),
    ),
    kit.ClaimRule(
        "bn-benefit-survives-covariate-shift",
        "BN's benefit does not come from less covariate shift: BN with random time-varying "
        "shifts and scales after each BN still trains better than no BN",
        "from the literature",
        "declared ClaimSpec: primary metric final test accuracy (%, full 10,000-image "
        "test set, lr decayed to 0 at the end), noisy BN against no BN, direction higher, "
        "per setting as bn-reduces-ics (noisy BN tuned on its own in the sigmoid setting), "
        "paired by seed, Holm over the 3 claims, TOST margin ±1 point, at least 5 seeds; "
        "noisy BN against BN is shown, not voted",
        stats_rule("bn-benefit-survives-covariate-shift"),
        kit.paired.measured_text,
        literature=Literature(
            _SANTURKAR + ", section 2.1, figure 2",
            "VGG on CIFAR-10 with random time-varying means and variances injected after "
            "every BN layer",
            "noisy BN reaches about the training and test accuracy of BN and clearly more "
            "than the network without BN (figure only; unverified numbers)",
            "supported",
            _OURS + "; our noise is a per-channel scale in [1/2, 2] and shift in [-1, 1]",
        ),
    ),
)

SPEC = register_lab(
    kit.paired.tuned_lab(
        name="ics",
        title="Internal covariate shift, with and without BN, at matched training loss",
        summary=(
            "Does BN reduce internal covariate shift? d2l's LeNet with ReLU (every arm at lr "
            "0.1) and with sigmoid (each arm at its lr tuned on a separate seed from "
            "0.3/1/3/10), no BN / BN / noisy BN (Santurkar et al. section 2.1), SGD batch "
            "128 on 60,000 images (800 and 2,000 steps, lr decayed to 0 over the last "
            "quarter), 5 paired seeds, full test set. Measures along training: the drift of "
            "each layer's input distribution on a fixed probe batch, and Santurkar et al.'s "
            "gradient ICS (arXiv 1805.11604, section 2.2), read at matched training loss "
            "(primary: the 100 steps after the moving-average loss reaches 0.8) and over "
            "the whole run. Three declared claims, paired t, Holm, TOST."
        ),
        config_type=ICSConfig,
        tune=(tune_grid, _tune_cell),
        full_time=(
            "about 6 min on 2 quiet CPU cores with --workers 2 (42 runs, ~690 CPU-s: 800 "
            "ReLU steps with probes ~9 s of CPU, 2,000 sigmoid steps ~25 s, tuning runs "
            "without probes ~15 s; timed on single runs under load, 2026-11-27)"
        ),
        measure=(main_grid, measure),
        criterion="final_train_loss",
        steps=lambda config, data: config.steps_of,
        summarize=summarize,
    )
)
