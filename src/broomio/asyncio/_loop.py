"""The broomio asyncio event loop class."""

from __future__ import annotations

import asyncio
import asyncio.unix_events

__all__ = ["EventLoop"]


class EventLoop(asyncio.unix_events._UnixSelectorEventLoop):  # type: ignore[name-defined,misc]
    """An asyncio event loop on broomio's engine."""
