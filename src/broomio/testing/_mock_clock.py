"""MockClock: a clock for tests that stands still, runs at any rate, jumps on demand, and
can jump by itself to the next deadline once every task is blocked (autojump)."""

from __future__ import annotations

import math
import time

from .. import _engine
from .._clock import Clock

__all__ = ["MockClock"]

# deadline_to_sleep_time() for a clock that stands still: the deadline is only reached by
# jumping, so the loop blocks until something else happens (the loop caps it at a day).
_FOREVER = 1e9


def _real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a real number, not {type(value).__name__}")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{what} must not be NaN")
    if result < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return result


class MockClock(Clock):
    """A user-controlled clock for tests (``Loop(clock=MockClock())``).

    * ``rate``: clock seconds per real second; 0 (the default) means time stands still
      except through :meth:`jump` and autojumps.
    * ``autojump_threshold``: once every task has been blocked for this many *real* seconds,
      the clock jumps to the next deadline (0: as soon as all tasks are blocked; the default
      ``inf``: never).  Tasks waiting in :func:`wait_all_tasks_blocked` take priority: while
      one waits, the clock does not autojump.

    The clock starts at 0.0.  Both attributes can be changed at any time, also while a loop
    runs on the clock.
    """

    def __init__(self, rate: float = 0.0, autojump_threshold: float = math.inf) -> None:
        self._real_clock = time.monotonic
        self._real_base = self._real_clock()
        self._virtual_base = 0.0
        self._rate = 0.0
        self._autojump_threshold = math.inf
        self.rate = rate
        self.autojump_threshold = autojump_threshold

    def __repr__(self) -> str:
        return (
            f"<MockClock time={self.current_time():.7f} rate={self._rate} "
            f"autojump_threshold={self._autojump_threshold}>"
        )

    @property
    def rate(self) -> float:
        """Clock seconds per real second (>= 0, finite)."""
        return self._rate

    @rate.setter
    def rate(self, new_rate: float) -> None:
        value = _real(new_rate, "MockClock rate")
        if math.isinf(value):
            raise ValueError("MockClock rate must be finite")
        # Rebase, so that the time so far is kept and only its future speed changes.
        real = self._real_clock()
        self._virtual_base = self._real_to_virtual(real)
        self._real_base = real
        self._rate = value

    @property
    def autojump_threshold(self) -> float:
        """Real seconds of all tasks blocked before the clock jumps (inf: never)."""
        return self._autojump_threshold

    @autojump_threshold.setter
    def autojump_threshold(self, new_threshold: float) -> None:
        self._autojump_threshold = _real(new_threshold, "MockClock autojump_threshold")
        self._sync_running_loop()

    def _sync_running_loop(self) -> None:
        # The loop keeps its own copy of the threshold (it checks it whenever it is about
        # to block); refresh it if this clock drives the loop running in this thread.
        try:
            loop = _engine.current_loop()
        except RuntimeError:
            return
        if loop.clock is self:
            loop._autojump_threshold = self._autojump_threshold

    def _real_to_virtual(self, real: float) -> float:
        return self._virtual_base + self._rate * (real - self._real_base)

    def start_clock(self) -> None:
        self._sync_running_loop()

    def current_time(self) -> float:
        return self._real_to_virtual(self._real_clock())

    def deadline_to_sleep_time(self, deadline: float) -> float:
        virtual = deadline - self.current_time()
        if virtual <= 0:
            return 0.0
        if self._rate > 0:
            return virtual / self._rate
        return _FOREVER

    def jump(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0, finite).  Deadlines that it passes
        fire on the loop's next iteration."""
        value = _real(seconds, "MockClock.jump() seconds")
        if math.isinf(value):
            raise ValueError("MockClock.jump() seconds must be finite")
        self._virtual_base += value
