"""Test-wide settings: one torch thread per xdist worker, hypothesis profiles, Triton's
interpreter where there is no GPU, and ``--fast-path off`` (the whole suite on the
reference path: every invariant must hold on both)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two xdist workers share two cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
# The commands pick their thread count from the free cores (bnlab.cli._cores) unless
# OMP_NUM_THREADS says: pinned here, so that a command run in a test computes with the
# same threads whatever the machine's load (and two runs give the same digits).
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

# Without a GPU, Triton kernels can only run under Triton's interpreter (on CPU
# tensors; tests/functional/test_triton_bn.py). Triton reads this when it is imported,
# so it is set before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast-path",
        choices=("on", "off"),
        default="on",
        help="off: switch bnlab's fused kernels off for the whole run (tests that switch "
        "them on themselves still do)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fast-path") == "off":
        from bnlab import kernels

        kernels.set_enabled(False)


@pytest.fixture(params=["reference", "fast", "function"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Runs a test three times (``pytestmark = pytest.mark.usefixtures("implementation")``):
    on the torch-ops path, on the fused kernels of ``bnlab.kernels`` (size threshold
    lowered so that small inputs use them; a module's training step through batch norm's
    C++ autograd node) and on the kernels with the node off (the Python
    ``autograd.Function``)."""
    from bnlab import kernels

    fast = request.param != "reference"
    if fast:
        if not kernels.available():
            pytest.skip(f"fast path unavailable: {kernels.status()}")
        monkeypatch.setattr(kernels, "MIN_NUMEL", 0)
    with kernels.enabled(fast, node=request.param == "fast"):
        yield request.param
