"""CPU-bound calls in worker processes: ``run_in_process``.

The pool
--------
Each loop has its own pool (created on first use, shut down by ``Loop.close()``) of at most
``os.sched_getaffinity`` worker processes.  A worker is a ``multiprocessing`` process of the
*spawn* context -- a fresh interpreter, never a ``fork()`` of this possibly threaded process
-- running :func:`_worker_main`, connected to the loop by one end of a Unix socketpair.  The
parent's end is a broomio socket, so sending a call and waiting for its answer are ordinary
socket operations of the loop: nothing blocks the loop.  Only ``Process.start()`` (which
writes the spawn preparation data to the child) runs in a worker thread.

Workers are started lazily, when a call finds no idle worker and the pool is not full; a
``Semaphore`` of the pool's size queues the calls beyond that (FIFO).  Idle workers are
reused; one found dead is dropped and replaced by a fresh one.

The wire format
---------------
One message each way per call: an 8-byte big-endian length, then a pickle.  Parent to child:
``(fn, args)``.  Child to parent: ``(True, result)`` or ``(False, exception, traceback
text)``.  The pickle of the call is made in the caller before anything is sent, so an
unpicklable function or argument is a ``TypeError`` in the caller and costs no worker.  The
child pickles its exception if it can, else a ``RuntimeError`` describing it; the parent
re-raises it with the child's formatted traceback attached as ``__cause__``
(:class:`RemoteTraceback`).

Cancellation and death
----------------------
A cancelled call (or any other exception while the call is in flight, e.g. Ctrl-C) kills its
worker with SIGKILL -- the only way to stop arbitrary Python code in another process -- and
reaps it inside a shielded scope by waiting for the process sentinel to become readable; the
pool starts a new worker for a later call.  A worker that dies by itself closes its end of
the socketpair, so the waiting call sees EOF (or a send error) and raises
:class:`BrokenWorkerError` naming the exit status; that worker is reaped and dropped too.
Workers ignore SIGINT: a Ctrl-C at the terminal reaches the whole process group, and the
parent decides what happens to the calls.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket as _stdlib_socket
import struct
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from . import socket as bsocket
from ._engine import (
    CancelScope,
    LoopCore,
    Semaphore,
    current_loop,
    notify_closing,
    wait_readable,
)
from ._threads import run_in_thread

T = TypeVar("T")

_HEADER = struct.Struct("!Q")
_READY = b"R"  # a new worker's first byte: it has started and imported what it needs


class BrokenWorkerError(RuntimeError):
    """The worker process running a ``run_in_process`` call died before answering."""

    __module__ = "broomio"  # like the engine's exceptions: shown as broomio.BrokenWorkerError


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in a worker process; set as
    the ``__cause__`` of that exception when it is re-raised in the caller."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------------------------
# The child side (runs in the worker process, plain blocking code)


def _read_exact(sock: _stdlib_socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _worker_main(sock: _stdlib_socket.socket) -> None:
    """The worker process's loop: receive a call, run it, send the outcome; exit at EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.setblocking(True)
    with sock:
        sock.sendall(_READY)
        while True:
            header = _read_exact(sock, _HEADER.size)
            if header is None:
                return
            data = _read_exact(sock, _HEADER.unpack(header)[0])
            if data is None:
                return
            try:
                fn, args = pickle.loads(data)
                del data
                result = fn(*args)
                del fn, args
                try:
                    payload = pickle.dumps((True, result), pickle.HIGHEST_PROTOCOL)
                except Exception as exc:
                    # The wording of pickle's own error varies between Python versions.
                    raise TypeError(
                        f"the result ({type(result).__name__}) could not be pickled: {exc}"
                    ) from None
                del result
            except BaseException as exc:  # sent to the caller, like a return value
                text = "".join(traceback.format_exception(exc))
                try:
                    payload = pickle.dumps((False, exc, text), pickle.HIGHEST_PROTOCOL)
                    pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
                except BaseException as pickling_error:
                    substitute = RuntimeError(
                        f"{type(exc).__name__}: {exc} (raised in a worker process; it "
                        f"could not be pickled: {pickling_error!r})"
                    )
                    payload = pickle.dumps((False, substitute, text), pickle.HIGHEST_PROTOCOL)
                del exc
            sock.sendall(_HEADER.pack(len(payload)) + payload)
            del payload


# --------------------------------------------------------------------------------------------
# The parent side


