"""``bnlab lab batch-of-one``: training and predicting with a batch of one example.

d2l's chapter (``004_deb69101c4c8736e.txt``) says that batch normalization on a
minibatch of size 1 "learns nothing": after subtracting the batch mean every hidden unit
is 0. The seeds also say that prediction uses the moving averages (``000_3d8114077ba70cad.txt``)
and that LayerNorm and InstanceNorm suit online learning (``003_8a52002564f5ba9e.txt``).
Measured here:

1. *Can it train at B=1?* One train-mode step on a single image, for d2l's LeNet (BN
   after the linear layers too) and for ``bnlab.models.small_cnn.SmallReluCNN`` (norms
   after convolutions only), with every norm; the exact error text of bnlab and of
   ``torch.nn`` is kept.
2. *Online training*: ``online_steps`` SGD steps of batch one (each example seen once)
   for every ``SmallReluCNN`` norm, several seeds, then the test accuracy (eval mode).
   BN after a convolution *can* train at B=1: it has ``H * W`` values per channel, so
   each example is normalized with its own spatial statistics.
3. *Prediction on one example* with models trained at batch 32: eval-mode accuracy in a
   batch and one example at a time, the largest logit change between the two, the
   largest change when an example's batch companions are replaced, and train-mode
   (batch statistics) accuracy one at a time and in a batch.

Paper: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167 (section 3.1: inference
uses the population statistics, so the output depends on the input only); Ba, Kiros &
Hinton, "Layer Normalization", arXiv 1607.06450.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab import experiment, kit
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, compare, seeded
from bnlab.lab.runner import Bench, Cell, Grid, GridRun, run_grid
from bnlab.models import create
from bnlab.models.small_cnn import SmallReluCNN
from bnlab.plots.batch import plot_grouped_bars
from bnlab.train import TrainConfig

__all__ = [
    "BatchOfOneConfig",
    "cannot_train_rule",
    "grid",
    "measure",
    "online_rule",
    "predict_single_rule",
    "prediction_facts",
    "run",
    "try_batch_of_one",
]

CNN_NORMS = ("none", "bnlab", "batchrenorm", "groupnorm", "layernorm", "instancenorm")
LENET_NORMS = (
    "none",
    "bnlab",
    "torch",
    "batchrenorm",
    "ghost",
    "groupnorm",
    "layernorm",
    "instancenorm",
)
LABELS = {
    "none": "no norm",
    "bnlab": "BN",
    "torch": "torch BN",
    "batchrenorm": "Batch Renorm",
    "ghost": "ghost BN",
    "groupnorm": "GroupNorm",
    "layernorm": "LayerNorm",
    "instancenorm": "InstanceNorm",
}
#: The grid's settings: the two trainings of each (norm, seed).
PARTS = ("online", "predict")


@dataclass(frozen=True)
class BatchOfOneConfig(kit.LabConfig):
    """Settings of ``batch-of-one`` (defaults: the full run).

    Args:
        seeds: seeds per norm (online training and prediction models).
        norms: ``SmallReluCNN`` norms of parts 2 and 3.
        online_steps: steps of batch one (distinct training examples).
        online_lr: SGD learning rate of online training (momentum ``momentum``).
        momentum: SGD momentum.
        predict_train_size: training images of the batch-32 models of part 3 (1 epoch).
        predict_lr: their learning rate (0.4 * 32 / 256, batch-size's linear rule).
        predict_examples: test examples predicted one at a time.
        test_size: test images for accuracies in a batch.
        learn_threshold: online accuracy that counts as "learned" (chance is 0.1).
        min_effect: an accuracy difference must also exceed this to count.
        threads: torch CPU threads during the run.
    """

    norms: tuple[str, ...] = CNN_NORMS
    online_steps: int = 400
    online_lr: float = 0.01
    momentum: float = 0.9
    predict_train_size: int = 2048
    predict_lr: float = 0.05
    predict_examples: int = 200
    test_size: int = 1000
    learn_threshold: float = 0.5
    min_effect: float = 0.01
    threads: int = 1

    QUICK = kit.LabConfig.quick_settings(
        online_steps=32, predict_train_size=64, predict_examples=16, test_size=128
    )


def try_batch_of_one(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """One train-mode forward and backward on ``x`` (one example), and an eval forward.

    Returns:
        ``{"train": "ok" | "<ErrorType>: <message>", "train_ok": bool, "eval_ok": bool}``.
    """
    out: dict[str, Any] = {}
    model.train()
    try:
        F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
        out["train"], out["train_ok"] = "ok", True
    except (ValueError, RuntimeError) as exc:
        out["train"], out["train_ok"] = f"{type(exc).__name__}: {exc}", False
    model.eval()
    with torch.no_grad():
        try:
            model(x)
            out["eval_ok"] = True
        except (ValueError, RuntimeError):
            out["eval_ok"] = False
    return out


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float | str:
    """Accuracy in ``model``'s current mode, batches of ``batch``; an error as its text."""
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return correct / x.shape[0]


def prediction_facts(
    model: nn.Module, x: Tensor, y: Tensor, others: Tensor, *, seed: int = 0
) -> dict[str, Any]:
    """How a trained model predicts single examples, in eval and in train mode.

    Args:
        model: a trained classifier (not changed: train mode runs on a copy).
        x, y: the examples predicted one at a time (and in one batch).
        others: a pool of other inputs; each example is also predicted in two batches of
            itself plus 7 companions drawn from ``others`` (two different draws).
        seed: fixes the companion draws.

    Returns:
        ``eval_acc_batch``, ``eval_acc_single``, ``eval_single_vs_batch`` (largest
        ``|logit|`` change), ``eval_companions`` (largest change when the companions
        change), ``train_acc_single`` (a float, or the error text), ``train_acc_batch``,
        ``train_companions`` (None when train mode fails).
    """
    model = model.eval()
    probe = copy.deepcopy(model).train()  # batch statistics; its buffers may change
    out: dict[str, Any] = {}
    with torch.no_grad():
        batch_logits = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(x.shape[0])])
        out["eval_acc_batch"] = (batch_logits.argmax(1) == y).float().mean().item()
        out["eval_acc_single"] = (single.argmax(1) == y).float().mean().item()
        out["eval_single_vs_batch"] = (single - batch_logits).abs().max().item()
        gen = torch.Generator().manual_seed(seed)
        eval_change, train_change = 0.0, 0.0
        train_ok = True
        for i in range(x.shape[0]):
            a = torch.cat(
                [x[i : i + 1], others[torch.randperm(others.shape[0], generator=gen)[:7]]]
            )
            b = torch.cat(
                [x[i : i + 1], others[torch.randperm(others.shape[0], generator=gen)[:7]]]
            )
            eval_change = max(eval_change, (model(a)[0] - model(b)[0]).abs().max().item())
            if train_ok:
                try:
                    train_change = max(train_change, (probe(a)[0] - probe(b)[0]).abs().max().item())
                except (ValueError, RuntimeError):
                    train_ok = False
        out["eval_companions"] = eval_change
        out["train_companions"] = train_change if train_ok else None
    out["train_acc_single"] = _accuracy(probe, x, y, 1)
    out["train_acc_batch"] = _accuracy(probe, x, y, x.shape[0])
    return out


