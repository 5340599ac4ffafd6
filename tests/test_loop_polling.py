"""The loop polls for I/O at most every BRO_POLL_STEPS (64) task steps while tasks are
runnable; these tests bound how long busy tasks can delay I/O readiness, in task steps
(never in seconds)."""

from __future__ import annotations

import socket

import broomio
from broomio import open_nursery, sleep
from broomio.lowlevel import wait_readable

POLL_STEPS = 64


def _busy_steps_until_readable(busy_tasks: int) -> int:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    steps = [0]
    state = {"woke_at": None, "done": False}

    async def busy():
        while not state["done"]:
            steps[0] += 1
            await sleep(0)

    async def reader():
        await wait_readable(a)
        state["woke_at"] = steps[0]
        state["done"] = True

    async def main():
        async with open_nursery() as n:
            n.start_soon(reader)
            await sleep(0)  # the reader parks on the fd (the first poll arms it)
            for _ in range(busy_tasks):
                n.start_soon(busy)
            for _ in range(3 * POLL_STEPS):  # let the busy tasks get going
                await sleep(0)
            state["sent_at"] = steps[0]
            b.send(b"x")
            for _ in range(100_000):
                if state["done"]:
                    break
                await sleep(0)
            state["done"] = True

    try:
        broomio.run(main)
    finally:
        a.close()
        b.close()
    assert state["woke_at"] is not None, "the reader was never woken"
    return state["woke_at"] - state["sent_at"]


def test_io_is_polled_within_a_bounded_number_of_steps_one_busy_task():
    # main + one busy task: two steps per iteration, so a poll every 32 iterations.
    assert _busy_steps_until_readable(1) <= 2 * POLL_STEPS


def test_io_is_polled_within_a_bounded_number_of_steps_many_busy_tasks():
    # With 100 runnable tasks every iteration has more than 64 steps: poll every iteration.
    assert _busy_steps_until_readable(100) <= 2 * 100
