"""The clock protocol: what ``Loop(clock=...)`` accepts."""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["Clock"]


class Clock(ABC):
    """The base class of custom clocks for ``Loop(clock=...)`` / ``broomio.run(clock=...)``.

    The loop calls ``start_clock()`` each time it starts running, ``current_time()``
    wherever it needs the time (sleeps, deadlines, cancel scopes, ``current_time()``,
    ``loop.time()``, firing timers), and ``deadline_to_sleep_time(deadline)`` to learn how
    many *real* seconds to block in the poller when the next timer is at ``deadline``.
    Subclassing is optional: any object with these three methods is accepted.
    """

    __slots__ = ()

    @abstractmethod
    def start_clock(self) -> None:
        """Called by the loop each time it starts running (before any task step)."""

    @abstractmethod
    def current_time(self) -> float:
        """The current time on this clock, in seconds (any origin, never decreasing)."""

    @abstractmethod
    def deadline_to_sleep_time(self, deadline: float) -> float:
        """How many real seconds to block for the clock to reach ``deadline``
        (0 or less: do not block)."""
