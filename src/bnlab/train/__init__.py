"""Training: ``TrainConfig``, ``fit`` returning a ``FitResult``, and the files of a run.

``fit`` trains any classifier with SGD on cross-entropy (d2l's trainer, without the
printing and plotting), logs metrics to ``metrics.jsonl``, checkpoints every epoch
atomically and resumes exactly. ``bnlab.train.run_dir`` is the one run folder (its
files and the one resume check) that ``bnlab train``, ``bnlab d2l`` and the lab share;
``bnlab.train.io`` holds the atomic file writers underneath.
"""

from bnlab.train.anomaly import NonFiniteActivationError, detect_anomalies
from bnlab.train.config import INITS, LR_SCHEDULES, TrainConfig
from bnlab.train.fit import (
    TIMING_KEYS,
    FitResult,
    NonFiniteLossError,
    StepInfo,
    evaluate,
    fit,
    init_weights,
    reaches,
)
from bnlab.train.io import load_checkpoint, read_jsonl, write_json
from bnlab.train.run_dir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    ENVIRONMENT_NAME,
    METRICS_NAME,
    RESULTS_NAME,
    RunDir,
    settings_changes,
)

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "ENVIRONMENT_NAME",
    "INITS",
    "LR_SCHEDULES",
    "METRICS_NAME",
    "RESULTS_NAME",
    "TIMING_KEYS",
    "FitResult",
    "NonFiniteActivationError",
    "NonFiniteLossError",
    "RunDir",
    "StepInfo",
    "TrainConfig",
    "detect_anomalies",
    "evaluate",
    "fit",
    "init_weights",
    "load_checkpoint",
    "reaches",
    "read_jsonl",
    "settings_changes",
    "write_json",
]
