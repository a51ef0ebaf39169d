"""Training: ``TrainConfig``, ``fit`` returning a ``FitResult``, and the files of a run.

``fit`` trains any classifier with SGD on cross-entropy (d2l's trainer, without the
printing and plotting), logs metrics to ``metrics.jsonl``, checkpoints every epoch
atomically and resumes exactly. ``bnlab.train.io`` holds the atomic file writers the
CLI and experiments reuse.
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
)
from bnlab.train.io import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    load_checkpoint,
    read_jsonl,
    write_json,
)

__all__ = [
    "CHECKPOINT_NAME",
    "INITS",
    "LR_SCHEDULES",
    "METRICS_NAME",
    "TIMING_KEYS",
    "FitResult",
    "NonFiniteActivationError",
    "NonFiniteLossError",
    "StepInfo",
    "TrainConfig",
    "detect_anomalies",
    "evaluate",
    "fit",
    "init_weights",
    "load_checkpoint",
    "read_jsonl",
    "write_json",
]
