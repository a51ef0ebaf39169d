"""Benchmarks: timing helpers (``bnlab.bench.timing``) and suites (``bnlab.bench.batchnorm``).

Nothing here prints, reads argv or the environment: scripts in ``benchmarks/`` do that
and pass in what they read.
"""

from bnlab.bench import timing as _timing
from bnlab.bench.timing import *  # noqa: F403 (the public names of timing, once: its __all__)

__all__ = list(_timing.__all__)
