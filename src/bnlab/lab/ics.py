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

Verdicts use :func:`bnlab.lab.experiment.compare` over seeds (a difference counts when it
exceeds twice its Welch standard error).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bnlab.data.loader import DeviceLoader
from bnlab.lab.claims import Claim, holds_of, register_claim
from bnlab.lab.experiment import (
    Figure,
    LabContext,
    LabOutcome,
    LabSpec,
    Table,
    Verdict,
    compare,
    describe,
    mean_std_text,
    register_lab,
    seeded,
)
from bnlab.lab.probes import capture
from bnlab.models import create, is_norm_layer
from bnlab.plots.ics import plot_grad_ics, plot_ics_trajectories
from bnlab.train import evaluate, init_weights

__all__ = [
    "ARCHS",
    "Batches",
    "ICSConfig",
    "build_model",
    "decide_ics",
    "decide_noise",
    "directions_verdict",
    "distribution_drift",
    "gradient_shift",
    "noisy_outputs",
    "norm_layers",
    "run_ics",
    "weight_layers",
]

#: Architectures: the d2l LeNet (sigmoid), a ReLU MLP and a deep sigmoid MLP, each with
#: the norm before the activation (the paper's and the d2l chapter's placement).
ARCHS: dict[str, dict[str, Any]] = {
    "lenet": {"name": "lenet", "kwargs": {}, "label": "LeNet (sigmoid)"},
    "mlp-relu": {
        "name": "mlp",
        "kwargs": {"hidden": (100, 100, 100), "activation": "relu", "norm_position": "before"},
        "label": "MLP 3x100 (ReLU)",
    },
    "mlp-sigmoid": {
        "name": "mlp",
        "kwargs": {"hidden": (100,) * 6, "activation": "sigmoid", "norm_position": "before"},
        "label": "MLP 6x100 (sigmoid)",
    },
}

#: The model norm used for "with BN".
BN_NORM = "bnlab"


def check_archs(owner: str, archs: Sequence[str]) -> None:
    """Raise ValueError for an empty or unknown architecture list."""
    if not archs:
        raise ValueError(f"{owner}: archs is empty; choose from: {', '.join(ARCHS)}")
    for arch in archs:
        if arch not in ARCHS:
            raise ValueError(f"{owner}: unknown arch {arch!r}; choose from: {', '.join(ARCHS)}")


