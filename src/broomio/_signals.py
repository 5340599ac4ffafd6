"""open_signal_receiver: receive signals as an async iterator.

While a loop runs in the main thread it points ``signal.set_wakeup_fd`` at a pipe in its
poller (loop.c), so a signal wakes it at once, and it runs Python's signal handlers every
iteration (``PyErr_CheckSignals``; CPython also runs them between bytecodes of a task).  A
receiver replaces the Python-level handlers of its signals for the duration of its ``with``
block.  Its handler only records the signal number (repeats of a signal not read yet
coalesce, as in trio) and asks the loop, through ``call_soon_threadsafe``, to wake the
receiving task: a handler can run in the middle of any Python code, even one the engine
called in the middle of an operation, so it must not touch task state itself; the inbox is
drained at a safe point of the loop iteration.  Leaving the block restores the previous
handlers and re-raises the signals that were received but not read, so they are handled as
if no receiver had been there (a SIGINT still becomes a KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ._engine import BusyResourceError, ParkingLot, checkpoint, current_loop

__all__ = ["SignalReceiver", "open_signal_receiver"]

_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


class SignalReceiver:
    """Async iterator of the signal numbers received (from ``open_signal_receiver``)."""

    def __init__(self) -> None:
        self._pending: dict[int, None] = {}  # ordered set: arrival order, repeats coalesce
        self._lot = ParkingLot()
        self._iterating = False
        self._wake_queued = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._pending[signum] = None

    def _wake(self) -> None:
        self._wake_queued = False
        self._lot.unpark_all()

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        if self._iterating:
            raise BusyResourceError("another task is already iterating on this signal receiver")
        self._iterating = True
        try:
            if self._pending:
                await checkpoint()
            while not self._pending:
                await self._lot.park()
            signum = next(iter(self._pending))
            del self._pending[signum]
            return signum
        finally:
            self._iterating = False

    def pending_signal_count(self) -> int:
        """How many distinct signals have been received and not read yet."""
        return len(self._pending)

    def _redeliver(self) -> None:
        """Raise the unread signals again, now that the old handlers are back.  Every one is
        raised even if an earlier one's handler raises (KeyboardInterrupt)."""
        pending = list(self._pending)
        self._pending.clear()
        error: BaseException | None = None
        for signum in pending:
            try:
                signal.raise_signal(signum)
            except BaseException as exc:  # delivered below; the rest are still raised
                if error is None:
                    error = exc
        if error is not None:
            raise error


def _check_signals(signals: tuple[Any, ...]) -> list[int]:
    if not signals:
        raise TypeError("open_signal_receiver() needs at least one signal")
    valid = signal.valid_signals()
    out = []
    for sig in signals:
        if isinstance(sig, bool) or not isinstance(sig, int):
            raise TypeError(f"signals must be ints (signal.SIGxxx), not {type(sig).__name__}")
        if sig not in valid:
            raise ValueError(f"{sig} is not a valid signal number")
        if sig in _UNCATCHABLE:
            raise ValueError(f"{signal.Signals(sig).name} cannot be caught")
        out.append(int(sig))
    return out


@contextmanager
def open_signal_receiver(*signals: int) -> Iterator[SignalReceiver]:
    """``with open_signal_receiver(SIGUSR1, ...) as receiver: async for signum in receiver``.

    Main thread only, inside a running broomio loop.  While the block runs, these signals
    go to the receiver instead of their Python handlers (so a received SIGINT does not raise
    KeyboardInterrupt); the handlers are restored on exit, and signals received but not read
    are then re-raised.
    """
    numbers = _check_signals(signals)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("open_signal_receiver() only works in the main thread")
    loop = current_loop()  # RuntimeError outside a loop
    receiver = SignalReceiver()

    def handler(signum: int, frame: FrameType | None) -> None:
        receiver._handler(signum, frame)
        if receiver._wake_queued:
            return  # one wake-up in the inbox is enough for a burst of signals
        try:
            loop.call_soon_threadsafe(receiver._wake)
        except RuntimeError:
            return  # the loop is closed: nobody can be waiting
        receiver._wake_queued = True

    old: dict[int, Any] = {}
    try:
        for signum in numbers:
            if signum not in old:
                old[signum] = signal.signal(signum, handler)
        yield receiver
    finally:
        for signum, previous in old.items():
            # None: the previous handler was not installed from Python; SIG_DFL is the
            # closest we can restore.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        receiver._redeliver()
