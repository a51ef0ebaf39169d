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

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import kit, stats
from bnlab.lab.claims import Literature, spec_record, stats_rule
from bnlab.lab.experiment import (
    Figure,
    LabContext,
    LabOutcome,
    LabSpec,
    Table,
    register_lab,
    seeded,
)
from bnlab.lab.kit import matched
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, run_grid
from bnlab.models.lenet import LeNet
from bnlab.plots.ics import plot_drift_vs_loss, plot_grad_ics, plot_matched
from bnlab.train import init_weights
from bnlab.train.steps import StepState, every, run_steps

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
CHANCE = stats.ChanceRule("final_test_acc", level=10.0, tolerance=2.0)
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
class ICSConfig(kit.PairedConfig):
    """Settings of ``bnlab lab ics`` (defaults: the full run).

    Args:
        seeds, train_size, test_size, min_seeds, threads: ``kit.PairedConfig`` (5 paired
            seeds, all images, 1 thread per cell).
        steps: ``((activation, SGD steps), ...)``: the settings (LeNet's activation) and
            each one's step budget.
        tuned: settings whose arms each take their own lr from ``lrs`` (``TUNE_RULE``).
        lrs: the tuning grid.
        tune_seed: the separate seed of the tuning runs.
        common_lr: the lr of every arm in the settings not tuned.
        hold: the fraction of the steps at constant lr before the linear decay to 0.
        batch: SGD batch.
        window: mini-batch losses in the training-loss moving average.
        loss_level: the matched training loss (moving average) where measures are read.
        read_steps: the steps from the first reach of ``loss_level`` whose measurements
            are averaged.
        probe_every, probe_size: steps between distribution probes; probe images.
        grad_every: steps between gradient-ICS measurements.
        noise_shift, noise_scale: the noisy-BN ranges.
        drift_margin, cos_margin, acc_margin: the claims' equivalence margins (log drift
            ratio, cosine, test-accuracy points).
    """

    steps: tuple[tuple[str, int], ...] = (("relu", 800), ("sigmoid", 2000))
    tuned: tuple[str, ...] = ("sigmoid",)
    lrs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    tune_seed: int = 1000
    common_lr: float = 0.1
    hold: float = 0.75
    batch: int = 128
    window: int = 25
    loss_level: float = 0.8
    read_steps: int = 100
    probe_every: int = 10
    probe_size: int = 256
    grad_every: int = 25
    noise_shift: float = 1.0
    noise_scale: float = 2.0
    drift_margin: float = math.log(1.25)
    cos_margin: float = 0.05
    acc_margin: float = 1.0

    #: A smoke test: 2 seeds (below min_seeds: no verdict), 30 steps, two lrs.
    QUICK = kit.PairedConfig.quick_settings(
        steps=(("relu", 30), ("sigmoid", 30)),
        lrs=(0.3, 1.0),
        train_size=2048,
        test_size=500,
        window=5,
        loss_level=2.2,
        read_steps=15,
        probe_every=5,
        probe_size=64,
        grad_every=10,
    )

    def __post_init__(self) -> None:
        owner = type(self).__name__
        kit.check_positive(
            owner,
            self,
            (
                "seeds",
                "common_lr",
                "batch",
                "window",
                "loss_level",
                "read_steps",
                "probe_every",
                "probe_size",
                "grad_every",
                "drift_margin",
                "cos_margin",
                "acc_margin",
            ),
        )
        if not self.steps:
            raise ValueError(f"{owner}: steps is empty; give ((activation, steps), ...)")
        for act, n in self.steps:
            if act not in ("relu", "sigmoid", "tanh"):
                raise ValueError(
                    f"{owner}: unknown activation {act!r} in steps; choose relu, sigmoid, tanh"
                )
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{owner}: steps of {act!r} must be an integer >= 1, got {n!r}")
        for act in self.tuned:
            if act not in self.settings:
                raise ValueError(
                    f"{owner}: tuned setting {act!r} is not in steps' settings {self.settings!r}"
                )
        if self.tuned and (not self.lrs or any(not lr > 0 for lr in self.lrs)):
            raise ValueError(f"{owner}: lrs must be positive values, got {self.lrs!r}")
        if not 0.0 <= self.hold <= 1.0:
            raise ValueError(f"{owner}: hold must be in [0, 1], got {self.hold!r}")
        if self.noise_scale < 1 or self.noise_shift < 0:
            raise ValueError(
                f"{owner}: need noise_scale >= 1 and noise_shift >= 0, got "
                f"{self.noise_scale} and {self.noise_shift}"
            )

    @property
    def settings(self) -> tuple[str, ...]:
        """The settings (LeNet activations), in order."""
        return tuple(act for act, _ in self.steps)

    def steps_of(self, setting: str) -> int:
        return dict(self.steps)[setting]