def check_positive(owner: str, config: Any, names: Sequence[str]) -> None:
    """Raise ValueError when a numeric setting is not > 0."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")


def build_model(arch: str, norm: str, seed: int, *, init_scale: float = 1.0) -> nn.Module:
    """The architecture ``arch`` with ``norm``, d2l's Xavier init from ``seed``, scaled.

    Args:
        arch: a key of ``ARCHS``.
        norm: ``"none"`` or a norm name (``"bnlab"``).
        seed: fixes the initial weights.
        init_scale: every conv/linear weight is multiplied by this after the init.

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    model = create(spec["name"], norm=norm, **spec["kwargs"])
    init_weights(model, seed)
    if init_scale != 1.0:
        with torch.no_grad():
            for layer in weight_layers(model).values():
                layer.weight.mul_(init_scale)
    return model


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers of ``model`` in forward (registration) order, by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    }


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Normalization layers of ``model`` by name (empty without norms)."""
    return {name: m for name, m in model.named_modules() if name and is_norm_layer(m)}


class Batches:
    """Endless training batches of a subset: epoch after epoch of a seeded DeviceLoader."""

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, seed: int, device: torch.device
    ) -> None:
        batch_size = min(batch_size, images.shape[0])
        self.loader = DeviceLoader(
            images, labels, batch_size, shuffle=True, seed=seed, device=device, drop_last=True
        )
        self._it: Iterator[tuple[Tensor, Tensor]] = iter(self.loader)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)


def split(data: Mapping[str, Tensor], train_size: int, test_size: int) -> dict[str, Tensor]:
    """The first ``train_size`` training and ``test_size`` test examples (int64 labels)."""
    return {
        "train_images": data["train_images"][:train_size],
        "train_labels": data["train_labels"][:train_size].to(torch.int64),
        "test_images": data["test_images"][:test_size],
        "test_labels": data["test_labels"][:test_size].to(torch.int64),
    }


def probe_batch(data: Mapping[str, Tensor], size: int, device: torch.device) -> Tensor:
    """The first ``size`` training images as a float batch ``(size, 1, 28, 28)`` in [0, 1]."""
    n = min(size, data["train_images"].shape[0])
    loader = DeviceLoader(
        data["train_images"][:n], data["train_labels"][:n], n, shuffle=False, device=device
    )
    return next(iter(loader))[0]


def accuracy_on_test(model: nn.Module, data: Mapping[str, Tensor], device: torch.device) -> float:
    """Accuracy on the test split of ``data`` (eval mode)."""
    loader = DeviceLoader(
        data["test_images"], data["test_labels"], 500, shuffle=False, device=device
    )
    return float(evaluate(model, loader)["acc"])


def directions_verdict(directions: Sequence[str], wanted: str) -> str:
    """``supported`` if every comparison went the ``wanted`` way, ``not supported`` if none
    did, ``mixed`` otherwise (``directions`` from :func:`compare`)."""
    if not directions:
        raise ValueError("directions_verdict: no comparisons to decide from")
    hits = sum(d == wanted for d in directions)
    if hits == len(directions):
        return "supported"
    if hits == 0:
        return "not supported"
    return "mixed"


def plateau_notes(per_seed: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]]) -> list[str]:
    """Notes for (network, variant) pairs whose final train loss stayed near ln(10).

    A 10-class network that has not left its initial plateau (loss within 5 % of
    ln 10 = 2.303, chance level) barely moves, so a small shift or a flat landscape there
    says that it does not learn, not that it is well conditioned.
    """
    notes = []
    for arch, variants in per_seed.items():
        for variant, metrics in variants.items():
            mean = describe(metrics.get("train_loss", []))["mean"]
            if mean is not None and mean > 0.95 * math.log(10):
                notes.append(
                    f"{ARCHS[arch]['label']}, {variant}: final train loss {mean:.3f} is at "
                    "chance level (ln 10 = 2.303): it has not left the initial plateau, so its "
                    "small changes reflect a network that barely learns"
                )
    return notes


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


def probe_inputs(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """The inputs of the named layers for batch ``x`` on a train-mode copy of ``model``.

    The copy keeps the model's BN running statistics untouched; no gradients.
    """
    probe = copy.deepcopy(model).train()
    modules = dict(probe.named_modules())
    with torch.no_grad(), capture({n: modules[n] for n in layers}, what="input") as seen:
        probe(x)
    return {n: seen[n][0] for n in layers}


def _clean_params(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return params, buffers


def loss_at(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """The loss of ``model`` with ``params`` and copies of ``buffers`` (functional call)."""
    # Fresh buffer copies each call: train-mode BN updates them in place.
    state = {**params, **{n: b.clone() for n, b in buffers.items()}}
    return loss_fn(functional_call(model, state, (x,)), y)


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
    wl = weight_layers(model)
    names = list(wl)[1:] if layers is None else list(layers)
    params, buffers = _clean_params(model)
    order = list(params)
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    loss = loss_at(model, leaves, buffers, x, y, loss_fn)
    grads = dict(zip(order, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    out: dict[str, dict[str, float]] = {}
    for name in names:
        key = f"{name}.weight"
        if key not in params:
            raise ValueError(f"gradient_shift: {name!r} is not a weight layer of the model")
        earlier = set(order[: order.index(key)])
        shifted = {n: (p - lr * grads[n] if n in earlier else p) for n, p in params.items()}
        w = shifted[key].clone().requires_grad_(True)
        shifted[key] = w
        (g_after,) = torch.autograd.grad(loss_at(model, shifted, buffers, x, y, loss_fn), [w])
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
class ICSConfig:
    """Settings of ``bnlab lab ics`` (defaults: the full run).

    Args:
        seeds: runs per (architecture, variant), seeds 0..seeds-1.
        archs: keys of ``ARCHS``.
        noise_archs: architectures that also train with noisy BN.
        train_size, test_size: examples taken from the start of each split.
        batch_size, steps: SGD batch and number of steps.
        lr_lenet, lr_mlp: SGD learning rates (the same with and without BN).
        probe_every: steps between distribution probes (measure 1).
        probe_size: images in the fixed probe batch.
        grad_ics_every: steps between gradient-ICS measurements (measure 2).
        noise_shift, noise_scale: the noisy-BN ranges (measure 3).
    """

    seeds: int = 3
    archs: tuple[str, ...] = ("lenet", "mlp-relu")
    noise_archs: tuple[str, ...] = ("lenet", "mlp-relu")
    train_size: int = 12000
    test_size: int = 2000
    batch_size: int = 128
    steps: int = 300
    lr_lenet: float = 0.9
    lr_mlp: float = 0.1
    probe_every: int = 25
    probe_size: int = 256
    grad_ics_every: int = 50
    noise_shift: float = 1.0
    noise_scale: float = 2.0

    def __post_init__(self) -> None:
        check_archs("ICSConfig", self.archs)
        for arch in self.noise_archs:
            if arch not in self.archs:
                raise ValueError(
                    f"ICSConfig: noise arch {arch!r} is not in archs {self.archs!r}; add it there"
                )
        check_positive(
            "ICSConfig",
            self,
            (
                "seeds",
                "train_size",
                "test_size",
                "batch_size",
                "steps",
                "lr_lenet",
                "lr_mlp",
                "probe_every",
                "probe_size",
                "grad_ics_every",
                "noise_scale",
            ),
        )
        if self.noise_scale < 1 or self.noise_shift < 0:
            raise ValueError(
                f"ICSConfig: need noise_scale >= 1 and noise_shift >= 0, got "
                f"{self.noise_scale} and {self.noise_shift}"
            )

    @classmethod
    def quick(cls) -> ICSConfig:
        return cls(
            seeds=2,
            train_size=1024,
            test_size=256,
            batch_size=64,
            steps=30,
            probe_every=10,
            probe_size=64,
            grad_ics_every=15,
        )

    def lr(self, arch: str) -> float:
        return self.lr_lenet if arch == "lenet" else self.lr_mlp


VARIANTS = ("none", "bn", "bn-noise")


def _run_unit(
    arch: str,
    variant: str,
    seed: int,
    config: ICSConfig,
    data: Mapping[str, Tensor],
    device: torch.device,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    norm = "none" if variant == "none" else BN_NORM
    lr = config.lr(arch)
    with seeded(seed) as gen:
        model = build_model(arch, norm, seed).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        batches = Batches(
            data["train_images"], data["train_labels"], config.batch_size, seed, device
        )
        probe_x = probe_batch(data, config.probe_size, device)
        watched = list(weight_layers(model))[1:]
        norms = norm_layers(model)
        trajectory: dict[str, list[dict[str, Any]]] = {n: [] for n in watched}
        drifts: dict[str, list[float]] = {n: [] for n in watched}
        previous: dict[str, tuple[Tensor, Tensor, float]] = {}
        grad_ics: dict[str, list[dict[str, float]]] = {n: [] for n in watched}
        grad_steps: list[int] = []
        losses: list[float] = []

        def probe(step: int) -> None:
            for name, x in probe_inputs(model, probe_x, watched).items():
                trajectory[name].append({"step": step, **_layer_stats(x)})
                moments = _channel_moments(x)
                if name in previous:
                    drifts[name].append(distribution_drift(previous[name], moments))
                previous[name] = moments

        for step in range(config.steps):
            if step % config.probe_every == 0:
                probe(step)
            x, y = batches.next()
            if step % config.grad_ics_every == 0:
                for name, m in gradient_shift(model, x, y, lr).items():
                    grad_ics[name].append(m)
                grad_steps.append(step)
            noise = (
                noisy_outputs(
                    norms, shift=config.noise_shift, scale=config.noise_scale, generator=gen
                )
                if variant == "bn-noise"
                else _nothing()
            )
            with noise:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            advance(1)
        probe(config.steps)
    tail = [v for v in losses[-max(1, config.steps // 10) :]]
    final_loss = sum(tail) / len(tail)
    layer_drift = {n: (sum(v) / len(v) if v else 0.0) for n, v in drifts.items()}
    layer_cos = {n: _mean([m["cos"] for m in v]) for n, v in grad_ics.items()}
    layer_rel = {n: _mean([m["rel"] for m in v]) for n, v in grad_ics.items()}
    layer_l2 = {n: _mean([m["l2"] for m in v]) for n, v in grad_ics.items()}
    return {
        "arch": arch,
        "variant": variant,
        "seed": seed,
        "lr": lr,
        "metrics": {
            "drift": _mean(list(layer_drift.values())),
            "grad_cos": _mean(list(layer_cos.values())),
            "grad_rel": _mean(list(layer_rel.values())),
            "grad_l2": _mean(list(layer_l2.values())),
            "train_loss": final_loss if math.isfinite(final_loss) else None,
            "test_acc": accuracy_on_test(model, data, device),
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


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _per_seed(units: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, list]]]:
    """arch -> variant -> metric -> per-seed values."""
    out: dict[str, dict[str, dict[str, list]]] = {}
    for u in units:
        bucket = out.setdefault(u["arch"], {}).setdefault(u["variant"], {})
        for key, value in u["metrics"].items():
            bucket.setdefault(key, []).append(value)
    return out


def decide_ics(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-reduces-ics`` (measure 1): per architecture, the drift with BN
    is less than without (``compare``, 2 standard errors)."""
    per_seed = results["raw"]["per_seed"]
    evidence: dict[str, Any] = {}
    directions = []
    for arch, variants in per_seed.items():
        if "none" not in variants or "bn" not in variants:
            continue
        c = compare(variants["bn"]["drift"], variants["none"]["drift"])
        evidence[arch] = {
            "drift_bn": describe(variants["bn"]["drift"])["mean"],
            "drift_none": describe(variants["none"]["drift"])["mean"],
            "difference": c.diff,
            "se": c.se,
            "direction": c.direction,
        }
        directions.append(c.direction)
    return evidence, directions_verdict(directions, "less")


