"""serve_tcp(workers=N): forked workers sharing the port with SO_REUSEPORT, restarted when
they die, all stopped on SIGTERM / SIGINT.  Each scenario runs the server in a child
interpreter and talks to it over loopback."""

from __future__ import annotations

import os
import select
import signal
import socket
import time

import pytest

SERVER = """
import functools, os, sys
import broomio

async def handler(stream):
    line = await stream.read_line()
    if line == b"crash\\n":
        raise RuntimeError("asked to crash")
    if line == b"slow\\n":
        try:
            await broomio.sleep_forever()
        finally:
            print("CLEANUP", os.getpid(), flush=True)
    await stream.send_all(f"{os.getpid()}\\n".encode())

async def main():
    async with broomio.open_nursery() as n:
        listeners = await n.start(functools.partial(
            broomio.serve_tcp, handler, 0, host="127.0.0.1", workers=3))
        print("PORT", listeners[0].socket.getsockname()[1], flush=True)

broomio.run(main)
print("STOPPED", flush=True)
"""


def ask(port: int, message: bytes = b"pid\n") -> int | None:
    """One request; the answering worker's pid (None if the connection failed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(message)
            line = c.makefile("rb").readline()
    except OSError:
        return None
    return int(line) if line.strip() else None


def start(python_child):
    """Start the server child; return (child, port) once it printed its port."""
    child = python_child(SERVER)
    fd = child.proc.stdout.fileno()
    deadline = time.monotonic() + 15
    while b"\nPORT " not in b"\n" + child._out or not child._out.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"server never printed its port: {child._out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"server exited early: {child.finish(timeout=5)}"
            child._out += chunk
    line = [l for l in child._out.split(b"\n") if l.startswith(b"PORT ")][0]
    return child, int(line.split()[1])


def pid_gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int) -> bool:
    for _ in range(500):
        if pid_gone(pid):
            return True
        time.sleep(0.02)
    return False


def collect_pids(port: int, want: int = 3, attempts: int = 300) -> set[int]:
    """Connect until ``want`` different workers answered (or attempts run out)."""
    pids = set()
    for _ in range(attempts):
        pid = ask(port)
        if pid is not None:
            pids.add(pid)
        if len(pids) >= want:
            break
    return pids


def wait_for_new_pid(port: int, old: set[int]) -> int:
    for _ in range(400):
        pid = ask(port)
        if pid is not None and pid not in old:
            return pid
        time.sleep(0.02)
    raise AssertionError(f"no new worker answered (known: {old})")


@pytest.fixture
def server(python_child):
    return start(python_child)


@pytest.mark.slow
def test_workers_share_the_port_restart_and_stop_on_sigterm(server):
    child, port = server
    supervisor = child.proc.pid
    # started() came after every worker listened: all three answer (the kernel spreads
    # connections over their accept queues).
    pids = collect_pids(port)
    assert supervisor not in pids
    assert len(pids) == 3, pids

    # A worker killed outright is replaced.
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    replacement = wait_for_new_pid(port, pids)
    assert replacement != supervisor
    known = pids | {replacement}

    # A worker whose handler raises dies with its error and is replaced too.
    assert ask(port, b"crash\n") is None
    wait_for_new_pid(port, known)
    known |= collect_pids(port, attempts=20)

    child.send_signal(signal.SIGTERM)
    out, err = child.finish(timeout=30)
    assert child.proc.returncode == 0, err
    assert "STOPPED" in out  # serve_tcp returned after SIGTERM
    assert "asked to crash" in err and "restarting" in err
    for pid in known:
        assert wait_gone(pid), f"worker {pid} outlived the supervisor"


@pytest.mark.slow
def test_workers_stop_on_sigint_and_run_cleanup(server):
    child, port = server
    pids = collect_pids(port)
    assert len(pids) == 3, pids
    # A connection whose handler is blocked: its finally: block must run at shutdown.
    blocked = socket.create_connection(("127.0.0.1", port), timeout=5)
    blocked.sendall(b"slow\n")
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=30)
    blocked.close()
    assert child.proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert "STOPPED" not in out
    assert "CLEANUP" in out  # the worker's handler was cancelled, not killed
    for pid in pids:
        assert wait_gone(pid), f"worker {pid} outlived the supervisor"


@pytest.mark.slow
def test_workers_exit_when_the_supervisor_is_killed(server):
    child, port = server
    pids = collect_pids(port)
    assert len(pids) == 3, pids
    child.proc.kill()  # SIGKILL: the supervisor cannot clean up
    child.proc.wait(timeout=10)
    for pid in pids:
        assert wait_gone(pid), f"worker {pid} survived its supervisor"


FAILING_SERVER = """
import functools
import broomio, broomio._workers as workers

real_bind = workers._bind
def bind(targets, port, *, listen_backlog):
    if listen_backlog is not None:  # a worker's own socket: fail as a real bind might
        raise PermissionError(13, "simulated bind failure in the worker")
    return real_bind(targets, port, listen_backlog=listen_backlog)
workers._bind = bind

async def handler(stream):
    pass

async def main():
    async with broomio.open_nursery() as n:
        await n.start(functools.partial(broomio.serve_tcp, handler, 0, host="127.0.0.1",
                                        workers=2))

try:
    broomio.run(main)
except* RuntimeError as group:
    def leaves(e):
        return [x for g in e.exceptions for x in leaves(g)] if isinstance(e, BaseExceptionGroup) else [e]
    for exc in leaves(group):
        print("FAILED:", exc, flush=True)
"""


@pytest.mark.slow
def test_workers_that_cannot_start_make_serve_tcp_raise(python_child):
    child = python_child(FAILING_SERVER)
    out, err = child.finish(timeout=30)
    assert child.proc.returncode == 0, err
    assert "FAILED: worker 0" in out and "before it started accepting" in out
    assert "simulated bind failure in the worker" in err
