"""A ``bnlab.cli.launch.WORKER`` for tests: one rank of ``bnlab train`` on tiny fake data.

Each launched rank replaces the Fashion-MNIST lookup by the synthetic splits of
tests/cli/test_cli_train.py (64 training, 24 test images), the curves by a stub, and
writes its stderr to ``$BNLAB_TEST_LOG_DIR/rank<r>.err``. With
``BNLAB_TEST_FAIL_RANK=r``, rank ``r`` raises when its training loader reaches the
second batch (the other rank is then inside a collective of that step), or kills itself
with SIGKILL there when ``BNLAB_TEST_FAIL_MODE=kill``, or hangs there (sleeps two
minutes) when it is ``hang``, and writes the time of the failure to ``$BNLAB_TEST_LOG_DIR/failed_at``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import bnlab.cli.data as cli_data
import bnlab.cli.train as cli_train
import bnlab.data.iterators as data_iterators
from bnlab.cli.launch import adopt, worker_main
from bnlab.data.loader import DeviceLoader
from bnlab.data.synthetic import fake_images_labels


def _fake_load(split: str, folder: Any) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fake_images_labels(
        64 if split == "train" else 24, seed=0 if split == "train" else 1
    )
    return images, labels.to(torch.int64)


def _stub_plot(history: Any, title: str, path: Path) -> Path:
    path.write_bytes(b"\x89PNG stub")
    return path


def _failing_loader(log_dir: Path) -> type[DeviceLoader]:
    class FailingLoader(DeviceLoader):
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            batches = super().__iter__()
            if not self.shuffle:  # the test loader works
                return batches
            return self._fail_second(batches)

        def _fail_second(self, batches: Iterator[Any]) -> Iterator[Any]:
            yield next(batches)
            (log_dir / "failed_at").write_text(repr(time.time()))
            mode = os.environ.get("BNLAB_TEST_FAIL_MODE")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(120)
            raise RuntimeError("injected failure in the training data")

    return FailingLoader


def main(argv: list[str], environ: dict[str, str], cwd: str) -> None:
    adopt(environ, cwd)
    rank = int(os.environ["RANK"])
    log_dir = Path(os.environ["BNLAB_TEST_LOG_DIR"])
    cli_data.data_dir_from_env = lambda flag, **kwargs: log_dir / "data"
    cli_data.load_fashion_mnist = _fake_load
    cli_train.plot_training_curves = _stub_plot
    if os.environ.get("BNLAB_TEST_FAIL_RANK") == str(rank):
        data_iterators.DeviceLoader = _failing_loader(log_dir)  # bnlab train's split_loaders
    with (
        open(log_dir / f"rank{rank}.err", "w", encoding="utf-8") as err,
        contextlib.redirect_stderr(err),
    ):
        worker_main(argv, environ, cwd)
