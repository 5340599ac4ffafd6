"""wait_all_tasks_blocked(): wait until every other task is blocked."""

from __future__ import annotations

import math

from .. import _engine

__all__ = ["wait_all_tasks_blocked"]


def _abort() -> bool:
    return True  # a cancelled waiter just leaves; the finally below unregisters it


async def wait_all_tasks_blocked(cushion: float = 0.0) -> None:
    """Return once every other task of the loop is blocked, and has stayed blocked for
    ``cushion`` real seconds: nothing is runnable, no I/O event or cross-thread call is
    pending, no timer fires.  Tasks blocked for another reason count as blocked, and so do
    other waiters with a larger ``cushion``; waiters with the same cushion all wake together
    (trio's semantics).  A checkpoint: it can be cancelled.

    Typical use in tests: start tasks, ``await wait_all_tasks_blocked()``, then check the
    state they reached.
    """
    if isinstance(cushion, bool) or not isinstance(cushion, (int, float)):
        raise TypeError(
            f"wait_all_tasks_blocked() cushion must be a real number, not {type(cushion).__name__}"
        )
    if math.isnan(cushion) or cushion < 0:
        raise ValueError(f"wait_all_tasks_blocked() cushion must be >= 0, got {cushion!r}")
    loop = _engine.current_loop()
    task = _engine.current_task()
    loop._idle_add(cushion, task)
    try:
        await _engine.suspend(_abort)
    finally:
        loop._idle_discard(task)
