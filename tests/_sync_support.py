"""Helpers shared by the synchronization-primitive tests (test_sync*.py).

Self-contained on purpose: only the public API, trio and the standard library.
"""

from __future__ import annotations

import broomio
from broomio import open_nursery
from broomio.lowlevel import checkpoint

run = broomio.run

# How many sleep(0) rounds let every task made runnable by the previous actions finish its
# step.  broomio runs ready tasks in FIFO order and each test task needs at most two steps
# (start, then after a wake-up) to reach its next wait, so 2 would do; 4 leaves room.
SETTLE_ROUNDS = 4


async def settle(rounds: int = SETTLE_ROUNDS) -> None:
    """Let the tasks that are runnable now (and those they wake) run until they block."""
    for _ in range(rounds):
        await broomio.sleep(0)


async def wait_until(predicate, what: str = "condition") -> None:
    """Checkpoint until ``predicate()`` holds (bounded: a bug fails instead of hanging)."""
    for _ in range(10_000):
        if predicate():
            return
        await broomio.sleep(0)
    raise AssertionError(f"{what} never became true")


class Log(list):
    """Event log: ``log(a)`` appends ``a``; ``log(a, b)`` appends ``(a, b)``."""

    def __call__(self, *item):
        self.append(item[0] if len(item) == 1 else item)


# ---------------------------------------------------------------------------
# "completes without suspending" and "honours the budget"


async def assert_no_suspension(make_awaitable):
    """Awaiting make_awaitable() must not let another task run (the fast path)."""
    ran = []

    async def other():
        ran.append(True)

    async with open_nursery() as n:
        n.start_soon(other)
        result = await make_awaitable()
        assert ran == [], "the uncontended operation suspended the task"
    assert ran == [True]
    return result


async def assert_budget_yields(make_awaitable, count=10_000):
    """A task doing `count` fast-path awaits in a row must still let others run."""
    progress = []
    done = []

    async def other():
        while not done:
            progress.append(1)
            await checkpoint()

    async with open_nursery() as n:
        n.start_soon(other)
        await settle(1)
        before = len(progress)
        for _ in range(count):
            await make_awaitable()
        during = len(progress) - before
        done.append(True)
    assert during > 0, "a task looping on fast-path operations starved the others"
