"""bnlab.lab.pool: workers compute as the parent would."""

from __future__ import annotations

import pytest
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


def test_costs_hand_out_the_longest_tasks_first_and_results_keep_their_index() -> None:
    started: list[int] = []
    results: dict[int, tuple[int, int, bool]] = {}
    run_in_pool(
        _worker_settings,
        [(0,), (1,), (2,), (3,)],
        workers=1,
        threads=1,
        shared=10,
        on_result=results.__setitem__,
        on_start=started.append,
        cost=[1.0, 1.5, 1.0, 2.0],
    )
    assert started == [3, 1, 0, 2]  # ties (0 and 2) keep their order
    assert {i: r[0] for i, r in results.items()} == {0: 10, 1: 11, 2: 12, 3: 13}


def test_costs_one_per_task() -> None:
    with pytest.raises(ValueError, match="2 costs for 3 tasks"):
        run_in_pool(
            _worker_settings, [(0,), (1,), (2,)], workers=1, threads=1, on_result=print, cost=[1, 2]
        )


def _logged(after: list) -> list[tuple[str, int]]:
    """Starts and ends of three tasks on two workers, task 2 the most costly (first by
    cost) and held by ``after``."""
    events: list[tuple[str, int]] = []
    run_in_pool(
        _worker_settings,
        [(0,), (1,), (2,)],
        workers=2,
        threads=1,
        shared=10,
        on_result=lambda index, result: events.append(("end", index)),
        on_start=lambda index: events.append(("start", index)),
        cost=[1.0, 1.0, 5.0],
        after=after,
    )
    assert sorted(events) == sorted([(kind, i) for kind in ("start", "end") for i in range(3)])
    return events


def test_after_holds_a_task_until_its_dependencies_have_ended() -> None:
    events = _logged([None, None, 0])
    assert events[:2] == [("start", 0), ("start", 1)]
    assert events.index(("end", 0)) < events.index(("start", 2))
    events = _logged([None, None, (0, 1)])  # after both
    assert events.index(("start", 2)) > max(events.index(("end", 0)), events.index(("end", 1)))
    with pytest.raises(ValueError, match=r"after\[0\] must name earlier tasks"):
        run_in_pool(
            _worker_settings, [(0,), (1,)], workers=1, threads=1, on_result=print, after=[1, None]
        )
