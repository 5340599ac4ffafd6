"""Every C type broomio._engine exports: 100,000 create/use/destroy cycles, memory flat.

tests/test_leaks.py runs realistic workloads (tasks, sockets, timers, cancellation); this
file is the systematic per-type check: for each type the engine exports (enumerated from
the module, so a new type without a recipe here fails the test) a recipe creates an
instance, uses what it owns (enters a scope, queues an item, starts an operation, ...) and
drops it, 100,000 times in a fresh interpreter.  Between the end of a 10,000-cycle warm-up
and the end:

* ``sys.getallocatedblocks()`` (every small object, container or not),
* ``len(gc.get_objects())``,
* the type's own reference count (instances hold a reference to their heap type),
* RSS and open descriptors

must stay flat; one leaked object per cycle would be 100,000 blocks.
"""

from __future__ import annotations

import json

import pytest

import broomio._engine as engine

from conftest import run_python

CYCLES = 100_000
WARMUP = 10_000
BLOCK_SLACK = 2_000
OBJECT_SLACK = 300
RSS_SLACK = 4 * 1024 * 1024

PRELUDE = """
import gc, json, os, sys
import asyncio
import broomio, broomio.socket as bsocket, broomio.asyncio as aio
import broomio._engine as engine
from broomio import lowlevel

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def sample(tp):
    gc.collect(); gc.collect()
    return {"blocks": sys.getallocatedblocks(), "objects": len(gc.get_objects()),
            "typerefs": sys.getrefcount(tp), "rss": rss(),
            "fds": len(os.listdir("/proc/self/fd"))}

async def nop():
    pass
"""

#: How to cycle each type.  ``SYNC``: the body of ``for i in range(n):``; ``ASYNC``: the body
#: of the same loop inside ``async def main(n)`` run by ``broomio.run``.
SYNC: dict[str, str] = {
    "Cancelled": "e = engine.Cancelled(); del e",
    "TaskCancelled": "e = engine.TaskCancelled('x'); del e",
    "BusyResourceError": "e = engine.BusyResourceError('x'); del e",
    "ClosedResourceError": "e = engine.ClosedResourceError('x'); del e",
    "BrokenResourceError": "e = engine.BrokenResourceError('x'); del e",
    "WouldBlock": "e = engine.WouldBlock(); del e",
    "IncompleteReadError": (
        "e = engine.IncompleteReadError('short'); e.partial = b'ab'; e.expected = 3\n"
        "try:\n    raise e\nexcept EOFError:\n    pass\ndel e"),
    "ConflictDetector": "c = engine.ConflictDetector('busy')\nwith c:\n    pass\ndel c",
    "ParkingLot": "p = lowlevel.ParkingLot(); p.unpark_all(); del p",
    "Event": "ev = engine.Event(); ev.set(); ev.is_set(); del ev",
    "Lock": "lk = engine.Lock(); lk.locked(); del lk",
    "Semaphore": "s = engine.Semaphore(2, max_value=3); s.acquire_nowait(); s.release(); del s",
    "CapacityLimiter": (
        "c = engine.CapacityLimiter(2); c.acquire_on_behalf_of_nowait(i)\n"
        "c.release_on_behalf_of(i); del c"),
    "Queue": "q = engine.Queue(3); q.put_nowait([i]); q.put_nowait(i); q.get_nowait(); del q",
    "CancelScope": "s = engine.CancelScope(deadline=1e9); s.cancel(); del s",
    "LoopCore": "lp = broomio.Loop(); lp.close(); del lp",
    "SocketCore": "s = bsocket.socket(); s.fileno(); s.close(); del s",
    "AioCore": (
        "lp = aio.new_event_loop(); lp.call_soon(int); lp.call_later(1, int).cancel()\n"
        "lp.run_until_complete(asyncio.sleep(0)); lp.close(); del lp"),
}
ASYNC: dict[str, str] = {
    "Lock": "lk = engine.Lock(); lk.acquire_nowait(); lk.release()\nasync with lk:\n    pass",
    "CancelScope": "with broomio.CancelScope() as s:\n    s.cancel()\n    await broomio.checkpoint()",
    "NurseryCore": "async with broomio.open_nursery() as n:\n    pass",
    "Task": "t = NURSERY.start_soon(nop)\nif i % 100 == 0:\n    await broomio.sleep(0)\ndel t",
    "Awaitable": (
        "ev = engine.Event(); w = ev.wait(); w.close(); del w\n"
        "ev.set(); await ev.wait()"),
    "SocketOperation": (
        "op = A.recv(10); op.close(); del op\n"
        "await A.send_all(b'x'); await B.recv(10)"),
    "DebugAwaitable": (
        "if i == 0:\n    broomio.current_loop().debug = True\n"
        "ev = engine.Event(); ev.set(); w = ev.wait()\n"
        "assert type(w) is engine.DebugAwaitable\nawait w; del w"),
    "StreamCore": (
        "a, b = bsocket.socketpair(); sa, sb = broomio.SocketStream(a), broomio.SocketStream(b)\n"
        "await sa.send_all(b'ping'); await sb.receive_some(10)\n"
        "await sa.aclose(); await sb.aclose(); del sa, sb, a, b"),
}

