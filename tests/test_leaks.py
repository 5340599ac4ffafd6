"""Memory / resource leak checks.

Each workload runs in its own interpreter (isolated RSS).  A workload is a
number of rounds; after 20 % (warm-up), 60 % and 100 % of the rounds the child
process records, after ``gc.collect()``:

* ``objects`` -- ``len(gc.get_objects())`` (leaked container objects),
* ``blocks``  -- ``sys.getallocatedblocks()`` (leaked small objects of any kind),
* ``rss``     -- resident set size (leaked raw memory),
* ``fds``     -- open file descriptors.

In each half (40 % of the rounds) a workload performs thousands to hundreds of
thousands of the operations it exercises, so a leak of a single object per
operation shows up far above the slack allowed here.
"""

import json

import pytest

from conftest import run_python

OBJECT_SLACK = 300  # gc-tracked objects, per half
BLOCK_SLACK = 3000  # pymalloc blocks, per half
RSS_SLACK = 10 * 1024 * 1024  # bytes, warm-up -> end
SUBPROCESS_TIMEOUT = 60

PRELUDE = """
import gc, json, os, sys, socket
import broomio
from broomio import (CancelScope, Cancelled, Loop, move_on_after, open_nursery, sleep,
                     sleep_forever)
from broomio.lowlevel import ParkingLot, checkpoint, wait_readable, wait_writable

def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def sample():
    gc.collect()
    gc.collect()
    return {"objects": len(gc.get_objects()), "blocks": sys.getallocatedblocks(),
            "rss": _rss(), "fds": len(os.listdir("/proc/self/fd"))}

SAMPLES = []
"""

ASYNC_DRIVER = """
MARKS = {ROUNDS // 5, 3 * ROUNDS // 5, ROUNDS}

async def _driver():
    for i in range(ROUNDS):
        await one_round(i)
        if i + 1 in MARKS:
            SAMPLES.append(sample())

broomio.run(_driver)
print(json.dumps(SAMPLES))
"""

SYNC_DRIVER = """
MARKS = {ROUNDS // 5, 3 * ROUNDS // 5, ROUNDS}
for i in range(ROUNDS):
    one_round_sync(i)
    if i + 1 in MARKS:
        SAMPLES.append(sample())
print(json.dumps(SAMPLES))
"""

