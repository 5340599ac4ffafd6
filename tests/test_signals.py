"""Ctrl-C: a real SIGINT sent to a child process running a broomio loop."""

import signal

import pytest

from conftest import run_python

SLEEP_PRELUDE = """
import os, signal, socket, sys
import broomio
from broomio import open_nursery, sleep, sleep_forever, CancelScope, Cancelled
from broomio.lowlevel import ParkingLot, wait_readable

PAIR = socket.socketpair()  # both ends stay open: never readable
LOT = ParkingLot()
"""

BLOCKERS = {
    "sleep": "await sleep(30)",
    "sleep_forever": "await sleep_forever()",
    "park": "await LOT.park()",
    "wait_readable": "await wait_readable(PAIR[0])",
}


@pytest.mark.parametrize("blocker", list(BLOCKERS))
def test_sigint_runs_cleanup_and_raises_keyboardinterrupt(python_child, blocker):
    child = python_child(SLEEP_PRELUDE + f"""
async def main():
    try:
        print("ready", flush=True)
        {BLOCKERS[blocker]}
        print("not interrupted", flush=True)
    except Cancelled:
        print("saw Cancelled", flush=True)
        raise
    finally:
        print("cleanup", flush=True)

try:
    broomio.run(main)
except KeyboardInterrupt:
    print("KI", flush=True)
    raise
""")
    child.wait_for_line("ready", settle=0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=15)
    lines = out.splitlines()
    assert lines == ["ready", "saw Cancelled", "cleanup", "KI"], (out, err)
    assert child.proc.returncode != 0
    assert "KeyboardInterrupt" in err


def test_sigint_cancels_every_task(python_child):
    child = python_child(SLEEP_PRELUDE + """
async def worker(i, task_status):
    try:
        task_status.started()
        await sleep_forever()
    finally:
        print(f"cleanup {i}", flush=True)

async def main():
    try:
        async with open_nursery() as n:
            for i in range(3):
                await n.start(worker, i)
            print("ready", flush=True)
            await sleep(30)
    finally:
        print("main cleanup", flush=True)

loop = broomio.Loop()
async def other_root():
    try:
        await sleep(30)
    finally:
        print("root cleanup", flush=True)
loop.start_soon(other_root)
try:
    loop.run_until_complete(main)
except KeyboardInterrupt:
    print("KI", flush=True)
    sys.exit(3)
""")
    child.wait_for_line("ready", settle=0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=15)
    lines = out.splitlines()
    assert lines[0] == "ready", (out, err)
    assert sorted(lines[1:-1]) == ["cleanup 0", "cleanup 1", "cleanup 2", "main cleanup",
                                   "root cleanup"], (out, err)
    assert lines[-1] == "KI", (out, err)
    assert child.proc.returncode == 3


def test_sigint_cleanup_can_await_in_shield(python_child):
    child = python_child(SLEEP_PRELUDE + """
async def main():
    try:
        print("ready", flush=True)
        await sleep(30)
    finally:
        with CancelScope(shield=True):
            await sleep(0.2)
        print("async cleanup done", flush=True)

try:
    broomio.run(main)
except KeyboardInterrupt:
    print("KI", flush=True)
""")
    child.wait_for_line("ready", settle=0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=15)
    assert out.splitlines() == ["ready", "async cleanup done", "KI"], (out, err)
    assert child.proc.returncode == 0


def test_second_sigint_during_cleanup_stops_at_once(python_child):
    child = python_child(SLEEP_PRELUDE + """
async def main():
    try:
        print("ready", flush=True)
        await sleep(30)
    finally:
        print("cleaning", flush=True)
        with CancelScope(shield=True):
            await sleep(30)
        print("cleanup finished", flush=True)

try:
    broomio.run(main)
except KeyboardInterrupt:
    print("KI", flush=True)
    raise
""")
    child.wait_for_line("ready", settle=0.2)
    child.send_signal(signal.SIGINT)
    child.wait_for_line("cleaning", settle=0.2)
    child.send_signal(signal.SIGINT)
    # Must not wait for the 30 s shielded cleanup.
    out, err = child.finish(timeout=10)
    assert "cleanup finished" not in out
    assert out.splitlines()[-1] == "KI", (out, err)
    assert child.proc.returncode != 0
    assert "KeyboardInterrupt" in err


def test_sigint_handler_restored_after_run():
    proc = run_python(SLEEP_PRELUDE + """
import time
before = signal.getsignal(signal.SIGINT)

async def main():
    await sleep(0.01)

broomio.run(main)
print("same handler", signal.getsignal(signal.SIGINT) is before)
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)
    print("no KeyboardInterrupt")
except KeyboardInterrupt:
    print("KeyboardInterrupt outside loop")
""", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["same handler True", "KeyboardInterrupt outside loop"]


def test_custom_sigint_handler_not_clobbered():
    proc = run_python(SLEEP_PRELUDE + """
import time
hits = []
signal.signal(signal.SIGINT, lambda *a: hits.append(1))

async def main():
    await sleep(0.01)

broomio.run(main)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.1)
print("hits", len(hits))
""", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["hits 1"]


def test_loop_in_thread_does_not_break_sigint_in_main_thread():
    proc = run_python(SLEEP_PRELUDE + """
import threading, time

def in_thread():
    async def main():
        await sleep(0.05)
        return "thread-loop-ok"
    print(broomio.run(main), flush=True)

th = threading.Thread(target=in_thread)
th.start()
th.join()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)
    print("no KeyboardInterrupt")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
""", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["thread-loop-ok", "KeyboardInterrupt"]
