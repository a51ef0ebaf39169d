"""What every results folder records beside its numbers: the environment of the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import bnlab
from bnlab.bench.timing import environment_record

__all__ = ["run_environment"]


def run_environment(device: str) -> dict[str, Any]:
    """Versions, machine, threads, device and git revision, for ``environment.json``."""
    record = environment_record(environ=os.environ, repo_dir=Path(bnlab.__file__).resolve().parent)
    record["bnlab"] = bnlab.__version__
    record["device"] = device
    record["device_name"] = (
        torch.cuda.get_device_name(torch.device(device))
        if device.startswith("cuda")
        else record.get("cpu_model")
    )
    record["threads"] = torch.get_num_threads()
    return record
