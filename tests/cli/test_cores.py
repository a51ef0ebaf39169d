"""The choice of processes and threads from the free cores (bnlab.cli._cores), on given
numbers."""

from __future__ import annotations

import os

import pytest

from bnlab.cli._cores import (
    Machine,
    busy_cores,
    choose_layout,
    cpu_ticks,
    free_cores,
    machine,
    pick,
)


@pytest.mark.parametrize(
    ("cpus", "load", "free"),
    [
        (2, 0.0, 2),
        (2, 0.4, 2),
        (2, 0.6, 1),
        (2, 1.4, 1),
        (2, 4.0, 1),  # a busy machine still has one core to share
        (8, 2.6, 5),
        (4, None, 4),  # no load average: every core counts
    ],
)
def test_free_cores(cpus: int, load: float | None, free: int) -> None:
    assert free_cores(cpus, load) == free


def _choose(cpus: int, load: float | None, env: int | None = None, **kwargs) -> tuple[int, int]:
    layout = choose_layout(Machine(cpus, load, env), **kwargs)
    return layout.workers, layout.threads


def test_quiet_two_cores_four_runs_two_single_thread_processes() -> None:
    assert _choose(2, 0.1, runs=4) == (2, 1)


def test_one_training_takes_a_thread_per_free_core() -> None:
    assert _choose(2, 0.1) == (1, 2)
    assert _choose(8, 3.0) == (1, 5)


def test_busy_machine_one_process_one_thread() -> None:
    assert _choose(2, 4.5, runs=4) == (1, 1)
    assert _choose(2, 4.5) == (1, 1)


def test_short_runs_stay_in_one_process() -> None:
    assert _choose(2, 0.0, runs=4, parallel_pays=False) == (1, 2)


def test_more_cores_than_runs() -> None:
    assert _choose(8, 0.0, runs=2) == (2, 4)
    assert _choose(8, 0.0, runs=3) == (3, 2)


def test_explicit_settings_win() -> None:
    assert _choose(2, 5.0, runs=4, threads=2) == (1, 2)
    assert _choose(2, 0.0, runs=4, threads=1) == (2, 1)
    assert _choose(2, 0.0, runs=4, threads=1, parallel_pays=False) == (1, 1)
    assert _choose(2, 5.0, runs=4, workers=2) == (2, 1)
    assert _choose(8, 0.0, runs=4, workers=2) == (2, 4)
    assert _choose(2, 0.0, runs=4, workers=3, threads=2) == (3, 2)
    assert _choose(2, 0.0, runs=2, workers=5) == (2, 1)  # no more processes than runs


def test_omp_num_threads_counts_as_threads() -> None:
    assert _choose(2, 0.0, env=1, runs=4) == (2, 1)
    assert _choose(2, 0.0, env=1) == (1, 1)
    assert _choose(2, 0.0, env=1, threads=2) == (1, 2)  # --threads over the environment
    layout = choose_layout(Machine(2, 0.0, 1))
    assert layout.why == "OMP_NUM_THREADS"


def test_line_and_record() -> None:
    layout = choose_layout(Machine(2, 0.1), runs=4)
    assert layout.line() == (
        "cores: 2 free of 2 (load 0.1); 2 processes x 1 thread (parallel runs)"
    )
    one = choose_layout(Machine(2, None))
    assert one.line() == "cores: 2 free of 2 (no load average); 1 process x 2 threads (free cores)"
    record = layout.record()
    assert record["workers"] == 2
    assert record["threads"] == 1
    assert record["machine_load"] == 0.1


def test_errors() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        choose_layout(Machine(2, 0.0), threads=0)
    with pytest.raises(ValueError, match="workers must be >= 1, got -1"):
        choose_layout(Machine(2, 0.0), workers=-1)
    with pytest.raises(ValueError, match="cpus must be >= 1, got 0"):
        free_cores(0, 1.0)


def test_machine_reads_this_machine() -> None:
    here = machine({"OMP_NUM_THREADS": "3"})
    assert here.cpus >= 1
    assert here.env_threads == 3
    assert machine({"OMP_NUM_THREADS": "many"}).env_threads is None
    assert machine({}).env_threads is None
    assert pick(runs=1, threads=1, environ={}).threads == 1


def test_busy_cores_decide_over_the_load_average() -> None:
    # A job that just ended leaves the 1-minute load high; the cores are free now.
    assert choose_layout(Machine(2, 1.9, None, busy=0.1), runs=4).workers == 2
    assert choose_layout(Machine(2, 0.0, None, busy=1.2), runs=4).workers == 1
    layout = choose_layout(Machine(2, 1.9, None, busy=0.1), runs=4)
    assert layout.line() == "cores: 2 free of 2 (busy 0.1); 2 processes x 1 thread (parallel runs)"
    assert layout.record()["machine_busy"] == 0.1


_STAT = """cpu  300 50 100 1000 40 0 10 0 0 0
cpu0 100 0 50 500 20 0 5 0 0 0
cpu1 200 50 50 500 20 0 5 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_cpu_ticks_counts_busy_time_of_the_cores_asked() -> None:
    # cpu0: busy user+system+softirq = 155 of 675; cpu1: 255 (+50 nice) of 825.
    assert cpu_ticks(_STAT, {0}, count_nice=False) == (155, 675)
    assert cpu_ticks(_STAT, {1}, count_nice=False) == (255, 825)
    assert cpu_ticks(_STAT, {1}, count_nice=True) == (305, 825)
    assert cpu_ticks(_STAT, None, count_nice=False) == (410, 1500)
    assert cpu_ticks(_STAT, {7}, count_nice=False) is None
    assert cpu_ticks("", None, count_nice=False) is None


def test_busy_cores_reads_this_machine() -> None:
    busy = busy_cores(seconds=0.05)
    if busy is None:  # not Linux: no /proc/stat
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_pick_samples_the_busy_cores_only_when_the_choice_needs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bnlab.cli._cores as cores

    samples: list[object] = []

    def counted(*args: object, **kwargs: object) -> float:
        samples.append(args)
        return 0.0

    monkeypatch.setattr(cores, "busy_cores", counted)
    pick(threads=1, environ={})  # one run at a given thread count
    pick(runs=4, threads=1, workers=2, environ={})
    pick(runs=4, parallel_pays=False, environ={"OMP_NUM_THREADS": "1"})
    assert samples == []
    pick(environ={})  # the threads follow the free cores
    pick(runs=4, threads=1, environ={})  # the processes do
    assert len(samples) == 2
