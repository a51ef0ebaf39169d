"""``bnlab lab gan``: does BN suit a GAN's discriminator?

Seed ``003_8a52002564f5ba9e.txt`` lists among BN's drawbacks that "for some tasks such as
generative adversarial networks (GANs), BN may not be suitable". Measured here: a small
MLP GAN on Fashion-MNIST whose discriminator has no norm, BatchNorm, or LayerNorm after
each hidden linear layer; with BN, the real and fake examples go through the
discriminator either in *separate* batches (each batch normalized by its own statistics,
so a batch's statistics alone say whether it is fake) or in one *joint* batch (real and
fake share the statistics, and each example's output depends on the other kind). The
generator has no norm layer, so only the discriminator changes (the networks:
``bnlab.models.gan``).

Score: the Fréchet distance (FD) between generated and real test images in the feature
space of a classifier bnlab trains once per run: d2l's LeNet with BN, whose 84
penultimate features (the input of ``fc3``, eval mode) play the role Inception's pool
features play in FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium", arXiv 1706.08500). Lower is better. The FD of a
real training sample against the real test sample is reported as the floor.

:func:`frechet_distance` computes, in float64,
``||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2})``; both
square roots are of symmetric positive semi-definite matrices, taken by
eigendecomposition with negative rounding noise clipped to 0. (``tr (S_1 S_2)^{1/2}``
equals the trace in the symmetric form, since ``S_1 S_2`` and ``S_1^{1/2} S_2
S_1^{1/2}`` are similar.)

Paper: Goodfellow et al., "Generative Adversarial Networks", arXiv 1406.2661; Radford et
al., "Unsupervised Representation Learning with Deep Convolutional GANs" (DCGAN),
arXiv 1511.06434; Salimans et al., "Improved Techniques for Training GANs", arXiv
1606.03498 (virtual BN, for the batch dependence); Ioffe & Szegedy, arXiv 1502.03167.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab import experiment, kit
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, describe, seeded
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, run_grid
from bnlab.models import create
from bnlab.models.gan import Discriminator, Generator
from bnlab.plots.gan import plot_fd_bars, plot_samples
from bnlab.train import TrainConfig

__all__ = [
    "VARIANTS",
    "FeatureSpace",
    "GanConfig",
    "decide_bn_unsuited",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_of",
    "grid",
    "measure",
    "run",
    "sqrtm_psd",
]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM = "BN may not suit GANs (对于某些任务如生成对抗网络(GANs),批量归一化可能并不适用)"

#: discriminator variant -> (norm, how real and fake examples are batched)
VARIANTS: dict[str, tuple[str, str]] = {
    "none": ("none", "separate"),
    "bn-separate": ("bn", "separate"),
    "bn-joint": ("bn", "joint"),
    "ln": ("ln", "separate"),
}
LABELS = {
    "none": "no norm",
    "bn-separate": "BN, separate real/fake batches",
    "bn-joint": "BN, one joint batch",
    "ln": "LayerNorm",
}


def sqrtm_psd(m: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix.

    Eigendecomposition ``m = V diag(w) V^T``; eigenvalues below 0 (rounding noise of a
    semi-definite matrix) are clipped to 0.

    Raises:
        ValueError: ``m`` is not a square matrix.
    """
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"sqrtm_psd: expected a square matrix, got shape {tuple(m.shape)}")
    sym = (m + m.T) / 2
    w, v = torch.linalg.eigh(sym)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64.

    Raises:
        ValueError: not a 2-D tensor with at least 2 rows.
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(
            f"feature_stats: expected features (N, D) with N >= 2, got shape "
            f"{tuple(features.shape)}"
        )
    x = features.to(torch.float64)
    mu = x.mean(0)
    centered = x - mu
    return mu, centered.T @ centered / (x.shape[0] - 1)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """The Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (squared W2).

    ``||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^{1/2} cov2 cov1^{1/2})^{1/2})``,
    computed in float64.

    Raises:
        ValueError: shapes that do not match ``(D,)`` and ``(D, D)``.
    """
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    for name, t, shape in (
        ("mu1", mu1, (d,)),
        ("mu2", mu2, (d,)),
        ("cov1", cov1, (d, d)),
        ("cov2", cov2, (d, d)),
    ):
        if d < 0 or tuple(t.shape) != shape:
            raise ValueError(
                f"frechet_distance: {name} must have shape {shape if d >= 0 else '(D,)'}, "
                f"got {tuple(t.shape)}"
            )
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    cov1, cov2 = cov1.to(torch.float64), cov2.to(torch.float64)
    root1 = sqrtm_psd(cov1)
    cross = torch.linalg.eigvalsh((root1 @ cov2 @ root1 + (root1 @ cov2 @ root1).T) / 2)
    trace_cross = cross.clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_cross
    return float(value.clamp_min(0))


