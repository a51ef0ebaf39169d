"""Training across processes: DistributedDataParallel with optional synchronized BN.

Papers: Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167; synchronized batch norm
as in Zhang et al., "Context Encoding for Semantic Segmentation", arXiv 1803.08904; data
parallelism as in Li et al., "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training", arXiv 2006.15704.

What a data-parallel run of ``fit`` means here (``fit(..., distributed=run)``):

- Every rank holds the whole model and the whole data set; each global batch of
  ``batch_size`` samples is cut into one contiguous part per rank
  (``bnlab.data.loader.DeviceLoader(rank=..., world_size=...)``), so the ranks' parts of
  a step, concatenated, are the single-process batch of that step.
- The loss each rank differentiates is its sum of cross-entropies times
  ``world_size / global batch size``; DistributedDataParallel averages gradients over
  the ranks, which then gives the gradient of the global batch's mean loss, also when
  the parts differ in size (the last batch of an epoch).
- With ``SyncBatchNorm`` (``sync_bn``) each rank normalizes its part with the
  statistics of the global batch, so a step equals the single-process step on the
  concatenated batch (up to float rounding). Without it each rank normalizes with its
  own part's statistics (smaller batches: another, noisier model) and the running
  statistics that are kept and evaluated are rank 0's (DDP broadcasts rank 0's buffers
  before every training forward, as ``broadcast_buffers=True`` does).
- Train loss and accuracy are those of the global batches (one all-reduce of three
  numbers per step, which also makes the NaN check agree on every rank). Evaluation
  is sharded: each rank evaluates its part of every test batch with rank 0's buffers
  and the loss sums and correct counts are all-reduced, so the test metrics are those
  of the whole test set.
- Only rank 0 writes files (metrics log, checkpoint); every rank reads a checkpoint to
  resume.

Failure handling: the process group is created with a timeout (collectives give up
after it instead of torch's 30 minutes), and under torchrun's agent (``torchrun`` or
``bnlab train --nproc``) a rank that exits with an error makes the agent stop the
others at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bnlab.nn.sync import convert_sync_batchnorm

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedRun",
    "TorchrunEnv",
    "init_distributed",
    "shutdown_distributed",
    "torchrun_env",
]

#: Seconds a collective waits for the other ranks before it raises (torch's default is
#: 30 minutes); a dead rank is normally noticed much sooner (torchrun stops the others).
DEFAULT_TIMEOUT_S = 300.0

# The variables torchrun's agent sets for every worker.
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class TorchrunEnv:
    """Where this process sits in a torchrun launch.

    Attributes:
        rank: global rank, in ``[0, world_size)``.
        world_size: number of processes over all machines.
        local_rank: rank on this machine (picks the GPU).
    """

    rank: int
    world_size: int
    local_rank: int


def _env_int(environ: Mapping[str, str], name: str, minimum: int) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={text!r} is not a whole number; it is set by "
            "torchrun, start the run with torchrun or bnlab train --nproc N"
        ) from None
    if value < minimum:
        raise ValueError(
            f"environment variable {name}={value} must be >= {minimum}; it is set by "
            "torchrun, start the run with torchrun or bnlab train --nproc N"
        )
    return value


def torchrun_env(environ: Mapping[str, str]) -> TorchrunEnv | None:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from ``environ`` (torchrun's).

    Args:
        environ: the environment, e.g. ``os.environ`` (passed in: library code does
            not read the environment itself).

    Returns:
        A ``TorchrunEnv``, or None when ``WORLD_SIZE`` is not set (not under torchrun).

    Raises:
        ValueError: a variable is missing, not a whole number, or out of range.
    """
    if "WORLD_SIZE" not in environ:
        return None
    missing = [name for name in _TORCHRUN_VARS if name not in environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; start the run with "
            "torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK) or bnlab train --nproc N"
        )
    world_size = _env_int(environ, "WORLD_SIZE", 1)
    rank = _env_int(environ, "RANK", 0)
    local_rank = _env_int(environ, "LOCAL_RANK", 0)
    if rank >= world_size:
        raise ValueError(
            f"environment variable RANK={rank} must be < WORLD_SIZE={world_size}; it is set "
            "by torchrun, start the run with torchrun or bnlab train --nproc N"
        )
    return TorchrunEnv(rank=rank, world_size=world_size, local_rank=local_rank)