def specs(config: ICSConfig) -> list[stats.ClaimSpec]:
    """The three claims, declared before the run (see the module docstring)."""
    common = {"min_seeds": config.min_seeds, "chance": CHANCE, "settings": config.settings}
    return [
        stats.ClaimSpec(
            name="bn-reduces-ics",
            metric="log_drift_at_loss",
            direction="lower",
            arm="bn",
            reference="none",
            margin=config.drift_margin,
            **common,
        ),
        stats.ClaimSpec(
            name="bn-reduces-gradient-ics",
            metric="grad_cos_at_loss",
            direction="higher",
            arm="bn",
            reference="none",
            margin=config.cos_margin,
            **common,
        ),
        stats.ClaimSpec(
            name="bn-benefit-survives-covariate-shift",
            metric="final_test_acc",
            direction="higher",
            arm="bn-noise",
            reference="none",
            margin=config.acc_margin,
            **common,
        ),
    ]


def shown_specs(config: ICSConfig) -> list[stats.ClaimSpec]:
    """Secondary comparisons: shown with their intervals, not voted (their own Holm
    family): the claims' measures at matched step, and noisy BN against BN."""
    common = {"min_seeds": config.min_seeds, "chance": CHANCE, "settings": config.settings}
    return [
        stats.ClaimSpec(
            "drift at matched step",
            "log_drift_run",
            "lower",
            "bn",
            "none",
            config.drift_margin,
            **common,
        ),
        stats.ClaimSpec(
            "grad cos at matched step",
            "grad_cos_run",
            "higher",
            "bn",
            "none",
            config.cos_margin,
            **common,
        ),
        stats.ClaimSpec(
            "noisy BN drifts more (matched loss)",
            "log_drift_at_loss",
            "higher",
            "bn-noise",
            "bn",
            config.drift_margin,
            **common,
        ),
        stats.ClaimSpec(
            "noisy BN vs BN, test accuracy",
            "final_test_acc",
            "differs",
            "bn-noise",
            "bn",
            config.acc_margin,
            **common,
        ),
    ]


def tune_grid(config: ICSConfig, setting: str) -> Grid:
    """The tuning runs of a tuned setting: lr x arm on the tuning seed (units
    ``tune-SETTING-lrLR-ARM``)."""
    return Grid(
        variants=tuple(ARMS),
        seeds=(config.tune_seed,),
        settings=[(setting, float(lr)) for lr in config.lrs],
        key=lambda c: f"tune-{c.setting[0]}-lr{c.setting[1]:g}-{c.variant}",
        order=("setting", "variant", "seed"),
    )


def main_grid(config: ICSConfig, setting: str) -> Grid:
    """The measured runs of one setting: arm x seed (units ``SETTING-ARM-seedN``)."""
    return Grid(
        variants=tuple(ARMS),
        seeds=config.seeds,
        settings=(setting,),
        order=("seed", "variant", "setting"),
    )