def decide_grad_ics(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-reduces-gradient-ics`` (measure 2): per architecture, the mean
    cosine between a layer's gradient before and after the earlier layers' step is
    higher with BN (``compare``, 2 standard errors)."""
    per_seed = results["raw"]["per_seed"]
    evidence: dict[str, Any] = {}
    directions = []
    for arch, variants in per_seed.items():
        if "none" not in variants or "bn" not in variants:
            continue
        c = compare(variants["bn"]["grad_cos"], variants["none"]["grad_cos"])
        evidence[arch] = {
            "cos_bn": describe(variants["bn"]["grad_cos"])["mean"],
            "cos_none": describe(variants["none"]["grad_cos"])["mean"],
            "rel_change_bn": describe(variants["bn"]["grad_rel"])["mean"],
            "rel_change_none": describe(variants["none"]["grad_rel"])["mean"],
            "difference": c.diff,
            "se": c.se,
            "direction": c.direction,
        }
        directions.append(c.direction)
    return evidence, directions_verdict(directions, "greater")


def decide_noise(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Rule of claim ``bn-benefit-survives-covariate-shift`` (measure 3): per
    architecture with a noisy run, test accuracy of BN + noise exceeds that without BN
    (``compare``, 2 standard errors)."""
    per_seed = results["raw"]["per_seed"]
    evidence: dict[str, Any] = {}
    directions = []
    for arch, variants in per_seed.items():
        if not {"none", "bn-noise"} <= set(variants):
            continue
        c = compare(variants["bn-noise"]["test_acc"], variants["none"]["test_acc"])
        evidence[arch] = {
            "test_acc_none": describe(variants["none"]["test_acc"])["mean"],
            "test_acc_bn": describe(variants.get("bn", {}).get("test_acc", []))["mean"],
            "test_acc_bn_noise": describe(variants["bn-noise"]["test_acc"])["mean"],
            "difference": c.diff,
            "se": c.se,
            "direction": c.direction,
        }
        directions.append(c.direction)
    return evidence, directions_verdict(directions, "greater")


def run_ics(config: ICSConfig, ctx: LabContext) -> LabOutcome:
    """Train every (arch, variant, seed) with the probes; tables, verdicts, figures."""
    if ctx.data is None:
        raise ValueError("lab ics needs Fashion-MNIST data")
    data = split(ctx.data, config.train_size, config.test_size)
    jobs = [
        (arch, variant, seed)
        for arch in config.archs
        for variant in VARIANTS
        if variant != "bn-noise" or arch in config.noise_archs
        for seed in range(config.seeds)
    ]
    ctx.progress.start(len(jobs) * config.steps, "ics: training with probes")
    units = []
    for arch, variant, seed in jobs:
        unit = ctx.unit(
            f"{arch}-{variant}-seed{seed}",
            lambda a=arch, v=variant, s=seed: _run_unit(
                a, v, s, config, data, ctx.device, ctx.progress.advance
            ),
            progress_steps=config.steps,
        )
        units.append(unit)
    per_seed = _per_seed(units)
    rows = []
    for arch, variants in per_seed.items():
        for variant, metrics in variants.items():
            rows.append(
                [ARCHS[arch]["label"], variant]
                + [
                    mean_std_text(metrics[k])
                    for k in ("drift", "grad_cos", "grad_rel", "train_loss", "test_acc")
                ]
            )
    table = Table(
        "Internal covariate shift (mean ± std over seeds)",
        [
            "network",
            "variant",
            "drift per probe (1)",
            "grad cos (2)",
            "grad rel. change (2)",
            "final train loss",
            "test acc",
        ],
        rows,
    )
    layer_rows = []
    for arch in per_seed:
        for variant in ("none", "bn"):
            runs = [u for u in units if u["arch"] == arch and u["variant"] == variant]
            if not runs:
                continue
            for layer in runs[0]["layers"]["drift"]:
                layer_rows.append(
                    [
                        ARCHS[arch]["label"],
                        variant,
                        layer,
                        mean_std_text([r["layers"]["drift"][layer] for r in runs]),
                        mean_std_text([r["layers"]["grad_cos"][layer] for r in runs]),
                        mean_std_text([r["layers"]["grad_l2"][layer] for r in runs]),
                    ]
                )
    layer_table = Table(
        "Per layer (input of the layer; mean ± std over seeds)",
        ["network", "variant", "layer", "drift (1)", "grad cos (2)", "grad l2 change (2)"],
        layer_rows,
    )
    results_like = {"raw": {"per_seed": per_seed}}
    verdicts = []
    for claim, rule in (
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
    ):
        evidence, verdict = rule(results_like)
        measured = "; ".join(
            f"{ARCHS[a]['label']}: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in e.items()
                if k not in ("se",)
            )
            for a, e in evidence.items()
        )
        verdicts.append(Verdict(claim, holds_of(verdict), f"{verdict}: {measured}"))
    curves = {
        arch: {
            variant: [
                u["trajectory"] for u in units if u["arch"] == arch and u["variant"] == variant
            ]
            for variant in VARIANTS
        }
        for arch in config.archs
    }
    grads = {
        arch: {
            variant: [u["grad_ics"] for u in units if u["arch"] == arch and u["variant"] == variant]
            for variant in ("none", "bn")
        }
        for arch in config.archs
    }
    labels = {arch: ARCHS[arch]["label"] for arch in config.archs}
    plot_ics_trajectories(curves, labels, ctx.out_dir / "ics_trajectories.png")
    plot_grad_ics(grads, labels, ctx.out_dir / "ics_gradient.png")
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
        tables=[table, layer_table],
        verdicts=verdicts,
        figures=figures,
        raw={"per_seed": per_seed, "units": units},
        notes=notes + plateau_notes(per_seed),
    )


SPEC = register_lab(
    LabSpec(
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
        run=run_ics,
        needs_data=True,
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
