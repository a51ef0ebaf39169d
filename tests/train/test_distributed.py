"""bnlab.train.distributed: data-parallel fit, SyncBN steps, sharded loaders, torchrun env.

Spawned test: one gloo group of 2 ranks on localhost (joined with ``init_distributed``
through env://, as under torchrun) runs every check of ``_dist_worker.CHECKS``: a DDP +
SyncBN step on each rank's half equals a single-process step on the whole batch (float64
weights and running statistics); without SyncBN each rank's running statistics are its
own half's; ``fit`` with SyncBN on sharded loaders (uneven last batch, uneven test
parts) equals single-process ``fit`` (per-epoch metrics, weights), writes metrics once
and checkpoints without DDP's prefix. Ranks are forked from a forkserver that imported
torch once (see tests/nn/test_sync.py), all checks in one start.

Single-process tests: the loader's shards partition every global batch; torchrun's
variables and their error messages; DistributedRun's checks; fit's type check.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _dist_worker import CHECKS
from _dist_worker import main as worker_main

from bnlab.cli.launch import PRELOAD
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import fake_images_labels
from bnlab.train import TrainConfig, fit
from bnlab.train.distributed import DistributedRun, TorchrunEnv, init_distributed, torchrun_env

# A hang ends after the group's timeout (60 s); the test gives up after that.
SPAWN_DEADLINE_S = 150

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver with torch and bnlab preloaded (as tests/nn/test_sync.py), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # The launcher's list: one server serves this test and the CLI's launches.
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@gloo
@pytest.mark.slow
def test_two_ranks_train_as_one_process(tmp_path: Path) -> None:
    ctx = _context()
    port = _free_port()
    procs = [
        ctx.Process(target=worker_main, args=(rank, port, str(tmp_path)), daemon=True)
        for rank in range(2)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    failures = []
    for rank in range(2):
        path = tmp_path / f"rank{rank}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        for name in CHECKS:
            got = results.get(name, "no result (the rank crashed or hung)")
            if got != "ok":
                failures.append(f"[{name}] rank {rank}: {got}")
    exitcodes = [p.exitcode for p in procs]
    report = f"exit codes {exitcodes}:\n" + "\n".join(failures)
    assert exitcodes == [0, 0], report
    assert not failures, report


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize(("n", "batch", "world"), [(37, 16, 2), (50, 8, 3), (5, 4, 4), (9, 9, 1)])
def test_shards_partition_every_global_batch(n: int, batch: int, world: int) -> None:
    images, labels = fake_images_labels(n, seed=0)
    whole = DeviceLoader(images, labels, batch, seed=7)
    parts = [
        DeviceLoader(images, labels, batch, seed=7, rank=r, world_size=world) for r in range(world)
    ]
    for epoch in (0, 3):
        whole.set_epoch(epoch)
        for p in parts:
            p.set_epoch(epoch)
        for full, *shards in zip(whole, *parts, strict=True):
            sizes = [y.shape[0] for _, y in shards]
            assert max(sizes) - min(sizes) <= 1
            assert torch.equal(torch.cat([x for x, _ in shards]), full[0])
            assert torch.equal(torch.cat([y for _, y in shards]), full[1])
    assert all(len(p) == len(whole) and p.batch_size == batch for p in parts)
    assert parts[-1].rank == world - 1
    assert parts[-1].world_size == world


def test_loader_shard_errors() -> None:
    images, labels = fake_images_labels(4, seed=0)
    with pytest.raises(
        ValueError, match=r"DeviceLoader: rank must be in \[0, world_size=2\), got 2"
    ):
        DeviceLoader(images, labels, 2, rank=2, world_size=2)
    with pytest.raises(TypeError, match=r"DeviceLoader: rank must be an int, got 1.0 \(float\)"):
        DeviceLoader(images, labels, 2, rank=1.0, world_size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DeviceLoader: world_size must be >= 1, got 0"):
        DeviceLoader(images, labels, 2, world_size=0)
    loader = DeviceLoader(images, labels, 2, rank=1, world_size=2)
    assert repr(loader).endswith("epoch=0, rank=1, world_size=2)")


def test_torchrun_env() -> None:
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == TorchrunEnv(
        rank=1, world_size=4, local_rank=1
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"WORLD_SIZE": "2"},
            "WORLD_SIZE is set but RANK, LOCAL_RANK is not; start the run with torchrun (which "
            "sets RANK, WORLD_SIZE and LOCAL_RANK) or bnlab train --nproc N",
        ),
        (
            {"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"},
            "environment variable WORLD_SIZE='two' is not a whole number; it is set by "
            "torchrun, start the run with torchrun or bnlab train --nproc N",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "-1", "LOCAL_RANK": "0"},
            "environment variable RANK=-1 must be >= 0; it is set by torchrun, start the run "
            "with torchrun or bnlab train --nproc N",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"},
            "environment variable RANK=2 must be < WORLD_SIZE=2; it is set by torchrun, start "
            "the run with torchrun or bnlab train --nproc N",
        ),
    ],
)
def test_torchrun_env_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="torchrun") as info:
        torchrun_env(environ)
    assert str(info.value) == message


def test_distributed_run_checks() -> None:
    run = DistributedRun(rank=1, world_size=2)
    assert not run.is_main
    assert DistributedRun(rank=0, world_size=2).is_main
    with pytest.raises(ValueError, match="rank=2") as info:
        DistributedRun(rank=2, world_size=2)
    assert (
        str(info.value) == "DistributedRun: need 0 <= rank < world_size, got rank=2, world_size=2"
    )
    with pytest.raises(TypeError) as info:
        DistributedRun(rank="0", world_size=2)  # type: ignore[arg-type]
    assert str(info.value) == "DistributedRun: rank must be an int, got '0'"


def test_init_distributed_errors() -> None:
    env = TorchrunEnv(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ValueError, match="tpu") as info:
        init_distributed(env, device="tpu")
    assert str(info.value) == "init_distributed: device must be 'cpu' or 'cuda', got 'tpu'"
    with pytest.raises(ValueError, match="timeout_s") as info:
        init_distributed(env, timeout_s=0)
    assert str(info.value) == "init_distributed: timeout_s must be > 0, got 0"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError) as info:
            init_distributed(env, device="cuda")
        assert str(info.value) == (
            "init_distributed: device 'cuda' but CUDA is not available; use device 'cpu' "
            "(the gloo backend)"
        )


def test_fit_rejects_a_wrong_distributed() -> None:
    images, labels = fake_images_labels(4, seed=0)
    loader = DeviceLoader(images, labels, 2)
    with pytest.raises(TypeError) as info:
        fit(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
            loader,
            loader,
            TrainConfig(batch_size=2, epochs=1),
            distributed=2,  # type: ignore[arg-type]
        )
    assert str(info.value) == "fit: distributed must be a DistributedRun or None, got int"