def _data(config: ICSConfig, data: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return config.subsets(data, "ics")


def train_run(
    config: ICSConfig,
    setting: str,
    arm: str,
    lr: float,
    seed: int,
    bench: Bench,
    *,
    probes: bool,
) -> dict[str, Any]:
    """One LeNet run of ``config.steps_of(setting)`` SGD steps at ``lr`` (held, then
    decayed to 0), with the drift and gradient-ICS measures as hooks when ``probes``.

    Returns:
        ``loss_ma`` (per step), and with ``probes``: ``drift`` (``{"steps", "values"}``
        per probe interval, by its start step), ``grad`` (``{"steps", "layers": {name:
        [{"l2", "rel", "cos"}]}}``), ``final_test_acc`` (%).
    """
    data, device = bench.data, bench.device
    steps = config.steps_of(setting)
    with kit.cpu_threads(config.threads), seeded(seed) as gen:
        model = LeNet(ARMS[arm], activation=setting)
        init_weights(model, seed)
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, matched.hold_then_decay(steps, config.hold)
        )
        loss_ma = matched.LossAverage(config.window)
        probe_x = kit.probe_batch(data, config.probe_size, device)
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
            got = gradient_shift(model, state.x, state.y, opt.param_groups[0]["lr"])
            for name, m in got.items():
                grad["layers"][name].append({k: kit.json_float(v) for k, v in m.items()})
            grad["steps"].append(state.step)

        def noisy(model: nn.Module, x: Tensor) -> Tensor:
            with noisy_outputs(
                norms, shift=config.noise_shift, scale=config.noise_scale, generator=gen
            ):
                return model(x)

        def on_step(s: StepState) -> None:
            loss_ma.add(s.loss_value)
            schedule.step()
            bench.advance(1)

        hooks = (
            [
                every(config.probe_every, lambda s: probe(s.step)),
                every(config.grad_every, grad_shift),
            ]
            if probes
            else []
        )
        run_steps(
            model,
            kit.batches(data["train_images"], data["train_labels"], config.batch, seed, device),
            opt,
            steps=steps,
            loss_fn=F.cross_entropy,
            forward=noisy if arm == "bn-noise" else None,
            on_batch=hooks,
            on_step=on_step,
        )
        out: dict[str, Any] = {"loss_ma": [kit.json_float(v) for v in loss_ma.values]}
        if probes:
            if steps % config.probe_every == 0:
                probe(steps)
            out.update(
                drift=drift,
                grad=grad,
                final_test_acc=100.0 * kit.accuracy_on_test(model, data, device),
            )
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
    drift_steps, drift = run["drift"]["steps"], run["drift"]["values"]
    at_loss = matched.window_mean(drift_steps, drift, reach, config.read_steps)
    whole = kit.finite_mean(drift)
    return {
        "steps_to_level": reach,
        "drift_at_loss": at_loss,
        "log_drift_at_loss": _log(at_loss),
        "drift_run": whole,
        "log_drift_run": _log(whole),
        "grad_cos_at_loss": matched.window_mean(grad["steps"], cos, reach, config.read_steps),
        "grad_cos_run": kit.finite_mean(cos),
        "grad_rel_at_loss": matched.window_mean(grad["steps"], rel, reach, config.read_steps),
        "grad_rel_run": kit.finite_mean(rel),
        "final_train_loss": _final_loss(run["loss_ma"]),
        "final_test_acc": run["final_test_acc"],
    }


def _final_loss(loss_ma: Sequence[float | None]) -> float | None:
    """The mean of the last 50 moving averages; None if one is not finite (diverged)."""
    tail = [math.nan if v is None else v for v in loss_ma[-50:]]
    if not tail or not all(math.isfinite(v) for v in tail):
        return None
    return sum(tail) / len(tail)