WORKLOADS = {
    # 100k spawn/finish cycles: 100 rounds x 10 nurseries x 100 children.
    "spawn": ("""
ROUNDS = 100
async def child(x):
    return x

async def one_round(i):
    for _ in range(10):
        async with open_nursery() as n:
            for k in range(100):
                n.start_soon(child, k)
""", ASYNC_DRIVER),
    # children that switch once, get joined and are named
    "spawn_join": ("""
ROUNDS = 100
async def child(x):
    await sleep(0)
    return x

async def one_round(i):
    async with open_nursery() as n:
        tasks = [n.start_soon(child, k, name="c") for k in range(1000)]
        for t in tasks:
            assert await t.join() == t.result()
""", ASYNC_DRIVER),
    # failing children -> ExceptionGroups, tracebacks
    "spawn_fail": ("""
ROUNDS = 100
async def bad(k):
    await sleep(0)
    raise ValueError(k)

async def one_round(i):
    for _ in range(50):
        try:
            async with open_nursery() as n:
                for k in range(10):
                    n.start_soon(bad, k)
        except* ValueError:
            pass
""", ASYNC_DRIVER),
    # cancelled children, task.cancel(), cancel scopes with deadlines
    "cancel": ("""
ROUNDS = 100
async def sleeper():
    try:
        await sleep_forever()
    finally:
        pass

async def one_round(i):
    async with open_nursery() as n:
        tasks = [n.start_soon(sleeper) for _ in range(500)]
        await sleep(0)
        for t in tasks[:250]:
            t.cancel()
        await sleep(0)
        n.cancel()
    for _ in range(500):
        with move_on_after(100):
            await sleep(0)
        with CancelScope() as s:
            s.cancel()
            await sleep(0)
""", ASYNC_DRIVER),
    # nursery.start()
    "start": ("""
ROUNDS = 100
async def svc(k, *, task_status):
    await sleep(0)
    task_status.started(k)

async def one_round(i):
    async with open_nursery() as n:
        for k in range(500):
            assert await n.start(svc, k) == k
""", ASYNC_DRIVER),
    # 1M sleep(0) switches: 10 tasks x 100 rounds x 1000 switches
    "sleep0": ("""
ROUNDS = 100
async def switcher():
    for _ in range(1000):
        await sleep(0)

async def one_round(i):
    async with open_nursery() as n:
        for _ in range(10):
            n.start_soon(switcher)
""", ASYNC_DRIVER),
    # timers: concurrent tiny sleeps and timeouts that fire
    "timers": ("""
ROUNDS = 50
async def napper():
    for _ in range(20):
        await sleep(1e-6)
    with move_on_after(1e-6):
        await sleep_forever()

async def one_round(i):
    async with open_nursery() as n:
        for _ in range(100):
            n.start_soon(napper)
""", ASYNC_DRIVER),
    # ParkingLot ping-pong
    "parking": ("""
ROUNDS = 100
async def one_round(i):
    lot = ParkingLot()
    got = []
    async def waiter():
        for _ in range(500):
            got.append(await lot.park())
    async with open_nursery() as n:
        n.start_soon(waiter)
        while len(got) < 500:
            if len(lot):
                lot.unpark(value=len(got))
            await sleep(0)
""", ASYNC_DRIVER),
    # fd readiness waits
    "io": ("""
ROUNDS = 100
A, B = socket.socketpair()
A.setblocking(False)
B.setblocking(False)

async def one_round(i):
    for _ in range(500):
        B.send(b"x")
        await wait_readable(A)
        A.recv(10)
        await wait_writable(A)
    with move_on_after(0):
        await wait_readable(A)
""", ASYNC_DRIVER),
    # FdStream over pipes: transfers, a cancelled read, close, one dropped unclosed
    "pipes": ("""
ROUNDS = 100
async def one_round(i):
    for _ in range(50):
        r, w = os.pipe()
        reader, writer = broomio.FdStream(r), broomio.FdStream(w)
        await writer.send_all(b"x" * 1000)
        assert len(await reader.read_exactly(1000)) == 1000
        with move_on_after(0):
            await reader.receive_some()
        await writer.aclose()
        assert await reader.receive_some() == b""
        await reader.aclose()
    r, w = os.pipe()
    broomio.FdStream(r)  # dropped: its fd is closed on deallocation
    os.close(w)
""", ASYNC_DRIVER),
    # subprocesses: pipes both ways, pidfd waits, reaping
    "subprocess": ("""
ROUNDS = 50
async def one_round(i):
    for _ in range(4):
        r = await broomio.run_process(["cat"], input=b"y" * 10000, capture_stdout=True)
        assert r.stdout == b"y" * 10000
    async with await broomio.open_process(["cat"], stdin=-1, stdout=-1) as p:
        await p.stdin.send_all(b"z")
        assert await p.stdout.receive_some() == b"z"
""", ASYNC_DRIVER),
    # root tasks + re-running one Loop, run_until_complete with a failing root task
    "loop_reuse": ("""
ROUNDS = 100
LOOP = Loop()
async def root(k):
    await sleep(0)
    return k

async def failing():
    raise KeyError("x")

def one_round_sync(i):
    for k in range(500):
        LOOP.start_soon(root, k)
    LOOP.run()
    LOOP.start_soon(failing)
    try:
        LOOP.run()
    except* KeyError:
        pass
""", SYNC_DRIVER),
    # creating / running / closing many loops (epoll fd, eventfd)
    "loops": ("""
ROUNDS = 100
async def main(k):
    await sleep(0)
    return k

def one_round_sync(i):
    for k in range(20):
        assert broomio.run(main, k) == k
        lp = Loop()
        lp.start_soon(main, k)
        lp.run()
        lp.close()
        Loop().close()
""", SYNC_DRIVER),
}


def _run_workload(name):
    body, driver = WORKLOADS[name]
    proc = run_python(PRELUDE + body + driver, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, f"workload {name} failed:\n{proc.stderr[-4000:]}"
    samples = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(samples) == 3, samples
    return samples


def _check(name, samples):
    warm, mid, end = samples
    report = f"{name}: warm-up={warm} mid={mid} end={end}"
    for first, second, label in ((warm, mid, "first half"), (mid, end, "second half")):
        assert second["objects"] - first["objects"] < OBJECT_SLACK, \
            f"gc objects grew in the {label}: {report}"
        assert second["blocks"] - first["blocks"] < BLOCK_SLACK, \
            f"allocated blocks grew in the {label}: {report}"
        assert second["fds"] - first["fds"] <= 0, f"fds grew in the {label}: {report}"
    assert end["rss"] - warm["rss"] < RSS_SLACK, f"RSS grew: {report}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_no_leak(name):
    _check(name, _run_workload(name))


def test_leak_checker_detects_a_leak():
    """The measurement itself works: a deliberate leak must be caught."""
    body = """
ROUNDS = 100
KEEP = []
async def child():
    KEEP.append([None])

async def one_round(i):
    async with open_nursery() as n:
        for _ in range(100):
            n.start_soon(child)
"""
    proc = run_python(PRELUDE + body + ASYNC_DRIVER, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    samples = json.loads(proc.stdout.strip().splitlines()[-1])
    with pytest.raises(AssertionError, match="gc objects grew"):
        _check("leaky", samples)
