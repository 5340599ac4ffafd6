"""Running, nurseries and timeouts: the once-per-call policy around the C engine.

The hot paths (spawning, stepping, sleeping, cancelling, counting children) are in
``broomio._engine``; this module decides how errors are grouped and reported, which is
policy that runs once per nursery or per ``run()``.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Generic, Iterator, TypeVar

from . import _engine
from . import _debug, _instruments, _processes, _threads
from ._clock import Clock
from ._instruments import Instrument
from ._engine import (
    Cancelled,
    CancelScope,
    Task,
    current_time,
    sleep,
)

T = TypeVar("T")

__all__ = [
    "Loop",
    "run",
    "Nursery",
    "open_nursery",
    "TaskStatus",
    "move_on_after",
    "move_on_at",
    "fail_after",
    "fail_at",
]


def _group(errors: list[BaseException], message: str) -> BaseException:
    """One exception for a list of task errors, with KeyboardInterrupt/SystemExit first."""
    for exc in errors:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
    return BaseExceptionGroup(message, errors)


class Loop(_engine.LoopCore):
    """An explicit event loop.  There is no default loop: create one and run it."""

    def __init__(
        self,
        *,
        debug: bool | None = None,
        clock: Clock | None = None,
        backend: str | None = None,
        instruments: Iterable[Instrument] = (),
    ) -> None:
        # First, so that a loop whose arguments are rejected below still closes cleanly.
        self._instruments: list[Instrument] = []
        self._debug_monitor: _debug.DebugMonitor | None = None
        if backend not in (None, "epoll"):
            raise ValueError(f"unknown backend {backend!r}; available: 'epoll'")
        if clock is not None:
            self._set_clock(clock)
        if debug is None:
            debug = _debug.env_debug()
        elif not isinstance(debug, bool):
            raise TypeError(f"debug must be a bool or None, not {type(debug).__name__}")
        self._instruments = [_instruments.check_instrument(inst) for inst in instruments]
        if debug:
            self._debug_monitor = _debug.DebugMonitor(self)
        self._rebuild_hooks()

    # ---- debug mode, instruments, introspection --------------------------------------

    @property
    def debug(self) -> bool:
        """Debug mode: slow-step warnings, creation tracebacks on task errors, warnings for
        never-awaited broomio awaitables and for sockets left open when the loop closes."""
        return self._debug_monitor is not None

    @debug.setter
    def debug(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"debug must be a bool, not {type(value).__name__}")
        if value == (self._debug_monitor is not None):
            return
        if value:
            self._debug_monitor = _debug.DebugMonitor(self)
        else:
            monitor, self._debug_monitor = self._debug_monitor, None
            if monitor is not None:
                monitor.stop_watchdog()
        self._rebuild_hooks()

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        """The instruments installed on this loop, in the order they run."""
        return tuple(self._instruments)

    def add_instrument(self, instrument: Instrument) -> None:
        """Start calling ``instrument``'s hooks (a no-op if it is already installed)."""
        _instruments.check_instrument(instrument)
        if any(inst is instrument for inst in self._instruments):
            return
        self._instruments.append(instrument)
        self._rebuild_hooks()

    def remove_instrument(self, instrument: Instrument) -> None:
        """Stop calling ``instrument``'s hooks; KeyError if it is not installed."""
        for i, inst in enumerate(self._instruments):
            if inst is instrument:
                del self._instruments[i]
                self._rebuild_hooks()
                return
        raise KeyError(instrument)

    def _rebuild_hooks(self) -> None:
        monitor = self._debug_monitor
        active: list[Instrument] = [monitor] if monitor is not None else []
        self._set_hooks(monitor, _instruments.hook_table(active + self._instruments))

    def _instrument_failed(self, fn: Any, exc: BaseException) -> None:
        # Called by the engine when a hook raised: log it, and remove that instrument.
        _instruments.report_failure(fn, exc)
        owner = getattr(fn, "__self__", None)
        if any(inst is owner for inst in self._instruments):
            self.remove_instrument(owner)  # type: ignore[arg-type]

    def statistics(self) -> _debug.LoopStatistics:
        """A snapshot of the loop's state: tasks, ready queue, timers, fds, ..."""
        return _debug.loop_statistics(self)

    def _check_can_run(self) -> None:
        if self.closed:
            raise RuntimeError("this loop is closed")
        if self.running:
            raise RuntimeError("this loop is already running")
        try:
            _engine.current_loop()
        except RuntimeError:
            return
        raise RuntimeError("another broomio loop is already running in this thread")

    def _run_with_hooks(self) -> None:
        # An async generator abandoned mid-iteration is finalized by the garbage collector.
        # Without a hook CPython would close it synchronously inside whatever task happens
        # to be running, and an 'await' in its finally block would run in that task's name.
        # Like asyncio and trio, run each finalization as a task of its own instead.
        old = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=old.firstiter, finalizer=self._finalize_asyncgen)
        try:
            self._run()
        finally:
            sys.set_asyncgen_hooks(*old)

    def _finalize_asyncgen(self, agen: Any) -> None:
        async def aclose() -> None:
            try:
                await agen.aclose()
            except Exception as exc:  # reported, never lost, never crashes run()
                _engine._write_unraisable(exc, agen)

        try:
            if self.running and threading.current_thread() is self._thread:
                self.start_soon(aclose, name=f"finalize {getattr(agen, '__qualname__', agen)}")
            else:
                self.call_soon_threadsafe(self.start_soon, aclose)
        except RuntimeError:
            pass  # the loop is closed: nothing can run the generator's cleanup any more

    def run(self) -> None:
        """Run until every task has finished; a task's error cancels the others and is
        raised in an ExceptionGroup (KeyboardInterrupt/SystemExit as themselves)."""
        self._check_can_run()
        self._thread = threading.current_thread()
        self._run_with_hooks()
        errors = self._take_root_errors()
        if errors:
            raise _group(errors, "unhandled errors in broomio tasks")

    def run_until_complete(self, fn_or_coro: Any, *args: Any) -> Any:
        """Run fn_or_coro (and everything it starts) to completion; return its result."""
        self._check_can_run()
        main = self.start_soon(fn_or_coro, *args)
        self._thread = threading.current_thread()
        try:
            self._run_with_hooks()
        except BaseException:
            self._take_root_errors()
            raise
        errors = self._take_root_errors()
        if errors:
            if len(errors) == 1 and errors[0] is main.exception():
                raise errors[0]
            raise _group(errors, "unhandled errors in broomio tasks")
        return main.result()

    def close(self) -> None:
        """Release the loop's resources: unfinished tasks are closed (their finally blocks
        run), worker processes are killed, pending from_thread calls fail.  Idempotent."""
        if not self.running:
            _processes.shutdown_pool(self)  # while the loop can still forget their sockets
        super().close()
        _threads.loop_closed(self)
        monitor = self._debug_monitor
        if monitor is not None:
            monitor.loop_closed()

    def wrap_socket(self, sock: Any) -> Any:
        """The async socket (``broomio.socket.socket``) for a stdlib socket; the stdlib
        socket is switched to non-blocking mode and closed with it."""
        from .socket import wrap_socket

        return wrap_socket(sock)

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run(
    fn_or_coro: Any,
    *args: Any,
    debug: bool | None = None,
    clock: Clock | None = None,
    backend: str | None = None,
    instruments: Iterable[Instrument] = (),
) -> Any:
    """Create a loop, run fn_or_coro(*args) to completion on it, close it, return the result."""
    loop = Loop(debug=debug, clock=clock, backend=backend, instruments=instruments)
    try:
        return loop.run_until_complete(fn_or_coro, *args)
    finally:
        loop.close()