def _tune_cell(config: ICSConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    setting, lr = cell.setting
    got = train_run(config, setting, cell.variant, lr, cell.seed, bench, probes=False)
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
    got = train_run(config, cell.setting, cell.variant, lr, cell.seed, bench, probes=True)
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


def run(config: ICSConfig, ctx: LabContext) -> LabOutcome:
    """Tune the tuned settings' lrs, then the measured runs, setting by setting."""
    data = _data(config, ctx.data)
    total = sum(config.steps_of(s) * len(config.lrs) * len(ARMS) for s in config.tuned)
    total += sum(config.steps_of(s) * config.seeds * len(ARMS) for s in config.settings)
    ctx.progress.start(total, "ics")
    tuning: dict[str, dict[str, dict[float, Any]]] = {}
    for setting in config.tuned:
        done = run_grid(
            ctx,
            tune_grid(config, setting),
            partial(_tune_cell, config),
            data=data,
            steps=config.steps_of(setting),
        )
        for cell, result in done:
            by_lr = tuning.setdefault(setting, {}).setdefault(cell.variant, {})
            by_lr[result["lr"]] = result["final_train_loss"]
    lrs = kit.paired.choose_lrs(tuning)
    runs = [
        run_grid(
            ctx,
            main_grid(config, s),
            partial(measure, config, lrs),
            data=data,
            steps=config.steps_of(s),
        )
        for s in config.settings
    ]
    return summarize(config, ctx, runs, tuning, lrs)


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
        "final_test_acc",
    )
)


