"""Condition: a condition variable built on the C ``Lock`` and a lowlevel ``ParkingLot``.

Event, Lock, Semaphore, CapacityLimiter and Queue are C types (``_engine/syncprims.c``);
Condition is rarely on a hot path, so it is Python, following trio's design:

* ``wait()`` releases the lock and parks the task in the condition's own lot.
* ``notify(n)`` moves up to ``n`` waiters from that lot to the end of the lock's queue
  (``Lock._adopt``, trio's ``repark``).  They are woken by the lock's own hand-off, each
  one owning the lock when it runs, so a notified waiter can never be overtaken by a task
  that calls ``acquire()`` later.
* A waiter cancelled while it waits (in either queue) re-acquires the lock, shielded from
  the cancellation, before ``Cancelled`` leaves ``wait()``: whoever calls ``wait()`` holds
  the lock again afterwards, however it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from ._engine import CancelScope, Lock, ParkingLot

__all__ = ["Condition"]

T = TypeVar("T")


class Condition:
    """A condition variable: tasks wait for a notification while holding ``lock``.

    ``Condition(lock=None)`` uses a new :class:`Lock` unless one is given.
    """

    __slots__ = ("_lock", "_lot")

    def __init__(self, lock: Lock | None = None) -> None:
        if lock is None:
            lock = Lock()
        elif not isinstance(lock, Lock):
            raise TypeError(f"Condition() lock must be a broomio.Lock, not {type(lock).__name__}")
        self._lock = lock
        self._lot = ParkingLot()

    @property
    def lock(self) -> Lock:
        """The underlying lock."""
        return self._lock

    def locked(self) -> bool:
        """True if some task holds the underlying lock."""
        return self._lock.locked()

    async def acquire(self) -> None:
        """Acquire the underlying lock."""
        await self._lock.acquire()

    def acquire_nowait(self) -> None:
        """Acquire the underlying lock, or raise :class:`WouldBlock`."""
        self._lock.acquire_nowait()

    def release(self) -> None:
        """Release the underlying lock."""
        self._lock.release()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()

    async def wait(self) -> None:
        """Release the lock, wait for notify(), and return holding the lock again.

        Raises ``RuntimeError`` unless the current task holds the lock.  If the wait is
        cancelled, the lock is re-acquired (shielded) before ``Cancelled`` propagates.
        """
        lock = self._lock
        if not lock._held():
            raise RuntimeError("Condition.wait() requires the current task to hold the lock")
        lock.release()
        try:
            # Returns only once notify() moved us into the lock's queue and the lock was
            # handed to us.
            await self._lot.park()
        except BaseException:
            with CancelScope(shield=True):
                await lock.acquire()
            raise

    async def wait_for(self, predicate: Callable[[], T]) -> T:
        """``wait()`` until ``predicate()`` is true; return its value.  Holds the lock."""
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiting tasks (oldest first); each gets the lock in turn once the
        current holder releases it.  Raises ``RuntimeError`` unless the current task holds
        the lock."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"notify() argument 'n' must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"notify() argument 'n' must be non-negative, got {n}")
        if not self._lock._held():
            raise RuntimeError("Condition.notify() requires the current task to hold the lock")
        self._lock._adopt(self._lot, n)

    def notify_all(self) -> None:
        """Wake every waiting task (see :meth:`notify`)."""
        if not self._lock._held():
            raise RuntimeError(
                "Condition.notify_all() requires the current task to hold the lock"
            )
        self._lock._adopt(self._lot, len(self._lot))

    def __repr__(self) -> str:
        return f"<broomio.Condition lock={self._lock!r} waiters={len(self._lot)}>"
