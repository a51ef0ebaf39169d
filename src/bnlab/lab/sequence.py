"""``bnlab lab sequence``: BN against LayerNorm in a GRU and a Transformer that read rows.

Seed ``003_8a52002564f5ba9e.txt`` says BN stabilises recurrent networks (RNN, LSTM) and
helps Transformers train, and that LayerNorm and InstanceNorm have their advantages on
sequence data and in online learning. Measured here on Fashion-MNIST read as a sequence:
each image is 28 steps of 28 features (its rows, standardized with the dataset's mean
and std), classified from the last hidden state (GRU) or the mean over steps
(Transformer).

Networks (defined here; they take ``(N, 1, 28, 28)`` and return ``(N, 10)`` logits):

- ``GRU`` (hidden size ``hidden``), written out step by step so a norm can sit on the
  input-to-hidden pre-activations ``W_i x_t`` (shape ``(N, T, 3H)``) before the
  recurrence, the simple form of Laurent et al., "Batch Normalized Recurrent Neural
  Networks" (arXiv 1510.01378). ``bn``: BatchNorm over the batch *per time step*, with
  separate statistics (and affine parameters) for each step, as Cooijmans et al.,
  "Recurrent Batch Normalization" (arXiv 1603.09025) keep per-step statistics;
  ``ln``: LayerNorm over the ``3H`` features of each (example, step) (Ba et al.,
  "Layer Normalization", arXiv 1607.06450); ``none``: nothing.
- ``Transformer``: a pre-norm encoder (``layers`` blocks, ``d_model``, 4 heads, a
  feed-forward of ``2 d_model``, learned positions), Vaswani et al., arXiv 1706.03762.
  ``bn``: BatchNorm1d over (batch, time) for each of the ``d_model`` features (the
  statistics of all steps of all sequences in the batch); ``ln``: LayerNorm over
  ``d_model``; ``none``: identity.

Measurements, all with Adam at a fixed learning rate: test accuracy after ``epochs``
epochs at batch sizes 8, 32 and 128 (the same number of epochs, so fewer steps at larger
batches; the spread across batch sizes is the *stability*), and *streaming* training: one
pass over ``stream_size`` images with batch size 1, the online setting. The GRU's per-step
BN cannot train at batch size 1 (one value per channel: torch raises); that failure is
recorded with its error text. The Transformer's BN over (batch, time) can run at batch
size 1: its statistics then come from the 28 rows of one image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    register_lab,
    seeded,
)
from bnlab.lab.kit import mean_std, pick, take
from bnlab.plots.sequence import plot_batch_sizes, plot_streaming

__all__ = [
    "ARCHS",
    "NORMS",
    "GRUClassifier",
    "SequenceConfig",
    "SequenceNorm",
    "TransformerClassifier",
    "build",
    "decide_bn_helps",
    "decide_ln_suits_sequences",
    "run",
]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM_BN_RNN = "BN helps recurrent networks (RNN/LSTM: 批量归一化...稳定训练过程)"
CLAIM_BN_TRANSFORMER = "BN helps Transformers train (训练深层结构的Transformer模型时)"
CLAIM_LN = (
    "LayerNorm suits sequence data and online learning better than BN "
    "(Layer Normalization...在处理序列数据或在线学习场景中展现了各自的优势)"
)

ARCHS: dict[str, str] = {"gru": "GRU", "transformer": "Transformer"}
NORMS: dict[str, str] = {"none": "no norm", "bn": "BatchNorm", "ln": "LayerNorm"}
#: Fashion-MNIST's pixel mean and std (of the training split, in [0, 1]).
PIXEL_NORMALIZE = (0.2860, 0.3530)


class SequenceNorm(nn.Module):
    """A norm over the features ``F`` of ``(N, T, F)`` sequences.

    Args:
        kind: ``"none"``; ``"ln"`` (LayerNorm over ``F``); ``"bn"`` (BatchNorm over batch
            and time, one set of statistics per feature); ``"bn-step"`` (BatchNorm over the
            batch, separate statistics and affine parameters per (step, feature)).
        num_features: ``F``.
        steps: ``T`` (needed by ``"bn-step"``).

    Shape:
        input and output ``(N, T, F)``.

    Raises:
        ValueError: an unknown kind.
    """

    KINDS = ("none", "ln", "bn", "bn-step")

    def __init__(self, kind: str, num_features: int, steps: int) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(
                f"unknown sequence norm {kind!r}; choose one of: {', '.join(self.KINDS)}"
            )
        self.kind = kind
        self.layer: nn.Module
        if kind == "ln":
            self.layer = nn.LayerNorm(num_features)
        elif kind == "bn":
            self.layer = nn.BatchNorm1d(num_features)
        elif kind == "bn-step":
            self.layer = nn.BatchNorm1d(steps * num_features)
        else:
            self.layer = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "bn":
            return self.layer(x.transpose(1, 2)).transpose(1, 2)  # (N, F, T): stats over N, T
        if self.kind == "bn-step":
            n, t, f = x.shape
            return self.layer(x.reshape(n, t * f)).reshape(n, t, f)
        return self.layer(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def _rows(x: Tensor) -> Tensor:
    """``(N, 1, 28, 28)`` images -> ``(N, 28, 28)`` sequences of rows."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (N, 1, H, W), got shape {tuple(x.shape)}")
    return x[:, 0]


