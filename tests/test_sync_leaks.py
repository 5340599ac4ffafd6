"""Leak checks for the synchronization primitives.

Each workload runs in a fresh interpreter.  After 20 % (warm-up), 60 % and 100 % of its
rounds it records, after gc.collect(), the number of gc-tracked objects and of allocated
blocks.  Every half performs tens of thousands of operations (fast paths, parking, hand-off,
cancellation of waiters that hold an item in their wake slot, close), so leaking one object
per operation shows up far above the slack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

OBJECT_SLACK = 300  # gc-tracked objects, per half
BLOCK_SLACK = 3000  # allocated blocks, per half

PRELUDE = """
import gc, json, sys
import broomio
from broomio import (CancelScope, CapacityLimiter, Condition, Event, Lock, Queue, Semaphore,
                     ClosedResourceError, open_nursery, sleep)

def sample():
    gc.collect()
    gc.collect()
    return {"objects": len(gc.get_objects()), "blocks": sys.getallocatedblocks()}

SAMPLES = []
MARKS = {ROUNDS // 5, 3 * ROUNDS // 5, ROUNDS}

async def settle():
    for _ in range(4):
        await sleep(0)
"""

DRIVER = """
async def _driver():
    for i in range(ROUNDS):
        await one_round(i)
        if i + 1 in MARKS:
            SAMPLES.append(sample())

broomio.run(_driver)
print(json.dumps(SAMPLES))
"""

WORKLOADS = {
    # ping-pong through two bounded queues: hand-off in both directions, the fast paths
    "queue_ping_pong": """
ROUNDS = 50
async def one_round(i):
    a, b = Queue(1), Queue(1)
    async def pong():
        async for x in a:
            await b.put([x])
        b.close()
    async with open_nursery() as n:
        n.start_soon(pong)
        for k in range(500):
            await a.put(object())
            await b.get()
        a.close()
        async for _ in b:
            pass
""",
    # parked putters (items in their wake slots) cancelled or refused by close; parked
    # getters cancelled; async for over a closed queue
    "queue_cancel_close": """
ROUNDS = 50
async def one_round(i):
    q = Queue(2)
    async def putter(scope):
        with scope:
            try:
                await q.put([i])
            except ClosedResourceError:
                pass
    async def getter(scope):
        with scope:
            try:
                await q.get()
            except ClosedResourceError:
                pass
    for k in range(200):
        q.put_nowait([k])
        q.put_nowait([k])
        scopes = [CancelScope() for _ in range(4)]
        async with open_nursery() as n:
            for s in scopes:
                n.start_soon(putter, s)
            await settle()
            scopes[0].cancel()
            scopes[2].cancel()
            await settle()
            q.get_nowait()
            q.close()
        q = Queue(2)
        gscopes = [CancelScope() for _ in range(3)]
        async with open_nursery() as n:
            for s in gscopes:
                n.start_soon(getter, s)
            await settle()
            gscopes[1].cancel()
            q.put_nowait([k])
            q.close()
        q = Queue(2)
""",
    # contended Lock, Semaphore and CapacityLimiter with cancelled waiters
    "permits": """
ROUNDS = 50
async def one_round(i):
    lock, sem, lim = Lock(), Semaphore(2), CapacityLimiter(2)
    async def worker(scope):
        with scope:
            async with lock:
                await sleep(0)
            async with sem:
                await sleep(0)
            async with lim:
                await sleep(0)
            await lim.acquire_on_behalf_of(scope)
            lim.release_on_behalf_of(scope)
    async with open_nursery() as n:
        scopes = [CancelScope() for _ in range(300)]
        for s in scopes:
            n.start_soon(worker, s)
        await sleep(0)
        for s in scopes[::3]:
            s.cancel()
    assert not lock.locked() and sem.value == 2 and lim.borrowed_tokens == 0
""",
    # Event fan-out and Condition notify / cancelled waits
    "event_condition": """
ROUNDS = 50
async def one_round(i):
    ev = Event()
    cond = Condition()
    async def waiter():
        await ev.wait()
    async def cwaiter(scope):
        async with cond:
            with scope:
                await cond.wait()
    async with open_nursery() as n:
        for _ in range(200):
            n.start_soon(waiter)
        scopes = [CancelScope() for _ in range(50)]
        for s in scopes:
            n.start_soon(cwaiter, s)
        await settle()
        ev.set()
        for s in scopes[::2]:
            s.cancel()
        await settle()
        async with cond:
            cond.notify_all()
""",
}


def _run(name: str) -> list:
    # The prelude needs the workload's ROUNDS: that line goes first.
    rounds_line = next(ln for ln in WORKLOADS[name].splitlines() if ln.startswith("ROUNDS"))
    code = rounds_line + "\n" + PRELUDE + WORKLOADS[name] + DRIVER
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    assert proc.returncode == 0, f"workload {name} failed:\n{proc.stderr[-4000:]}"
    samples = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(samples) == 3, samples
    return samples


def _check(name: str, samples: list) -> None:
    warm, mid, end = samples
    report = f"{name}: warm-up={warm} mid={mid} end={end}"
    for first, second, label in ((warm, mid, "first half"), (mid, end, "second half")):
        assert second["objects"] - first["objects"] < OBJECT_SLACK, (
            f"gc objects grew in the {label}: {report}"
        )
        assert second["blocks"] - first["blocks"] < BLOCK_SLACK, (
            f"allocated blocks grew in the {label}: {report}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_sync_no_leak(name):
    _check(name, _run(name))


def test_sync_leak_checker_detects_a_leak():
    """The measurement works: a workload that keeps what it gets must be caught."""
    WORKLOADS["_leaky"] = """
ROUNDS = 50
KEEP = []
async def one_round(i):
    q = Queue()
    for k in range(200):
        q.put_nowait([k])
        KEEP.append(await q.get())
"""
    try:
        samples = _run("_leaky")
    finally:
        del WORKLOADS["_leaky"]
    with pytest.raises(AssertionError, match="grew"):
        _check("leaky", samples)