def _errors(data: Mapping[str, Tensor]) -> dict[str, Any]:
    x = kit.float_images(kit.take(data, "test", 1)[0])
    rows = []
    for model_name, norms in (("lenet", LENET_NORMS), ("cnn", (*CNN_NORMS, "ghost"))):
        for norm in norms:
            with seeded(0):
                model = create("lenet", norm=norm) if model_name == "lenet" else SmallReluCNN(norm)
            rows.append({"model": model_name, "norm": norm, **try_batch_of_one(model, x)})
    return {"rows": rows}


def grid(config: BatchOfOneConfig) -> Grid:
    """(online | predict) x norm x seed, units ``PART-NORM-seedN`` (seeds outermost).

    Raises:
        ValueError: a norm outside ``CNN_NORMS``.
    """
    unknown = [n for n in config.norms if n not in CNN_NORMS]
    if unknown:
        raise ValueError(
            f"batch-of-one: unknown norms {unknown}; choose from {', '.join(CNN_NORMS)}"
        )
    return Grid(
        variants=config.norms,
        settings=PARTS,
        seeds=config.seeds,
        order=("seed", "variant", "setting"),
    )


def measure(config: BatchOfOneConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """``online``: ``online_steps`` SGD steps of batch one (each seed its own examples),
    then the test accuracy. ``predict``: one epoch at batch 32, then
    :func:`prediction_facts` on test examples."""
    data, device = bench.data, bench.device
    online = cell.setting == "online"
    batch = 1 if online else 32
    train_size = config.online_steps if online else config.predict_train_size
    model = SmallReluCNN(cell.variant)
    got = kit.train_variant(
        model,
        data,
        TrainConfig(
            lr=config.online_lr if online else config.predict_lr,
            epochs=1,
            batch_size=batch,
            seed=cell.seed,
            momentum=config.momentum,
            device=str(device),
        ),
        train_size=train_size,
        test_size=config.test_size,
        subset_seed=cell.seed if online else 0,  # online: each seed its own stream
        on_step=kit.renorm_warmup(
            model,
            train_size if online else -(-min(train_size, data["train_images"].shape[0]) // batch),
        ),
    )
    if online:
        return {"test_acc": got["final"]["test_acc"], "diverged": got["diverged"]}
    test_x, test_y = kit.take(data, "test", config.test_size)
    loader = DeviceLoader(test_x, test_y, len(test_y), shuffle=False, device=device)
    x, y = next(iter(loader))
    k = min(config.predict_examples, x.shape[0])
    return prediction_facts(model, x[:k], y[:k], x[k:] if x.shape[0] > k + 7 else x, seed=cell.seed)


def run(config: BatchOfOneConfig, ctx: LabContext) -> LabOutcome:
    """The error table's unit (``errors``), then the grid, with ``threads`` CPU threads."""
    if ctx.data is None:
        raise ValueError("batch-of-one needs Fashion-MNIST in ctx.data")
    cells = grid(config)
    with kit.cpu_threads(config.threads):
        ctx.progress.start(1 + len(cells.cells()), "batch-of-one")
        errors = ctx.unit("errors", lambda: _errors(ctx.data))["rows"]
        ctx.progress.advance()
        return summarize(
            config, ctx, errors, run_grid(ctx, cells, lambda c, b: measure(config, c, b))
        )


def summarize(
    config: BatchOfOneConfig, ctx: LabContext, errors: list[dict[str, Any]], run: GridRun
) -> LabOutcome:
    """The B=1 table, the error texts, the prediction table, two figures, the verdicts."""
    online = [{"norm": c.variant, "seed": c.seed, **r} for c, r in run if c.setting == "online"]
    predict = [{"norm": c.variant, "seed": c.seed, **r} for c, r in run if c.setting == "predict"]
    raw = {
        "errors": errors,
        "online": online,
        "predict": predict,
        "online_steps": config.online_steps,
        "learn_threshold": config.learn_threshold,
        "min_effect": config.min_effect,
    }
    verdicts, evidences = kit.apply_rules({"raw": raw}, CLAIMS)
    rows = [
        [
            "LeNet (d2l)" if e["model"] == "lenet" else "SmallReluCNN",
            LABELS[e["norm"]],
            "yes" if e["train_ok"] else "no",
            "yes" if e["eval_ok"] else "no",
            kit.mean_std_cell(kit.pick(online, "test_acc", norm=e["norm"]))
            if e["model"] == "cnn" and e["norm"] in config.norms
            else None,
        ]
        for e in errors
    ]
    table_b1 = Table(
        f"Batch of one: can it train, can it predict, test accuracy after "
        f"{config.online_steps} online steps (mean ± std over seeds)",
        ["model", "norm", "trains at B=1", "predicts at B=1 (eval)", "online test acc"],
        rows,
    )
    messages = Table(
        "Errors of a train-mode step on one example",
        ["model", "norm", "error"],
        [[e["model"], LABELS[e["norm"]], e["train"]] for e in errors if not e["train_ok"]],
    )
    views = (
        ("eval, batch", "eval_acc_batch"),
        ("eval, one at a time", "eval_acc_single"),
        ("train mode, one at a time", "train_acc_single"),
        ("train mode, batch", "train_acc_batch"),
    )

    def values(norm: str, key: str) -> list[Any]:
        return [c[key] for c in predict if c["norm"] == norm]

    def numbers(norm: str, key: str) -> list[float]:
        return [float(v) for v in values(norm, key) if isinstance(v, int | float)]

    pred_rows = []
    for norm in config.norms:
        failed = [v for v in values(norm, "train_acc_single") if isinstance(v, str)]
        pred_rows.append(
            [
                LABELS[norm],
                kit.mean_std_cell(values(norm, "eval_acc_batch")),
                kit.mean_std_cell(values(norm, "eval_acc_single")),
                max(values(norm, "eval_single_vs_batch")),
                max(values(norm, "eval_companions")),
                max((v or 0.0) for v in values(norm, "train_companions")),
                failed[0] if failed else kit.mean_std_cell(values(norm, "train_acc_single")),
                kit.mean_std_cell(values(norm, "train_acc_batch")),
            ]
        )
    table_pred = Table(
        "Prediction on single examples, models trained at batch 32 (accuracy mean ± std; "
        "logit changes: largest over examples and seeds)",
        [
            "norm",
            "eval acc, batch",
            "eval acc, one at a time",
            "eval |Δlogit| one vs batch",
            "eval |Δlogit| other companions",
            "train-mode |Δlogit| other companions",
            "train-mode acc, one at a time",
            "train-mode acc, batch",
        ],
        pred_rows,
    )
    plot_grouped_bars(
        {
            f"online, {config.online_steps} steps of B=1": {
                LABELS[n]: kit.pick(online, "test_acc", norm=n) for n in config.norms
            }
        },
        ctx.out_dir / "online.png",
        ylabel="test accuracy",
        title="Online training (batch of one), SmallReluCNN",
    )
    plot_grouped_bars(
        {view: {LABELS[n]: numbers(n, key) for n in config.norms} for view, key in views},
        ctx.out_dir / "predict_single.png",
        ylabel="test accuracy",
        title="Predicting one example at a time (models trained at batch 32)",
    )
    return LabOutcome(
        tables=[table_b1, messages, table_pred],
        verdicts=verdicts,
        figures=[
            Figure(
                "online.png",
                f"Test accuracy after {config.online_steps} SGD steps of batch one per norm "
                "(mean over seeds, whisker = std).",
            ),
            Figure(
                "predict_single.png",
                "Accuracy of models trained at batch 32, predicting in eval mode (in a batch, "
                "one at a time) and in train mode with batch statistics.",
            ),
        ],
        raw={**raw, "evidence": evidences},
        notes=[
            "SmallReluCNN has norms after convolutions only: a batch of one still has H*W "
            "values per channel, so BN trains on it (each example normalized with its own "
            "spatial statistics, like InstanceNorm); LeNet's BN after linear layers has one "
            "value per channel and raises.",
            "Ghost BN at B=1 is BN (one virtual batch); it is in the error table only.",
            "Batch Renorm trains with the paper's r_max/d_max warm-up scaled so that r_max "
            "reaches 3 at half of each run (bnlab.lab.kit.renorm_warmup).",
            f"Online training: SGD lr {config.online_lr:g}, momentum {config.momentum:g}, "
            "each seed its own stream of training examples.",
        ],
    )


CLAIM_TRAIN = "BN cannot learn from a batch of one (大小为 1 的小批量...我们将无法学习任何东西)"
CLAIM_ONLINE = "LayerNorm and InstanceNorm suit online learning (在线学习场景中展现了各自的优势)"
CLAIM_PREDICT = (
    "At prediction BN uses its moving averages, so one example's prediction does not depend "
    "on the batch (预测阶段...使用在训练过程中积累的移动平均)"
)

RULE_TRAIN = (
    "supported: BN after linear layers (LeNet, bnlab and torch) raises on a train-mode "
    "batch of one, and BN after convolutions does not reach learn_threshold (0.5, chance "
    "0.1) mean test accuracy after the online steps of batch one; mixed: the linear-layer "
    "BN raises but the convolutional BN learns (the claim holds where a channel has one "
    "value per example); not supported: the linear-layer BN trains at B=1."
)
RULE_ONLINE = (
    "Online (batch of one) test accuracy of LayerNorm and of InstanceNorm against BN's "
    "(SmallReluCNN): each has the advantage when higher by more than max(min_effect = 1 "
    "point, 2 standard errors). supported: both; mixed: one; not supported: neither."
)
RULE_PREDICT = (
    "For BN models trained at batch 32: supported when, in eval mode, every example's "
    "logits one at a time equal those in a batch and with other batch companions (largest "
    "change <= 1e-4) while in train mode the companions change them (> 1e-3); mixed when "
    "eval is batch-independent but train mode is too; not supported when eval depends on "
    "the batch."
)


def cannot_train_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "BN cannot learn from a batch of one"."""
    raw = results["raw"]
    fc = {
        e["norm"]: e["train_ok"]
        for e in raw["errors"]
        if e["model"] == "lenet" and e["norm"] in ("bnlab", "torch")
    }
    conv = kit.pick(raw["online"], "test_acc", norm="bnlab")
    mean = kit.mean_std(conv)[0]
    evidence = {
        "lenet_bn_trains_at_b1": fc,
        "cnn_bn_online_acc": mean,
        "learn_threshold": raw["learn_threshold"],
    }
    if any(fc.values()) or not fc:
        return evidence, "not supported"
    if mean is not None and mean >= float(raw["learn_threshold"]):
        return evidence, "mixed"
    return evidence, "supported"


def online_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "LayerNorm and InstanceNorm suit online learning"."""
    raw = results["raw"]
    bn = kit.pick(raw["online"], "test_acc", norm="bnlab")
    evidence: dict[str, Any] = {
        "bn": kit.mean_std(bn)[0],
        "none": kit.mean_std(kit.pick(raw["online"], "test_acc", norm="none"))[0],
    }
    wins = 0
    for norm in ("layernorm", "instancenorm"):
        other = kit.pick(raw["online"], "test_acc", norm=norm)
        if not other or not bn:
            evidence[norm] = None
            continue
        c = compare(other, bn, min_effect=float(raw["min_effect"]))
        evidence[norm] = {
            "acc": kit.mean_std(other)[0],
            "minus_bn": c.diff,
            "se": c.se,
            "direction": c.direction,
        }
        wins += c.direction == "greater"
    return evidence, kit.hits_verdict(wins, 2)


def predict_single_rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict for "one example's prediction does not depend on the batch" (BN, eval)."""
    cells = [c for c in results["raw"]["predict"] if c["norm"] == "bnlab"]
    if not cells:
        return {"bn_models": 0}, "not supported"
    eval_change = max(max(c["eval_single_vs_batch"], c["eval_companions"]) for c in cells)
    train_change = max((c["train_companions"] or 0.0) for c in cells)
    evidence = {"eval_largest_change": eval_change, "train_largest_change": train_change}
    if eval_change > 1e-4:
        return evidence, "not supported"
    return evidence, "supported" if train_change > 1e-3 else "mixed"


def _measured_train(e: Mapping[str, Any]) -> str:
    acc = e["cnn_bn_online_acc"]
    acc_text = "n/a" if acc is None else f"{acc:.3f}"
    return (
        f"LeNet BN trains at B=1: {e['lenet_bn_trains_at_b1']}; conv-only BN online test "
        f"accuracy {acc_text} (threshold {e['learn_threshold']})"
    )


def _measured_online(e: Mapping[str, Any]) -> str:
    parts = []
    for norm in ("layernorm", "instancenorm"):
        d = e.get(norm)
        if d is None:
            parts.append(f"{LABELS[norm]}: n/a")
        else:
            difference = kit.difference_text(d, "minus_bn")
            parts.append(f"{LABELS[norm]} {d['acc']:.3f}, minus BN {difference}")
    bn = "n/a" if e["bn"] is None else f"{e['bn']:.3f}"
    none = "n/a" if e["none"] is None else f"{e['none']:.3f}"
    return f"online accuracy BN {bn}, no norm {none}; " + "; ".join(parts)


def _measured_predict(e: Mapping[str, Any]) -> str:
    if "eval_largest_change" not in e:
        return "no BN model"
    return (
        f"largest logit change with the batch: eval {e['eval_largest_change']:.2e}, "
        f"train mode {e['train_largest_change']:.2e}"
    )


SPEC = experiment.register_lab(
    experiment.LabSpec(
        name="batch-of-one",
        title="Training and predicting with a batch of one",
        summary=(
            "Tests 'BN cannot learn from a batch of one', 'LayerNorm/InstanceNorm suit online "
            "learning' and 'at prediction BN uses moving averages, so a prediction does not "
            "depend on the batch': a train-mode step on one image for d2l's LeNet and a small "
            "ReLU CNN with every norm (the error texts kept), 400 online SGD steps of batch "
            "one per norm (3 seeds), and single-example prediction (eval and train mode, "
            "other batch companions) of models trained at batch 32 on 2048 images."
        ),
        config_type=BatchOfOneConfig,
        run=run,
        needs_data=True,
        full_time="2.5 min (146 s) on a shared, loaded 2-core CPU",
    )
)

CLAIMS = kit.register_claims(
    "batch-of-one",
    kit.ClaimRule(
        "bn-batch-of-one-learns-nothing",
        CLAIM_TRAIN,
        "004_deb69101c4c8736e.txt",
        RULE_TRAIN,
        cannot_train_rule,
        _measured_train,
    ),
    kit.ClaimRule(
        "layer-instance-norm-online",
        CLAIM_ONLINE,
        "003_8a52002564f5ba9e.txt",
        RULE_ONLINE,
        online_rule,
        _measured_online,
    ),
    kit.ClaimRule(
        "bn-prediction-batch-independent",
        CLAIM_PREDICT,
        "000_3d8114077ba70cad.txt",
        RULE_PREDICT,
        predict_single_rule,
        _measured_predict,
    ),
)
