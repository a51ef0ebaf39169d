"""Independent units of work in parallel processes, each with a fixed thread count.

On a machine of few cores, a small network trains faster as two single-thread processes
than as one process of two threads (each step is too small to split well, and the
threads of one process wait for each other at the end of every parallel region). The
d2l runs and the lab's grid cells are independent, so they can run that way.

Workers are started with the ``spawn`` context (``fork`` is unsafe once torch has started
its thread pools) and pin ``torch.set_num_threads(threads)`` before any work. A task's
numbers then depend only on the task and the thread count: a run in a worker of one
thread gives the digits of the same run in a serial process of one thread.

The parent keeps every side effect that matters: a task returns its result, and the
parent stores it (``on_result``) as soon as it arrives, so each task stays a resumable
unit. A task can report progress with ``report(message)``; the parent gets it through
``on_message`` (in its own thread, between results).
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch

from bnlab.autograd import fast_path_enabled, set_fast_path

__all__ = ["is_picklable", "run_in_pool", "worker_report"]

# The worker's state, set once by ``_init``: the shared data and the message queue.
_shared: Any = None
_queue: Any = None
_task_index: int = -1


def _init(threads: int, messages: Any, shared: Any, fast_path: bool) -> None:
    global _shared, _queue
    torch.set_num_threads(threads)
    # The parent's kernels switch: a worker computes as the parent would (same digits).
    set_fast_path(fast_path)
    _shared, _queue = shared, messages


def worker_report(message: Any) -> None:
    """Send ``message`` to the parent's ``on_message`` (no-op outside a worker)."""
    if _queue is not None:
        _queue.put((_task_index, message))


def _call(fn: Callable[..., Any], index: int, args: tuple[Any, ...]) -> Any:
    global _task_index
    _task_index = index
    try:
        return fn(_shared, *args)
    finally:
        _task_index = -1


def is_picklable(value: Any) -> bool:
    """Whether ``value`` can be sent to a spawned worker (module-level functions, plain
    data; not lambdas or closures)."""
    try:
        pickle.dumps(value)
    except Exception:  # pickling raises many types
        return False
    return True


def _drain(messages: Any, on_message: Callable[[int, Any], None] | None) -> None:
    while True:
        try:
            index, message = messages.get_nowait()
        except queue_module.Empty:
            return
        if on_message is not None:
            on_message(index, message)


def run_in_pool(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    workers: int,
    threads: int,
    shared: Any = None,
    on_result: Callable[[int, Any], None],
    on_start: Callable[[int], None] | None = None,
    on_message: Callable[[int, Any], None] | None = None,
    cost: Sequence[float] | None = None,
    after: Sequence[int | Sequence[int] | None] | None = None,
) -> None:
    """Run ``fn(shared, *task)`` for every task in ``workers`` spawned processes.

    Tasks are handed out longest first when ``cost`` gives their expected relative
    durations (the longest-processing-time rule: a long task started last would leave
    the other workers idle at the end); otherwise in order. Either way each result is
    reported with its task's index, so the order changes only when tasks run.

    Args:
        fn: a module-level function (it is pickled by reference).
        tasks: each task's arguments after ``shared``.
        workers: processes (at most ``len(tasks)`` are started).
        threads: ``torch.set_num_threads`` in each worker.
        shared: sent once to each worker (the data), passed first to every call.
        on_result: ``on_result(index, result)`` in the parent, as each task ends (in
            the order they end).
        on_start: ``on_start(index)`` in the parent when a task is handed to a worker.
        on_message: ``on_message(index, message)`` for each ``worker_report``.
        cost: one expected relative duration per task (ties keep their order).
        after: per task, the index (or indices) of tasks whose results must have arrived
            before it is handed out (None: none), e.g. evaluations of a run's saved
            states.

    Raises:
        ValueError: ``workers`` or ``threads`` below 1, ``cost`` or ``after`` not one per
            task, or an ``after`` that is no earlier task's index.
        Whatever a task raised (the other tasks are cancelled).
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"run_in_pool: workers and threads must be >= 1, got {workers}, {threads}")
    if cost is not None and len(cost) != len(tasks):
        raise ValueError(f"run_in_pool: {len(cost)} costs for {len(tasks)} tasks")
    needs: list[tuple[int, ...]] = [()] * len(tasks)
    if after is not None:
        if len(after) != len(tasks):
            raise ValueError(f"run_in_pool: {len(after)} entries of after for {len(tasks)} tasks")
        needs = [(a,) if isinstance(a, int) else tuple(a or ()) for a in after]
        for i, firsts in enumerate(needs):
            if any(not 0 <= a < i for a in firsts):
                raise ValueError(
                    f"run_in_pool: after[{i}] must name earlier tasks (indices below {i}), "
                    f"got {after[i]}"
                )
    if not tasks:
        return
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=context,
        initializer=_init,
        initargs=(threads, messages, shared, fast_path_enabled()),
    )
    # Hand out at most one task per worker at a time, so on_start is when it begins.
    queue = list(enumerate(tasks))
    if cost is not None:
        queue.sort(key=lambda item: -cost[item[0]])  # stable: ties keep their order
    running: dict[Future[Any], int] = {}
    finished: set[int] = set()

    def ready(item: tuple[int, Any]) -> bool:
        return all(a in finished for a in needs[item[0]])

    def submit() -> None:
        while len(running) < min(workers, len(tasks)):
            pick = next((k for k, item in enumerate(queue) if ready(item)), None)
            if pick is None:
                return  # the rest wait for a result
            index, args = queue.pop(pick)
            if on_start is not None:
                on_start(index)
            running[executor.submit(_call, fn, index, tuple(args))] = index

    try:
        submit()
        while running:
            done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(messages, on_message)
            for future in done:
                index = running.pop(future)
                on_result(index, future.result())
                finished.add(index)
            submit()
        _drain(messages, on_message)
    except BaseException:
        # A failed task or a Ctrl-C: stop the others now (each task is a resumable unit,
        # so the work lost is at most the tasks in flight). A worker hit by the same
        # Ctrl-C may hang sending its error back: terminate, then kill. The processes are
        # read before shutdown, which forgets them.
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        _stop(processes)
        raise
    finally:
        executor.shutdown(wait=True)
        messages.close()


def _stop(processes: Sequence[Any], grace_s: float = 2.0) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join(grace_s)
