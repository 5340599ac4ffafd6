"""serve_tcp(workers=N): pre-forked worker processes sharing the port with SO_REUSEPORT.

The supervisor (the process that called ``serve_tcp``) binds the address with SO_REUSEPORT
without listening -- this reserves the port (and picks it when ``port=0``) -- then forks
N workers.  Each worker opens its *own* listening socket on that address with SO_REUSEPORT,
so the kernel spreads incoming connections over the workers' accept queues, and serves it
with ``serve_listeners`` on a fresh loop.

Each worker reports through a pipe once it is accepting; the supervisor starts them one by
one and calls ``task_status.started(listeners)`` when all are accepting (``listeners`` are
its reservation sockets: bound, not listening -- use them for ``getsockname()``).  A worker
that dies before it ever accepted makes ``serve_tcp`` raise.  Later, a worker that exits
(crash, kill, an error escaping a handler) is restarted, after a delay that grows while
workers keep dying young.  Workers ask for SIGTERM when the supervisor dies
(``PR_SET_PDEATHSIG``), so even a SIGKILLed supervisor leaves no orphans.  SIGTERM (the supervisor's handler) or SIGINT
(the loop's Ctrl-C handling) stops everything: each worker gets SIGTERM, which cancels its
loop (its handlers' ``finally:`` blocks run); a worker still alive after ``STOP_GRACE``
seconds is killed.  After SIGTERM ``serve_tcp`` returns; after SIGINT the loop raises
``KeyboardInterrupt`` as usual.

Forking from inside a running loop: the child is a copy of the supervisor at the moment of
the fork, in the middle of a task step of the supervisor's loop.  It never returns to that
loop: it freezes the inherited objects (``gc.freeze()``, so that no collection finalizes --
and closes, or unregisters from the *shared* epoll instance -- a copy of a supervisor
socket), resets signal handling, runs the worker loop in a new thread (the loop-per-thread
rule sees the supervisor's loop as running in the main thread) and leaves with
``os._exit``.  Workers inherit the process's open files, like any ``fork``: start the server
before opening unrelated connections.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket as _stdlib_socket
import sys
import threading
import time
import traceback
from typing import Any

from . import socket as bsocket
from ._core import run as _run
from ._core import move_on_after, open_nursery
from ._engine import CancelScope, current_loop, notify_closing, sleep, wait_readable
from ._streams import (
    Handler,
    SocketListener,
    _backlog,
    _check_port,
    _HasStarted,
    serve_listeners,
)

_log = logging.getLogger("broomio.serve")

STOP_GRACE = 5.0  # seconds a worker gets to finish after SIGTERM before SIGKILL
RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 5.0
YOUNG = 1.0  # a worker that dies younger than this makes the next restart wait longer


def _bind(targets: list[Any], port: int, *, listen_backlog: int | None) -> list[bsocket.socket]:
    """Sockets with SO_REUSEADDR + SO_REUSEPORT bound to every target (one shared port);
    listening if ``listen_backlog`` is not None."""
    socks: list[bsocket.socket] = []
    chosen = port
    try:
        for family, type_, proto, sockaddr in targets:
            sock = bsocket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
            if family == _stdlib_socket.AF_INET6:
                sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
            if chosen != port:
                sockaddr = (sockaddr[0], chosen, *sockaddr[2:])
            sock.bind(sockaddr)
            if listen_backlog is not None:
                sock.listen(listen_backlog)
            if chosen == 0:
                chosen = sock.getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class _Holder:
    """What the child's main thread needs to stop the worker loop from a signal handler."""

    def __init__(self) -> None:
        self.loop: Any = None
        self.scope: CancelScope | None = None
        self.stop_requested = False

    def request_stop(self, signum: int = 0, frame: Any = None) -> None:
        self.stop_requested = True
        if self.loop is not None and self.scope is not None:
            try:
                self.loop.call_soon_threadsafe(self.scope.cancel)
            except RuntimeError:
                pass  # the loop already finished


async def _worker_main(
    handler: Handler, targets: list[Any], backlog: int, holder: _Holder, ready_fd: int
) -> None:
    socks = _bind(targets, targets[0][3][1], listen_backlog=backlog)
    listeners = [SocketListener(sock) for sock in socks]
    os.write(ready_fd, b"1")  # tell the supervisor we are accepting
    os.close(ready_fd)
    with CancelScope() as scope:
        holder.loop = current_loop()
        holder.scope = scope
        if holder.stop_requested:
            scope.cancel()
        await serve_listeners(handler, listeners)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, ImportError):
        return
    if os.getppid() != parent:  # it died before prctl() took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child(
    handler: Handler,
    targets: list[Any],
    backlog: int,
    inherited: list[int],
    ready_fd: int,
    parent: int,
) -> None:
    """Runs in the forked worker; never returns."""
    code = 1
    try:
        gc.freeze()
        holder = _Holder()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, holder.request_stop)
        _die_with_parent(parent)  # the signal stays pending until unblocked below
        for fd in inherited:  # the supervisor's reservation sockets and ready pipes
            try:
                os.close(fd)
            except OSError:
                pass
        failure: list[BaseException] = []

        def thread_main() -> None:
            try:
                _run(_worker_main, handler, targets, backlog, holder, ready_fd)
            except BaseException as exc:  # reported below, decides the exit code
                failure.append(exc)

        # Started while SIGINT/SIGTERM are still blocked (since before the fork), the thread
        # keeps them blocked: they are delivered to this thread, which runs the handler.
        thread = threading.Thread(target=thread_main, name="broomio-worker-loop")
        thread.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        while thread.is_alive():
            thread.join(0.5)
        if failure:
            print(f"broomio worker {os.getpid()} failed:", file=sys.stderr)
            traceback.print_exception(failure[0])
        elif holder.stop_requested:
            code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _fork_worker(
    handler: Handler, targets: list[Any], backlog: int, inherited: list[int]
) -> tuple[int, int]:
    """Fork a worker; returns (pid, read end of its readiness pipe)."""
    ready_r, ready_w = os.pipe()
    blocked = {signal.SIGINT, signal.SIGTERM}
    parent = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(handler, targets, backlog, [*inherited, ready_r], ready_w, parent)
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_w)
    return pid, ready_r