RUNNER = """
TYPE = getattr(engine, {name!r})

def cycle_sync(n):
{sync_body}

async def cycle_async(n):
    global NURSERY, A, B
    A, B = bsocket.socketpair()
    async with broomio.open_nursery() as NURSERY:
        for i in range(n):
{async_body}
    A.close(); B.close()

def cycle(n):
    cycle_sync(n)
    broomio.run(cycle_async, n)

cycle({warmup})
before = sample(TYPE)
cycle({cycles})
after = sample(TYPE)
print(json.dumps([before, after]))
"""


def exported_types() -> list[str]:
    return sorted(name for name in dir(engine) if isinstance(getattr(engine, name), type))


def indent(code: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in code.splitlines())


def program(name: str, cycles: int) -> str:
    sync_code = SYNC.get(name, "pass")
    async_code = ASYNC.get(name, "pass")
    sync_body = indent(f"for i in range(n):\n{indent(sync_code, 4)}", 4)
    return PRELUDE + RUNNER.format(name=name, sync_body=sync_body,
                                   async_body=indent(async_code, 12),
                                   warmup=WARMUP, cycles=cycles)


def test_every_exported_type_has_a_recipe() -> None:
    names = exported_types()
    assert len(names) >= 20, names
    missing = [n for n in names if n not in SYNC and n not in ASYNC]
    assert not missing, f"no create/destroy recipe for {missing}: add one above"


def measure(name: str, cycles: int = CYCLES) -> tuple[dict[str, int], dict[str, int]]:
    proc = run_python(program(name, cycles), timeout=100)
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    return before, after


@pytest.mark.slow
@pytest.mark.parametrize("name", exported_types())
def test_create_destroy_cycles_are_flat(name: str) -> None:
    before, after = measure(name)
    growth = {k: after[k] - before[k] for k in before}
    assert growth["typerefs"] == 0, (name, growth)
    assert growth["blocks"] < BLOCK_SLACK, (name, growth)
    assert growth["objects"] < OBJECT_SLACK, (name, growth)
    assert growth["rss"] < RSS_SLACK, (name, growth)
    assert growth["fds"] == 0, (name, growth)


def test_the_checker_sees_a_leak() -> None:
    # The same harness with a recipe that keeps one object per cycle must fail.
    SYNC["_Leaky"] = "KEEP.append(engine.Event())"
    try:
        code = program("Event", 20_000).replace(
            "TYPE = getattr(engine, 'Event')", "TYPE = engine.Event\nKEEP = []"
        ).replace("ev = engine.Event(); ev.set(); ev.is_set(); del ev", SYNC["_Leaky"])
    finally:
        del SYNC["_Leaky"]
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert after["typerefs"] - before["typerefs"] == 20_000
    # sys.getallocatedblocks() is 0 without pymalloc (PYTHONMALLOC=malloc, as in CI's
    # sanitizer run): then only the reference count can show the leak.
    if before["blocks"]:
        assert after["blocks"] - before["blocks"] >= 20_000


FREE_LIST_PROGRAM = """
import gc, json, sys
import broomio, broomio.socket as bsocket

def blocks():
    gc.collect()
    return sys.getallocatedblocks()

a, b = bsocket.socketpair()
before = blocks()
held = [broomio.sleep(0) for _ in range(10_000)] + [a.recv(1) for _ in range(10_000)]
peak = blocks()
del held
after = blocks()
again = [broomio.sleep(0) for _ in range(20)] + [a.recv(1) for _ in range(20)]
reused = blocks()
print(json.dumps([before, peak, after, reused, repr(again[0]), repr(again[-1])]))
"""


def test_awaitable_free_lists_are_bounded_and_recycled() -> None:
    # Dead awaitables go to a free list (state.h) for the next await: it keeps a few dozen,
    # never all of them, and the next awaits take their memory from it.
    proc = run_python(FREE_LIST_PROGRAM, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, peak, after, reused, first, last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first == "<broomio checkpoint awaitable>"  # sleep(0) is a checkpoint
    assert last == "<broomio socket recv awaitable>"
    if not before:
        pytest.skip("sys.getallocatedblocks() is 0 without pymalloc (PYTHONMALLOC=malloc)")
    assert peak - before >= 20_000
    assert after - before < 200, (before, peak, after)
    # 40 new awaitables (plus the list holding them) came from the free lists.
    assert reused - after < 10, (after, reused)


if __name__ == "__main__":
    # The valgrind workload (docs/reliability.md): every recipe, a few hundred cycles, in
    # this one process, e.g.
    #   PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=99 \
    #       python tests/test_type_cycles.py 300
    import sys

    cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    WARMUP = max(1, cycles // 10)
    for type_name in exported_types():
        exec(compile(program(type_name, cycles), f"<{type_name}>", "exec"), {})
    print(f"{len(exported_types())} types x {cycles} cycles: done")
