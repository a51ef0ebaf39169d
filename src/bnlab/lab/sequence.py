"""``bnlab lab sequence``: BN against LayerNorm in a GRU and a Transformer that read rows.

Seed ``003_8a52002564f5ba9e.txt`` says BN stabilises recurrent networks (RNN, LSTM) and
helps Transformers train, and that LayerNorm and InstanceNorm have their advantages on
sequence data and in online learning. Measured here on Fashion-MNIST read as a sequence:
each image is 28 steps of 28 features (its rows, standardized with the dataset's mean
and std), classified by the networks of ``bnlab.models.sequence``: a GRU with the norm
on its input-to-hidden pre-activations (BN with per-step statistics, as Cooijmans et
al., arXiv 1603.09025) and a pre-norm Transformer (BN over batch and time), each with no
norm, BN or LayerNorm.

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
from bnlab.lab import experiment, kit
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, seeded
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, grid_lab
from bnlab.models.sequence import SEQUENCE_ARCHS as ARCHS
from bnlab.models.sequence import SEQUENCE_NORMS as NORMS
from bnlab.models.sequence import build_sequence_model
from bnlab.plots.sequence import plot_batch_sizes, plot_streaming
from bnlab.train.steps import cycle, run_steps

__all__ = [
    "ARCHS",
    "NORMS",
    "SequenceConfig",
    "decide_bn_helps",
    "decide_ln_suits_sequences",
    "grid",
    "measure",
    "summarize",
]

SOURCE = "003_8a52002564f5ba9e.txt"
CLAIM_BN_RNN = "BN helps recurrent networks (RNN/LSTM: 批量归一化...稳定训练过程)"
CLAIM_BN_TRANSFORMER = "BN helps Transformers train (训练深层结构的Transformer模型时)"
CLAIM_LN = (
    "LayerNorm suits sequence data and online learning better than BN "
    "(Layer Normalization...在处理序列数据或在线学习场景中展现了各自的优势)"
)
#: Fashion-MNIST's pixel mean and std (of the training split, in [0, 1]).
PIXEL_NORMALIZE = (0.2860, 0.3530)
#: The batch "size" of the streaming pass in the grid's settings (it trains at batch 1).
STREAM = "stream"


@dataclass(frozen=True)
class SequenceConfig(kit.LabConfig):
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

    QUICK = kit.LabConfig.quick_settings(
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


def grid(config: SequenceConfig) -> Grid:
    """(network, batch size or ``STREAM``) x norm x seed; units
    ``ARCH-NORM-bB-seedN`` and ``ARCH-NORM-stream-seedN``.

    Raises:
        ValueError: an unknown network or norm.
    """
    for arch in config.archs:
        if arch not in ARCHS:
            raise ValueError(
                f"unknown sequence network {arch!r}; choose one of: {', '.join(ARCHS)}"
            )
    for norm in config.norms:
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")

    def key(cell: Cell) -> str:
        arch, batch = cell.setting
        return f"{arch}-{cell.variant}-{STREAM if batch == STREAM else f'b{batch}'}-seed{cell.seed}"

    return Grid(
        variants=config.norms,
        settings=[(a, b) for a in config.archs for b in (*config.batch_sizes, STREAM)],
        seeds=config.seeds,
        key=key,
    )


def measure(config: SequenceConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """Train one network with Adam (``epochs`` at a batch size, or one streaming pass at
    batch 1); a failure at a step (BN at batch 1) is recorded with its text."""
    (arch, batch), norm, seed = cell.setting, cell.variant, cell.seed
    stream = batch == STREAM
    epochs, batch = (1, 1) if stream else (config.epochs, batch)
    with seeded(seed):
        model = build_sequence_model(
            arch, norm, hidden=config.hidden, d_model=config.d_model, layers=config.layers
        )
    train_x, train_y = kit.take(
        bench.data, "train", config.stream_size if stream else config.train_size
    )
    test_x, test_y = kit.take(bench.data, "test", config.test_size)
    loader = DeviceLoader(
        train_x, train_y, batch, shuffle=True, seed=seed, normalize=PIXEL_NORMALIZE
    )
    test = DeviceLoader(test_x, test_y, len(test_y), shuffle=False, normalize=PIXEL_NORMALIZE)
    tx, ty = next(iter(test))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    started = time.perf_counter()
    losses: list[float] = []  # of the steps taken, also when a later one raises
    error = None
    try:
        with seeded(seed):
            run_steps(
                model,
                cycle(loader),
                opt,
                steps=epochs * len(loader),
                on_step=lambda s: losses.append(s.losses[-1]),
                train_mode=True,
            )
    except (ValueError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    steps = len(losses)
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


def summarize(config: SequenceConfig, ctx: LabContext, run: GridRun) -> LabOutcome:
    """The accuracy table by batch size and streaming, two figures, the verdicts."""
    by_cell = {(c.setting, c.variant, c.seed): r for c, r in run}
    runs = [(a, n, s) for a in config.archs for n in config.norms for s in range(config.seeds)]
    cells = [
        {"arch": a, "norm": n, "batch_size": b, "seed": s, **by_cell[(a, b), n, s]}
        for a, n, s in runs
        for b in config.batch_sizes
    ]
    stream = [{"arch": a, "norm": n, "seed": s, **by_cell[(a, STREAM), n, s]} for a, n, s in runs]
    raw = {
        "cells": cells,
        "stream": stream,
        "archs": list(config.archs),
        "norms": list(config.norms),
        "batch_sizes": list(config.batch_sizes),
        "optimizer": f"Adam, lr {config.lr}, {config.epochs} epochs at every batch size",
    }
    shown = [
        c for c in CLAIMS if c.claim not in BN_CLAIM_ARCH or BN_CLAIM_ARCH[c.claim] in config.archs
    ]
    verdicts, _ = kit.apply_rules({"raw": raw}, shown)
    rows = []
    for arch in config.archs:
        for norm in config.norms:
            row: list[Any] = [ARCHS[arch], NORMS[norm]]
            means = []
            for b in config.batch_sizes:
                m, sd = kit.mean_std(
                    kit.pick(cells, "test_acc", arch=arch, norm=norm, batch_size=b)
                )
                row += [m, sd]
                means.append(m)
            finite = [m for m in means if m is not None]
            row.append(max(finite) - min(finite) if finite else None)
            m, sd = kit.mean_std(kit.pick(stream, "test_acc", arch=arch, norm=norm))
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
                        kit.pick(cells, "test_acc", arch=a, norm=n, batch_size=b, seed=s)[0]
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
            ARCHS[a]: {NORMS[n]: kit.pick(stream, "test_acc", arch=a, norm=n) for n in config.norms}
            for a in config.archs
        },
        ctx.out_dir / "sequence_streaming.png",
    )
    notes = [raw["optimizer"] + "."] + [f"At batch size 1: {e}" for e in errors]
    return LabOutcome(
        tables=[table], verdicts=verdicts, figures=list(FIGURES), raw=raw, notes=notes
    )


FIGURES = [
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
]


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
        bn = kit.pick(cells, "test_acc", arch=arch, norm="bn", batch_size=b)
        none = kit.pick(cells, "test_acc", arch=arch, norm="none", batch_size=b)
        try:
            c = compare(bn, none)
        except ValueError:  # no finite value on a side
            by_batch[str(b)] = {"diff": None, "se": None, "direction": "unclear"}
            continue
        by_batch[str(b)] = {"diff": c.diff, "se": c.se, "direction": c.direction}
    better = sum(1 for v in by_batch.values() if v["direction"] == "greater")
    return {"arch": arch, "by_batch": by_batch}, kit.hits_verdict(better, len(by_batch))


def _measured_bn(evidence: Mapping[str, Any]) -> str:
    parts = [
        f"B={b}: {'n/a' if v['diff'] is None else format(v['diff'], '+.3f')} ({v['direction']})"
        for b, v in evidence["by_batch"].items()
    ]
    return f"BN minus no-norm test accuracy, {ARCHS[evidence['arch']]}: " + "; ".join(parts)


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
        ln_stream = kit.pick(raw["stream"], "test_acc", arch=arch, norm="ln")
        bn_failed = bool(bn_stream) and all(not s["trained"] for s in bn_stream)
        outcome: dict[str, Any] = {"bn_failed_at_batch_1": bn_failed}
        for test, bn, ln in (
            ("stream", kit.pick(raw["stream"], "test_acc", arch=arch, norm="bn"), ln_stream),
            (
                f"batch_{small}",
                kit.pick(raw["cells"], "test_acc", arch=arch, norm="bn", batch_size=small),
                kit.pick(raw["cells"], "test_acc", arch=arch, norm="ln", batch_size=small),
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
            outcome[f"{test}_ln_mean"] = kit.mean_std(ln)[0]
            outcome[f"{test}_bn_mean"] = kit.mean_std(bn)[0]
        evidence[arch] = outcome
    return evidence, kit.ladder_verdict(bool(tests) and wins == tests, wins == 0 and losses > 0)


def _measured_ln(evidence: Mapping[str, Any]) -> str:
    small = evidence["smallest_batch"]
    parts = []
    na = kit.number_or_na
    for arch in ARCHS:
        if arch in evidence:
            e = evidence[arch]
            parts.append(
                f"{ARCHS[arch]}: stream {e['stream']} (LN {na(e['stream_ln_mean'])}, BN "
                f"{na(e['stream_bn_mean'])}), B={small} {e[f'batch_{small}']} (LN "
                f"{na(e[f'batch_{small}_ln_mean'])}, BN {na(e[f'batch_{small}_bn_mean'])})"
            )
    return "; ".join(parts)


SPEC = experiment.register_lab(
    grid_lab(
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
        grid=grid,
        measure=measure,
        summarize=summarize,
        full_time="about 14 min (819 s) on a shared, heavily loaded 2-core CPU machine",
    )
)


def _bn_claim(key: str, claim: str, arch: str) -> kit.ClaimRule:
    return kit.ClaimRule(
        key,
        claim,
        SOURCE,
        RULE_BN.replace("the network", f"the {ARCHS[arch]}"),
        lambda results: decide_bn_helps(results, arch),
        _measured_bn,
    )


CLAIMS = kit.register_claims(
    "sequence",
    _bn_claim("bn-helps-recurrent", CLAIM_BN_RNN, "gru"),
    _bn_claim("bn-helps-transformer", CLAIM_BN_TRANSFORMER, "transformer"),
    kit.ClaimRule(
        "layernorm-suits-sequences-online",
        CLAIM_LN,
        SOURCE,
        RULE_LN,
        decide_ln_suits_sequences,
        _measured_ln,
    ),
)
#: The network each BN claim is about: its verdict is shown when the run trains it.
BN_CLAIM_ARCH = {CLAIM_BN_RNN: "gru", CLAIM_BN_TRANSFORMER: "transformer"}