class _Worker:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = time.monotonic()
        self.pidfd = os.pidfd_open(pid)  # readable once the process has exited
        self.status: int | None = None

    def poll(self) -> bool:
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid == 0:
                return False
            self.status = status
            notify_closing(self.pidfd)  # drop its epoll registration before closing it
            os.close(self.pidfd)
        return True

    async def wait(self) -> None:
        while not self.poll():
            await wait_readable(self.pidfd)

    def signal(self, sig: int) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """SIGTERM, wait up to STOP_GRACE, then SIGKILL; always reaps.  Shielded."""
        with CancelScope(shield=True):
            self.signal(signal.SIGTERM)
            with move_on_after(STOP_GRACE):
                await self.wait()
            if self.status is None:
                self.signal(signal.SIGKILL)
                await self.wait()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


async def _supervise_slot(
    slot: int,
    handler: Handler,
    targets: list[Any],
    backlog: int,
    inherited: list[int],
    task_status: _HasStarted,
) -> None:
    """Keep one worker alive.  task_status.started() once the first worker accepts; if it
    dies before that, raise (a server that cannot start should say so)."""
    delay = RESTART_DELAY_MIN
    started = False
    while True:
        pid, ready_fd = _fork_worker(handler, targets, backlog, inherited)
        worker = _Worker(pid)
        try:
            try:
                await wait_readable(ready_fd)
                ready = os.read(ready_fd, 1) == b"1"
            finally:
                notify_closing(ready_fd)
                os.close(ready_fd)
            if ready and not started:
                started = True
                task_status.started()
            await worker.wait()
        finally:
            await worker.stop()
        assert worker.status is not None
        if not started:
            raise RuntimeError(
                f"worker {slot} (pid {worker.pid}) {_describe(worker.status)} before it "
                "started accepting (see its error above)"
            )
        lived = time.monotonic() - worker.started
        _log.warning(
            "worker %d (pid %d) %s after %.1f s; restarting",
            slot, worker.pid, _describe(worker.status), lived,
        )
        delay = min(delay * 2, RESTART_DELAY_MAX) if lived < YOUNG else RESTART_DELAY_MIN
        await sleep(delay)


async def serve_tcp_workers(
    handler: Handler,
    port: int,
    *,
    host: str | bytes | None,
    backlog: int | None,
    workers: int,
    task_status: _HasStarted,
) -> None:
    if not hasattr(_stdlib_socket, "SO_REUSEPORT") or not hasattr(os, "pidfd_open"):
        raise NotImplementedError("serve_tcp(workers > 1) needs SO_REUSEPORT and pidfd_open (Linux)")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_tcp(workers > 1) must run in the main thread (signals, fork)")
    _check_port(port)
    listen_backlog = _backlog(backlog)
    infos = await bsocket.getaddrinfo(
        host or None, port, _stdlib_socket.AF_UNSPEC, _stdlib_socket.SOCK_STREAM, 0,
        _stdlib_socket.AI_PASSIVE,
    )
    targets: list[Any] = []
    for family, type_, proto, _, sockaddr in infos:
        if (family, type_, proto, sockaddr) not in targets:
            targets.append((family, type_, proto, sockaddr))
    for _attempt in range(20):
        try:
            reservations = _bind(targets, port, listen_backlog=None)
            break
        except OSError as exc:
            if port != 0 or exc.errno != errno.EADDRINUSE or len(targets) == 1:
                raise
    else:
        raise OSError(errno.EADDRINUSE, "could not find a free port for every address")
    chosen = reservations[0].getsockname()[1]
    targets = [(f, t, p, (a[0], chosen, *a[2:])) for f, t, p, a in targets]
    inherited = [sock.fileno() for sock in reservations]
    listeners = [SocketListener(sock) for sock in reservations]

    stop = CancelScope()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.cancel())
    try:
        with stop:
            async with open_nursery() as nursery:
                for slot in range(workers):
                    await nursery.start(_supervise_slot, slot, handler, targets,
                                        listen_backlog, inherited)
                task_status.started(listeners)  # every worker is accepting
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sock in reservations:
            sock.close()