class TaskStatus(Generic[T]):
    """Passed as ``task_status=`` by :meth:`Nursery.start`; call ``started(value)`` once."""

    __slots__ = ("_lot", "_value", "_started", "_error", "_finished")

    def __init__(self) -> None:
        self._lot = _engine.ParkingLot()
        self._value: Any = None
        self._started = False
        self._error: BaseException | None = None
        self._finished = False

    def started(self, value: T | None = None) -> None:
        if self._started:
            raise RuntimeError("task_status.started() was already called")
        if self._finished:
            raise RuntimeError("task_status.started() called after start() gave up waiting")
        self._started = True
        self._value = value
        self._lot.unpark_all()


class Nursery(_engine.NurseryCore):
    """A scope that owns child tasks and waits for all of them when its block exits."""

    async def __aenter__(self) -> Nursery:
        self._open()
        return self

    async def __aexit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None and not isinstance(exc, Cancelled):
            self._record_error(exc)
        cancelled: Cancelled | None = None
        try:
            # Not abortable: a nursery always waits for its children.  It raises Cancelled
            # only after they are all done, if this task is cancelled (exit is a checkpoint).
            await self._wait_children()
        except Cancelled as exc_cancelled:
            cancelled = exc_cancelled
        errors = self._finish()
        scope = self.cancel_scope
        new: BaseException | None
        if errors:
            new = _group(errors, "errors in nursery")
        elif exc is not None:
            new = exc
        else:
            new = cancelled
        if new is None:
            scope.__exit__(None, None, None)
            return False
        if scope.__exit__(type(new), new, new.__traceback__):
            return True
        if new is exc:
            return False
        raise new

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> Any:
        """Start fn(*args, task_status=...) and wait until it calls task_status.started()."""
        if not callable(fn):
            raise TypeError(f"start() expects an async function, got {fn!r}")
        status: TaskStatus[Any] = TaskStatus()

        async def starter() -> Any:
            try:
                coro = fn(*args, task_status=status)
                if not isinstance(coro, Coroutine):
                    raise TypeError(f"{fn!r} did not return a coroutine (is it 'async def'?)")
                return await coro
            except BaseException as error:
                if not status._started:
                    status._error = error
                    return None
                raise
            finally:
                status._finished = True
                status._lot.unpark_all()

        task = self.start_soon(starter, name=name or getattr(fn, "__qualname__", None))
        try:
            while not status._started and not status._finished:
                await status._lot.park()
        except BaseException:
            if not status._started:
                task.cancel()
            raise
        if status._error is not None:
            error = status._error
            status._error = None
            raise error
        if not status._started:
            raise RuntimeError(f"{fn!r} returned without calling task_status.started()")
        return status._value


