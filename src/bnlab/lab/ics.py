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
every network is now trained, three ways (the settings):

- ``relu``: the d2l LeNet with ReLU, no BN and BN at the same lr (``common_lr`` 0.1):
  a recipe that trains both, so no step-size difference enters the ICS measures; noisy
  BN at its own lr from ``noise_lrs`` (0.03, 0.1, 0.3, 1), tuned by the same rule;
- ``sigmoid``: d2l's sigmoid LeNet, each arm at its own lr from the grid ``lrs``
  (0.3, 1, 3, 10), chosen before the measured runs on a separate tuning seed (1000):
  the lr with the lowest final training loss; a diverged run is never chosen, a choice
  at the grid's edge is flagged.
- ``sigmoid-common``: the same sigmoid LeNet with every arm at one lr, 1 (added after
  the rerun at seeds 200-204, see below): the ICS claims are voted here and in ``relu``.

Arms: ``none`` (no norm), ``bn`` (BN before every activation), ``bn-noise`` (BN with a
random per-channel scale ``s`` (log-uniform in [1/2, 2]) and shift ``b`` (uniform in
[-1, 1]) after every BN layer, redrawn every step: Santurkar et al.'s "noisy BN",
section 2.1; its drift is probed twice, with a fresh noise draw per probe (what its
layers see) and without noise; gradient ICS and evaluation run without noise). SGD at batch 128 on the 60,000
training images, the lr held for the first 75% of the steps then decayed linearly to 0;
5 paired seeds (the same initial weights and data order in every arm); the full
10,000-image test set once at the end.

Measures, recorded along training:

