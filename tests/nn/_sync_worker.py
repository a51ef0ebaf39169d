"""Spawned ranks for tests/nn/test_sync.py: every case of one world size in one process group.

Each rank takes its slice of one global batch (seeded, the same on every rank), runs
bnlab's SyncBatchNorm on it and bnlab's BatchNorm over the concatenated batch, and
records per case "ok" or what differed in ``<out_dir>/rank<r>.json`` (rewritten after
each case, so a hang still leaves the earlier results). Comparisons never raise before
the collectives of a case are done, so a mismatch on one rank cannot hang the others.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from bnlab.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm

# A lost rank must fail the test, not block CI: collectives give up after this.
PG_TIMEOUT_S = 30


@dataclass(frozen=True)
class Case:
    """One check: per-rank batch sizes, the trailing input dims and the layer options."""

    name: str
    sizes: tuple[int, ...]  # batch size per rank (world size = len(sizes))
    spatial: tuple[int, ...] = (3, 2)  # dims after (N, C)
    channels: int = 3
    momentum: float | None = 0.1
    affine: bool = True
    bias: bool = True
    track: bool = True
    steps: int = 3
    loc: float = 0.0
    scale: float = 1.0
    dtype: torch.dtype = torch.float64
    channels_last: bool = False
    group: tuple[int, ...] | None = None  # ranks of a subgroup; None: world
    error: bool = False  # the global batch has one value per channel
    input_grad: bool = True  # False: only weight/bias need grads (no backward collective)
    torch_twin: bool = False  # reference: torch.nn.BatchNorm*d instead of bnlab's

    @property
    def tol(self) -> float:
        return 1e-9 if self.dtype == torch.float64 else 2e-4


CASES: dict[int, list[Case]] = {
    2: [
        Case("equal_4d", (4, 4)),
        Case("unequal_4d", (5, 2)),
        Case("empty_rank0", (0, 6)),
        Case("empty_rank1", (3, 0), spatial=(2,)),
        Case("nc_2d", (3, 5), spatial=()),
        Case("ncl_3d", (2, 3), spatial=(4,)),
        Case("ncdhw_5d", (2, 1), spatial=(2, 3, 2)),
        Case("momentum_none", (2, 3), momentum=None, steps=4),
        Case("affine_false", (3, 2), affine=False),
        Case("bias_false", (3, 2), bias=False),
        Case("untracked", (2, 4), track=False),
        Case("large_offset", (4, 3), loc=1e4, scale=1e-3, spatial=(5,)),
        Case("one_per_rank_nc", (1, 1), spatial=()),
        Case("float32", (6, 3), dtype=torch.float32, loc=3.0),
        Case("channels_last", (2, 3), spatial=(3, 4), channels_last=True),
        Case("all_empty", (0, 0)),
        Case("one_value_error", (1, 0), spatial=(), error=True),
        Case("no_input_grad", (2, 3), input_grad=False),
        Case("torch_twin_4d", (3, 4), torch_twin=True),
    ],
    3: [
        Case("unequal_4d", (2, 3, 4)),
        Case("empty_rank0", (0, 5, 1)),
        Case("two_empty", (0, 4, 0), spatial=(2,)),
        Case("nc_2d", (3, 1, 2), spatial=()),
        Case("ncdhw_5d", (1, 2, 1), spatial=(2, 2, 3)),
        Case("momentum_none", (2, 1, 3), momentum=None, steps=4),
        Case("one_value_error", (0, 1, 0), spatial=(), error=True),
        # Ranks 0 and 2 synchronize, rank 1 is not in the group and only watches.
        Case("process_group_0_2", (3, 7, 2), group=(0, 2)),
    ],
}


def _reference(case: Case) -> nn.Module:
    ndim = 2 + len(case.spatial)
    if case.torch_twin:
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[ndim]
    else:
        cls = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}[ndim]
    return cls(
        case.channels,
        momentum=case.momentum,
        affine=case.affine,
        track_running_stats=case.track,
        bias=case.bias,
        dtype=case.dtype,
    )


def _diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / (1.0 + b.abs().max()))


def _run_case(case: Case, case_id: int, rank: int, groups: dict) -> list[str]:
    """Run one case on this rank; return what differed (empty: all equal)."""
    members = case.group or tuple(range(len(case.sizes)))
    if rank not in members:
        return []
    group = groups.get(case.group)
    sizes = [case.sizes[r] for r in members]
    pos = members.index(rank)
    lo, hi = sum(sizes[:pos]), sum(sizes[: pos + 1])
    shape = (sum(sizes), case.channels, *case.spatial)
    gen = torch.Generator().manual_seed(1000 + case_id)

    sync = SyncBatchNorm(
        case.channels,
        momentum=case.momentum,
        affine=case.affine,
        track_running_stats=case.track,
        process_group=group,
        bias=case.bias,
        dtype=case.dtype,
    )
    ref = _reference(case)
    with torch.no_grad():
        for p in sync.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
    ref.load_state_dict(sync.state_dict())

    problems: list[str] = []

    def check(what: str, ours: torch.Tensor | None, theirs: torch.Tensor | None) -> None:
        err = _diff(ours, theirs)
        if not err <= case.tol:
            problems.append(f"{what}: max relative difference {err:.3g} > {case.tol}")

    if case.error:
        x = torch.randn(shape, generator=gen, dtype=case.dtype)[lo:hi]
        try:
            sync(x)
        except ValueError as exc:
            if "1 value per channel in the global batch" not in str(exc):
                problems.append(f"unexpected message: {exc}")
        else:
            problems.append("no ValueError for a global batch of one value per channel")
        return problems

    for step in range(case.steps):
        x_all = torch.randn(shape, generator=gen, dtype=case.dtype) * case.scale + case.loc
        g_all = torch.randn(shape, generator=gen, dtype=case.dtype)
        if case.channels_last:
            x_all = x_all.contiguous(memory_format=torch.channels_last)
        x = x_all[lo:hi].detach().clone()
        if case.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(case.input_grad)
        x_ref = x_all.detach().double().clone().requires_grad_(True)
        ref_d = ref.double() if case.dtype != torch.float64 else ref

        sync.zero_grad()
        ref_d.zero_grad()
        y = sync(x)
        y.backward(g_all[lo:hi])
        y_ref = ref_d(x_ref)
        y_ref.backward(g_all.double())

        check(f"step {step} output", y, y_ref[lo:hi])
        check(f"step {step} grad_x", x.grad, x_ref.grad[lo:hi] if case.input_grad else None)
        for pname in ("weight", "bias"):
            p = getattr(sync, pname)
            if p is None:
                continue
            grad = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad, group=group)  # sum over ranks == BN's gradient
            check(f"step {step} sum over ranks of grad_{pname}", grad, getattr(ref_d, pname).grad)

    if case.track:
        check("running_mean", sync.running_mean, ref.running_mean)
        check("running_var", sync.running_var, ref.running_var)
        if int(sync.num_batches_tracked) != int(ref.num_batches_tracked):
            problems.append(
                f"num_batches_tracked {int(sync.num_batches_tracked)} != "
                f"{int(ref.num_batches_tracked)}"
            )
        # Bit-identical on every rank, by construction: every rank merges the same
        # all-gathered table of float64 moments with the same code in rank order, then
        # applies the same update to the same buffers.
        stats = torch.cat([sync.running_mean, sync.running_var]).double()
        table = [torch.empty_like(stats) for _ in members]
        dist.all_gather(table, stats, group=group)
        if not all(torch.equal(t, table[0]) for t in table):
            problems.append("running statistics differ between ranks")

    sync.eval()
    ref.eval()
    x_all = torch.randn(shape, generator=gen, dtype=case.dtype) + case.loc
    y = sync(x_all[lo:hi])
    local_count = (hi - lo) * int(torch.Size(case.spatial).numel())
    if case.track:
        y_ref = ref(x_all)[lo:hi]
    elif local_count != 1:
        # Untracked: eval mode normalizes with this rank's own batch statistics, unsynced.
        y_ref = ref(x_all[lo:hi])
    else:
        y_ref = y
    check("eval output", y, y_ref)
    return problems


def main(rank: int, world_size: int, out_dir: str) -> None:
    """Entry point of one spawned rank."""
    torch.set_num_threads(1)
    out = Path(out_dir)
    results: dict[str, str] = {}
    store = dist.FileStore(str(out / "store"), world_size)
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=PG_TIMEOUT_S),
    )
    try:
        cases = CASES[world_size]
        # new_group is collective over the world: every rank creates every subgroup.
        groups = {c.group: dist.new_group(list(c.group)) for c in cases if c.group}
        for case_id, case in enumerate(cases):
            try:
                problems = _run_case(case, case_id, rank, groups)
                results[case.name] = "ok" if not problems else "; ".join(problems)
            except Exception:
                results[case.name] = "raised:\n" + traceback.format_exc()
            tmp = out / f"rank{rank}.json.tmp"
            tmp.write_text(json.dumps(results))
            os.replace(tmp, out / f"rank{rank}.json")
    finally:
        dist.destroy_process_group()