def frechet_distance_of(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)``."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


@dataclass(frozen=True)
class GanConfig(kit.LabConfig):
    """Settings of ``gan`` (defaults: the full run).

    Args:
        seeds: GAN training seeds per discriminator variant.
        variants: which of ``VARIANTS``.
        steps: generator steps (one discriminator step each).
        batch_size: real and fake examples per step (each).
        lr: Adam's learning rate (betas 0.5, 0.999, as in DCGAN), both networks.
        latent, g_hidden: the generator's noise size and hidden width.
        train_size: real training images the GAN sees.
        fd_samples: generated and real test images in each Fréchet distance.
        feature_train_size, feature_epochs: the LeNet-BN feature network's training.
        log_every: steps between recorded losses.
    """

    variants: tuple[str, ...] = ("none", "bn-separate", "bn-joint", "ln")
    steps: int = 1500
    batch_size: int = 64
    lr: float = 0.0002
    latent: int = 32
    g_hidden: int = 128
    train_size: int = 10000
    fd_samples: int = 2000
    feature_train_size: int = 10000
    feature_epochs: int = 2
    log_every: int = 50

    QUICK = kit.LabConfig.quick_settings(
        steps=20,
        train_size=256,
        fd_samples=128,
        feature_train_size=256,
        feature_epochs=1,
        log_every=10,
    )


def _features(model: nn.Module, images: Tensor) -> Tensor:
    """The 84 penultimate features (input of ``fc3``) of ``(N, 1, 28, 28)`` images in [0, 1]."""
    model.eval()
    with torch.no_grad(), kit.capture({"fc3": model.fc3}, what="input") as seen:
        for i in range(0, images.shape[0], 500):
            model(images[i : i + 500])
    return torch.cat(seen["fc3"])


def _feature_net(config: GanConfig, data: Mapping[str, Tensor], device: str) -> Any:
    """Train the LeNet-BN feature network once; its weights travel in the unit's JSON."""
    with seeded(1234):
        model = create("lenet", norm="torch")
    got = kit.train_variant(
        model,
        data,
        TrainConfig(lr=1.0, epochs=config.feature_epochs, batch_size=128, seed=1234, device=device),
        train_size=config.feature_train_size,
        test_size=2000,
        subset_seed=1234,
    )
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    return {"state": state, "test_acc": got["final"]["test_acc"]}


def _load_feature_net(unit: Mapping[str, Any]) -> nn.Module:
    model = create("lenet", norm="torch")
    reference = model.state_dict()
    model.load_state_dict(
        {k: torch.tensor(v, dtype=reference[k].dtype) for k, v in unit["state"].items()}
    )
    return model.eval()


@dataclass(frozen=True)
class FeatureSpace:
    """The score's yardstick: the feature network and its Gaussian of real test images.

    Attributes:
        net: the trained LeNet-BN (eval mode).
        real_stats: mean and covariance of its features of the real test images.
    """

    net: nn.Module
    real_stats: tuple[Tensor, Tensor]

    def distance(self, images: Tensor) -> float:
        """The Fréchet distance of ``images`` (``(N, 1, 28, 28)`` in [0, 1]) to the real ones."""
        return frechet_distance(*feature_stats(_features(self.net, images)), *self.real_stats)


class GanData(NamedTuple):
    """``bench.data`` of the GAN grid: Fashion-MNIST and the feature space."""

    images: Mapping[str, Tensor]
    space: FeatureSpace


def grid(config: GanConfig) -> Grid:
    """Discriminator variant x seed (units ``VARIANT-seedN``, variants outermost).

    Raises:
        ValueError: an unknown variant.
    """
    for v in config.variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown gan variant {v!r}; choose one of: {', '.join(VARIANTS)}")
    return Grid(variants=config.variants, seeds=config.seeds, order=("variant", "seed", "setting"))


