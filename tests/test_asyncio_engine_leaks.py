"""broomio.asyncio leak checks: handles, timers, the fd table, transports and sock waits.

Each workload runs in a fresh interpreter and samples (after gc.collect()) the number of
gc-tracked objects, pymalloc blocks and open fds after 20 %, 60 % and 100 % of its rounds;
the later halves must not grow beyond a small slack although each performs tens of
thousands of operations."""

from __future__ import annotations

import json

import pytest

from conftest import run_python

OBJECT_SLACK = 300
BLOCK_SLACK = 3000

WORKLOAD = """
import asyncio, gc, json, os, socket, sys
import broomio.asyncio as bra

def sample():
    gc.collect(); gc.collect()
    return {"objects": len(gc.get_objects()), "blocks": sys.getallocatedblocks(),
            "fds": len(os.listdir("/proc/self/fd"))}

class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)

async def one_round():
    loop = asyncio.get_running_loop()
    # call_soon / call_later / cancelled timers / sleep(0)
    fut = loop.create_future()
    for i in range(50):
        loop.call_soon(lambda: None)
        loop.call_later(100, lambda: None).cancel()
    loop.call_later(0.0001, fut.set_result, None)
    await fut
    for _ in range(20):
        await asyncio.sleep(0)
    # transports: echo through a protocol, then close
    a, b = socket.socketpair()
    tr, _ = await loop.connect_accepted_socket(Echo, a)
    b.setblocking(False)
    for _ in range(5):
        await loop.sock_sendall(b, b"x" * 100)
        await loop.sock_recv(b, 100)
    # a sock wait that is cancelled
    t = asyncio.ensure_future(loop.sock_recv(b, 10))
    await asyncio.sleep(0)
    t.cancel()
    try:
        await t
    except asyncio.CancelledError:
        pass
    tr.close()
    b.close()
    await asyncio.sleep(0)

def main():
    ROUNDS = 400
    marks = {ROUNDS // 5, 3 * ROUNDS // 5, ROUNDS}
    samples = []
    async def driver():
        for i in range(ROUNDS):
            await one_round()
            if i + 1 in marks:
                samples.append(sample())
    bra.run(driver())
    # fresh loops, opened and closed
    loops = []
    for i in range(300):
        lp = bra.new_event_loop()
        lp.call_soon(lambda: None)
        lp.call_later(5, lambda: None)
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
        if i + 1 in (60, 180, 300):
            loops.append(sample())
    print(json.dumps([samples, loops]))

main()
"""


@pytest.mark.slow
def test_no_leaks() -> None:
    proc = run_python(WORKLOAD, timeout=100)
    assert proc.returncode == 0, proc.stderr
    for samples in json.loads(proc.stdout.strip().splitlines()[-1]):
        warm, mid, end = samples
        assert mid["objects"] - warm["objects"] <= OBJECT_SLACK, samples
        assert end["objects"] - mid["objects"] <= OBJECT_SLACK, samples
        assert end["blocks"] - mid["blocks"] <= BLOCK_SLACK, samples
        assert end["fds"] == mid["fds"] == warm["fds"], samples