def _describe(exitcode: int | None) -> str:
    if exitcode is None:
        return "is gone"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class _ProcessWorker:
    __slots__ = ("process", "sock", "pid", "exitcode")

    def __init__(self, process: Any, sock: bsocket.socket) -> None:
        self.process = process
        self.sock = sock
        self.pid: int = process.pid
        self.exitcode: int | None = None  # known once reaped

    def alive(self) -> bool:
        return self.process.exitcode is None  # polls with WNOHANG

    async def receive(self) -> bytes | None:
        """One message; None at EOF (the worker died)."""
        header = await self._receive_exact(_HEADER.size)
        if header is None:
            return None
        return await self._receive_exact(_HEADER.unpack(header)[0])

    async def _receive_exact(self, n: int) -> bytes | None:
        chunks: list[bytes] = []
        left = n
        while left:
            chunk = await self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    async def kill(self) -> None:
        """SIGKILL (if still running), then reap; shielded, so it also finishes in a
        cancelled task."""
        if self.exitcode is not None:
            return  # already reaped (e.g. by Loop.close())
        self.sock.close()
        with CancelScope(shield=True):
            if self.process.exitcode is None:
                try:
                    self.process.kill()
                except OSError:
                    pass
                sentinel = self.process.sentinel
                try:
                    await wait_readable(sentinel)
                finally:
                    notify_closing(sentinel)
            self._reap()

    def kill_sync(self) -> None:
        """The same, blocking: for Loop.close() and for a coroutine being closed (which
        cannot await any more)."""
        if self.exitcode is not None:
            return
        self.sock.close()
        if self.process.exitcode is None:
            try:
                self.process.kill()
            except OSError:
                pass
        self._reap()

    def _reap(self) -> None:
        self.process.join()
        self.exitcode = self.process.exitcode
        self.process.close()

    async def discard(self, exc: BaseException | None = None) -> None:
        """Kill and reap after ``exc`` interrupted the call (None: it died by itself)."""
        if isinstance(exc, GeneratorExit):
            self.kill_sync()
        else:
            await self.kill()


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.slots = Semaphore(size)
        self.idle: list[_ProcessWorker] = []
        self.busy: set[_ProcessWorker] = set()
        self.closed = False

    async def _spawn(self) -> _ProcessWorker:
        ctx = multiprocessing.get_context("spawn")
        parent, child = _stdlib_socket.socketpair()
        try:
            process = ctx.Process(
                target=_worker_main, args=(child,), name="broomio-process-worker", daemon=True
            )
            try:
                await run_in_thread(process.start)
            finally:
                child.close()
        except BaseException:
            parent.close()
            raise
        worker = _ProcessWorker(process, bsocket.socket._wrap(parent))
        self.busy.add(worker)  # from now on Loop.close() kills it too
        try:
            try:
                ready = await worker.sock.recv(1)
            except OSError:
                ready = b""
        except BaseException as exc:
            self.busy.discard(worker)
            await worker.discard(exc)
            raise
        if ready != _READY:
            self.busy.discard(worker)
            await worker.kill()
            raise BrokenWorkerError(
                f"a worker process (pid {worker.pid}) {_describe(worker.exitcode)} while "
                "starting (see its error output above); with the spawn start method the "
                "worker imports the main module again, so the main script must start its "
                "loop under `if __name__ == '__main__':`"
            )
        return worker

    async def take(self) -> _ProcessWorker:
        while self.idle:
            worker = self.idle.pop()
            if worker.alive():
                return worker
            await worker.kill()  # died while idle: reap it, use another one
        return await self._spawn()

    def shutdown(self) -> None:
        self.closed = True
        workers, self.idle = [*self.idle, *self.busy], []
        self.busy.clear()
        for worker in workers:
            worker.kill_sync()


def _pool_for(loop: LoopCore) -> _Pool:
    pool: _Pool | None = getattr(loop, "_broomio_processes", None)
    if pool is None:
        pool = _Pool(default_process_count())
        loop._broomio_processes = pool  # type: ignore[attr-defined]
    return pool


def default_process_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def shutdown_pool(loop: LoopCore) -> None:
    """Called by ``Loop.close()``: kill and reap the loop's worker processes."""
    pool: _Pool | None = getattr(loop, "_broomio_processes", None)
    if pool is not None:
        loop._broomio_processes = None  # type: ignore[attr-defined]
        pool.shutdown()


async def run_in_process(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker process and return its result.

    ``fn``, ``args`` and the result travel by pickle.  Cancelling the call kills the worker
    running it; a worker that dies raises :class:`BrokenWorkerError` (the pool replaces it).
    """
    if not callable(fn):
        raise TypeError(f"run_in_process() argument 'fn' must be callable, not {type(fn).__name__}")
    try:
        payload = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"run_in_process() needs a picklable function and arguments (a module-level "
            f"function, not a lambda or a local function): {exc}"
        ) from exc
    pool = _pool_for(current_loop())
    async with pool.slots:
        worker = await pool.take()
        pool.busy.add(worker)  # (a new worker is in it already)
        try:
            try:
                await worker.sock.send_all(_HEADER.pack(len(payload)) + payload)
                del payload
                reply = await worker.receive()
            except OSError:  # EPIPE / ECONNRESET: the worker is gone
                reply = None
        except BaseException as exc:
            pool.busy.discard(worker)
            await worker.discard(exc)
            raise
        pool.busy.discard(worker)
        if reply is None:
            await worker.kill()
            raise BrokenWorkerError(
                f"the worker process (pid {worker.pid}) running {fn!r} "
                f"{_describe(worker.exitcode)} "
                "before it answered"
            )
        if pool.closed:
            worker.kill_sync()
        else:
            pool.idle.append(worker)
    try:
        outcome = pickle.loads(reply)
    except Exception as exc:
        raise RuntimeError(f"the result of {fn!r} could not be unpickled: {exc!r}") from exc
    if outcome[0]:
        result: T = outcome[1]
        return result
    error: BaseException = outcome[1]
    error.__cause__ = RemoteTraceback(outcome[2])
    try:
        raise error
    finally:
        del error, outcome