1. Distribution drift (the seeds' definition). Every ``probe_every`` steps a fixed
   probe batch of 256 training images goes through a train-mode copy of the network;
   for the input of every weight layer but the first, the drift of an interval is
   ``mean_c W1(P_c, P_c') / S``: the 1-Wasserstein distance between channel c's
   empirical distributions at the two probes (:func:`w1_drift`), in units of ``S``, the
   std of the layer's input at the earlier probe, averaged over layers. Shown: the
   two-moment drift ``mean_c(|mu_c' - mu_c| + |sd_c' - sd_c|) / S``
   (:func:`distribution_drift`: W1 of same-shaped distributions only).
2. Gradient ICS (Santurkar et al., section 2.2). Every ``grad_every`` steps (every
   ``grad_every_at_loss`` = 5 in the matched-loss window, about 20 values), per
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

- ``bn-reduces-ics``: log W1 drift at matched loss, BN lower than none; margin ln 1.25
  (a drift ratio within 0.8-1.25 is too small to matter).
- ``bn-reduces-gradient-ics``: ``cos(G, G')`` at matched loss, BN higher than none;
  margin 0.05 (of the cosine: an angle change of a few degrees near cos 0.9 is too
  small to matter). The ReLU setting is the clean test: in the sigmoid setting each
  arm's earlier layers step at its own tuned lr, which moves ``G'`` by itself.
- ``noisy-bn-keeps-bn-benefit``: noisy BN's share of BN's accuracy gain per seed,
  ``(acc(noisy) - acc(none)) / (acc(BN) - acc(none))`` (final test accuracy),
  higher than 0.5; margin 0.25 (a quarter of BN's gain). Shown: noisy BN against no BN
  and against BN (margin 1 point, about three times the paired test-sampling noise of
  the 10,000 test images), and noisy BN's drift (as its layers see it, and without
  noise) against BN's.

A seed whose final test accuracy is within 2 points of chance (10 %) never left chance
and is excluded from every claim (``stats.ChanceRule``; from claim 3 by a missing
ratio), and shown as such.

Changed after the first full run (729b8eb, seeds 0-4) and the referee's report
(``docs/lab_referee_2.md``, section 3); the rerun takes fresh seeds (``first_seed``
200) so that its verdicts are not fit to the seeds that motivated the changes:

- gradient ICS rested on about 4 measurements per matched-loss window (every 25
  steps): now every 5 steps in the window (about 20), every 25 elsewhere;
- the drift measure was the first two per-channel moments, which BN fixes by
  construction (so "BN drifts less" partly checked what BN is built to do): the
  primary is now the per-channel W1 distance, which also sees changes of shape
  (Ioffe & Szegedy's percentiles); the two-moment drift is shown;
- noisy BN was probed without its noise, so its drift never showed the injected
  shift: it is now probed with a fresh draw per probe as well (shown against BN);
- claim 3 voted noisy BN > no BN, too weak for "BN's benefit survives" (a noisy BN
  with 20 % of BN's gain would pass): it now votes noisy BN's share of BN's gain
  against one half; and at the common lr 0.1 of the ReLU setting noisy BN had no lr
  of its own (80.4 % against 81.4 % without BN and 87.8 % with BN): it is now tuned
  there on ``noise_lrs`` (no BN and BN stay at 0.1 for the ICS measures, so in the
  ReLU setting noisy BN alone is tuned: an advantage to it, stated in the claim).

Changed after the rerun (1eccac6, seeds 200-204) and the referee's reading of it
(``docs/lab_referee_2.md``, section 3: the top remaining must-fix); fresh seeds
(``first_seed`` 300) again:

- the lr difference decided both ICS claims: with one lr (ReLU) BN reduced W1 drift
  (-0.47 [-0.69, -0.26]) and raised the gradient cosine (+0.19 [+0.12, +0.26]); with each
  arm at its own lr (sigmoid: BN at 3, no BN at 1) neither was decided. A third setting,
  ``sigmoid-common``, trains the same sigmoid LeNet with every arm (no BN, BN, noisy BN)
  at one common lr, 1 (no BN's tuned lr: it trains the no-BN sigmoid LeNet; BN's tuning
  loss there was 0.286 against 0.276 at its best lr 3). The two ICS claims are now voted
  in ``relu`` and ``sigmoid-common`` (``ics_settings``), the two settings without a
  step-size difference; the sigmoid setting at per-arm lrs is **shown, not voted**, for
  them: its ICS difference mixes BN's effect with a 3x larger step, which moves both
  the drift and ``G'`` by itself (referee, item 4). Claim 3 stays voted in ``relu`` and
  ``sigmoid`` (``gain_settings``): for accuracy each arm at its own tuned lr is the fair
  comparison; its ratio in ``sigmoid-common`` is shown;
- to keep the full run within ~8 minutes with the third setting (15 more 2,000-step
  runs), the sigmoid setting's tuning (12 runs, deterministic on the tuning seed 1000)
  is no longer rerun: its lrs are fixed (``arm_lrs``) at the choices that tuning made
  twice with the same losses (729b8eb and 1eccac6; none 1: 0.78 / **0.55** / 0.71 /
  2.31 at 0.3 / 1 / 3 / 10; BN 3: 0.309 / 0.286 / **0.276** / 0.310; noisy BN 3: 0.407
  / 0.368 / **0.337** / 0.399; all interior). The tuning code stays (the quick run
  tunes); ReLU noisy BN is still tuned on ``noise_lrs``.
"""

from __future__ import annotations

import dataclasses
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
from bnlab.lab.claims import Literature, spec_record
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.kit import matched
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.lab.stats_claims import stats_claim
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
    "tune_cell",
    "tune_grid",
]

#: arm -> the model registry's norm.
ARMS: dict[str, str] = {"none": "none", "bn": kit.BN_NORM, "bn-noise": kit.BN_NORM}
ACC = "final_test_acc"
CHANCE = kit.paired.chance_near(ACC)
#: The gain ratio of claim 3, and the constant "arm" it is compared with.
GAIN = "gain_ratio"
#: Noisy BN's probe noise comes from a generator of its own, seeded with this + the seed
#: (so probing leaves the training noise as it is).
PROBE_NOISE_SEED = 7_000_000
TUNE_RULE = (
    "settings {tuned}: each arm's lr is the grid value of {grid} with the lowest final "
    "training loss (mean of the last {window} steps' moving averages) on the separate tuning "
    "seed {seed}, same steps and schedule as the measured runs; a non-finite loss is never "
    "chosen; settings with fixed lrs (declared, from the earlier runs' tuning): {fixed}; "
    "common-lr settings (every arm, noisy BN too): {commons}; other settings: no BN and BN "
    "at lr {common}, noisy BN by the same rule on {noise_grid}"
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


def _channel_sorted(x: Tensor) -> tuple[Tensor, float]:
    """Each channel's values sorted (over every dim but 1), and the std of all of ``x``.

    Shape:
        ``(N, C, *) -> (C, N * prod(*)), float``.
    """
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    return per_channel.sort(dim=1).values, float(x.std(unbiased=False))


def w1_drift(before: tuple[Tensor, float], after: tuple[Tensor, float]) -> float:
    """How far a layer input's per-channel distributions moved: the 1-Wasserstein
    distance of each channel's empirical distributions, in units of the layer's spread.

    ``mean_c W1(P_c, P_c') / S``: for two samples of the same size, ``W1`` is the mean
    absolute difference of their sorted values; ``S`` is the std of all the layer's
    input values at the earlier probe. Unlike the two-moment drift
    (:func:`distribution_drift`), it also sees changes of shape (e.g. Ioffe & Szegedy's
    15/50/85th percentiles moving apart while the mean and std stay).

    Args:
        before, after: ``(sorted values (C, M), S)`` at two probes (``_channel_sorted``),
            the same ``M``.

    Returns:
        The drift (0 when nothing moved; inf when the layer was constant before and moved).

    Raises:
        ValueError: the two probes hold different shapes.
    """
    v0, spread = before
    v1, _ = after
    if v0.shape != v1.shape:
        raise ValueError(
            f"w1_drift: probes of different shapes {tuple(v0.shape)} and {tuple(v1.shape)}"
        )
    moved = float((v1 - v0).abs().mean())
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
            (5 paired seeds, all images, ReLU 800 and both sigmoid settings 2,000 steps of batch 128,
            loss level 0.8 read over 100 steps, probes of 256 images every 10 steps).
        first_seed: the measured seeds are ``first_seed`` onwards (300: fresh seeds for
            the run with the common-lr sigmoid setting; 0-4 and 200-204 before).
        tuned: settings whose arms each take their own lr from ``lrs`` (``TUNE_RULE``;
            none in the full run, ``sigmoid`` in the quick run).
        arm_lrs: ``(setting, arm, lr)``: fixed lrs (the sigmoid setting's, from the
            tuning of the earlier runs).
        common_lrs: ``(setting, lr)``: settings where every arm, noisy BN too, trains at
            one lr (``sigmoid-common`` at 1).
        ics_settings, gain_settings: the settings where the two ICS claims and claim 3 are
            voted (the others are shown).
        lrs: the tuning grid.
        tune_seed: the separate seed of the tuning runs.
        common_lr: the lr of every arm in the settings not tuned, except noisy BN's.
        noise_lrs: noisy BN's own tuning grid in the settings not tuned (empty: noisy BN
            at ``common_lr`` there too).
        grad_every: steps between gradient-ICS measurements.
        grad_every_at_loss: the same in the matched-loss window (``read_steps`` from the
            first reach of ``loss_level``).
        noise_shift, noise_scale: the noisy-BN ranges.
        drift_margin, cos_margin: the ICS claims' equivalence margins (log drift ratio,
            cosine).
        gain_level, gain_margin: claim 3's threshold on noisy BN's share of BN's accuracy
            gain, and its equivalence margin.
        acc_margin: the margin of the shown accuracy comparisons (points).
    """

    # The lrs: tuned settings from the grid on the tuning seed, fixed ones as given, the
    # others at their common lr.
    steps: tuple[tuple[str, int], ...] = (
        ("relu", 800),
        ("sigmoid", 2000),
        ("sigmoid-common", 2000),
    )
    first_seed: int = 300
    tuned: tuple[str, ...] = ()
    arm_lrs: tuple[tuple[str, str, float], ...] = (
        ("sigmoid", "none", 1.0),
        ("sigmoid", "bn", 3.0),
        ("sigmoid", "bn-noise", 3.0),
    )
    common_lrs: tuple[tuple[str, float], ...] = (("sigmoid-common", 1.0),)
    ics_settings: tuple[str, ...] = ("relu", "sigmoid-common")
    gain_settings: tuple[str, ...] = ("relu", "sigmoid")
    lrs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    tune_seed: int = 1000
    common_lr: float = 0.1
    noise_lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    # The measures and the noisy BN arm.
    grad_every: int = 25
    grad_every_at_loss: int = 5
    noise_shift: float = 1.0
    noise_scale: float = 2.0
    # The claims' margins.
    drift_margin: float = math.log(1.25)
    cos_margin: float = 0.05
    gain_level: float = 0.5
    gain_margin: float = 0.25
    acc_margin: float = 1.0

    #: A smoke test: 2 seeds (below min_seeds: no verdict), 30 steps, two lrs.
    QUICK = matched.MatchedConfig.quick_settings(
        **{"lrs": (0.3, 1.0), "noise_lrs": (0.1, 0.3), "first_seed": 0, "test_size": 500},
        **{"steps": (("relu", 30), ("sigmoid", 30), ("sigmoid-common", 30))},
        **{"tuned": ("sigmoid",), "arm_lrs": ()},
        **{"read_steps": 15, "probe_size": 64, "grad_every": 10, "grad_every_at_loss": 5},
    )
    POSITIVE = (
        *matched.MatchedConfig.POSITIVE,
        *("common_lr", "grad_every", "grad_every_at_loss", "drift_margin", "cos_margin"),
        *("gain_level", "gain_margin", "acc_margin"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for act in self.tuned:
            if act not in self.settings:
                raise ValueError(
                    f"{owner}: tuned setting {act!r} is not in steps' settings {self.settings!r}"
                )
        for what, named in (
            ("arm_lrs", [s for s, _, _ in self.arm_lrs]),
            ("common_lrs", [s for s, _ in self.common_lrs]),
            ("ics_settings", self.ics_settings),
            ("gain_settings", self.gain_settings),
        ):
            for s in named:
                if s not in self.settings:
                    raise ValueError(
                        f"{owner}: {what} names setting {s!r}, not in steps' settings "
                        f"{self.settings!r}"
                    )
        if any(a not in ARMS or not lr > 0 for _, a, lr in self.arm_lrs) or any(
            not lr > 0 for _, lr in self.common_lrs
        ):
            raise ValueError(
                f"{owner}: arm_lrs and common_lrs need known arms and positive lrs, got "
                f"{self.arm_lrs!r} and {self.common_lrs!r}"
            )
        if self.tuned and (not self.lrs or any(not lr > 0 for lr in self.lrs)):
            raise ValueError(f"{owner}: lrs must be positive values, got {self.lrs!r}")
        if any(not lr > 0 for lr in self.noise_lrs):
            raise ValueError(f"{owner}: noise_lrs must be positive values, got {self.noise_lrs!r}")
        if self.noise_scale < 1 or self.noise_shift < 0:
            raise ValueError(
                f"{owner}: need noise_scale >= 1 and noise_shift >= 0, got "
                f"{self.noise_scale} and {self.noise_shift}"
            )


def _declare(
    config: ICSConfig,
    rows: Sequence[tuple[str, str, Any, str, str, float]],
    settings: Sequence[str] | None = None,
) -> list:
    """``(name, metric, direction, arm, reference, margin)`` rows as ClaimSpecs over
    ``settings`` (default: every setting), with the chance rule."""
    over = tuple(config.settings if settings is None else settings)
    return [
        kit.paired.claim_spec(
            config, name, metric, direction, arm, ref, over, chance_metric=ACC, margin=m
        )
        for name, metric, direction, arm, ref, m in rows
    ]


def _not_voted(config: ICSConfig, voted: Sequence[str]) -> tuple[str, ...]:
    return tuple(s for s in config.settings if s not in voted)


def specs(config: ICSConfig) -> list[stats.ClaimSpec]:
    """The three claims, declared before the run (see the module docstring)."""
    return [
        *_declare(
            config,
            [
                ("bn-reduces-ics", "log_w1_at_loss", "lower", "bn", "none", config.drift_margin),
                (
                    "bn-reduces-gradient-ics",
                    "grad_cos_at_loss",
                    "higher",
                    "bn",
                    "none",
                    config.cos_margin,
                ),
            ],
            config.ics_settings,
        ),
        # The gain ratio is None for a seed where any of the three runs is at chance.
        *kit.paired.claim_specs(
            config,
            GAIN,
            [("noisy-bn-keeps-bn-benefit", "higher", "noisy-gain", "level", config.gain_settings)],
            chance=None,
            margin=config.gain_margin,
        ),
    ]


def shown_specs(config: ICSConfig) -> list[stats.ClaimSpec]:
    """Secondary comparisons: shown with their intervals, not voted (their own Holm
    family): the two-moment drift (the first run's primary), the measures at matched
    step, the drift noisy BN's next layers see and its noise-free drift against BN's,
    and noisy BN's accuracy against none and against BN; and the voted claims in the settings
    where they are not voted (the sigmoid setting at per-arm lrs for the ICS claims)."""
    drift, cos, acc = config.drift_margin, config.cos_margin, config.acc_margin
    off_ics, off_gain = (
        _not_voted(config, config.ics_settings),
        _not_voted(config, config.gain_settings),
    )
    extra = []
    if off_ics:
        extra += _declare(
            config,
            [
                (
                    "W1 drift at matched loss, not voted here",
                    "log_w1_at_loss",
                    "lower",
                    "bn",
                    "none",
                    drift,
                ),
                (
                    "grad cos at matched loss, not voted here",
                    "grad_cos_at_loss",
                    "higher",
                    "bn",
                    "none",
                    cos,
                ),
            ],
            off_ics,
        )
    if off_gain:
        extra += kit.paired.claim_specs(
            config,
            GAIN,
            [("noisy BN's gain ratio, not voted here", "higher", "noisy-gain", "level", off_gain)],
            chance=None,
            margin=config.gain_margin,
        )
    return extra + _declare(
        config,
        [
            ("two-moment drift (matched loss)", "log_drift_at_loss", "lower", "bn", "none", drift),
            ("W1 drift at matched step", "log_w1_run", "lower", "bn", "none", drift),
            ("grad cos at matched step", "grad_cos_run", "higher", "bn", "none", cos),
            (
                "noisy BN drifts more, as its layers see it (with noise, matched loss)",
                "log_w1_seen_at_loss",
                "higher",
                "bn-noise",
                "bn",
                drift,
            ),
            (
                "noisy BN drifts more, probed without noise (matched loss)",
                "log_w1_at_loss",
                "higher",
                "bn-noise",
                "bn",
                drift,
            ),
            ("noisy BN beats no BN, test accuracy", ACC, "higher", "bn-noise", "none", acc),
            ("noisy BN vs BN, test accuracy", ACC, "differs", "bn-noise", "bn", acc),
        ],
    )


def gain_ratios(per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]]) -> list:
    """Noisy BN's share of BN's accuracy gain per seed, ``(acc(noisy) - acc(none)) /
    (acc(BN) - acc(none))``, from one setting's ``arm -> metric -> [per seed]``; None
    where a run is missing or at chance (``CHANCE``), or BN gained nothing (<= 0)."""
    out: list[float | None] = []
    for noisy, none, bn in zip(
        per_seed["bn-noise"][ACC], per_seed["none"][ACC], per_seed["bn"][ACC], strict=True
    ):
        at_chance = any(
            v is None or abs(v - CHANCE.level) <= CHANCE.tolerance for v in (noisy, none, bn)
        )
        if at_chance or bn - none <= 0:
            out.append(None)
        else:
            out.append((noisy - none) / (bn - none))
    return out


def _noise_tuned(config: ICSConfig, setting: str) -> bool:
    """Whether noisy BN takes its own lr from ``noise_lrs`` in ``setting``: not in a tuned
    setting, a common-lr setting (``common_lrs``) or one with noisy BN's lr fixed."""
    fixed = {(s, a) for s, a, _ in config.arm_lrs}
    return (
        setting not in config.tuned
        and setting not in dict(config.common_lrs)
        and (setting, "bn-noise") not in fixed
        and bool(config.noise_lrs)
    )


def _tune_include(config: ICSConfig, cell: Cell) -> bool:
    setting = cell.setting[0]
    return setting in config.tuned or (cell.variant == "bn-noise" and _noise_tuned(config, setting))


def tune_grid(config: ICSConfig) -> Grid | None:
    """The tuning runs on the tuning seed (units ``tune-SETTING-lrLR-ARM``): every arm
    on ``lrs`` in the tuned settings, noisy BN on ``noise_lrs`` in the others; None when
    nothing is tuned."""
    grids = {s: config.lrs for s in config.settings if s in config.tuned}
    grids |= {s: config.noise_lrs for s in config.settings if _noise_tuned(config, s)}
    if not grids:
        return None
    grid = kit.paired.tune_grid(tuple(grids), ARMS, grids, config.tune_seed)
    return dataclasses.replace(grid, include=partial(_tune_include, config))


def main_grid(config: ICSConfig) -> Grid:
    """The measured runs: setting by setting, seed x arm (units ``SETTING-ARM-seedN``)."""
    return kit.paired.measured_grid(
        ARMS, config.seed_list, config.settings, order=("setting", "seed", "variant")
    )


def train_run(config: ICSConfig, cell: Cell, lr: float, bench: Bench, *, probes: bool) -> dict:
    """One LeNet run of ``cell`` (setting: LeNet's activation; arm; seed) for
    ``config.steps_of(setting)`` SGD steps at ``lr`` (held, then decayed to 0), with the
    drift and gradient-ICS measures as hooks when ``probes``.

    Drift: every ``probe_every`` steps, the probe batch through a train-mode copy of
    the network, without noise (``values``: two-moment drift; ``w1``: W1 drift) and, for
    noisy BN, also with a fresh noise draw from a generator of its own (``w1_seen``: the
    drift the next layers see; the same as ``w1`` for the arms without noise). Gradient
    ICS: every ``grad_every`` steps, and every ``grad_every_at_loss`` steps in the
    ``read_steps`` steps from the first reach of ``loss_level`` (the matched-loss window,
    known online).

    Returns:
        ``loss_ma`` (per step), and with ``probes``: ``drift`` (``{"steps", "values",
        "w1", "w1_seen"}`` per probe interval, by its start step), ``grad`` (``{"steps",
        "layers": {name: [{"l2", "rel", "cos"}]}}``), ``final_test_acc`` (%).
    """
    arm = cell.variant
    with matched.lenet_run(config, cell.setting, ARMS[arm], lr, cell.seed, bench) as run:
        model = run.model
        probe_x = kit.probe_batch(bench.data, config.probe_size, bench.device)
        watched = list(kit.weight_layers(model))[1:]
        norms = kit.norm_layers(model)
        probe_noise = torch.Generator().manual_seed(PROBE_NOISE_SEED + cell.seed)
        previous: dict[str, dict[str, Any]] = {}
        drift: dict[str, list[Any]] = {"steps": [], "values": [], "w1": [], "w1_seen": []}
        grad: dict[str, Any] = {"steps": [], "layers": {n: [] for n in watched}}

        def noisy_probe() -> dict[str, Tensor]:
            with noisy_outputs(
                norms, shift=config.noise_shift, scale=config.noise_scale, generator=probe_noise
            ):  # the hooks travel with probe_copy's deep copy
                return kit.probe_copy(model, probe_x, watched)

        def probe(step: int) -> None:  # measure 1
            clean = kit.probe_copy(model, probe_x, watched)
            seen = noisy_probe() if arm == "bn-noise" else None
            moved: dict[str, list[float]] = {"values": [], "w1": [], "w1_seen": []}
            for name, x in clean.items():
                now = {"moments": _channel_moments(x), "sorted": _channel_sorted(x)}
                now["seen"] = _channel_sorted(seen[name]) if seen is not None else now["sorted"]
                if name in previous:
                    before = previous[name]
                    moved["values"].append(distribution_drift(before["moments"], now["moments"]))
                    moved["w1"].append(w1_drift(before["sorted"], now["sorted"]))
                    moved["w1_seen"].append(w1_drift(before["seen"], now["seen"]))
                previous[name] = now
            if moved["values"]:
                drift["steps"].append(step - config.probe_every)
                for key, got in moved.items():
                    drift[key].append(kit.json_float(sum(got) / len(got)))

        reached: list[int] = []  # the first step the loss level is reached, once it is

        def grad_shift(state: StepState) -> None:  # measure 2
            values = run.loss_ma.values
            last = values[-1] if values else math.nan
            if not reached and math.isfinite(last) and last <= config.loss_level:
                reached.append(len(values))  # as matched.first_reach, online
            reach = reached[0] if reached else None
            in_window = reach is not None and reach <= state.step < reach + config.read_steps
            period = config.grad_every_at_loss if in_window else config.grad_every
            if state.step % period:
                return
            got = gradient_shift(model, state.x, state.y, run.opt.param_groups[0]["lr"])
            for name, m in got.items():
                grad["layers"][name].append({k: kit.json_float(v) for k, v in m.items()})
            grad["steps"].append(state.step)

        def noisy(model: nn.Module, x: Tensor) -> Tensor:
            with noisy_outputs(
                norms, shift=config.noise_shift, scale=config.noise_scale, generator=run.generator
            ):
                return model(x)

        hooks = [every(config.probe_every, lambda s: probe(s.step)), grad_shift]
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

    drift = run["drift"]
    out: dict[str, Any] = {"steps_to_level": reach}
    for key, name in (("values", "drift"), ("w1", "w1"), ("w1_seen", "w1_seen")):
        at, whole = at_loss(drift["steps"], drift[key]), kit.finite_mean(drift[key])
        out.update(
            {
                f"{name}_at_loss": at,
                f"log_{name}_at_loss": _log(at),
                f"{name}_run": whole,
                f"log_{name}_run": _log(whole),
            }
        )
    in_window = [
        s for s in grad["steps"] if reach is not None and reach <= s < reach + config.read_steps
    ]
    return {
        **out,
        "grad_n_at_loss": len(in_window) if reach is not None else None,
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


def tune_cell(config: ICSConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """A tuning run of ``cell`` (setting ``(setting, lr)``) without probes: its final loss."""
    setting, lr = cell.setting
    got = train_run(config, dataclasses.replace(cell, setting=setting), lr, bench, probes=False)
    return {"lr": lr, "final_train_loss": _final_loss(got["loss_ma"])}


def _lr(config: ICSConfig, lrs: kit.paired.ChosenLrs, setting: str, arm: str):
    fixed = {(s, a): lr for s, a, lr in config.arm_lrs}
    if (setting, arm) in fixed:
        return fixed[setting, arm]
    if setting in dict(config.common_lrs):
        return dict(config.common_lrs)[setting]
    if setting in config.tuned or (arm == "bn-noise" and _noise_tuned(config, setting)):
        return lrs[setting][arm]
    return config.common_lr


def measure(
    config: ICSConfig, lrs: kit.paired.ChosenLrs, cell: Cell, bench: Bench
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
        *(
            f"{log}{name}_{when}"
            for name in ("drift", "w1", "w1_seen")
            for log in ("", "log_")
            for when in ("at_loss", "run")
        ),
        "grad_n_at_loss",
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
    ("W1 drift at loss (1)", "w1_at_loss"),
    ("W1 drift as seen, with noise, at loss (1)", "w1_seen_at_loss"),
    ("W1 drift, whole run (1)", "w1_run"),
    ("two-moment drift at loss (1)", "drift_at_loss"),
    ("grad ICS measurements at loss (2)", "grad_n_at_loss"),
    ("grad cos at loss (2)", "grad_cos_at_loss"),
    ("grad cos, whole run (2)", "grad_cos_run"),
    ("grad rel. change at loss (2)", "grad_rel_at_loss"),
    ("final train loss", "final_train_loss"),
    ("final test acc %", ACC),
]
_UNIT = "(ln drift, cosine, gain ratio, points)"


def summarize(
    config: ICSConfig, ctx: LabContext, run: GridRun, tuned: kit.paired.Tuned
) -> LabOutcome:
    """Tables, verdicts and figures of the finished runs."""
    per_seed = run.per_seed(missing=_EMPTY)
    for s in config.settings:  # claim 3: noisy BN's share of BN's gain, against the level
        ratios = gain_ratios(per_seed[s])
        per_seed[s]["noisy-gain"] = {GAIN: ratios}
        per_seed[s]["level"] = {GAIN: [config.gain_level] * len(ratios)}
    lr = {s: {a: _lr(config, tuned.lrs, s, a) for a in ARMS} for s in config.settings}
    raw: dict[str, Any] = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in specs(config)],
        **tuned.record(
            config,
            "final training loss",
            tune_rule=TUNE_RULE.format(
                tuned=", ".join(config.tuned) or "none",
                grid="/".join(f"{v:g}" for v in config.lrs),
                window=50,
                seed=config.tune_seed,
                common=config.common_lr,
                noise_grid="/".join(f"{v:g}" for v in config.noise_lrs) or "-",
                fixed=", ".join(f"{s} {a} {v:g}" for s, a, v in config.arm_lrs) or "none",
                commons=", ".join(f"{s} at {v:g}" for s, v in config.common_lrs) or "none",
            ),
            lr=lr,
            lr_at_grid_edge=[
                *kit.paired.at_edge(config.lrs, {s: lr[s] for s in config.tuned}),
                *kit.paired.at_edge(
                    config.noise_lrs,
                    {
                        s: {"bn-noise": lr[s]["bn-noise"]}
                        for s in config.settings
                        if _noise_tuned(config, s)
                    },
                ),
            ],
        ),
        "loss_level": config.loss_level,
        "read_steps": config.read_steps,
    }
    verdicts = kit.decide(raw, CLAIMS)
    raw["shown"] = stats.evaluate_experiment(shown_specs(config), per_seed)
    tables = []
    if tuned.values:
        tables.append(
            tuned.table(
                "Learning-rate tuning (final training loss on the tuning seed; the lowest "
                "is chosen; '-': not on this setting's grid)",
                ["setting", "arm"],
                sorted(set(config.lrs) | set(config.noise_lrs)),
                [tuned.row(s, a, (s, a)) for s, arms in tuned.values.items() for a in arms],
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
            per_seed, config.settings, ARMS, CHANCE, config.first_seed
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
            "Shown, not voted (their own Holm family): the two-moment drift, the measures at "
            "matched step, noisy BN's drift against BN's, noisy BN's accuracy",
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
        f"{config.noise_shift:g}]; its drift is probed with a fresh noise draw per probe "
        "(as its layers see it) and without noise; gradient ICS and evaluation without noise",
        "claim 3's gain ratio per seed: (acc(noisy BN) - acc(none)) / (acc(BN) - acc(none)) "
        f"against {config.gain_level:g}; "
        + ", ".join(
            f"{s}: "
            + ", ".join("-" if v is None else f"{v:.2f}" for v in per_seed[s]["noisy-gain"][GAIN])
            for s in config.settings
        ),
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
            "Two-moment drift (the shown measure; noisy BN probed without noise) per probe "
            "interval against the moving-average training loss at its start (one line per "
            "seed; dashed: the matched loss level): the arms compared at equal progress",
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
    "ours: d2l's LeNet (ReLU at one lr; sigmoid at one lr 1, and at each arm's tuned lr) on "
    "Fashion-MNIST, "
    "800-2,000 SGD steps, 5 paired seeds, read at matched training loss"
)

CLAIMS = kit.register_claims(
    "ics",
    stats_claim(
        "bn-reduces-ics",
        "BN reduces internal covariate shift: each layer's input distribution drifts less "
        "during training with BN (在深度模型中,批量归一化被应用到每一层的激活函数之前,以稳定网络"
        "的中间输出。这种做法可以减少内部协变量位移)",
        "000_3d8114077ba70cad.txt",
        "declared ClaimSpec (bnlab.lab.stats): primary metric ln of the mean W1 drift "
        "(mean over channels of the 1-Wasserstein distance between a channel's empirical "
        "distributions on the 256-image probe at two probes 10 steps apart, / S, the "
        "layer's input std; averaged over the weight layers' inputs but the first) in the "
        "100 steps after the 25-step moving-average training loss first reaches 0.8 "
        "(matched loss; the two-moment drift mean_c(|d mu_c| + |d sd_c|) / S, the first "
        "run's primary, and the whole-run mean at matched step are shown, not voted; "
        "W1 primary since the rerun at seeds 200-204: BN fixes the two moments by "
        "construction), BN against no BN, direction lower, per "
        "setting, voted in the two settings with one lr for both arms (ReLU LeNet at lr "
        "0.1; sigmoid LeNet at lr 1, added after the rerun at seeds 200-204; the sigmoid "
        "LeNet at each arm's tuned lr, none 1, BN 3, is shown, not voted: a 3x step moves "
        "the drift by itself), paired by seed, Holm over the experiment's 3 "
        "claims, TOST margin ±ln 1.25, at least 5 seeds; runs within 2 points of chance "
        "or never at the loss level excluded",
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
    stats_claim(
        "bn-reduces-gradient-ics",
        "BN reduces internal covariate shift in the gradient sense: a layer's gradient "
        "changes less when the earlier layers take their update (Santurkar et al.'s "
        "definition of ICS)",
        "from the literature",
        "declared ClaimSpec: primary metric cos(G, G') (G: the gradient of a weight "
        "layer's weight on the step's batch; G': the same after every earlier layer took "
        "the step's SGD update at the lr in use), averaged over the weight layers but the "
        "first and over the measurements (every 5 steps, about 20, in the 100 steps after "
        "the training loss first reaches 0.8; every 25 elsewhere), BN against no BN, "
        "direction higher, per setting as bn-reduces-ics, paired by seed, Holm over the 3 "
        "claims, TOST margin ±0.05, at least 5 seeds; voted in the one-lr settings (ReLU "
        "at 0.1, sigmoid at 1); the sigmoid setting at tuned lrs (BN's earlier layers "
        "step at 3 against no BN's 1, which by itself moves G' further) is shown, not "
        "voted",
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
    stats_claim(
        "noisy-bn-keeps-bn-benefit",
        "BN's benefit does not come from less covariate shift: BN with random time-varying "
        "shifts and scales after each BN (more shift, on purpose) keeps most of BN's "
        "accuracy gain over no BN",
        "from the literature",
        "declared ClaimSpec: primary metric the gain ratio (acc(noisy BN) - acc(none)) / "
        "(acc(BN) - acc(none)) per seed (final test accuracy, %, full 10,000-image test "
        "set, lr decayed to 0 at the end), against 0.5 (half of BN's gain), direction "
        "higher, per setting, voted in two (sigmoid: every arm at its lr tuned on seed "
        "1000; the sigmoid setting at one lr 1 is shown; ReLU: no "
        "BN and BN at the common lr 0.1, noisy BN at its own lr tuned on seed 1000 from "
        "0.03/0.1/0.3/1), paired by seed, Holm over the 3 claims, TOST margin ±0.25, at "
        "least 5 seeds; a seed with a run at chance or no BN gain has no ratio; noisy BN "
        "against no BN and against BN (test accuracy), and the drift its layers see "
        "(probed with noise) against BN's, are shown, not voted",
        literature=Literature(
            _SANTURKAR + ", section 2.1, figure 2",
            "VGG on CIFAR-10 with random time-varying means and variances injected after "
            "every BN layer",
            "noisy BN reaches about the training and test accuracy of BN and clearly more "
            "than the network without BN (figure only; unverified numbers); their noise "
            "is i.i.d. per activation and sample, ours a per-channel scale and shift "
            "shared by the batch (milder, structured)",
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
            "Does BN reduce internal covariate shift? d2l's LeNet with ReLU (no BN and BN at "
            "lr 0.1, noisy BN tuned from 0.03/0.1/0.3/1) and with sigmoid (each arm at its lr "
            "tuned on a separate seed from 0.3/1/3/10; and every arm at lr 1), no BN / BN / noisy BN (Santurkar et "
            "al. section 2.1), SGD batch 128 on 60,000 images (800 and 2,000 steps, lr "
            "decayed to 0 over the last quarter), 5 paired seeds (300-304), full test set. "
            "Measures along training: the per-channel W1 drift of each layer's input "
            "distribution on a fixed probe batch (noisy BN also probed with its noise), and "
            "Santurkar et al.'s gradient ICS (arXiv 1805.11604, section 2.2; every 5 steps "
            "in the window), read at matched training loss (primary: the 100 steps after "
            "the moving-average loss reaches 0.8) and over the whole run. Three declared "
            "claims (the third: noisy BN keeps over half of BN's accuracy gain), paired t, "
            "Holm, TOST."
        ),
        config_type=ICSConfig,
        full_time=(
            "about 6.5 min on 2 quiet CPU cores with --workers 2 (49 runs, ~790 CPU-s: 800 "
            "ReLU steps with probes 7-11 s of CPU, 2,000 sigmoid steps ~21 s, ReLU tuning "
            "runs without probes ~5 s; the sigmoid lrs fixed, not tuned; the 46-run "
            "version took 404 s at load 2.5, 2026-12-07)"
        ),
        measure=(main_grid, measure),
        steps=lambda config, data: config.steps_of,
    )
)
