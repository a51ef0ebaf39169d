"""``bnlab lab saturation``: does BN keep units out of saturation and gradients alive?

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167, section 3.3 (BN makes
sigmoid networks trainable by keeping pre-activations out of the saturated regime). The
seeds say BN keeps activations away from the saturated region of sigmoid, leaves fewer
zeros after ReLU, and alleviates vanishing gradients.

Per layer and over training (every ``probe_every`` steps), with and without BN:

- *saturation*: the share of sigmoid pre-activations ``z`` (the activation's input, on a
  fixed probe batch through a train-mode copy of the network) with ``|z| > 4``
  (``SATURATION_THRESHOLD``); there ``sigmoid'(z) < 0.0177``, a tenth of its maximum 0.25
  or less, and the output is outside ``[0.018, 0.982]``;
- *ReLU zeros*: the share of ReLU outputs that are exactly zero (same probe);
- *gradient norms*: the RMS of each weight layer's gradient on the training batch
  (``||grad W|| / sqrt(numel W)``), and the vanishing-gradient ratio
  ``log10(rms(first layer) / rms(last layer))`` (very negative: the first layers learn
  little).

Networks: the d2l LeNet (sigmoid, d2l's Xavier init), a deliberately hard setting where
saturation shows (a 6x100 sigmoid MLP whose initial weights are scaled by
``hard_init_scale``), and a 3x100 ReLU MLP. Verdicts compare means over training with BN
against without over seeds (:func:`bnlab.lab.experiment.compare`, 2 standard errors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.lab import kit
from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, register_lab, seeded
from bnlab.lab.runner import Bench, Cell, GridRun, layer_table, summary_table
from bnlab.plots.saturation import plot_saturation
from bnlab.train.steps import StepState, every, run_steps

__all__ = [
    "SATURATION_THRESHOLD",
    "SaturationConfig",
    "decide_relu_zeros",
    "decide_saturation",
    "decide_vanishing",
    "gradient_rms",
    "measure",
    "saturated_share",
    "zero_share",
]

#: A sigmoid unit is saturated when its pre-activation exceeds this in size.
SATURATION_THRESHOLD = 4.0

SIGMOID_ARCHS = ("lenet", "mlp-sigmoid")


def saturated_share(z: Tensor, threshold: float = SATURATION_THRESHOLD) -> float:
    """Share of the entries of ``z`` (sigmoid pre-activations) with ``|z| > threshold``.

    Raises:
        ValueError: an empty tensor.
    """
    if z.numel() == 0:
        raise ValueError(f"saturated_share: empty tensor of shape {tuple(z.shape)}")
    return float((z.abs() > threshold).double().mean())


def zero_share(a: Tensor) -> float:
    """Share of the entries of ``a`` (ReLU outputs) that are exactly zero.

    Raises:
        ValueError: an empty tensor.
    """
    if a.numel() == 0:
        raise ValueError(f"zero_share: empty tensor of shape {tuple(a.shape)}")
    return float((a == 0).double().mean())


def gradient_rms(model: nn.Module) -> dict[str, float]:
    """RMS of each weight layer's weight gradient, ``||grad|| / sqrt(numel)``, by name.

    Layers without a gradient are left out.
    """
    out = {}
    for name, layer in kit.weight_layers(model).items():
        g = layer.weight.grad
        if g is not None:
            out[name] = float(g.norm()) / math.sqrt(g.numel())
    return out


@dataclass(frozen=True)
class SaturationConfig(kit.ProbingConfig):
    """Settings of ``bnlab lab saturation`` (defaults: the full run).

    Args:
        seeds, archs, train_size, test_size, batch_size, steps: see ``ProbingConfig``.
        lr_lenet, lr_mlp_relu, lr_mlp_sigmoid: learning rates (same with and without BN).
        hard_init_scale: initial weights of ``mlp-sigmoid`` are Xavier times this.
        probe_every: steps between probes.
        probe_size: images in the fixed probe batch.
    """

    archs: tuple[str, ...] = ("lenet", "mlp-sigmoid", "mlp-relu")
    lr_lenet: float = 0.9
    lr_mlp_relu: float = 0.1
    lr_mlp_sigmoid: float = 0.5
    hard_init_scale: float = 4.0
    probe_every: int = 25
    probe_size: int = 256

    QUICK = kit.ProbingConfig.quick_settings(probe_every=10, probe_size=64)
    POSITIVE = (
        *kit.ProbingConfig.POSITIVE,
        "lr_lenet",
        "lr_mlp_relu",
        "lr_mlp_sigmoid",
        "hard_init_scale",
        "probe_every",
        "probe_size",
    )

    def lr(self, arch: str) -> float:
        return {"lenet": self.lr_lenet, "mlp-relu": self.lr_mlp_relu}.get(arch, self.lr_mlp_sigmoid)

    def init_scale(self, arch: str) -> float:
        return self.hard_init_scale if arch == "mlp-sigmoid" else 1.0


def _probe(model: nn.Module, x: Tensor) -> dict[str, dict[str, float]]:
    """Saturation of each sigmoid's input and zeros of each ReLU's output, on a copy."""
    sigmoids = [n for n, m in model.named_modules() if isinstance(m, nn.Sigmoid)]
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    out: dict[str, dict[str, float]] = {"saturated": {}, "zeros": {}}
    if sigmoids:
        out["saturated"] = kit.probe_copy(model, x, sigmoids, what="input", reduce=saturated_share)
    if relus:
        out["zeros"] = kit.probe_copy(model, x, relus, what="output", reduce=zero_share)
    return out


VARIANTS = ("none", "bn")


def measure(config: SaturationConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (arch, variant, seed), probing every ``probe_every`` steps and at the
    last step, between the backward and the update."""
    arch, variant, seed = cell.setting, cell.variant, cell.seed
    data, device = bench.data, bench.device
    lr = config.lr(arch)
    norm = "none" if variant == "none" else kit.BN_NORM
    with seeded(seed):
        model = kit.build_model(arch, norm, seed, init_scale=config.init_scale(arch)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        train = kit.batches(
            data["train_images"], data["train_labels"], config.batch_size, seed, device
        )
        probe_x = kit.probe_batch(data, config.probe_size, device)
        probes: list[dict[str, Any]] = []

        def probe(state: StepState) -> None:
            # Probe the weights the gradient was taken at, before the update.
            probes.append(
                {"step": state.step, **_probe(model, probe_x), "grad_rms": gradient_rms(model)}
            )

        losses = run_steps(
            model,
            train,
            opt,
            steps=config.steps,
            on_backward=every(config.probe_every, probe, last=config.steps - 1),
            on_step=lambda s: bench.advance(1),
        )
    weights = list(kit.weight_layers(model))
    first, last = weights[0], weights[-1]

    def ratio(p: dict[str, Any]) -> float | None:
        a, b = p["grad_rms"].get(first, 0.0), p["grad_rms"].get(last, 0.0)
        return math.log10(a / b) if a > 0 and b > 0 else None

    tail = losses[-max(1, config.steps // 10) :]
    final = sum(tail) / len(tail)
    metrics = {
        "saturated": kit.finite_mean(
            [kit.finite_mean(list(p["saturated"].values())) for p in probes]
        ),
        "saturated_final": kit.finite_mean(list(probes[-1]["saturated"].values())),
        "zeros": kit.finite_mean([kit.finite_mean(list(p["zeros"].values())) for p in probes]),
        "zeros_final": kit.finite_mean(list(probes[-1]["zeros"].values())),
        "grad_ratio_log10": kit.finite_mean([ratio(p) for p in probes]),
        "train_loss": final if math.isfinite(final) else None,
        "test_acc": kit.accuracy_on_test(model, data, device),
    }
    return {
        "arch": arch,
        "variant": variant,
        "seed": seed,
        "lr": lr,
        "init_scale": config.init_scale(arch),
        "metrics": metrics,
        "probes": probes,
    }


def _decide(
    results: Mapping[str, Any], archs: Sequence[str], metric: str, wanted: str
) -> tuple[dict[str, Any], str]:
    evidence, directions = kit.compare_variants(
        results["raw"]["per_seed"], metric, settings=archs, skip_empty=True
    )
    if not directions:
        return evidence, "mixed"
    return evidence, kit.directions_verdict(directions, wanted)


def decide_saturation(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of ``bn-avoids-saturation``: per sigmoid network, the share of saturated
    units (|z| > 4, mean over layers and probes) is lower with BN."""
    return _decide(results, SIGMOID_ARCHS, "saturated", "less")


def decide_relu_zeros(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of ``bn-fewer-relu-zeros``: the ReLU MLP's share of zero outputs is lower
    with BN."""
    return _decide(results, ("mlp-relu",), "zeros", "less")


def decide_vanishing(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of ``bn-alleviates-vanishing-gradients``: per sigmoid network,
    log10(rms grad of the first layer / of the last) is higher with BN."""
    return _decide(results, SIGMOID_ARCHS, "grad_ratio_log10", "greater")


CLAIMS = (
    (
        f"BN keeps sigmoid units out of saturation (|z| > {SATURATION_THRESHOLD:g})",
        decide_saturation,
    ),
    ("BN leaves fewer zeros after ReLU", decide_relu_zeros),
    (
        "BN alleviates vanishing gradients (first-layer gradient closer to the last's)",
        decide_vanishing,
    ),
)


def summarize(config: SaturationConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """Tables, verdicts and figure of the finished grid."""
    per_seed = run.per_seed()

    def label(arch: str) -> str:
        scale = config.init_scale(arch)
        return kit.arch_label(arch) + (f", init x{scale:g}" if scale != 1 else "")

    table = summary_table(
        f"Saturation (|z| > {SATURATION_THRESHOLD:g}), ReLU zeros, gradient ratio "
        "(mean over layers and probes; mean ± std over seeds)",
        per_seed,
        [
            ("saturated share", "saturated"),
            ("saturated (end)", "saturated_final"),
            ("ReLU zeros", "zeros"),
            ("ReLU zeros (end)", "zeros_final"),
            ("log10 grad rms first/last", "grad_ratio_log10"),
            ("final train loss", "train_loss"),
            ("test acc", "test_acc"),
        ],
        label=label,
        missing="-",
    )
    layer = layer_table(
        "Gradient RMS per weight layer (mean over probes; mean ± std over seeds)",
        run,
        [("grad rms", lambda r, n: kit.finite_mean([p["grad_rms"].get(n) for p in r["probes"]]))],
        layers=lambda r: list(r["probes"][0]["grad_rms"]),
        variants=VARIANTS,
        label=kit.arch_label,
        missing="-",
    )
    verdicts, _ = kit.apply_rules(
        {"raw": {"per_seed": per_seed}},
        [(claim, rule, lambda e: kit.evidence_text(e) or "no data") for claim, rule in CLAIMS],
    )
    plot_saturation(
        run.curves("probes", settings=config.archs, variants=VARIANTS),
        {arch: kit.arch_label(arch) for arch in config.archs},
        SATURATION_THRESHOLD,
        ctx.out_dir / "saturation.png",
    )
    return LabOutcome(
        tables=[table, layer],
        verdicts=verdicts,
        figures=[
            Figure(
                "saturation.png",
                f"Per layer over training: share of sigmoid pre-activations with |z| > "
                f"{SATURATION_THRESHOLD:g} (or of zero ReLU outputs) and gradient RMS per "
                "weight layer, without BN (solid) and with BN (dashed), mean over seeds",
            )
        ],
        raw={"per_seed": per_seed, "units": run.results, "threshold": SATURATION_THRESHOLD},
        notes=[
            f"saturated: |pre-activation| > {SATURATION_THRESHOLD:g} (sigmoid' < 0.0177, output "
            "outside [0.018, 0.982]), on a fixed probe batch through a train-mode copy",
            f"{config.train_size} training images, {config.steps} SGD steps of batch "
            f"{config.batch_size}; mlp-sigmoid weights x{config.hard_init_scale:g} at init",
            "BN sits before the activation (the paper's placement): with beta near 0 a BN'd "
            "ReLU pre-activation is centred, so about half the ReLU outputs are zero by design",
            *kit.plateau_notes(per_seed),
        ],
    )


SPEC = register_lab(
    kit.probing_lab(
        name="saturation",
        title="Saturated sigmoids, dead ReLUs and vanishing gradients, with and without BN",
        summary=(
            "Per layer over training, with and without BN (3 seeds): share of sigmoid units "
            f"with |pre-activation| > {SATURATION_THRESHOLD:g}, share of zero ReLU outputs, and "
            "per-layer gradient RMS with the first/last ratio, on the d2l LeNet (sigmoid), a "
            "hard 6x100 sigmoid MLP (initial weights x4) and a 3x100 ReLU MLP. Full run: "
            "12000 training images, 300 steps of batch 128."
        ),
        config_type=SaturationConfig,
        variants=VARIANTS,
        measure=measure,
        summarize=summarize,
        description="saturation: training with probes",
        full_time=(
            "about 5.5 min (328 s wall, 77 s CPU; --threads 1, 2-core CPU machine shared and loaded by other jobs, 2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="bn-avoids-saturation",
        claim="BN keeps activations away from the saturated region of the sigmoid",
        source="002_adae9b0709a5d84d.txt",
        experiment="saturation",
        rule_text=(
            f"per sigmoid network (LeNet, 6x100 MLP with x4 init), the share of units with "
            f"|pre-activation| > {SATURATION_THRESHOLD:g} (mean over layers and probes) with BN "
            "vs without over seeds, 2 Welch standard errors. supported: lower with BN for "
            "both; not supported: for neither; mixed otherwise"
        ),
        rule=decide_saturation,
    )
)
register_claim(
    Claim(
        key="bn-fewer-relu-zeros",
        claim="BN leaves fewer values set to zero by ReLU",
        source="002_adae9b0709a5d84d.txt",
        experiment="saturation",
        rule_text=(
            "3x100 ReLU MLP: the share of zero ReLU outputs (mean over layers and probes) with "
            "BN vs without over seeds, 2 Welch standard errors. supported: lower with BN; not "
            "supported: otherwise"
        ),
        rule=decide_relu_zeros,
    )
)
register_claim(
    Claim(
        key="bn-alleviates-vanishing-gradients",
        claim="BN alleviates vanishing gradients",
        source="003_8a52002564f5ba9e.txt",
        experiment="saturation",
        rule_text=(
            "per sigmoid network, log10(gradient RMS of the first weight layer / of the last) "
            "(mean over probes) with BN vs without over seeds, 2 Welch standard errors. "
            "supported: higher with BN for both; not supported: for neither; mixed otherwise"
        ),
        rule=decide_vanishing,
    )
)