class GRUClassifier(nn.Module):
    """A GRU over image rows with a norm on the input-to-hidden pre-activations.

    ``r, z, n`` gates as in ``torch.nn.GRU``: ``r = s(a_r + W_hr h + b_hr)``,
    ``z = s(a_z + W_hz h + b_hz)``, ``n = tanh(a_n + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) n + z h`` with ``a = norm(W_i x_t + b_i)``.

    Args:
        norm: ``"none"``, ``"bn"`` (per-step BatchNorm) or ``"ln"``.
        hidden: hidden size ``H``.
        steps, features: rows and row length (28, 28).

    Shape:
        input ``(N, 1, steps, features)``; output ``(N, 10)``.
    """

    def __init__(self, norm: str, *, hidden: int = 64, steps: int = 28, features: int = 28) -> None:
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(features, 3 * hidden)
        self.norm = SequenceNorm("bn-step" if norm == "bn" else norm, 3 * hidden, steps)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        seq = _rows(x)
        a = self.norm(self.input(seq))  # (N, T, 3H)
        h = seq.new_zeros(seq.shape[0], self.hidden)
        for t in range(seq.shape[1]):
            ar, az, an = a[:, t].chunk(3, dim=1)
            hr, hz, hn = self.recurrent(h).chunk(3, dim=1)
            r = torch.sigmoid(ar + hr)
            z = torch.sigmoid(az + hz)
            n = torch.tanh(an + r * hn)
            h = (1 - z) * n + z * h
        return self.head(h)


class _Block(nn.Module):
    def __init__(self, norm: str, d_model: int, heads: int, steps: int) -> None:
        super().__init__()
        self.norm1 = SequenceNorm(norm, d_model, steps)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm2 = SequenceNorm(norm, d_model, steps)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class TransformerClassifier(nn.Module):
    """A small pre-norm Transformer encoder over image rows, mean-pooled.

    Args:
        norm: ``"none"``, ``"bn"`` (BatchNorm over batch and time) or ``"ln"``.
        d_model, layers, heads: the encoder's width, depth, attention heads.

    Shape:
        input ``(N, 1, steps, features)``; output ``(N, 10)``.
    """

    def __init__(
        self,
        norm: str,
        *,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        steps: int = 28,
        features: int = 28,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(1, steps, d_model))
        self.blocks = nn.ModuleList(_Block(norm, d_model, heads, steps) for _ in range(layers))
        self.final = SequenceNorm(norm, d_model, steps)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(_rows(x)) + self.position
        for block in self.blocks:
            h = block(h)
        return self.head(self.final(h).mean(dim=1))


