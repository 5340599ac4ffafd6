"""broomio.asyncio: a drop-in asyncio event loop running on broomio's C engine.

    import asyncio
    import broomio.asyncio

    broomio.asyncio.run(main())
    # or
    with asyncio.Runner(loop_factory=broomio.asyncio.new_event_loop) as runner:
        runner.run(main())

The loop is an ``asyncio.AbstractEventLoop`` (it subclasses asyncio's Unix selector loop,
so every high-level feature behaves exactly as asyncio's); the hot core -- handles, the
ready queue, the timer heap, I/O readiness and the loop iteration -- is in C
(``broomio._engine.AioCore``).  See docs/asyncio.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loop import EventLoop

__all__ = ["EventLoop", "new_event_loop", "run", "EventLoopPolicy"]

_T = TypeVar("_T")


def new_event_loop() -> EventLoop:
    """A new broomio event loop (not set as the current loop)."""
    return EventLoop()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Like ``asyncio.run(main)``, on a new broomio event loop."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose new loops are broomio loops."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return EventLoop()