def summarize(
    config: ICSConfig,
    ctx: LabContext,
    runs: Sequence[GridRun],
    tuning: Mapping[str, Mapping[str, Mapping[float, Any]]],
    lrs: Mapping[str, Mapping[str, float | None]],
) -> LabOutcome:
    """Tables, verdicts and figures of the finished runs."""
    per_seed: dict[str, Any] = {}
    results: dict[str, dict[str, list[Any]]] = {}
    for grid_run in runs:
        per_seed.update(grid_run.per_seed(lambda r: r["metrics"] or _EMPTY))
        for cell, r in grid_run:
            results.setdefault(str(cell.setting), {}).setdefault(cell.variant, []).append(r)
    declared = specs(config)
    edges = [
        f"{s}/{a}"
        for s, arms in lrs.items()
        for a, lr in arms.items()
        if lr is not None and len(config.lrs) > 1 and lr in (min(config.lrs), max(config.lrs))
    ]
    raw: dict[str, Any] = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in declared],
        "tuning": {
            s: {a: {repr(lr): v for lr, v in by.items()} for a, by in arms.items()}
            for s, arms in tuning.items()
        },
        "tune_rule": TUNE_RULE.format(
            tuned=", ".join(config.tuned) or "none",
            grid="/".join(f"{lr:g}" for lr in config.lrs),
            window=50,
            seed=config.tune_seed,
            common=config.common_lr,
        ),
        "lr": {s: {a: _lr(config, lrs, s, a) for a in ARMS} for s in config.settings},
        "lr_at_grid_edge": edges,
        "loss_level": config.loss_level,
        "read_steps": config.read_steps,
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)
    raw["claims"] = list(evidences.values())
    shown = stats.evaluate_experiment(shown_specs(config), per_seed)
    raw["shown"] = shown
    tables = []
    if tuning:
        tables.append(
            Table(
                "Learning-rate tuning (final training loss on the tuning seed; the lowest "
                "is chosen)",
                ["setting", "arm", *(f"lr={lr:g}" for lr in config.lrs), "chosen lr"],
                [
                    [s, a, *(kit.json_float(by.get(float(lr))) for lr in config.lrs), lrs[s][a]]
                    for s, arms in tuning.items()
                    for a, by in arms.items()
                ],
            )
        )
    columns = [
        ("steps to loss level", "steps_to_level"),
        ("drift at loss (1)", "drift_at_loss"),
        ("drift, whole run (1)", "drift_run"),
        ("grad cos at loss (2)", "grad_cos_at_loss"),
        ("grad cos, whole run (2)", "grad_cos_run"),
        ("grad rel. change at loss (2)", "grad_rel_at_loss"),
        ("final train loss", "final_train_loss"),
        ("final test acc %", "final_test_acc"),
    ]
    tables.append(
        Table(
            f"Per arm (mean ± std over seeds; 'at loss': the {config.read_steps} steps from "
            f"the first step the {config.window}-step moving-average training loss reaches "
            f"{config.loss_level:g})",
            ["setting", "arm", "lr", *(h for h, _ in columns)],
            [
                [s, a, raw["lr"][s][a], *(kit.mean_std_cell(m.get(k, [])) for _, k in columns)]
                for s, arms in per_seed.items()
                for a, m in arms.items()
            ],
        )
    )
    declared_table = kit.paired.claims_table(raw["claims"], "(ln drift, cosine, points)", 3)
    shown_table = kit.paired.claims_table(shown, "(ln drift, cosine, points)", 3)
    tables += [
        declared_table,
        Table(
            "Shown, not voted (their own Holm family): the measures at matched step, noisy "
            "BN against BN",
            shown_table.columns,
            shown_table.rows,
        ),
    ]
    excluded = []
    for s, arms in per_seed.items():
        for a, m in arms.items():
            for seed, (reach, acc) in enumerate(
                zip(m["steps_to_level"], m["final_test_acc"], strict=True)
            ):
                at_chance = acc is None or abs(acc - CHANCE.level) <= CHANCE.tolerance
                if reach is None or at_chance:
                    excluded.append(
                        [
                            s,
                            a,
                            seed,
                            "never left chance" if at_chance else "trained",
                            "never reached the loss level" if reach is None else reach,
                            acc,
                        ]
                    )
    raw["excluded_runs"] = excluded
    tables.append(
        Table(
            "Runs excluded from a claim (at chance: from every claim; never at the loss "
            "level: from the matched-loss claims)",
            ["setting", "arm", "seed", "status", "steps to loss level", "final test acc %"],
            excluded or [["-", "-", "-", "none excluded", "-", "-"]],
        )
    )
    out = ctx.out_dir
    plot_matched(
        {s: {a: m["log_drift_at_loss"] for a, m in arms.items()} for s, arms in per_seed.items()},
        out / "ics_matched.png",
        ylabel="ln drift per probe interval, at matched loss",
        title=f"Primary: layer-input drift at training loss {config.loss_level:g} "
        "(points: seeds, joined; squares: mean ± 95% t interval)",
    )
    plot_drift_vs_loss(
        {
            s: {a: [r["drift"] for r in rs if r.get("drift")] for a, rs in arms.items()}
            for s, arms in results.items()
        },
        out / "ics_drift_vs_loss.png",
        level=config.loss_level,
    )
    plot_grad_ics(
        {
            s: {a: [r["grad"] for r in rs if r.get("grad")] for a, rs in arms.items()}
            for s, arms in results.items()
        },
        {s: f"LeNet ({s})" for s in results},
        out / "ics_gradient.png",
    )
    figures = [
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
    notes = [
        raw["tune_rule"],
        f"SGD batch {config.batch}, "
        + ", ".join(f"{s}: {n} steps" for s, n in config.steps)
        + f"; lr held for {config.hold:.0%} of the steps, then linear to 0",
        f"noisy BN: per step and channel s log-uniform in [1/{config.noise_scale:g}, "
        f"{config.noise_scale:g}], b uniform in [-{config.noise_shift:g}, "
        f"{config.noise_shift:g}]; probes and evaluation without noise",
    ]
    if edges:
        notes.append(f"lr chosen at the grid's edge (the best may lie beyond): {', '.join(edges)}")
    return LabOutcome(tables=tables, verdicts=verdicts, figures=figures, raw=raw, notes=notes)


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
    LabSpec(
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
        run=run,
        needs_data=True,
        full_time=(
            "about 6 min on 2 quiet CPU cores with --workers 2 (42 runs, ~690 CPU-s: 800 "
            "ReLU steps with probes ~9 s of CPU, 2,000 sigmoid steps ~25 s, tuning runs "
            "without probes ~15 s; timed on single runs under load, 2026-11-27)"
        ),
    )
)