def open_nursery() -> Nursery:
    """``async with open_nursery() as n:`` -- a nursery for child tasks."""
    return Nursery()


def _check_seconds(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what}() seconds must be a real number, not {type(seconds).__name__}")
    if math.isnan(seconds):
        raise ValueError(f"{what}() seconds must not be NaN")
    if seconds < 0:
        raise ValueError(f"{what}() seconds must be non-negative, got {seconds!r}")
    return float(seconds)


def move_on_at(deadline: float) -> CancelScope:
    """A cancel scope that cancels its body at ``deadline`` (on the loop's clock)."""
    return CancelScope(deadline=deadline)


def move_on_after(seconds: float) -> CancelScope:
    """A cancel scope that cancels its body after ``seconds``."""
    return CancelScope(deadline=current_time() + _check_seconds(seconds, "move_on_after"))


@contextmanager
def fail_at(deadline: float) -> Iterator[CancelScope]:
    """Like move_on_at, but raise TimeoutError if the deadline cancelled the body."""
    with CancelScope(deadline=deadline) as scope:
        yield scope
    if scope.cancelled_caught:
        raise TimeoutError("deadline exceeded")


def fail_after(seconds: float) -> Any:
    """Like move_on_after, but raise TimeoutError if the deadline cancelled the body."""
    return fail_at(current_time() + _check_seconds(seconds, "fail_after"))