def measure(config: GanConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one GAN (the two-optimizer step below), then score its samples."""
    data: GanData = bench.data
    norm, batching = VARIANTS[cell.variant]
    real_x, _ = kit.take(data.images, "train", config.train_size, seed=cell.seed)
    real = kit.float_images(real_x) * 2 - 1  # (N, 1, 28, 28) in [-1, 1]
    with seeded(cell.seed) as gen:
        g = Generator(config.latent, config.g_hidden)
        d = Discriminator(norm)
        history, nonfinite = _train_gan(config, g, d, real, joint=batching == "joint", gen=gen)
        g.eval()
        with torch.no_grad():
            samples = (g(torch.randn(config.fd_samples, config.latent, generator=gen)) + 1) / 2
    fd = data.space.distance(samples)  # samples in [0, 1], the feature network's range
    thumbnails = (samples[:16, 0] * 255).round().to(torch.uint8)
    return {
        "fd": fd if math.isfinite(fd) and not nonfinite else None,
        "nonfinite": nonfinite,
        "history": history,
        "samples": thumbnails.reshape(16, -1).tolist(),
    }


def _train_gan(
    config: GanConfig,
    g: nn.Module,
    d: nn.Module,
    real: Tensor,
    *,
    joint: bool,
    gen: torch.Generator,
) -> tuple[list[dict[str, float]], bool]:
    """``config.steps`` alternating steps, discriminator then generator (Adam, betas 0.5,
    0.999, as DCGAN). Returns the logged losses and whether a loss became non-finite (the
    run stops there)."""
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(0.5, 0.999))
    b = config.batch_size
    ones, zeros = torch.ones(b), torch.zeros(b)
    history: list[dict[str, float]] = []

    def logits(x_real: Tensor, x_fake: Tensor) -> tuple[Tensor, Tensor]:
        if joint:  # one batch: real and fake share BN's statistics
            out = d(torch.cat([x_real, x_fake]))
            return out[:b], out[b:]
        return d(x_real), d(x_fake)

    for step in range(config.steps):
        x_real = real[torch.randint(real.shape[0], (b,), generator=gen)]
        fake = g(torch.randn(b, config.latent, generator=gen))
        opt_d.zero_grad(set_to_none=True)
        out_real, out_fake = logits(x_real, fake.detach())
        loss_d = F.binary_cross_entropy_with_logits(
            out_real, ones
        ) + F.binary_cross_entropy_with_logits(out_fake, zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        # the generator's step sees the discriminator as its step did: in the joint
        # variant the fakes are normalized together with a real batch
        out_fake = d(torch.cat([x_real, fake]))[b:] if joint else d(fake)
        # the non-saturating generator loss of Goodfellow et al.
        loss_g = F.binary_cross_entropy_with_logits(out_fake, ones)
        loss_g.backward()
        opt_g.step()
        if not (math.isfinite(loss_d.item()) and math.isfinite(loss_g.item())):
            return history, True
        if step % config.log_every == 0 or step == config.steps - 1:
            history.append({"step": step, "loss_d": loss_d.item(), "loss_g": loss_g.item()})
    return history, False


def run(config: GanConfig, ctx: LabContext) -> LabOutcome:
    """Train the feature network (unit ``feature-net``), then the grid of GANs."""
    if ctx.data is None:
        raise ValueError("gan needs Fashion-MNIST in ctx.data")
    cells = grid(config)
    ctx.progress.start(1 + len(cells.cells()), "gan")
    net_unit = ctx.unit("feature-net", lambda: _feature_net(config, ctx.data, str(ctx.device)))
    ctx.progress.advance()
    features = _load_feature_net(net_unit)
    test_x, _ = kit.take(ctx.data, "test", config.fd_samples, seed=0)
    space = FeatureSpace(features, feature_stats(_features(features, kit.float_images(test_x))))
    floor_x, _ = kit.take(ctx.data, "train", config.fd_samples, seed=99)
    floor = space.distance(kit.float_images(floor_x))
    run = run_grid(ctx, cells, lambda c, b: measure(config, c, b), data=GanData(ctx.data, space))
    return summarize(config, ctx, run, floor=floor, feature_acc=net_unit["test_acc"])


def summarize(
    config: GanConfig, ctx: LabContext, run: GridRun, *, floor: float, feature_acc: float
) -> LabOutcome:
    """The FD table (the real-image floor last), two figures, the verdict."""
    runs = {v: run.select(variant=v) for v in config.variants}
    raw = {
        "fd": {v: [r["fd"] for r in rs] for v, rs in runs.items()},
        "nonfinite": {v: sum(r["nonfinite"] for r in rs) for v, rs in runs.items()},
        "history": {v: [r["history"] for r in rs] for v, rs in runs.items()},
        "fd_real_floor": floor,
        "feature_net_test_acc": feature_acc,
        "metric": (
            "Fréchet distance of LeNet-BN penultimate features (84, eval mode), "
            f"{config.fd_samples} generated vs {config.fd_samples} real test images"
        ),
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)
    rows = []
    for v in config.variants:
        stats = describe([math.nan if x is None else x for x in raw["fd"][v]])
        rows.append(
            [
                LABELS[v],
                stats["mean"],
                stats["std"],
                stats["min"],
                stats["max"],
                f"{raw['nonfinite'][v]}/{config.seeds}",
            ]
        )
    rows.append(["real train images (floor)", floor, None, None, None, "-"])
    table = Table(
        f"Fréchet distance to real test images after {config.steps} generator steps "
        "(lower is better; mean, std over seeds)",
        ["discriminator", "FD mean", "std", "min", "max", "non-finite"],
        rows,
    )
    plot_fd_bars(
        {LABELS[v]: raw["fd"][v] for v in config.variants},
        ctx.out_dir / "gan_fd.png",
        floor=floor,
    )
    plot_samples(
        {LABELS[v]: runs[v][0]["samples"] for v in config.variants},
        ctx.out_dir / "gan_samples.png",
    )
    pitfall = evidences[CLAIM].get("joint_vs_separate")
    notes = [
        raw["metric"] + f"; the feature network's test accuracy: {feature_acc:.3f}.",
        "The generator has no norm; only the discriminator changes.",
    ]
    if pitfall is not None:
        notes.append(
            f"BN joint minus separate FD: {pitfall['diff']:+.2f} ({pitfall['direction']})."
        )
    return LabOutcome(
        tables=[table],
        verdicts=verdicts,
        figures=[
            Figure(
                "gan_fd.png",
                "Fréchet distance (LeNet-BN features) of each discriminator variant: mean "
                "over seeds, whiskers = std, dots = seeds; dashed: real training images.",
            ),
            Figure("gan_samples.png", "Generated samples (seed 0) of each variant."),
        ],
        raw=raw,
        notes=notes,
    )


RULE = (
    "Per-seed Fréchet distances (lower is better). The reference is the non-BN "
    "discriminator (no norm, LayerNorm) with the lower mean FD. For each BN batching "
    "(separate, joint), compare BN's FDs with the reference's (Welch difference, counts "
    "when above twice its standard error). supported: BN is worse (higher FD) with both "
    "batchings; not supported: BN is better (lower FD) with at least one; mixed: "
    "otherwise. A run whose losses became NaN counts as an infinite FD (left out of the "
    "means; if every BN run did, BN is worse)."
)


def decide_bn_unsuited(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN may not suit GANs" from gan's results."""
    fd = results["raw"]["fd"]

    def vals(v: str) -> list[float]:
        return [math.nan if x is None else float(x) for x in fd.get(v, [])]

    alternatives = {v: describe(vals(v))["mean"] for v in ("none", "ln") if v in fd and vals(v)}
    alternatives = {v: m for v, m in alternatives.items() if m is not None}
    evidence: dict[str, Any] = {
        "means": {v: describe(vals(v))["mean"] for v in fd},
    }
    if not alternatives:
        return evidence, "mixed"
    reference = min(alternatives, key=alternatives.__getitem__)
    evidence["reference"] = reference
    directions = []
    for v in ("bn-separate", "bn-joint"):
        if v not in fd:
            continue
        if all(math.isnan(x) for x in vals(v)):
            evidence[v] = {"diff": None, "se": None, "direction": "greater"}
            directions.append("greater")
            continue
        c = compare(vals(v), vals(reference))
        evidence[v] = {"diff": c.diff, "se": c.se, "direction": c.direction}
        directions.append(c.direction)
    if "bn-separate" in fd and "bn-joint" in fd:
        try:
            c = compare(vals("bn-joint"), vals("bn-separate"))
            evidence["joint_vs_separate"] = {"diff": c.diff, "se": c.se, "direction": c.direction}
        except ValueError:
            pass
    supported = bool(directions) and all(d == "greater" for d in directions)
    return evidence, kit.ladder_verdict(supported, "less" in directions)


def _measured(evidence: Mapping[str, Any]) -> str:
    means = evidence["means"]
    parts = [f"{LABELS[v]} {kit.number_or_na(m, '.3g')}" for v, m in means.items() if v in LABELS]
    return (
        "mean FD "
        + ", ".join(parts)
        + (f" (reference: {LABELS[evidence['reference']]})" if "reference" in evidence else "")
    )


SPEC = experiment.register_lab(
    experiment.LabSpec(
        name="gan",
        title="BN in a GAN's discriminator",
        summary=(
            "Tests 'BN may not suit GANs': an MLP GAN (generator 32-128-784, no norm; "
            "discriminator 784-128-64-1, LeakyReLU) trained with Adam (2e-4, betas 0.5/0.999) "
            "for 1500 generator steps at batch 64 on 10000 Fashion-MNIST images, with no norm, "
            "BN (real and fake in separate batches, or in one joint batch) or LayerNorm in "
            "the discriminator; 3 seeds. Score: Fréchet distance of 2000 generated vs 2000 "
            "real test images in the penultimate features of a LeNet-BN that the run trains "
            "once (lower is better; real training images give the floor)."
        ),
        config_type=GanConfig,
        run=run,
        needs_data=True,
        full_time="about 9 min (511 s) on a shared, heavily loaded 2-core CPU machine",
    )
)

CLAIMS = kit.register_claims(
    "gan",
    kit.ClaimRule("bn-unsuited-for-gans", CLAIM, SOURCE, RULE, decide_bn_unsuited, _measured),
)
