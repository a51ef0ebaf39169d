"""Spawned ranks for tests/train/test_distributed.py: every check in one process group.

The group is joined with ``bnlab.train.distributed.init_distributed`` (env:// on a
localhost port the test picked), as under torchrun. Each rank records per check "ok"
or what differed in ``<out_dir>/rank<r>.json`` (rewritten after each check, so a hang
still leaves the earlier results). Comparisons never raise before the collectives of a
check are done, so a mismatch on one rank cannot hang the other.
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bnlab import models
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import fake_images_labels
from bnlab.nn import SyncBatchNorm
from bnlab.train import TrainConfig, fit, read_jsonl
from bnlab.train.distributed import (
    DistributedRun,
    TorchrunEnv,
    init_distributed,
    shutdown_distributed,
)

# A lost rank must fail the test, not block it: collectives give up after this.
PG_TIMEOUT_S = 60.0
WORLD_SIZE = 2


def _small_cnn() -> nn.Module:
    # Conv + BN2d and Linear + BN1d: both kinds of batch norm, a few hundred weights.
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2),
        models.make_norm("bnlab", 3, "2d"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 8),
        models.make_norm("bnlab", 8, "1d"),
        nn.ReLU(),
        nn.Linear(8, 10),
    )


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / (1.0 + b.abs().max()))


def _compare(problems: list[str], what: str, ours: nn.Module, ref: nn.Module, tol: float) -> None:
    theirs = ref.state_dict()
    for name, value in ours.state_dict().items():
        if name not in theirs:
            problems.append(f"{what}: {name} missing from the reference")
            continue
        err = _diff(value, theirs[name])
        if not err <= tol:
            problems.append(f"{what}: {name} differs by {err:.3g} > {tol}")


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 7, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y


def check_sync_step(rank: int, run: DistributedRun, out: Path) -> list[str]:
    """DDP + SyncBN, each rank its half: one SGD step equals one step on the whole batch."""
    torch.manual_seed(0)
    ref = _small_cnn().double()
    ours = run.prepare(copy.deepcopy(ref))
    if not isinstance(ours[1], SyncBatchNorm):
        return [f"prepare did not convert: {type(ours[1]).__name__}"]
    net = run.wrap(ours)
    x, y = _batch(12, seed=1)
    half = x.shape[0] // WORLD_SIZE
    part = slice(rank * half, (rank + 1) * half)
    for model, inputs, labels in ((net, x[part], y[part]), (ref, x, y)):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        F.cross_entropy(model(inputs), labels).backward()  # DDP averages the two halves
        opt.step()
    problems: list[str] = []
    _compare(problems, "after one step", ours, ref, 1e-10)
    return problems


def check_unsynced_stats(rank: int, run: DistributedRun, out: Path) -> list[str]:
    """Without SyncBN each rank's BN sees its own half: its running stats, not the batch's."""
    torch.manual_seed(0)
    plain = DistributedRun(rank=run.rank, world_size=run.world_size, sync_bn=False)
    base = _small_cnn().double()
    ours = plain.prepare(copy.deepcopy(base))
    net = plain.wrap(ours)
    x, y = _batch(12, seed=2)
    half = x.shape[0] // WORLD_SIZE
    part = slice(rank * half, (rank + 1) * half)
    F.cross_entropy(net(x[part]), y[part]).backward()
    own, whole = copy.deepcopy(base), copy.deepcopy(base)
    own(x[part])  # train mode: updates the running statistics with this half only
    whole(x)
    problems: list[str] = []
    for name in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
        mine = ours.state_dict()[name]
        if not _diff(mine, own.state_dict()[name]) <= 1e-12:
            problems.append(f"{name} is not that of this rank's half")
        if not _diff(mine, whole.state_dict()[name]) > 1e-6:
            problems.append(f"{name} equals the whole batch's (expected this half's)")
        table = [torch.empty_like(mine) for _ in range(run.world_size)]
        dist.all_gather(table, mine.contiguous())
        if torch.equal(table[0], table[1]):
            problems.append(f"{name} is the same on both ranks (expected each half's)")
    return problems


def _fit_setup(rank: int | None) -> tuple[nn.Module, DeviceLoader, DeviceLoader]:
    # 37 training samples in batches of 16: the last global batch of 5 splits 2 + 3;
    # 21 test samples: parts of 8 + 8 and 2 + 3.
    train_x, train_y = fake_images_labels(37, seed=0)
    test_x, test_y = fake_images_labels(21, seed=1)
    shard = {} if rank is None else {"rank": rank, "world_size": WORLD_SIZE}
    train = DeviceLoader(train_x, train_y.long(), 16, shuffle=True, seed=3, **shard)
    test = DeviceLoader(test_x, test_y.long(), 16, shuffle=False, **shard)
    torch.manual_seed(0)
    model = models.create("mlp", norm="bnlab", hidden=[12])
    return model, train, test


def check_fit_equals_single_process(rank: int, run: DistributedRun, out: Path) -> list[str]:
    """fit with SyncBN on sharded loaders == fit in one process (metrics, weights, files)."""
    config = TrainConfig(lr=0.3, epochs=2, batch_size=16, seed=5, log_every_steps=2)
    model, train, test = _fit_setup(rank)
    model = run.prepare(model)
    run_dir = out / "fit"
    result = fit(model, train, test, config, run_dir=run_dir, distributed=run)
    ref_model, ref_train, ref_test = _fit_setup(None)
    ref = fit(ref_model, ref_train, ref_test, config)
    problems: list[str] = []
    _compare(problems, "weights after fit", model, ref_model, 1e-5)
    for mine, theirs in zip(result.history, ref.history, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "step"):
            if abs(mine[key] - theirs[key]) > 1e-5:
                problems.append(f"epoch {mine['epoch']} {key}: {mine[key]} != {theirs[key]}")
        for key in ("train_samples", "test_samples"):
            if mine[key] != theirs[key]:
                problems.append(f"epoch {mine['epoch']} {key}: {mine[key]} != {theirs[key]}")
    if [r["step"] for r in result.steps] != [r["step"] for r in ref.steps]:
        problems.append(f"step records {result.steps} != {ref.steps}")
    dist.barrier()  # rank 0's files are complete
    records = read_jsonl(run_dir / "metrics.jsonl")
    if [r["epoch"] for r in records if r["kind"] == "epoch"] != [1, 2]:
        problems.append(f"metrics.jsonl epochs (written once, by rank 0): {records}")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    if any(k.startswith("module.") for k in state["model"]):
        problems.append("checkpoint keys carry DDP's 'module.' prefix")
    return problems


CHECKS: dict[str, Callable[[int, DistributedRun, Path], list[str]]] = {
    "sync_step": check_sync_step,
    "unsynced_stats": check_unsynced_stats,
    "fit_equals_single_process": check_fit_equals_single_process,
}


def main(rank: int, port: int, out_dir: str) -> None:
    """Entry point of one spawned rank."""
    torch.set_num_threads(1)
    out = Path(out_dir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run = init_distributed(
        TorchrunEnv(rank=rank, world_size=WORLD_SIZE, local_rank=rank),
        sync_bn=True,
        timeout_s=PG_TIMEOUT_S,
    )
    results: dict[str, str] = {}
    try:
        for name, check in CHECKS.items():
            try:
                problems = check(rank, run, out)
                results[name] = "ok" if not problems else "; ".join(problems)
            except Exception:
                results[name] = "raised:\n" + traceback.format_exc()
            tmp = out / f"rank{rank}.json.tmp"
            tmp.write_text(json.dumps(results))
            os.replace(tmp, out / f"rank{rank}.json")
    finally:
        shutdown_distributed()
