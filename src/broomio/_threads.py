"""Running blocking calls in worker threads (used by the resolver).

A call runs in the loop's executor; its outcome comes back through the loop's thread-safe
inbox (``call_soon_threadsafe``), which reschedules the waiting task.  Cancelling the waiting
task abandons the call: the thread finishes in the background and its result is dropped.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from ._engine import LoopCore, current_loop, current_task, suspend

T = TypeVar("T")

_MAX_WORKERS = 40


def _executor_for(loop: LoopCore) -> concurrent.futures.ThreadPoolExecutor:
    executor: concurrent.futures.ThreadPoolExecutor | None = getattr(loop, "_executor", None)
    if executor is None:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=_MAX_WORKERS, thread_name_prefix="broomio-worker"
        )
        loop._executor = executor  # type: ignore[attr-defined]
    return executor


async def run_sync_in_worker_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in a worker thread and return its result (cancelling abandons it)."""
    loop = current_loop()
    task = current_task()
    abandoned = False

    def deliver(result: Any, error: BaseException | None) -> None:
        if abandoned:
            return
        if error is not None:
            loop.reschedule(task, exception=error)
        else:
            loop.reschedule(task, result)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as error:  # delivered to the waiting task, not lost
            outcome: tuple[Any, BaseException | None] = (None, error)
        else:
            outcome = (result, None)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:
            pass  # the loop was closed meanwhile: nobody is waiting any more

    def abort() -> bool:
        nonlocal abandoned
        abandoned = True
        return True

    _executor_for(loop).submit(work)
    result: T = await suspend(abort)
    return result


def shutdown_executor(loop: LoopCore) -> None:
    """Stop the loop's worker threads (called by Loop.close())."""
    executor = getattr(loop, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
        loop._executor = None  # type: ignore[attr-defined]
