"""``bnlab lab landscape``: is the loss landscape smoother with batch normalization?

Paper: Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help
Optimization?", arXiv 1805.11604, section 3.1 and figure 4. At checkpoints along
training (every ``check_every`` steps, on that step's batch, before its update) the
network is moved along its gradient ``g`` with several step sizes ``eta`` (multiples of
the learning rate), ``w' = w - eta * g``, and three things are recorded:

- *loss variation*: the losses ``L(w')`` over the step sizes (their range, max - min);
- *gradient predictiveness*: ``||grad L(w') - g||_2`` over the step sizes;
- *effective beta-smoothness*: ``max_eta ||grad L(w') - g|| / ||eta * g||``, the largest
  change of the gradient per unit of distance moved.

Smaller values mean a smoother, more predictable landscape. The model is evaluated
functionally in train mode (BN with the batch's statistics, as in training); its
parameters and BN running statistics are left unchanged. Verdicts compare, per network,
the mean over checkpoints of each quantity with BN against without, over seeds
(:func:`bnlab.lab.experiment.compare`, 2 standard errors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import kit
from bnlab.lab.claims import Claim, register_claim
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, register_lab, seeded
from bnlab.lab.runner import Bench, Cell, GridRun, summary_table
from bnlab.plots.landscape import plot_landscape
from bnlab.train.steps import every, run_steps

__all__ = [
    "METRICS",
    "LandscapeConfig",
    "decide_landscape",
    "landscape_point",
    "measure",
    "point_means",
]

#: Per-checkpoint quantities summarized over training (mean over checkpoints).
METRICS = ("loss_range", "grad_change_max", "beta")


def _norm(tensors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def landscape_point(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    step_sizes: Sequence[float],
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> dict[str, Any]:
    """Loss and gradient along the gradient direction from the model's current weights.

    Args:
        model: in the mode to measure (train mode: BN uses batch statistics).
        x, y: the batch.
        step_sizes: the ``eta`` of ``w - eta * g`` (each > 0).
        loss_fn: ``loss_fn(output, y)``.

    Returns:
        ``{"loss0", "grad_norm", "losses": [...], "grad_changes": [...], "betas": [...],
        "loss_range", "grad_change_max", "grad_change_rel", "beta"}`` (``grad_change_rel``
        is ``grad_change_max / grad_norm``, the change free of the gradient's scale), lists in the order of ``step_sizes``;
        ``betas[k] = grad_changes[k] / (step_sizes[k] * grad_norm)``.

    Raises:
        ValueError: no step size, or one that is not > 0.
    """
    if not step_sizes or any(not eta > 0 for eta in step_sizes):
        raise ValueError(f"landscape_point: step sizes must be > 0, got {list(step_sizes)!r}")
    params, buffers = kit.detached_state(model)
    loss0, grad0 = kit.loss_and_grad(model, params, buffers, x, y, loss_fn)
    gnorm = _norm(grad0)
    losses, changes, betas = [], [], []
    for eta in step_sizes:
        moved = {n: p - eta * g for (n, p), g in zip(params.items(), grad0, strict=True)}
        loss, grad = kit.loss_and_grad(model, moved, buffers, x, y, loss_fn)
        change = _norm([a - b for a, b in zip(grad, grad0, strict=True)])
        losses.append(loss)
        changes.append(change)
        betas.append(change / (eta * gnorm) if gnorm > 0 else math.nan)
    finite = [v for v in losses if math.isfinite(v)]
    return {
        "loss0": loss0,
        "grad_norm": gnorm,
        "losses": losses,
        "grad_changes": changes,
        "betas": betas,
        "loss_range": max(finite) - min(finite) if len(finite) == len(losses) else math.inf,
        "grad_change_max": max(changes),
        "grad_change_rel": max(changes) / gnorm if gnorm > 0 else math.nan,
        "beta": max(betas),
    }


@dataclass(frozen=True)
class LandscapeConfig(kit.ProbingConfig):
    """Settings of ``bnlab lab landscape`` (defaults: the full run).

    Args:
        seeds, archs, train_size, test_size, batch_size, steps: see ``ProbingConfig``.
        lr_lenet, lr_mlp: learning rates (the same with and without BN).
        check_every: steps between landscape checkpoints.
        step_multipliers: the step sizes, as multiples of the learning rate.
    """

    lr_lenet: float = 0.9
    lr_mlp: float = 0.1
    check_every: int = 25
    step_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)

    QUICK = kit.ProbingConfig.quick_settings(check_every=10, step_multipliers=(0.5, 1.0, 2.0))
    POSITIVE = (*kit.ProbingConfig.POSITIVE, "lr_lenet", "lr_mlp", "check_every")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.step_multipliers or any(not m > 0 for m in self.step_multipliers):
            raise ValueError(
                f"LandscapeConfig: step_multipliers must be > 0, got {self.step_multipliers!r}"
            )

    def lr(self, arch: str) -> float:
        return self.lr_lenet if arch == "lenet" else self.lr_mlp


VARIANTS = ("none", "bn")


def measure(config: LandscapeConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one (arch, variant, seed) with a landscape checkpoint every ``check_every``
    steps and after the last (on the next batch)."""
    arch, variant, seed = cell.setting, cell.variant, cell.seed
    data, device = bench.data, bench.device
    lr = config.lr(arch)
    etas = [m * lr for m in config.step_multipliers]
    with seeded(seed):
        model = kit.build_model(arch, "none" if variant == "none" else kit.BN_NORM, seed).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        train = kit.batches(
            data["train_images"], data["train_labels"], config.batch_size, seed, device
        )
        points: list[dict[str, Any]] = []

        def checkpoint(step: int, x: Tensor, y: Tensor) -> None:
            points.append({"step": step, **landscape_point(model, x, y, etas)})

        losses = run_steps(
            model,
            train,
            opt,
            steps=config.steps,
            on_batch=every(config.check_every, lambda s: checkpoint(s.step, s.x, s.y)),
            on_step=lambda s: bench.advance(1),
        )
        checkpoint(config.steps, *next(train))
    tail = losses[-max(1, config.steps // 10) :]
    metrics = point_means(points)
    final = sum(tail) / len(tail)
    metrics["train_loss"] = final if math.isfinite(final) else None
    metrics["test_acc"] = kit.accuracy_on_test(model, data, device)
    return {
        "arch": arch,
        "variant": variant,
        "seed": seed,
        "lr": lr,
        "step_sizes": etas,
        "metrics": metrics,
        "points": points,
    }


def point_means(points: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Means over checkpoints of ``METRICS``, ``grad_change_rel`` and ``grad_norm``."""
    keys = (*METRICS, "grad_change_rel", "grad_norm")
    return {key: kit.finite_mean([p.get(key) for p in points]) for key in keys}


def decide_landscape(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-smoother-landscape``: per network and per quantity (loss range,
    largest gradient change, effective beta), mean over checkpoints with BN vs without
    over seeds; ``supported`` if every comparison is lower with BN beyond 2 standard
    errors, ``not supported`` if none is, ``mixed`` otherwise."""
    per_seed = results["raw"]["per_seed"]
    evidence: dict[str, Any] = {}
    directions = []
    for key in METRICS:
        by_arch, found = kit.compare_variants(
            per_seed,
            key,
            entry=lambda v, c, key=key: {
                "bn": kit.variant_mean(v, "bn", key),
                "none": kit.variant_mean(v, "none", key),
                "direction": c.direction,
            },
        )
        for arch, entry in by_arch.items():
            evidence.setdefault(arch, {})[key] = entry
        directions += found
    return evidence, kit.directions_verdict(directions, "less")


def _measured(evidence: Mapping[str, Any]) -> str:
    return "; ".join(
        f"{kit.arch_label(a)}: "
        + ", ".join(
            f"{k} {e['bn']:.3g} (BN) vs {e['none']:.3g} ({e['direction']})"
            for k, e in by.items()
            if e["bn"] is not None and e["none"] is not None
        )
        for a, by in evidence.items()
    )


CLAIM = (
    "BN makes the loss landscape smoother (smaller loss variation, gradient change "
    "and effective beta along the gradient)"
)


def summarize(config: LandscapeConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """Table, verdict and figure of the finished grid."""
    # The checkpoint means are recomputed from the stored points, so a summary
    # quantity added later needs no rerun.
    per_seed = run.per_seed(lambda u: {**u["metrics"], **point_means(u["points"])})
    table = summary_table(
        "Loss landscape along the gradient (mean over checkpoints; mean ± std over seeds)",
        per_seed,
        [
            ("loss range", "loss_range"),
            ("max grad change", "grad_change_max"),
            ("effective beta", "beta"),
            ("max grad change / grad norm", "grad_change_rel"),
            ("grad norm", "grad_norm"),
            ("final train loss", "train_loss"),
            ("test acc", "test_acc"),
        ],
        label=kit.arch_label,
    )
    verdicts, _ = kit.apply_rules(
        {"raw": {"per_seed": per_seed}}, [(CLAIM, decide_landscape, _measured)]
    )
    plot_landscape(
        run.curves("points", settings=config.archs, variants=VARIANTS),
        {arch: kit.arch_label(arch) for arch in config.archs},
        ctx.out_dir / "landscape.png",
    )
    return LabOutcome(
        tables=[table],
        verdicts=verdicts,
        figures=[
            Figure(
                "landscape.png",
                "Loss (left), gradient change (middle) and effective beta (right) along the "
                "gradient over training: band = min-max over step sizes (edges averaged over "
                "seeds), without BN (gray) and with BN (blue)",
            )
        ],
        raw={"per_seed": per_seed, "units": run.results},
        notes=[
            f"{config.train_size} training images, {config.steps} SGD steps of batch "
            f"{config.batch_size}; lr {config.lr_lenet} (LeNet), {config.lr_mlp} (MLP); "
            f"step sizes {list(config.step_multipliers)} x lr, every {config.check_every} steps",
            *kit.plateau_notes(per_seed),
        ],
    )


SPEC = register_lab(
    kit.probing_lab(
        name="landscape",
        title="Loss landscape smoothness, with and without BN",
        summary=(
            "Santurkar et al. (arXiv 1805.11604, figure 4): along training, step along the "
            "gradient with several step sizes and record the loss range, the change of the "
            "gradient and the effective beta-smoothness, with and without BN (d2l LeNet "
            "sigmoid and a 3x100 ReLU MLP, 3 seeds). Full run: 12000 training images, 300 "
            "steps of batch 128, a checkpoint every 25 steps, step sizes 0.25-4 x lr."
        ),
        config_type=LandscapeConfig,
        variants=VARIANTS,
        measure=measure,
        summarize=summarize,
        description="landscape: training with checkpoints",
        full_time=(
            "about 7 min (395 s wall + 23 s to summarize, 73 s CPU; --threads 1, 2-core CPU machine shared and loaded by other jobs, 2026-11-26)"
        ),
    )
)

register_claim(
    Claim(
        key="bn-smoother-landscape",
        claim="BN makes the loss landscape smoother (the loss and its gradient change less "
        "along the gradient direction)",
        source="Santurkar et al. 2018, arXiv 1805.11604, section 3.1 (not in the seeds)",
        experiment="landscape",
        rule_text=(
            "per network (LeNet sigmoid, ReLU MLP) and per quantity (loss range over step "
            "sizes, largest l2 change of the gradient, effective beta = max change / distance), "
            "mean over checkpoints with BN vs without over seeds; a difference counts beyond 2 "
            "Welch standard errors. supported: every comparison lower with BN; not supported: "
            "none; mixed otherwise"
        ),
        rule=decide_landscape,
    )
)