def build(
    arch: str, norm: str, *, hidden: int = 64, d_model: int = 64, layers: int = 2
) -> nn.Module:
    """The network ``arch`` (``ARCHS``) with ``norm`` (``NORMS``).

    Raises:
        ValueError: an unknown arch or norm.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if arch == "gru":
        return GRUClassifier(norm, hidden=hidden)
    if arch == "transformer":
        return TransformerClassifier(norm, d_model=d_model, layers=layers)
    raise ValueError(f"unknown sequence network {arch!r}; choose one of: {', '.join(ARCHS)}")


@dataclass(frozen=True)
class SequenceConfig:
    """Settings of ``sequence`` (defaults: the full run).

    Args:
        seeds: training seeds per (network, norm, batch size).
        archs, norms: which networks and norms (``ARCHS``, ``NORMS``).
        batch_sizes: the batch sizes of the stability sweep.
        reference_batch: unused by the rules' arithmetic but named in the tables: the
            batch size the accuracy table leads with.
        train_size, test_size: fixed random subsets of the splits.
        epochs: epochs at every batch size.
        lr: Adam's learning rate (the same for every batch size).
        stream_size: images in the single streaming pass (batch size 1).
        hidden: the GRU's hidden size; d_model, layers: the Transformer's.
    """

    seeds: int = 3
    archs: tuple[str, ...] = ("gru", "transformer")
    norms: tuple[str, ...] = ("none", "bn", "ln")
    batch_sizes: tuple[int, ...] = (8, 32, 128)
    train_size: int = 600
    test_size: int = 1000
    epochs: int = 2
    lr: float = 0.002
    stream_size: int = 200
    hidden: int = 64
    d_model: int = 64
    layers: int = 2

    @classmethod
    def quick(cls) -> SequenceConfig:
        return cls(
            seeds=2,
            batch_sizes=(8, 32),
            train_size=128,
            test_size=128,
            epochs=1,
            stream_size=32,
            hidden=16,
            d_model=16,
            layers=1,
        )


def _evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 500]) for i in range(0, x.shape[0], 500)])
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _train_unit(
    config: SequenceConfig,
    data: Mapping[str, Tensor],
    arch: str,
    norm: str,
    batch_size: int,
    seed: int,
    *,
    epochs: int,
    train_size: int,
) -> dict[str, Any]:
    """Train one network with Adam; a failure at a step (BN at batch 1) is recorded."""
    with seeded(seed):
        model = build(
            arch, norm, hidden=config.hidden, d_model=config.d_model, layers=config.layers
        )
    train_x, train_y = take(data, "train", train_size, seed=0)
    test_x, test_y = take(data, "test", config.test_size, seed=0)
    loader = DeviceLoader(
        train_x, train_y, batch_size, shuffle=True, seed=seed, normalize=PIXEL_NORMALIZE
    )
    test = DeviceLoader(test_x, test_y, len(test_y), shuffle=False, normalize=PIXEL_NORMALIZE)
    tx, ty = next(iter(test))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    started = time.perf_counter()
    steps, error, losses = 0, None, []
    try:
        with seeded(seed):
            for _ in range(epochs):
                model.train()
                for x, y in loader:
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                    steps += 1
    except (ValueError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    test_loss, test_acc = _evaluate(model, tx, ty)
    nonfinite = not math.isfinite(test_loss)
    tail = losses[-20:]
    return {
        "test_acc": None if error is not None and steps == 0 else test_acc,
        "test_loss": None if nonfinite or (error is not None and steps == 0) else test_loss,
        "train_loss_tail": sum(tail) / len(tail) if tail else None,
        "steps": steps,
        "error": error,
        "trained": error is None,
        "wall_time_s": time.perf_counter() - started,
    }


def run(config: SequenceConfig, ctx: LabContext) -> LabOutcome:
    if ctx.data is None:
        raise ValueError("sequence needs Fashion-MNIST in ctx.data")
    for arch in config.archs:
        if arch not in ARCHS:
            raise ValueError(
                f"unknown sequence network {arch!r}; choose one of: {', '.join(ARCHS)}"
            )
    for norm in config.norms:
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    data = ctx.data
    n_cells = len(config.archs) * len(config.norms) * config.seeds
    ctx.progress.start(n_cells * (len(config.batch_sizes) + 1), "sequence")
    cells: list[dict[str, Any]] = []
    stream: list[dict[str, Any]] = []
    for arch in config.archs:
        for norm in config.norms:
            for seed in range(config.seeds):
                for b in config.batch_sizes:
                    got = ctx.unit(
                        f"{arch}-{norm}-b{b}-seed{seed}",
                        lambda a=arch, n=norm, b=b, s=seed: _train_unit(
                            config,
                            data,
                            a,
                            n,
                            b,
                            s,
                            epochs=config.epochs,
                            train_size=config.train_size,
                        ),
                    )
                    cells.append({"arch": arch, "norm": norm, "batch_size": b, "seed": seed, **got})
                    ctx.progress.advance()
                got = ctx.unit(
                    f"{arch}-{norm}-stream-seed{seed}",
                    lambda a=arch, n=norm, s=seed: _train_unit(
                        config, data, a, n, 1, s, epochs=1, train_size=config.stream_size
                    ),
                )
                stream.append({"arch": arch, "norm": norm, "seed": seed, **got})
                ctx.progress.advance()
    raw = {
        "cells": cells,
        "stream": stream,
        "archs": list(config.archs),
        "norms": list(config.norms),
        "batch_sizes": list(config.batch_sizes),
        "optimizer": f"Adam, lr {config.lr}, {config.epochs} epochs at every batch size",
    }
    results = {"raw": raw}
    verdicts = []
    for arch, claim in (("gru", CLAIM_BN_RNN), ("transformer", CLAIM_BN_TRANSFORMER)):
        if arch in config.archs:
            ev, v = decide_bn_helps(results, arch)
            verdicts.append(Verdict(claim, holds_of(v), _measured_bn(ev, v)))
    ev_ln, v_ln = decide_ln_suits_sequences(results)
    verdicts.append(Verdict(CLAIM_LN, holds_of(v_ln), _measured_ln(ev_ln, v_ln)))

    rows = []
    for arch in config.archs:
        for norm in config.norms:
            row: list[Any] = [ARCHS[arch], NORMS[norm]]
            means = []
            for b in config.batch_sizes:
                m, sd = mean_std(pick(cells, "test_acc", arch=arch, norm=norm, batch_size=b))
                row += [m, sd]
                means.append(m)
            finite = [m for m in means if m is not None]
            row.append(max(finite) - min(finite) if finite else None)
            m, sd = mean_std(pick(stream, "test_acc", arch=arch, norm=norm))
            failed = sum(
                1 for s in stream if s["arch"] == arch and s["norm"] == norm and not s["trained"]
            )
            row += [m, sd, f"{failed}/{config.seeds}"]
            rows.append(row)
    columns = ["network", "norm"]
    for b in config.batch_sizes:
        columns += [f"acc B={b}", f"std B={b}"]
    columns += ["range over B", "stream acc (B=1)", "stream std", "stream failed"]
    table = Table(
        "Test accuracy (mean, std over seeds) by batch size, and streaming", columns, rows
    )
    errors = sorted({s["error"] for s in stream if s["error"]})
    plot_batch_sizes(
        {
            f"{ARCHS[a]} {NORMS[n]}": {
                "x": list(config.batch_sizes),
                "runs": [
                    [
                        pick(cells, "test_acc", arch=a, norm=n, batch_size=b, seed=s)[0]
                        for b in config.batch_sizes
                    ]
                    for s in range(config.seeds)
                ],
            }
            for a in config.archs
            for n in config.norms
        },
        ctx.out_dir / "sequence_batch_sizes.png",
    )
    plot_streaming(
        {
            ARCHS[a]: {NORMS[n]: pick(stream, "test_acc", arch=a, norm=n) for n in config.norms}
            for a in config.archs
        },
        ctx.out_dir / "sequence_streaming.png",
    )
    return LabOutcome(
        tables=[table],
        verdicts=verdicts,
        figures=[
            Figure(
                "sequence_batch_sizes.png",
                "Test accuracy against the batch size (same epochs, Adam), GRU and "
                "Transformer with no norm, BN and LayerNorm: mean over seeds, band = min..max.",
            ),
            Figure(
                "sequence_streaming.png",
                "Streaming (online) training, batch size 1, one pass: test accuracy per "
                "norm (bars: mean, whiskers: std; 'failed': the norm cannot train at B=1).",
            ),
        ],
        raw=raw,
        notes=[raw["optimizer"] + "."] + [f"At batch size 1: {e}" for e in errors],
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


RULE_BN = (
    "For the network, at each batch size (8, 32, 128), compare the per-seed test "
    "accuracy with BN against no norm (Welch difference, counts when above twice its "
    "standard error). supported: BN is higher at every batch size; not supported: BN is "
    "higher at none; mixed: otherwise."
)


def decide_bn_helps(results: Mapping[str, Any], arch: str) -> tuple[dict[str, Any], str]:
    """The verdict for "BN helps ``arch``" from sequence's results."""
    raw = results["raw"]
    cells = raw["cells"]
    by_batch = {}
    for b in raw["batch_sizes"]:
        bn = pick(cells, "test_acc", arch=arch, norm="bn", batch_size=b)
        none = pick(cells, "test_acc", arch=arch, norm="none", batch_size=b)
        try:
            c = compare(bn, none)
        except ValueError:  # no finite value on a side
            by_batch[str(b)] = {"diff": None, "se": None, "direction": "unclear"}
            continue
        by_batch[str(b)] = {"diff": c.diff, "se": c.se, "direction": c.direction}
    better = sum(1 for v in by_batch.values() if v["direction"] == "greater")
    verdict = (
        "supported" if better == len(by_batch) else "not supported" if better == 0 else "mixed"
    )
    return {"arch": arch, "by_batch": by_batch}, verdict


