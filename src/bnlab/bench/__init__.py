"""Benchmarks: timing helpers (``bnlab.bench.timing``) and suites (``bnlab.bench.batchnorm``).

Nothing here prints, reads argv or the environment: scripts in ``benchmarks/`` do that
and pass in what they read.
"""

from bnlab.bench.timing import (
    Timing,
    calibrate_number,
    environment_record,
    interleaved_schedule,
    load_average,
    quantile,
    time_interleaved,
)

__all__ = [
    "Timing",
    "calibrate_number",
    "environment_record",
    "interleaved_schedule",
    "load_average",
    "quantile",
    "time_interleaved",
]
