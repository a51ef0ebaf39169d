"""The kernels' own tests run the kernels: the fast path is switched on around each of
them even under ``pytest --fast-path off`` (which switches it off for every other test,
so that the rest of the suite checks its invariants on the reference path). Tests that
switch it off themselves still do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bnlab import kernels


@pytest.fixture(autouse=True)
def _fast_path_on() -> Iterator[None]:
    with kernels.enabled(True):
        yield
