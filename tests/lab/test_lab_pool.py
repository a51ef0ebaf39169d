"""bnlab.lab.pool: workers compute as the parent would."""

from __future__ import annotations

import torch

from bnlab.autograd import fast_path_enabled, set_fast_path
from bnlab.lab.pool import run_in_pool


def _worker_settings(shared: int, index: int) -> tuple[int, int, bool]:
    return shared + index, torch.get_num_threads(), fast_path_enabled()


def test_workers_take_the_parents_kernel_switch_and_their_thread_count() -> None:
    before = fast_path_enabled()
    results: dict[int, tuple[int, int, bool]] = {}
    try:
        for flag in (False, True):
            set_fast_path(flag)
            run_in_pool(
                _worker_settings,
                [(0,), (1,)],
                workers=2,
                threads=1,
                shared=10,
                on_result=results.__setitem__,
            )
            assert results == {0: (10, 1, flag), 1: (11, 1, flag)}
    finally:
        set_fast_path(before)