@dataclass(frozen=True)
class DistributedRun:
    """This rank's part in a data-parallel run, over an initialized process group.

    Built by ``init_distributed`` (or directly over a group initialized otherwise, as
    tests do with a ``FileStore``).

    Attributes:
        rank: global rank.
        world_size: number of ranks.
        device: this rank's device, e.g. ``"cpu"`` or ``"cuda:1"``.
        backend: ``"gloo"`` or ``"nccl"``.
        sync_bn: whether ``prepare`` converts batch norms to ``SyncBatchNorm``.
    """

    rank: int
    world_size: int
    device: str = "cpu"
    backend: str = "gloo"
    sync_bn: bool = False

    def __post_init__(self) -> None:
        for name in ("rank", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"DistributedRun: {name} must be an int, got {value!r}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"DistributedRun: need 0 <= rank < world_size, got rank={self.rank}, "
                f"world_size={self.world_size}"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` with every batch norm made a ``SyncBatchNorm`` when ``sync_bn``.

        The new layers share the old ones' parameters and buffers, so the state_dict
        (and a checkpoint) is that of the plain model.
        """
        return convert_sync_batchnorm(model) if self.sync_bn else model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` on this rank's device (model already there).

        Construction broadcasts rank 0's parameters and buffers, so every rank starts
        from the same weights.
        """
        device = torch.device(self.device)
        device_ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (running statistics) to every rank."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        """Wait until every rank gets here (or the group's timeout passes)."""
        dist.barrier()


def init_distributed(
    env: TorchrunEnv,
    *,
    device: str = "cpu",
    sync_bn: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DistributedRun:
    """Join the process group torchrun prepared (``init_method="env://"``).

    Backend: gloo for ``device="cpu"``, nccl for ``device="cuda"`` (one GPU per local
    rank: ``cuda:<local_rank>``, made the current device).

    Args:
        env: from ``torchrun_env``.
        device: ``"cpu"`` or ``"cuda"``.
        sync_bn: convert batch norms to ``SyncBatchNorm`` (see ``DistributedRun.prepare``).
        timeout_s: how long a collective waits for the others before raising, > 0.

    Returns:
        The ``DistributedRun`` of this rank.

    Raises:
        ValueError: an unknown device or a timeout <= 0.
        RuntimeError: ``device="cuda"`` without CUDA or without a GPU for this local
            rank, or a process group already initialized.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"init_distributed: device must be 'cpu' or 'cuda', got {device!r}")
    if not timeout_s > 0:
        raise ValueError(f"init_distributed: timeout_s must be > 0, got {timeout_s}")
    if dist.is_initialized():
        raise RuntimeError(
            "init_distributed: a process group is already initialized in this process; "
            "call shutdown_distributed() first"
        )
    if device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeError(
                "init_distributed: device 'cuda' but CUDA is not available; use device 'cpu' "
                "(the gloo backend)"
            )
        if env.local_rank >= count:
            raise RuntimeError(
                f"init_distributed: local rank {env.local_rank} needs GPU {env.local_rank} but "
                f"{count} GPU(s) are visible; start at most {count} processes per machine"
            )
        torch.cuda.set_device(env.local_rank)
        backend, rank_device = "nccl", f"cuda:{env.local_rank}"
    else:
        backend, rank_device = "gloo", "cpu"
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return DistributedRun(
        rank=env.rank,
        world_size=env.world_size,
        device=rank_device,
        backend=backend,
        sync_bn=sync_bn,
    )


def shutdown_distributed() -> None:
    """Destroy the default process group, if any (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
