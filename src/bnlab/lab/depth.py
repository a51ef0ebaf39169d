"""``bnlab lab depth``: does BN make deep plain networks trainable, and do skips matter?

The seeds say that BN, together with residual blocks, lets practitioners routinely
train networks of more than 100 layers (d2l's chapter, ``004_deb69101c4c8736e.txt``:
批量归一化使从业者可以例行地训练超过 100 层的网络), and that skip connections let the
gradient pass straight through deep networks (``000_3d8114077ba70cad.txt``: 残差网络引入了
"跳跃连接" ... 解决了深度网络中的梯度消失问题).

Design (second edition, issue 17), after He et al. 2016 (arXiv 1512.03385, section 4.2,
figure 6): the CIFAR layout with ``6n + 2`` weight layers (a 3x3 stem convolution,
three stages of ``n`` two-convolution blocks with ``width * (1, 2, 4)`` channels, global
average pooling, a linear layer), as four arms at each depth:

* ``plain-bn``: the plain network (``bnlab.models.plain``, no shortcuts) with BN;
* ``plain-none``: the same without BN (convolution biases, Kaiming-normal init);
* ``resnet-bn``: the ResNet (``bnlab.models.resnet.cifar_resnet``, option-A shortcuts)
  with BN;
* ``resnet-fixup``: the ResNet without BN, started as Fixup's rules 1 and 2 do (Zhang,
  Dauphin & Ma 2019, arXiv 1901.09321: each residual branch's last convolution and the
  linear layer at zero, the branch's first convolution scaled by ``L ** -0.5``), the
  known trainable no-norm residual case. Fixup's scalar multipliers and biases are not
  added.

The CPU budget (the full run: 5 paired seeds and the lr tuning, 72 runs, on 2 cores in
about 8-9 minutes) sets the scale, traded for seeds, tuning and a settled lr: depths 20 and 56 (He et al.'s plain-20 and plain-56),
width 8 (channels 8/16/32; the paper's 16 costs twice as much), Fashion-MNIST
averaged over 2x2 pixels to 14x14 (stages at 14, 7 and 4 pixels; 28x28 costs 3 to 4
times as much), 500 SGD steps of 64 images (32,000 images, 0.53 epoch of the 60,000),
momentum 0.9, no weight decay, the lr decayed linearly to 0 over the run so that the
final loss is read at a settled point. Inputs are standardized with the training split's
mean and SD. The ``--set profile=cuda`` preset (``CUDA_PROFILE``) runs the paper's
scale on a GPU: 28x28 inputs, width 16, depths 20, 56 and 110 (the claims then compare
110 with 20), 10 seeds, 1,500 steps of 128 (3.2 epochs); 168 runs, not yet timed (no GPU
was lent): at a launch-bound 2-7 ms per step, about 15-25 min on one GPU.

Learning rates: each (arm, depth) trains at its own lr, the value of the grid
0.01, 0.03, 0.1, 0.3 with the lowest final mini-batch loss on a separate tuning seed
(1000), same steps (``kit.paired.TUNE_RULE``); a diverged run is never chosen; the table
flags a choice at the edge of the grid. The grid comes from a pilot on the tuning seed
(400 steps, lrs 0.003 to 1): every arm's best lr lay inside it (plain-BN-56 and ResNet-BN-56 0.1,
Fixup-56 0.1 with 0.3 blowing up, plain-no-BN-20 0.03 with 0.1 at chance), and the
no-BN plain-56 stayed at chance at every lr from 0.003 to 0.3.

Measured per run, once at the end (lr at 0): the training loss (**primary**: the
cross-entropy in eval mode over the first ``train_eval_size`` = 10,000 training images,
so that BN arms are read with their running statistics, as deployed, and not with the
noise of mini-batch statistics), the mean mini-batch loss of the last 50 steps (train
mode; the tuning criterion, shown), the test accuracy and loss on the full
10,000-image test set (shown), the loss curve.

Claims (``specs``), declared before the run, each on the training loss, paired by
seed (the arms of a seed share the data order; the init differs by architecture), Holm
over the five, TOST margin ``margin`` (0.05 nats: below it two runs are as trained as
one another at this budget; the tuning seed's loss moves by more between neighbouring
grid values), at least 5 seeds:

1. ``bn-trains-deep-plain`` (seed 004): within the 500-step budget, at the deepest depth,
   the plain network with BN reaches a lower training loss than without BN (each at its
   best lr).
2. ``skip-connections-matter-at-depth`` (seed 000): at the deepest depth, with BN, the
   ResNet reaches a lower training loss than the plain network.
3. ``no-bn-plain-stops-training-with-depth`` (seed 004): within the 500-step budget,
   without BN, the deepest plain network reaches a higher training loss than the
   shallowest.
4. ``deeper-plain-degrades-with-bn`` (from the literature, He et al.'s figure 6): after
   the 500 steps, with BN, the deepest plain network reaches a higher training loss than
   the shallowest.
5. ``zero-init-resnet-slower-without-bn`` (from the literature, the question Zhang et
   al. test, on a weaker variant): within the 500-step budget, at the deepest depth the
   ResNet without BN, started with a Fixup-like init *without* Fixup's scalar
   multipliers and biases, reaches a higher training loss than with BN.

The seed's "more than 100 layers" is tested only by the cuda profile (depth 110); the
CPU verdicts are about 56 layers.

Changes after review (text only, after the full run at 92618ca; the measured code is
unchanged, so the verdicts are that run's, re-evaluated from its stored units): the
referee (docs/lab_referee_2.md, section 7) measured that the no-BN plain-56 does train
at 2,500 steps (seed 0, lr 0.01: training loss 0.644, 75.8 % test), so claims 1 and 3
measure whether BN leaves the initial plateau within 500 steps, not trainability as
such; they now say "within the 500-step budget" (5x the steps does not fit the 8-minute
CPU budget). Claim 5 was ``residual-needs-bn-at-depth``; its init lacks Fixup's scalars,
which Zhang et al. add to match BN's speed, so it is renamed to what it tests. Claims 1
and 3 credit the seed's sentence at 56 layers, not "more than 100".

Chance: a run whose training loss is within 0.05 of ln 10 (2.303, the loss of a
uniform guess), or that diverged, never left chance and is excluded, as
``bnlab.lab.stats`` does. A *whole arm* at chance (every seed, at its best lr of the
grid) is not a broken baseline here but the outcome the claim is about (the network
does not train at this budget): when one arm of a claim is at chance in every seed and
the other left chance in at least ``min_seeds`` seeds, that claim is tested on the
values as measured (the arm at chance at its chance loss), declared in ``rule_of``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.data.loader import DeviceLoader
from bnlab.lab import kit, stats
from bnlab.lab.claims import FROM_LITERATURE, Literature, spec_from_record, spec_record
from bnlab.lab.experiment import Figure, LabContext, LabOutcome, Table, register_lab
from bnlab.lab.runner import Bench, Cell, Grid, GridRun
from bnlab.lab.stats_claims import stats_claim
from bnlab.models.plain import plain
from bnlab.models.resnet import check_cifar_depth, cifar_resnet
from bnlab.plots.depth import plot_depth_curves
from bnlab.plots.sweeps import plot_sweep
from bnlab.train import evaluate

__all__ = [
    "ARMS",
    "CLAIMS",
    "CUDA_PROFILE",
    "DepthConfig",
    "build_model",
    "evaluate_claims",
    "main_cell",
    "main_grid",
    "prepare",
    "rule_of",
    "specs",
    "summarize",
    "train_run",
    "tune_cell",
    "tune_grid",
]

PLAIN_SOURCE = "004_deb69101c4c8736e.txt"
PLAIN_SENTENCE = "批量归一化使从业者可以例行地训练超过 100 层的网络"
SKIP_SOURCE = "000_3d8114077ba70cad.txt"
SKIP_SENTENCE = (
    "残差网络引入了“跳跃连接”(skip connections),使得网络的梯度可以直接从输入传递到输出,"
    "解决了深度网络中的梯度消失问题"
)

#: arm -> (network, norm slot): "bn" is ``DepthConfig.norm``, "none" no norm, "fixup"
#: no norm with Fixup's zero init.
ARMS: dict[str, tuple[str, str]] = {
    "plain-bn": ("plain", "bn"),
    "plain-none": ("plain", "none"),
    "resnet-bn": ("resnet", "bn"),
    "resnet-fixup": ("resnet", "fixup"),
}
ARM_LABELS: dict[str, str] = {
    "plain-bn": "plain, BN",
    "plain-none": "plain, no BN",
    "resnet-bn": "ResNet, BN",
    "resnet-fixup": "ResNet, no BN (Fixup-like init)",
}
#: The loss of a uniform guess over 10 classes.
CHANCE_LOSS = math.log(10)
PRIMARY = "train_loss"
#: The tuning criterion: the mean mini-batch loss of the last ``window`` steps.
BATCH_LOSS = "batch_loss"
CHANCE_RULE = (
    "a run never left chance when its training loss is within {tol} of ln 10 = 2.303 "
    "(a uniform guess) or it diverged; such seeds are excluded (stats). A whole arm at "
    "chance (every seed) while the other arm of the claim left chance in at least "
    "{min_seeds} seeds is the claim's outcome, not a broken baseline: that claim is then "
    "tested on the values as measured, the chance arm at its chance loss"
)

#: The GPU preset (``bnlab lab depth --device cuda --set profile=cuda``): the paper's
#: width and depths up to 110 (the claims' deep network), 28x28 inputs, 10 seeds, 1,500
#: steps of 128. Not yet run (no GPU lent); the claims' texts name the CPU depths.
CUDA_PROFILE: dict[str, Any] = {
    "depths": (20, 56, 110),
    "seeds": 10,
    "width": 16,
    "image_size": 28,
    "steps": 1500,
    "batch": 128,
}


@dataclass(frozen=True)
class DepthConfig(kit.paired.TunedConfig):
    """Settings of ``depth`` (defaults: the full CPU run, about 10 min on 2 quiet cores).

    Args:
        seeds, train_size, test_size, min_seeds, threads: as in ``kit.PairedConfig``
            (5 paired seeds, all 60,000 training and 10,000 test images, 1 thread).
        tune_seed: the seed of the tuning runs (not among the measured seeds;
            ``kit.paired.TunedConfig``).
        profile: ``"cpu"`` (the defaults) or ``"cuda"``: every setting of
            ``CUDA_PROFILE`` still at its CPU default takes the preset's value (run it
            with ``--device cuda``).
        depths: weight layers, each ``6n + 2`` (20, 32, 44, 56, 110, ...); the claims
            compare the deepest with the shallowest.
        norm: the BN arms' norm (``bnlab.models.available_norms()``; "torch" is the
            fastest on the CPU).
        width: channels of the first stage (16 in He et al.).
        image_size: 28 (Fashion-MNIST as it is) or 14 (2x2 average pooled).
        batch: SGD batch.
        steps: SGD steps of every run (the lr decays linearly to 0 over them).
        lrs: the learning-rate grid of the tuning runs.
        momentum: SGD momentum.
        window: mini-batch losses in the tuning criterion (their mean at the end).
        train_eval_size: training images (the first ones) of the primary metric, the
            eval-mode training loss.
        margin: the claims' equivalence margin, in nats of training loss.
        chance_tolerance: a training loss within this of ln 10 is at chance.
        curve_every: the stored loss curve is the mean of every this many steps.
    """

    profile: Literal["cpu", "cuda"] = "cpu"
    depths: tuple[int, ...] = (20, 56)
    norm: str = "torch"
    width: int = 8
    image_size: int = 14
    batch: int = 64
    steps: int = 500
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    momentum: float = 0.9
    window: int = 50
    train_eval_size: int = 10000
    margin: float = 0.05
    chance_tolerance: float = 0.05
    curve_every: int = 10

    #: A smoke test: 2 seeds (below min_seeds: no verdict), tiny nets, 16 steps.
    QUICK = kit.paired.TunedConfig.quick_settings(
        depths=(8, 14),
        width=4,
        steps=16,
        batch=32,
        lrs=(0.03, 0.1),
        window=4,
        train_eval_size=256,
        curve_every=4,
    )
    OWNER = "depth"
    POSITIVE = (
        "seeds",
        "width",
        "batch",
        "steps",
        "window",
        "train_eval_size",
        "margin",
        "curve_every",
    )

    def __post_init__(self) -> None:
        if self.profile not in ("cpu", "cuda"):
            raise ValueError(f"depth: profile must be 'cpu' or 'cuda', got {self.profile!r}")
        if self.profile == "cuda":
            cpu = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in CUDA_PROFILE.items():
                if getattr(self, name) == cpu[name]:
                    object.__setattr__(self, name, value)
        if not self.depths:
            raise ValueError("depth: depths must name at least one depth, got ()")
        for depth in self.depths:
            check_cifar_depth("depth", depth)
        if list(self.depths) != sorted(set(self.depths)) or len(self.depths) < 2:
            raise ValueError(
                f"depth: depths must be at least two increasing depths without repeats, got "
                f"{self.depths!r}"
            )
        if self.norm == "none":
            raise ValueError(
                "depth: norm is the BN arms' norm and cannot be 'none' (the no-BN arms are "
                "always run); use 'torch' or 'bnlab'"
            )
        if self.image_size not in (14, 28):
            raise ValueError(f"depth: image_size must be 14 or 28, got {self.image_size}")
        super().__post_init__()  # POSITIVE and the lr grid
        if self.window > self.steps:
            raise ValueError(f"depth: window must be in 1..steps ({self.steps}), got {self.window}")
        if not 0 <= self.chance_tolerance < CHANCE_LOSS:
            raise ValueError(
                f"depth: chance_tolerance must be in [0, ln 10), got {self.chance_tolerance!r}"
            )
        if self.tune_seed in range(self.seeds):
            raise ValueError(
                f"depth: tune_seed {self.tune_seed} is one of the measured seeds 0.."
                f"{self.seeds - 1}; tune on a separate seed"
            )

    @property
    def deep(self) -> int:
        """The deepest depth (the claims' deep network)."""
        return max(self.depths)

    @property
    def shallow(self) -> int:
        """The shallowest depth (the degradation claims' reference)."""
        return min(self.depths)


#: The claims: (name, setting, arm, reference, direction); "DEEP" and "SHALLOW" stand
#: for the deepest and shallowest depth (settings ``dD`` hold the arms, settings ARM the
#: arm's depths).
CLAIM_SHAPES: tuple[tuple[str, str, str, str, stats.Direction], ...] = (
    ("bn-trains-deep-plain", "DEEP", "plain-bn", "plain-none", "lower"),
    ("skip-connections-matter-at-depth", "DEEP", "resnet-bn", "plain-bn", "lower"),
    ("no-bn-plain-stops-training-with-depth", "plain-none", "DEEP", "SHALLOW", "higher"),
    ("deeper-plain-degrades-with-bn", "plain-bn", "DEEP", "SHALLOW", "higher"),
    ("zero-init-resnet-slower-without-bn", "DEEP", "resnet-fixup", "resnet-bn", "higher"),
)


def specs(config: DepthConfig) -> list[stats.ClaimSpec]:
    """The five claims, declared before the run (see the module docstring)."""
    names = {"DEEP": f"d{config.deep}", "SHALLOW": f"d{config.shallow}"}
    return kit.paired.claim_specs(
        config,
        PRIMARY,
        [
            (name, direction, names.get(arm, arm), names.get(ref, ref), [names.get(at, at)])
            for name, at, arm, ref, direction in CLAIM_SHAPES
        ],
        chance=chance_rule(config),
    )


def chance_rule(config: DepthConfig) -> stats.ChanceRule:
    """A run never left chance when its training loss is within the tolerance of ln 10."""
    return kit.paired.chance_near(PRIMARY, CHANCE_LOSS, config.chance_tolerance)


# --- data and models -----------------------------------------------------------------


def prepare(config: DepthConfig, data: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The training and test images as standardized floats ``(N, 1, S, S)``.

    ``S`` is ``image_size`` (14: 2x2 average pooling); mean and SD are the training
    split's (after pooling), applied to both splits.
    """
    subsets = config.subsets(data, "depth")
    out: dict[str, Tensor] = {}
    for split in ("train", "test"):
        x = kit.float_images(subsets[f"{split}_images"])
        if config.image_size == 14:
            x = F.avg_pool2d(x, 2)
        out[f"{split}_images"] = x
        out[f"{split}_labels"] = subsets[f"{split}_labels"]
    mean, std = out["train_images"].mean(), out["train_images"].std()
    for split in ("train", "test"):
        out[f"{split}_images"] = ((out[f"{split}_images"] - mean) / std).contiguous()
    return out


def build_model(config: DepthConfig, arm: str, depth: int) -> nn.Module:
    """The network of ``arm`` at ``depth`` (Kaiming-normal weights from torch's RNG)."""
    network, slot = ARMS[arm]
    norm = config.norm if slot == "bn" else "none"
    if network == "plain":
        return plain(norm, depth=depth, width=config.width)
    return cifar_resnet(norm, depth=depth, width=config.width, fixup_init=slot == "fixup")


def _thin(values: Sequence[float], every: int) -> list[float | None]:
    """Means of consecutive chunks of ``every`` values (None where not finite)."""
    out = []
    for i in range(0, len(values), every):
        chunk = values[i : i + every]
        out.append(kit.json_float(sum(chunk) / len(chunk)))
    return out


class _Diverged(Exception):
    pass


def train_run(
    config: DepthConfig,
    arm: str,
    depth: int,
    lr: float,
    seed: int,
    bench: Bench,
    *,
    test: bool,
) -> dict[str, Any]:
    """One run: ``steps`` SGD steps at ``lr`` decayed linearly to 0
    (``kit.paired.train_decayed``); a non-finite loss stops it before its update
    (diverged). With ``test``, the test accuracy (%) and loss at the end, and the curve."""
    data, device = bench.data, bench.device
    losses: list[float] = []

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(logits, y)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise _Diverged
        return loss

    with kit.cpu_threads(config.threads):
        start = time.perf_counter()
        try:
            model, _ = kit.paired.train_new(
                lambda: build_model(config, arm, depth),
                data,
                bench,
                lr=lr,
                batch=config.batch,
                steps=config.steps,
                seed=seed,
                momentum=config.momentum,
                loss_fn=loss_fn,
            )
            diverged = False
        except _Diverged:
            bench.advance(config.steps - len(losses) + 1)
            diverged = True
        train_s = time.perf_counter() - start
        tail = losses[-config.window :]
        got: dict[str, Any] = {
            "lr": lr,
            BATCH_LOSS: None if diverged else kit.json_float(sum(tail) / len(tail)),
            "diverged": diverged,
            "steps_done": len(losses) - diverged,
            "train_s": train_s,
        }
        if test:
            got.update({m: None for m in (PRIMARY, "train_acc", "test_acc", "test_loss")})
            if not diverged:
                n = config.train_eval_size
                for split, images, labels in (
                    ("train", data["train_images"][:n], data["train_labels"][:n]),
                    ("test", data["test_images"], data["test_labels"]),
                ):
                    loader = DeviceLoader(images, labels, 500, shuffle=False, device=device)
                    result = evaluate(model, loader)
                    got[f"{split}_acc"] = kit.json_float(100.0 * result["acc"])
                    got[f"{split}_loss"] = kit.json_float(float(result["loss"]))
            got["curve"] = _thin(losses, config.curve_every)
    return got


# --- grids ---------------------------------------------------------------------------


def _depth_of(setting: str) -> int:
    return int(setting.removeprefix("d"))


def tune_grid(config: DepthConfig) -> Grid:
    """The tuning runs: (depth, lr) x arm on the tuning seed (units ``tune-dD-lrLR-ARM``)."""
    return kit.paired.tune_grid(
        [f"d{d}" for d in config.depths], tuple(ARMS), config.lrs, config.tune_seed
    )


def main_grid(config: DepthConfig) -> Grid:
    """The measured runs: depth x arm x seed (units ``dD-ARM-seedN``), seeds outermost."""
    return kit.paired.measured_grid(ARMS, config.seeds, [f"d{d}" for d in config.depths])


def tune_cell(config: DepthConfig, cell: Cell, bench: Bench) -> dict[str, Any]:
    """A tuning run of ``cell`` (setting ``(dD, lr)``, arm, tuning seed), no test set."""
    setting, lr = cell.setting
    return train_run(config, cell.variant, _depth_of(setting), lr, cell.seed, bench, test=False)


def main_cell(
    config: DepthConfig, lrs: kit.paired.ChosenLrs, cell: Cell, bench: Bench
) -> dict[str, Any]:
    """A measured run of ``cell`` at its arm's chosen lr (None: every tuning lr diverged)."""
    lr = lrs[cell.setting][cell.variant]
    if lr is None:  # every lr of the grid diverged on the tuning seed
        bench.advance(config.steps)
        return {"lr": None, PRIMARY: None, BATCH_LOSS: None, "diverged": True, "steps_done": 0}
    return train_run(config, cell.variant, _depth_of(cell.setting), lr, cell.seed, bench, test=True)


# --- the claims ----------------------------------------------------------------------

_METRICS = (PRIMARY, BATCH_LOSS, "train_acc", "test_acc", "test_loss")


def per_seed_views(config: DepthConfig, run: GridRun) -> dict[str, Any]:
    """``per_seed[setting][arm][metric]`` in the two views the claims use: setting
    ``dD`` with the four arms, and setting ARM with the arm's depths ``dD`` as arms."""
    out: dict[str, Any] = {}
    for depth in config.depths:
        for arm in ARMS:
            results = run.select(setting=f"d{depth}", variant=arm)
            values = {m: [r.get(m) for r in results] for m in _METRICS}
            out.setdefault(f"d{depth}", {})[arm] = values
    for arm in ARMS:
        out[arm] = {f"d{depth}": out[f"d{depth}"][arm] for depth in config.depths}
    return out


def _at_chance(values: Sequence[Any], rule: stats.ChanceRule) -> list[bool]:
    return [
        not left
        for left in stats.left_chance([math.nan if v is None else float(v) for v in values], rule)
    ]


def evaluate_claims(
    declared: Sequence[stats.ClaimSpec], per_seed: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """``bnlab.lab.stats.evaluate_experiment`` with the declared whole-arm rule
    (``CHANCE_RULE``): a claim one of whose arms is at chance in every seed, while the
    other left chance in at least ``min_seeds``, is tested without the chance rule.
    Each result gains ``whole_arm_at_chance`` (the arm, or None)."""
    used, whole = [], []
    for spec in declared:
        arm_at = ref_at = None
        if spec.chance is not None and spec.settings:
            arms = per_seed[spec.settings[0]]
            arm_at = _at_chance(arms[spec.arm][spec.chance.metric], spec.chance)
            ref_at = _at_chance(arms[spec.reference][spec.chance.metric], spec.chance)
        found = None
        if arm_at is not None and ref_at is not None:
            if all(ref_at) and ref_at and arm_at.count(False) >= spec.min_seeds:
                found = spec.reference
            elif all(arm_at) and arm_at and ref_at.count(False) >= spec.min_seeds:
                found = spec.arm
        whole.append(found)
        used.append(dataclasses.replace(spec, chance=None) if found else spec)
    evaluated = stats.evaluate_experiment(used, per_seed)
    for e, found in zip(evaluated, whole, strict=True):
        e["whole_arm_at_chance"] = found
        if found:
            e["text"] += (
                f"; {found} never left chance in any seed (at its best lr of the grid): "
                "tested on the values as measured"
            )
    return evaluated


def rule_of(name: str) -> Any:
    """The claims-table rule of claim ``name``: :func:`evaluate_claims` over the specs
    and per-seed numbers stored in ``results["raw"]``."""

    def rule(results: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        raw = results["raw"]
        declared = [spec_from_record(r) for r in raw["specs"]]
        found = {e["claim"]: e for e in evaluate_claims(declared, raw["per_seed"])}[name]
        return found, found["verdict"]

    return rule


# --- the summary ---------------------------------------------------------------------


def summarize(
    config: DepthConfig, ctx: LabContext, run: GridRun, tuned: kit.paired.Tuned
) -> LabOutcome:
    """Tuning, per-arm numbers by depth, the claims with intervals, two figures."""
    per_seed = per_seed_views(config, run)
    declared = specs(config)
    evaluated = evaluate_claims(declared, per_seed)
    chance = chance_rule(config)
    depths = [f"d{d}" for d in config.depths]
    at_chance = {
        d: {arm: _at_chance(per_seed[d][arm][PRIMARY], chance) for arm in ARMS} for d in depths
    }
    raw = {
        "per_seed": per_seed,
        "specs": [spec_record(s) for s in declared],
        "claims": evaluated,
        **tuned.record(config, f"final mini-batch loss (mean of the last {config.window} steps)"),
        "chance_rule": CHANCE_RULE.format(tol=config.chance_tolerance, min_seeds=config.min_seeds),
        "at_chance": at_chance,
        "curves": {
            d: {
                arm: [r.get("curve") or [] for r in run.select(setting=d, variant=arm)]
                for arm in ARMS
            }
            for d in depths
        },
        "curve_every": config.curve_every,
    }
    verdicts, _ = kit.apply_rules({"raw": raw}, CLAIMS)
    claims = kit.paired.claims_table(evaluated, "nats", digits=3)
    for row, e in zip(claims.rows, evaluated, strict=True):  # one setting per claim
        if e["whole_arm_at_chance"]:
            row[-1] += f" ({e['whole_arm_at_chance']} at chance in every seed)"
    tables = [
        tuned.table(
            f"Learning-rate tuning: final mini-batch loss on tuning seed {config.tune_seed} "
            "(the lowest is chosen; '*' marks a choice at the edge of the grid)",
            ["depth", "arm"],
            config.lrs,
            [
                ((d, arm), tuned.values[d][arm], _marked(tuned.lrs[d][arm], f"{d}/{arm}", raw))
                for d in tuned.values
                for arm in ARMS
            ],
        ),
        Table(
            f"Per arm and depth, mean ± std over {config.seeds} seeds at the tuned lr, at the "
            f"end (lr 0): training loss (primary; eval mode, {config.train_eval_size} training "
            f"images), mean of the last {config.window} mini-batch losses (train mode), test "
            "accuracy (%) and loss on the full test set (shown)",
            [
                "depth",
                "arm",
                "lr",
                "train loss",
                "batch loss",
                "test acc %",
                "test loss",
                "at chance",
            ],
            [
                [
                    d,
                    arm,
                    tuned.lrs[d][arm],
                    kit.mean_std_cell(m[PRIMARY]),
                    kit.mean_std_cell(m[BATCH_LOSS]),
                    kit.mean_std_cell(m["test_acc"]),
                    kit.mean_std_cell(m["test_loss"]),
                    f"{sum(at_chance[d][arm])}/{len(m[PRIMARY])}",
                ]
                for d in depths
                for arm, m in per_seed[d].items()
            ],
        ),
        claims,
    ]
    _figures(config, ctx, per_seed, raw["curves"])
    return LabOutcome(
        tables=tables,
        verdicts=verdicts,
        figures=[
            Figure(
                "depth_loss.png",
                "Training loss at the end (eval mode, the primary metric) against depth, per "
                "arm at its tuned lr: mean over seeds, band = min..max; dashed: ln 10, a "
                "uniform guess.",
            ),
            Figure(
                "depth_curves.png",
                f"Training loss (mean of every {config.curve_every} steps, mean over seeds) "
                "against the step, one panel per depth, each arm at its tuned lr; the lr "
                "decays linearly to 0; dashed: ln 10.",
            ),
        ],
        raw=raw,
        notes=[_design_note(config), raw["tune_rule"], raw["chance_rule"]],
    )


def _marked(lr: float | None, key: str, raw: Mapping[str, Any]) -> str | None:
    """A chosen lr as text, ``*`` when at the grid's edge."""
    if lr is None:
        return None
    return f"{lr:g}" + ("*" if key in raw["lr_at_grid_edge"] else "")


def _design_note(config: DepthConfig) -> str:
    return (
        f"Design: He et al.'s CIFAR layout (6n + 2 weight layers), width {config.width} "
        f"(channels {config.width}/{2 * config.width}/{4 * config.width}), Fashion-MNIST at "
        f"{config.image_size}x{config.image_size}, standardized; SGD batch {config.batch}, "
        f"momentum {config.momentum:g}, {config.steps} steps, lr decayed linearly to 0, no "
        f"weight decay; BN = norm {config.norm!r}; seeds 0..{config.seeds - 1} paired (same "
        "data order in every arm)."
    )


def _figures(
    config: DepthConfig,
    ctx: LabContext,
    per_seed: Mapping[str, Any],
    curves: Mapping[str, Mapping[str, list[list[Any]]]],
) -> None:
    series = {
        ARM_LABELS[arm]: {
            "x": list(config.depths),
            "runs": [
                [per_seed[f"d{d}"][arm][PRIMARY][s] for d in config.depths]
                for s in range(config.seeds)
            ],
        }
        for arm in ARMS
    }
    plot_sweep(
        series,
        ctx.out_dir / "depth_loss.png",
        xlabel="depth (weight layers)",
        ylabel="training loss at the end (eval mode)",
        title="Training loss at the end against depth, each arm at its tuned lr",
        log_x=False,
        hline=CHANCE_LOSS,
        hline_label="ln 10 (chance)",
    )
    plot_depth_curves(
        {
            f"depth {d[1:]}": {ARM_LABELS[arm]: runs for arm, runs in by_arm.items()}
            for d, by_arm in curves.items()
        },
        ctx.out_dir / "depth_curves.png",
        smooth=1,
        every=config.curve_every,
        title="Training loss per step, plain vs ResNet, with and without BN (tuned lrs)",
    )


RULE_TEXT = (
    "declared ClaimSpec (bnlab.lab.stats): primary metric the training loss at the end (eval "
    "mode, 10,000 training images; lr decayed linearly to 0 over 500 steps), each (arm, "
    "depth) at its lr from the grid 0.01/0.03/0.1/0.3 chosen on tuning seed 1000 (lowest "
    "final mini-batch loss), paired by seed, Holm over the experiment's five claims, TOST "
    "margin ±0.05 nats, at least 5 seeds; runs within 0.05 of ln 10 (or diverged) excluded, "
    "except that an arm at chance in every seed while the other left chance is the outcome, "
    "tested on the values as measured. "
)

_HE = (
    "He, Zhang, Ren & Sun 2016, 'Deep Residual Learning for Image Recognition', arXiv "
    "1512.03385, section 4.2, figure 6"
)
_HE_SETTING = (
    "CIFAR-10, plain and residual nets of 20/32/44/56 layers (and ResNet-110) with BN, SGD "
    "batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k iterations, weight decay 1e-4"
)
_OURS = (
    "ours: width 8 (a half of the paper's), 14x14 Fashion-MNIST, 0.53 epoch (500 steps of "
    "64) with the lr decayed to 0, no weight decay, depths 20 and 56 on the CPU (110 only in "
    "the cuda profile)"
)
_INIT = (
    "; our no-BN plain nets start from the models' Kaiming fan-out init at width 8, and "
    "Hanin & Rolnick 2018 (arXiv 1803.01719) show that a fan-out variance and narrow layers "
    "both keep deep ReLU nets from starting to train: another init (fan-in, data-dependent) "
    "might train them, so the claim is about BN against this standard init; and the "
    "referee's probe (docs/lab_referee_2.md, section 7) trained the no-BN plain-56 at "
    "2,500 steps, lr 0.01 (training loss 0.644, 75.8 % test, seed 0), so at 500 steps the "
    "claim measures leaving the initial plateau, not trainability as such"
)


def _claim(
    name: str, claim: str, source: str, literature: Literature, sentence: str = ""
) -> kit.ClaimRule:
    """The claims-table entry of claim ``name`` of ``CLAIM_SHAPES`` (its rule text says
    the setting, arms and direction at the default depths)."""
    _, setting, arm, reference, direction = next(c for c in CLAIM_SHAPES if c[0] == name)
    names = {"DEEP": "d56", "SHALLOW": "d20"}
    setting, arm, reference = (names.get(x, x) for x in (setting, arm, reference))
    tail = f"Setting {setting}, arm {arm} against {reference}, direction {direction}."
    return stats_claim(
        name,
        claim,
        source,
        RULE_TEXT + tail,
        rule=rule_of(name),
        sentence=sentence,
        literature=literature,
    )


_RECTIFIERS = (
    "He, Zhang, Ren & Sun 2015, 'Delving Deep into Rectifiers', arXiv 1502.01852, "
    "section 2.2 and figure 3"
)

CLAIMS = kit.register_claims(
    "depth",
    _claim(
        "bn-trains-deep-plain",
        "Within a 500-step budget (0.53 epoch), BN lets a deep plain network train: at 56 "
        "layers the plain network with BN reaches a lower training loss than without BN, "
        "each at its best lr (tests the seed's sentence at 56 layers, not at more than 100: "
        f"{PLAIN_SENTENCE})",
        PLAIN_SOURCE,
        Literature(
            _RECTIFIERS + "; " + _HE,
            "plain ReLU nets on ImageNet without BN (22 and 30 layers); plain CIFAR nets "
            "with BN up to 56 layers",
            "without BN a 30-layer plain net trains only with their Kaiming init (Xavier "
            "stalls), and a deeper one was not better; with BN, plain-56 trains (higher "
            "training error than plain-20, but far below chance); unverified: exact errors",
            "supported",
            _OURS + _INIT,
        ),
        PLAIN_SENTENCE,
    ),
    _claim(
        "skip-connections-matter-at-depth",
        "Skip connections matter at depth: with BN, the 56-layer ResNet reaches a lower "
        f"training loss than the 56-layer plain network ({SKIP_SENTENCE})",
        SKIP_SOURCE,
        Literature(
            _HE,
            _HE_SETTING,
            "ResNet-56 trains to a lower training error than plain-56 over the whole run "
            "(figure 6); test error ResNet-56 6.97 %, ResNet-110 6.43 % (table 6; "
            "unverified: quoted from memory, not found by search)",
            "supported",
            _OURS,
        ),
        SKIP_SENTENCE,
    ),
    _claim(
        "no-bn-plain-stops-training-with-depth",
        "Within a 500-step budget (0.53 epoch), without BN the plain network trains worse "
        "as depth grows: plain-56 without BN reaches a higher training loss than plain-20 "
        f"without BN (the seed's sentence at 56 layers, not at more than 100: {PLAIN_SENTENCE})",
        PLAIN_SOURCE,
        Literature(
            _RECTIFIERS,
            "plain ReLU nets on ImageNet without BN, Kaiming or Xavier init",
            "a 30-layer plain net converges with the Kaiming init and stalls with Xavier's; "
            "deeper plain nets were not more accurate (unverified: exact numbers)",
            "supported",
            _OURS + _INIT,
        ),
        PLAIN_SENTENCE,
    ),
    _claim(
        "deeper-plain-degrades-with-bn",
        "The degradation problem: even with BN, the 56-layer plain network reaches a higher "
        "training loss than the 20-layer one (after 500 steps, 0.53 epoch: a deeper net that "
        "is merely slower also loses here)",
        FROM_LITERATURE,
        Literature(
            _HE,
            _HE_SETTING,
            "plain-56 has a higher training error than plain-20 throughout training, with BN "
            "(figure 6, left); not vanishing gradients, since BN keeps the forward signals' "
            "variance non-zero (section 4.1); unverified: exact errors",
            "supported",
            _OURS,
        ),
    ),
    _claim(
        "zero-init-resnet-slower-without-bn",
        "Within a 500-step budget, a 56-layer ResNet without BN, started with a Fixup-like "
        "init without Fixup's scalar multipliers and biases (rules 1-2 only), reaches a "
        "higher training loss than with BN, each at its best lr",
        FROM_LITERATURE,
        Literature(
            "Zhang, Dauphin & Ma 2019, 'Fixup Initialization: Residual Learning Without "
            "Normalization', arXiv 1901.09321",
            "ResNets on CIFAR-10 and ImageNet (and up to 10,000 layers) without normalization, "
            "Fixup init with scalar multipliers and biases",
            "with its scalar multipliers and biases, Fixup trains a deep ResNet without "
            "normalization at the same lr and as fast as with BN, stable even at 10,000 "
            "layers; the scalars are what they add to match BN's training speed, so the "
            "rules-1-2 init alone is expected to be slower (unverified: the ablation numbers "
            "and CIFAR-10 error rates)",
            "supported",
            _OURS + "; our Fixup-like init has rules 1 and 2 only (no scalar multipliers or "
            "biases): this tests that variant, not Fixup, and says nothing against Zhang et "
            "al.'s 'normalization is not needed'",
        ),
    ),
)

SPEC = register_lab(
    kit.paired.tuned_lab(
        name="depth",
        title="Depth: plain vs ResNet, with and without BN, each at its tuned lr",
        summary=(
            "Tests 'BN makes deep plain nets trainable' (within 500 steps, at 56 layers) and "
            "'skip connections matter at depth' "
            "(the seeds), 'without BN, deeper plain nets train worse', the degradation problem "
            "with BN (He et al.) and 'a ResNet with a Fixup-like init without its scalars trains slower without BN': He et al.'s "
            "CIFAR layout at 20 and 56 layers, plain and residual, with BN and without (the "
            "ResNet without BN with a Fixup-like zero init), width 8, Fashion-MNIST at 14x14, "
            "500 SGD steps of 64 with the lr decayed to 0, each (arm, depth) at its best lr of "
            "0.01/0.03/0.1/0.3 on a separate tuning seed; 5 paired seeds; primary metric the "
            "training loss at the end (eval mode, 10,000 training images), test accuracy on "
            "the full test set shown; paired t, Holm, TOST margin 0.05 nats. --device cuda --set profile=cuda: depths 20/56/110, "
            "width 16, 28x28, 10 seeds."
        ),
        config_type=DepthConfig,
        criterion=BATCH_LOSS,
        prepare=prepare,
        full_time=(
            "about 8-9 min on 2 quiet cores with --workers 2 (72 runs of 500 steps: 32 tuning, "
            "40 measured; measured CPU time of one thread per step: 11-19 ms at depth 20, 30-48 "
            "ms at depth 56, i.e. about 0.2 s per step for the 8 (arm, depth) runs of a seed; "
            "1.3 s per 10,000-image evaluation at depth 56, two per measured run: the training "
            "loss and the test set)"
        ),
    )
)