def _measured_bn(evidence: Mapping[str, Any], verdict: str) -> str:
    parts = [
        f"B={b}: {'n/a' if v['diff'] is None else format(v['diff'], '+.3f')} ({v['direction']})"
        for b, v in evidence["by_batch"].items()
    ]
    return f"{verdict}: BN minus no-norm test accuracy, {ARCHS[evidence['arch']]}: " + "; ".join(
        parts
    )


RULE_LN = (
    "For each network, two tests of LayerNorm against BN: (1) streaming, batch size 1: "
    "LayerNorm wins when BN cannot train there (an error) or LayerNorm's per-seed test "
    "accuracy is higher by more than twice the Welch standard error, loses when lower by "
    "that rule; (2) the smallest batch size of the sweep, the same comparison. supported: "
    "LayerNorm wins every test of every network; not supported: it wins none and loses at "
    "least one; mixed: otherwise."
)


def decide_ln_suits_sequences(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "LayerNorm suits sequences and online learning better than BN"."""
    raw = results["raw"]
    small = min(raw["batch_sizes"])
    evidence: dict[str, Any] = {"smallest_batch": small}
    wins = losses = tests = 0
    for arch in raw["archs"]:
        bn_stream = [s for s in raw["stream"] if s["arch"] == arch and s["norm"] == "bn"]
        ln_stream = pick(raw["stream"], "test_acc", arch=arch, norm="ln")
        bn_failed = bool(bn_stream) and all(not s["trained"] for s in bn_stream)
        outcome: dict[str, Any] = {"bn_failed_at_batch_1": bn_failed}
        for test, bn, ln in (
            ("stream", pick(raw["stream"], "test_acc", arch=arch, norm="bn"), ln_stream),
            (
                f"batch_{small}",
                pick(raw["cells"], "test_acc", arch=arch, norm="bn", batch_size=small),
                pick(raw["cells"], "test_acc", arch=arch, norm="ln", batch_size=small),
            ),
        ):
            tests += 1
            if test == "stream" and bn_failed:
                result = "ln wins (BN cannot train at batch size 1)"
                wins += 1
            else:
                try:
                    c = compare(ln, bn)
                    direction = c.direction
                    outcome[f"{test}_diff"] = c.diff
                    outcome[f"{test}_se"] = c.se
                except ValueError:
                    direction = "unclear"
                result = {"greater": "ln wins", "less": "ln loses"}.get(direction, "unclear")
                wins += direction == "greater"
                losses += direction == "less"
            outcome[test] = result
            outcome[f"{test}_ln_mean"] = describe(ln)["mean"]
            outcome[f"{test}_bn_mean"] = describe(bn)["mean"]
        evidence[arch] = outcome
    if tests and wins == tests:
        verdict = "supported"
    elif wins == 0 and losses > 0:
        verdict = "not supported"
    else:
        verdict = "mixed"
    return evidence, verdict


def _measured_ln(evidence: Mapping[str, Any], verdict: str) -> str:
    small = evidence["smallest_batch"]
    parts = []
    for arch in ARCHS:
        if arch in evidence:
            e = evidence[arch]
            parts.append(
                f"{ARCHS[arch]}: stream {e['stream']} (LN {_fmt(e['stream_ln_mean'])}, BN "
                f"{_fmt(e['stream_bn_mean'])}), B={small} {e[f'batch_{small}']} (LN "
                f"{_fmt(e[f'batch_{small}_ln_mean'])}, BN {_fmt(e[f'batch_{small}_bn_mean'])})"
            )
    return f"{verdict}: " + "; ".join(parts)


SPEC = register_lab(
    LabSpec(
        name="sequence",
        title="BN against LayerNorm in a GRU and a Transformer reading image rows",
        summary=(
            "Tests 'BN helps recurrent networks / Transformers' and 'LayerNorm suits "
            "sequences and online learning': Fashion-MNIST images read as 28 steps of 28 "
            "features by a GRU (64 units; norm on the input-to-hidden pre-activations, BN "
            "per time step as in Cooijmans et al. 2016) and a 2-layer pre-norm Transformer "
            "(d_model 64; BN over batch and time), each with no norm, BN and LayerNorm; "
            "Adam lr 0.002, 2 epochs on 600 images at batch sizes 8, 32, 128, and one "
            "streaming pass over 200 images at batch size 1; 3 seeds, 1000 test images."
        ),
        config_type=SequenceConfig,
        run=run,
        needs_data=True,
        full_time="about 14 min (819 s) on a shared, heavily loaded 2-core CPU machine",
    )
)

for _key, _claim, _arch in (
    ("bn-helps-recurrent", CLAIM_BN_RNN, "gru"),
    ("bn-helps-transformer", CLAIM_BN_TRANSFORMER, "transformer"),
):
    register_claim(
        Claim(
            key=_key,
            claim=_claim,
            source=SOURCE,
            experiment="sequence",
            rule_text=RULE_BN.replace("the network", f"the {ARCHS[_arch]}"),
            rule=lambda results, a=_arch: decide_bn_helps(results, a),
        )
    )
register_claim(
    Claim(
        key="layernorm-suits-sequences-online",
        claim=CLAIM_LN,
        source=SOURCE,
        experiment="sequence",
        rule_text=RULE_LN,
        rule=decide_ln_suits_sequences,
    )
)
