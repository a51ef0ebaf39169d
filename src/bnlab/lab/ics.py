"""``bnlab lab ics``: does batch normalization reduce internal covariate shift?

Internal covariate shift (ICS) is the change of the distribution of a layer's input
while the layers before it train (Ioffe & Szegedy, "Batch Normalization: Accelerating
Deep Network Training by Reducing Internal Covariate Shift", arXiv 1502.03167). Santurkar,
Tsipras, Ilyas & Madry, "How Does Batch Normalization Help Optimization?" (arXiv
1805.11604) question that this is why BN helps. This experiment measures ICS three ways,
with and without BN, on the d2l LeNet (sigmoid) and on a ReLU MLP:

1. Distribution drift (the seeds' definition). Every ``probe_every`` steps a fixed probe
   batch of training images goes through a copy of the network (train mode, so BN uses
   the probe batch's statistics as it does in training) and the input of every weight
   layer but the first (whose input, the pixels, never moves) is recorded: its mean,
   variance and quantiles (5, 25, 50, 75, 95 %). The *drift* between two probes is
   ``mean_c(|mu_c' - mu_c| + |sd_c' - sd_c|) / S`` over the channels c (the
   1-Wasserstein distance of same-shaped distributions, in units of ``S``, the std of all
   the layer's input values at the earlier probe, so sigmoid and ReLU layers compare);
   a layer's ICS is the mean drift per probe interval, the network's the mean over layers.
2. Gradient ICS (Santurkar et al., section 2.2). Every ``grad_ics_every`` steps, for
   each weight layer ``i`` but the first: ``G`` = the gradient of the loss with respect
   to ``W_i`` on the step's batch, ``G'`` = the same gradient after the layers before
   ``i`` (every parameter registered before ``W_i``) took the SGD step of that batch.
   Reported: ``||G - G'||_2``, ``||G - G'|| / ||G||`` and ``cos(G, G')``. Without shift,
   ``G' = G`` (cosine 1).
3. Noisy BN (Santurkar et al., section 2.1). During training, after every BN layer, a
   per-channel scale ``s`` (log-uniform in ``[1/noise_scale, noise_scale]``) and shift
   ``b`` (uniform in ``[-noise_shift, noise_shift]``), redrawn every step, are applied:
   ``y -> s * y + b``. The distribution every later layer sees then changes on purpose at
   every step; does training still beat the network without BN? (Evaluation and probes
   run without noise.)

The grid is architecture x variant (none, bn, bn-noise) x seed on the lab runner
(``bnlab.lab.runner``); one cell trains with ``bnlab.train.steps.run_steps`` and its
probes as hooks. Verdicts use :func:`bnlab.lab.experiment.compare` over seeds (a
difference counts when it exceeds twice its Welch standard error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import kit
from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, register_lab, seeded
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, layer_table, summary_table
from bnlab.plots.ics import plot_grad_ics, plot_ics_trajectories
from bnlab.train.steps import StepState, every, run_steps

__all__ = [
    "VARIANTS",
    "ICSConfig",
    "decide_grad_ics",
    "decide_ics",
    "decide_noise",
    "distribution_drift",
    "gradient_shift",
    "measure",
    "noisy_outputs",
]


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


_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _layer_stats(x: Tensor) -> dict[str, Any]:
    flat = x.detach().double().flatten()
    if flat.numel() > 200_000:  # torch.quantile's limit is far above; keep it quick
        flat = flat[:: flat.numel() // 200_000 + 1]
    q = torch.quantile(flat, torch.tensor(_QUANTILES, dtype=torch.float64)).tolist()
    return {
        "mean": float(x.mean()),
        "var": float(x.var(unbiased=False)),
        **{f"q{int(p * 100):02d}": v for p, v in zip(_QUANTILES, q, strict=True)},
    }


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
class ICSConfig(kit.ProbingConfig):
    """Settings of ``bnlab lab ics`` (defaults: the full run).

    Args:
        seeds, archs, train_size, test_size, batch_size, steps: see ``ProbingConfig``.
        noise_archs: architectures that also train with noisy BN.
        lr_lenet, lr_mlp: SGD learning rates (the same with and without BN).
        probe_every: steps between distribution probes (measure 1).
        probe_size: images in the fixed probe batch.
        grad_ics_every: steps between gradient-ICS measurements (measure 2).
        noise_shift, noise_scale: the noisy-BN ranges (measure 3).
    """

    noise_archs: tuple[str, ...] = ("lenet", "mlp-relu")
    lr_lenet: float = 0.9
    lr_mlp: float = 0.1
    probe_every: int = 25
    probe_size: int = 256
    grad_ics_every: int = 50
    noise_shift: float = 1.0
    noise_scale: float = 2.0

    QUICK = kit.ProbingConfig.quick_settings(probe_every=10, probe_size=64, grad_ics_every=15)
    POSITIVE = (
        *kit.ProbingConfig.POSITIVE,
        "lr_lenet",
        "lr_mlp",
        "probe_every",
        "probe_size",
        "grad_ics_every",
        "noise_scale",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for arch in self.noise_archs:
            if arch not in self.archs:
                raise ValueError(
                    f"ICSConfig: noise arch {arch!r} is not in archs {self.archs!r}; add it there"
                )
        if self.noise_scale < 1 or self.noise_shift < 0:
            raise ValueError(
                f"ICSConfig: need noise_scale >= 1 and noise_shift >= 0, got "
                f"{self.noise_scale} and {self.noise_shift}"
            )

    def lr(self, arch: str) -> float:
        return self.lr_lenet if arch == "lenet" else self.lr_mlp


VARIANTS = ("none", "bn", "bn-noise")


def grid(config: ICSConfig) -> Grid:
    """Architecture x variant x seed; the noisy variant only on ``noise_archs``."""
    return config.arch_grid(
        VARIANTS, include=lambda c: c.variant != "bn-noise" or c.setting in config.noise_archs
    )


def measure(config: ICSConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (arch, variant, seed) with the three measures as step hooks."""
    arch, variant, seed = cell.setting, cell.variant, cell.seed
    data, device = bench.data, bench.device
    norm = "none" if variant == "none" else kit.BN_NORM
    lr = config.lr(arch)
    with seeded(seed) as gen:
        model = kit.build_model(arch, norm, seed).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        train = kit.batches(
            data["train_images"], data["train_labels"], config.batch_size, seed, device
        )
        probe_x = kit.probe_batch(data, config.probe_size, device)
        watched = list(kit.weight_layers(model))[1:]
        norms = kit.norm_layers(model)
        trajectory: dict[str, list[dict[str, Any]]] = {n: [] for n in watched}
        drifts: dict[str, list[float]] = {n: [] for n in watched}
        previous: dict[str, tuple[Tensor, Tensor, float]] = {}
        grad_ics: dict[str, list[dict[str, float]]] = {n: [] for n in watched}
        grad_steps: list[int] = []

        def probe(step: int) -> None:  # measure 1
            for name, x in kit.probe_copy(model, probe_x, watched).items():
                trajectory[name].append({"step": step, **_layer_stats(x)})
                moments = _channel_moments(x)
                if name in previous:
                    drifts[name].append(distribution_drift(previous[name], moments))
                previous[name] = moments

        def grad_shift(state: StepState) -> None:  # measure 2
            for name, m in gradient_shift(model, state.x, state.y, lr).items():
                grad_ics[name].append(m)
            grad_steps.append(state.step)

        def noisy(model: nn.Module, x: Tensor) -> Tensor:  # measure 3
            with noisy_outputs(
                norms, shift=config.noise_shift, scale=config.noise_scale, generator=gen
            ):
                return model(x)

        losses = run_steps(
            model,
            train,
            opt,
            steps=config.steps,
            forward=noisy if variant == "bn-noise" else None,
            on_batch=[
                every(config.probe_every, lambda s: probe(s.step)),
                every(config.grad_ics_every, grad_shift),
            ],
            on_step=lambda s: bench.advance(1),
        )
        probe(config.steps)
    tail = [v for v in losses[-max(1, config.steps // 10) :]]
    final_loss = sum(tail) / len(tail)
    layer_drift = {n: (sum(v) / len(v) if v else 0.0) for n, v in drifts.items()}
    layer_cos = {n: kit.finite_mean([m["cos"] for m in v]) for n, v in grad_ics.items()}
    layer_rel = {n: kit.finite_mean([m["rel"] for m in v]) for n, v in grad_ics.items()}
    layer_l2 = {n: kit.finite_mean([m["l2"] for m in v]) for n, v in grad_ics.items()}
    return {
        "arch": arch,
        "variant": variant,
        "seed": seed,
        "lr": lr,
        "metrics": {
            "drift": kit.finite_mean(list(layer_drift.values())),
            "grad_cos": kit.finite_mean(list(layer_cos.values())),
            "grad_rel": kit.finite_mean(list(layer_rel.values())),
            "grad_l2": kit.finite_mean(list(layer_l2.values())),
            "train_loss": final_loss if math.isfinite(final_loss) else None,
            "test_acc": kit.accuracy_on_test(model, data, device),
        },
        "layers": {
            "drift": layer_drift,
            "grad_cos": layer_cos,
            "grad_rel": layer_rel,
            "grad_l2": layer_l2,
        },
        "trajectory": trajectory,
        "grad_ics": {"steps": grad_steps, "layers": grad_ics},
        "loss_curve": losses[:: max(1, config.steps // 100)],
    }


# --- rules ----------------------------------------------------------------------------


def decide_ics(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-reduces-ics`` (measure 1): per architecture, the drift with BN
    is less than without (``compare``, 2 standard errors)."""
    evidence, directions = kit.compare_variants(results["raw"]["per_seed"], "drift")
    return evidence, kit.directions_verdict(directions, "less")


def decide_grad_ics(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-reduces-gradient-ics`` (measure 2): per architecture, the mean
    cosine between a layer's gradient before and after the earlier layers' step is
    higher with BN (``compare``, 2 standard errors)."""
    evidence, directions = kit.compare_variants(
        results["raw"]["per_seed"],
        "grad_cos",
        entry=lambda v, c: {
            "cos_bn": kit.variant_mean(v, "bn", "grad_cos"),
            "cos_none": kit.variant_mean(v, "none", "grad_cos"),
            "rel_change_bn": kit.variant_mean(v, "bn", "grad_rel"),
            "rel_change_none": kit.variant_mean(v, "none", "grad_rel"),
            **kit.comparison_fields(c),
        },
    )
    return evidence, kit.directions_verdict(directions, "greater")


def decide_noise(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-benefit-survives-covariate-shift`` (measure 3): per
    architecture with a noisy run, test accuracy of BN + noise exceeds that without BN
    (``compare``, 2 standard errors)."""
    evidence, directions = kit.compare_variants(
        results["raw"]["per_seed"],
        "test_acc",
        variant="bn-noise",
        entry=lambda v, c: {
            "test_acc_none": kit.variant_mean(v, "none", "test_acc"),
            "test_acc_bn": kit.variant_mean(v, "bn", "test_acc"),
            "test_acc_bn_noise": kit.variant_mean(v, "bn-noise", "test_acc"),
            **kit.comparison_fields(c),
        },
    )
    return evidence, kit.directions_verdict(directions, "greater")


CLAIMS = (
    ("BN reduces ICS, measure 1: layer inputs drift less with BN", decide_ics),
    (
        "BN reduces ICS, measure 2: a layer's gradient changes less (higher cosine) "
        "when the earlier layers step, with BN",
        decide_grad_ics,
    ),
    (
        "BN's benefit survives added covariate shift: BN + noise beats no BN on test accuracy",
        decide_noise,
    ),
)


# --- summary --------------------------------------------------------------------------


def summarize(config: ICSConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """Tables, verdicts and figures of the finished grid."""
    per_seed = run.per_seed()
    table = summary_table(
        "Internal covariate shift (mean ± std over seeds)",
        per_seed,
        [
            ("drift per probe (1)", "drift"),
            ("grad cos (2)", "grad_cos"),
            ("grad rel. change (2)", "grad_rel"),
            ("final train loss", "train_loss"),
            ("test acc", "test_acc"),
        ],
        label=kit.arch_label,
    )
    layer = layer_table(
        "Per layer (input of the layer; mean ± std over seeds)",
        run,
        [
            ("drift (1)", lambda r, n: r["layers"]["drift"][n]),
            ("grad cos (2)", lambda r, n: r["layers"]["grad_cos"][n]),
            ("grad l2 change (2)", lambda r, n: r["layers"]["grad_l2"][n]),
        ],
        layers=lambda r: list(r["layers"]["drift"]),
        variants=("none", "bn"),
        label=kit.arch_label,
    )
    verdicts, _ = kit.apply_rules(
        {"raw": {"per_seed": per_seed}},
        [(claim, rule, kit.evidence_text) for claim, rule in CLAIMS],
    )
    labels = {arch: kit.arch_label(arch) for arch in config.archs}
    plot_ics_trajectories(
        run.curves("trajectory", settings=config.archs, variants=VARIANTS),
        labels,
        ctx.out_dir / "ics_trajectories.png",
    )
    plot_grad_ics(
        run.curves("grad_ics", settings=config.archs, variants=("none", "bn")),
        labels,
        ctx.out_dir / "ics_gradient.png",
    )
    figures = [
        Figure(
            "ics_trajectories.png",
            "Measure 1: mean and 5/25/50/75/95 % quantiles of each weight layer's input on a "
            "fixed probe batch over training steps (seed 0), without BN (top) and with BN",
        ),
        Figure(
            "ics_gradient.png",
            "Measure 2: cosine between a layer's gradient before and after the earlier layers' "
            "SGD step, per layer over training (mean over seeds)",
        ),
    ]
    notes = [
        f"{config.train_size} training / {config.test_size} test images, {config.steps} SGD "
        f"steps of batch {config.batch_size}; lr {config.lr_lenet} (LeNet), {config.lr_mlp} (MLPs)",
        f"noisy BN: per step and channel s log-uniform in [1/{config.noise_scale}, "
        f"{config.noise_scale}], b uniform in [-{config.noise_shift}, {config.noise_shift}]; "
        "probes and evaluation without noise",
    ]
    return LabOutcome(
        tables=[table, layer],
        verdicts=verdicts,
        figures=figures,
        raw={"per_seed": per_seed, "units": run.results},
        notes=notes + kit.plateau_notes(per_seed),
    )


SPEC = register_lab(
    kit.probing_lab(
        name="ics",
        title="Internal covariate shift, with and without BN",
        summary=(
            "Does BN reduce internal covariate shift? Three measures on the d2l LeNet "
            "(sigmoid) and a 3x100 ReLU MLP, with and without BN, 3 seeds: (1) drift of "
            "each layer's input distribution on a fixed probe batch over training; (2) "
            "Santurkar et al.'s gradient ICS (arXiv 1805.11604, section 2.2): change of a "
            "layer's gradient when the earlier layers take their SGD step; (3) noisy BN "
            "(section 2.1): random per-step per-channel scale and shift after every BN. "
            "Full run: 12000 training images, 300 steps of batch 128."
        ),
        config_type=ICSConfig,
        variants=VARIANTS,
        grid=grid,
        measure=measure,
        summarize=summarize,
        description="ics: training with probes",
        full_time=(
            "about 9.5 min (568 s wall, 134 s CPU; --threads 1, 2-core CPU machine shared and loaded by other jobs, 2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="bn-reduces-ics",
        claim="BN reduces internal covariate shift (each layer's input distribution moves less "
        "during training)",
        source="002_adae9b0709a5d84d.txt",
        experiment="ics",
        rule_text=(
            "measure 1: per network (LeNet sigmoid, ReLU MLP), mean per-probe drift of the "
            "weight layers' input distributions with BN vs without over seeds; a difference "
            "counts beyond 2 Welch standard errors. supported: lower with BN for every "
            "network; not supported: for none; mixed otherwise"
        ),
        rule=decide_ics,
    )
)
register_claim(
    Claim(
        key="bn-reduces-gradient-ics",
        claim="BN reduces internal covariate shift in the gradient sense: a layer's gradient "
        "changes less when the earlier layers are updated",
        source="Santurkar et al. 2018, arXiv 1805.11604, section 2.2 (measure of the claim "
        "in 000_3d8114077ba70cad.txt)",
        experiment="ics",
        rule_text=(
            "measure 2: per network, mean cosine between G and G' (gradient of a layer before "
            "and after the earlier layers' SGD step on the same batch) with BN vs without; "
            "supported: higher with BN beyond 2 standard errors for every network; not "
            "supported: for none; mixed otherwise"
        ),
        rule=decide_grad_ics,
    )
)
register_claim(
    Claim(
        key="bn-benefit-survives-covariate-shift",
        claim="BN's benefit does not come from less covariate shift: BN with random "
        "time-varying shifts and scales after each BN still trains better than no BN",
        source="Santurkar et al. 2018, arXiv 1805.11604, section 2.1",
        experiment="ics",
        rule_text=(
            "measure 3: per network with a noisy run, test accuracy of BN + noise vs no BN "
            "over seeds; supported: higher beyond 2 standard errors for every network; not "
            "supported: for none; mixed otherwise"
        ),
        rule=decide_noise,
    )
)
