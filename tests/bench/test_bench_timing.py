"""Tests of ``bnlab.bench.timing``: schedule order, statistics on fake clocks, records."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnlab.bench.timing import (
    Timing,
    calibrate_number,
    environment_record,
    interleaved_schedule,
    quantile,
    time_interleaved,
)


class FakeClock:
    """A clock that the timed code advances: each call of a variant costs its next duration.

    ``time_interleaved`` reads the clock exactly twice per sample, so ``now`` only moves
    when a variant runs.
    """

    def __init__(self, durations_ms: dict[str, list[float]]) -> None:
        self.now = 100.0
        self.durations_ms = {name: list(d) for name, d in durations_ms.items()}
        self.reads = 0
        self.calls: list[str] = []

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def fn(self, name: str) -> Callable[[], None]:
        def run() -> None:
            self.calls.append(name)
            if self.durations_ms[name]:
                self.now += self.durations_ms[name].pop(0) / 1e3

        return run


def test_schedule_rotates_the_first_variant_each_round() -> None:
    assert interleaved_schedule(["a", "b", "c"], 4) == list("abcbcacababc")
    assert interleaved_schedule(["a", "b", "c"], 2, rotate=False) == list("abcabc")
    assert interleaved_schedule(["a"], 3) == ["a", "a", "a"]
    assert interleaved_schedule([], 3) == []


def test_time_interleaved_runs_the_schedule_warmup_included() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = time_interleaved(fns, repeats=3, warmup=1)
    assert calls == interleaved_schedule(list("abc"), 4)
    assert list(result) == ["a", "b", "c"]
    assert all(len(t.samples_ms) == 3 for t in result.values())


def test_time_interleaved_calls_number_times_per_sample() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    time_interleaved(fns, repeats=2, warmup=1, number=3, rotate=False)
    assert calls == list("aaabbb" * 3)


def test_medians_and_iqr_on_a_fake_clock() -> None:
    # Warm-up calls are not timed: their durations (1000 ms) never reach a sample.
    clock = FakeClock({"a": [1000, 1, 2, 9, 4, 3], "b": [1000, 4, 4, 4, 4, 40]})
    fns = {"a": clock.fn("a"), "b": clock.fn("b")}
    result = time_interleaved(fns, repeats=5, warmup=1, clock=clock)
    assert clock.reads == 2 * 2 * 5
    a, b = result["a"], result["b"]
    assert a.samples_ms == pytest.approx((1, 2, 9, 4, 3))
    assert a.median_ms == pytest.approx(3)
    assert (a.q1_ms, a.q3_ms, a.iqr_ms) == pytest.approx((2, 4, 2))
    assert (a.min_ms, a.max_ms) == pytest.approx((1, 9))
    assert b.median_ms == pytest.approx(4)
    assert b.iqr_ms == pytest.approx(0)  # one outlier of 40 ms moves neither
    assert b.max_ms == pytest.approx(40)


def test_samples_are_per_call_when_number_is_above_one() -> None:
    clock = FakeClock({"a": [2.0] * 8})
    result = time_interleaved({"a": clock.fn("a")}, repeats=2, warmup=0, number=4, clock=clock)
    assert result["a"].samples_ms == pytest.approx((2.0, 2.0))
    assert result["a"].number == 4


def test_sync_is_called_around_each_sample() -> None:
    events: list[str] = []
    time_interleaved(
        {"a": lambda: events.append("a")},
        repeats=2,
        warmup=1,
        sync=lambda: events.append("sync"),
    )
    assert events == ["a", "sync", "a", "sync", "sync", "a", "sync"]


def test_gc_state_is_restored_even_after_an_error() -> None:
    assert gc.isenabled()

    def boom() -> None:
        assert not gc.isenabled()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        time_interleaved({"boom": boom}, repeats=1, warmup=0)
    assert gc.isenabled()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeats": 0}, "time_interleaved: repeats must be >= 1, got 0"),
        ({"repeats": 1, "warmup": -1}, "time_interleaved: warmup must be >= 0, got -1"),
        ({"repeats": 1, "number": 0}, "time_interleaved: number must be >= 1, got 0"),
    ],
)
def test_time_interleaved_errors(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        time_interleaved({"a": lambda: None}, **kwargs)


def test_time_interleaved_needs_a_callable() -> None:
    with pytest.raises(ValueError, match=r"^time_interleaved: expected at least one callable"):
        time_interleaved({}, repeats=1)


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30),
    st.floats(0, 1),
)
def test_quantile_matches_numpy(values: list[float], q: float) -> None:
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), abs=1e-6)


def test_quantile_errors() -> None:
    with pytest.raises(ValueError, match=r"^quantile: expected at least one value"):
        quantile([], 0.5)
    with pytest.raises(ValueError, match=r"^quantile: q must be in \[0, 1\], got 1.5$"):
        quantile([1.0], 1.5)


def test_timing_as_dict_keys_carry_units() -> None:
    summary = Timing((3.0, 1.0, 2.0), number=5).as_dict()
    assert summary["median_time_ms"] == 2.0
    assert summary["calls_per_sample"] == 5
    assert summary["repeats"] == 3
    times = {k for k in summary if k not in ("calls_per_sample", "repeats")}
    assert all(k.endswith("_time_ms") for k in times)


def test_calibrate_number_on_a_fake_clock() -> None:
    clock = FakeClock({"a": [2.0, 50.0, 0.0]})
    assert calibrate_number(clock.fn("a"), target_ms=20, clock=clock) == 10
    assert calibrate_number(clock.fn("a"), target_ms=20, clock=clock) == 1
    assert calibrate_number(clock.fn("a"), target_ms=20, clock=clock, max_number=7) == 7


def test_environment_record(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t: fpu\n")
    environ = {
        "MALLOC_ARENA_MAX": "2",
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576",
        "HOME": "/root",
        "SECRET_TOKEN": "x",
    }
    record = environment_record(environ=environ, repo_dir=tmp_path, cpuinfo=cpuinfo)
    assert record["cpu_model"] == "Test CPU 9000"
    assert record["allocator_and_thread_env"] == {
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576",
        "MALLOC_ARENA_MAX": "2",
    }
    assert record["git_revision"] is None  # tmp_path is not a checkout
    assert record["git_dirty"] is None
    for key in ("python", "platform", "torch", "torch_num_threads", "logical_cpus"):
        assert record[key] is not None, key


def test_environment_record_in_this_checkout() -> None:
    record = environment_record(environ={}, repo_dir=Path(__file__).parent)
    if record["git_revision"] is None:
        pytest.skip("not a git checkout, or git is missing")
    assert len(record["git_revision"]) == 40
    assert isinstance(record["git_dirty"], bool)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_spread_is_ordered_and_its_median_is_the_median(values: list[float]) -> None:
    import statistics

    from bnlab.bench.timing import spread

    s = spread(values)
    assert min(values) <= s["p10"] <= s["median"] <= s["p90"] <= max(values)
    # Both interpolate linearly between the two middle values: equal up to rounding.
    assert s["median"] == pytest.approx(statistics.median(values), rel=1e-12, abs=1e-9)
