"""Shared helpers for the asyncio-compatibility suite (tests/test_asyncio_compat_*.py).

Every test in that suite runs twice: once on stock asyncio's event loop (the oracle) and once
on ``broomio.asyncio``'s.  The tests assert concrete outcomes that stock asyncio produces, so
passing on both loops means broomio behaves identically for that scenario.

* ``aio_loop`` -- the parametrized fixture: a fresh loop (``asyncio`` or ``broomio``), closed
  cleanly after the test (async generators and the default executor shut down first).
  The broomio case is skipped, with the import error as the reason, while
  ``broomio.asyncio`` cannot be imported.
* ``loop_factory`` -- the same parametrization, as a zero-argument factory (for
  ``asyncio.Runner(loop_factory=...)`` and tests that need several loops).
* ``broomio_xfail(reason)`` -- decorator: the broomio case is a strict xfail (a known
  difference listed in /work/notes/aio-failures.md); the asyncio case must still pass.
* ``run(loop, coro, timeout)`` -- ``loop.run_until_complete`` bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

LOOP_NAMES = ("asyncio", "broomio")

#: Bound for any single scenario (well under the suite's 30 s SIGALRM guard).
SCENARIO_TIMEOUT = 10.0


def broomio_asyncio() -> Any:
    """The ``broomio.asyncio`` module, or skip the test with the import error."""
    try:
        import broomio.asyncio as bro_aio
    except ImportError as exc:  # the aio branch has not landed yet
        pytest.skip(f"broomio.asyncio cannot be imported yet: {exc}")
    if not hasattr(bro_aio, "new_event_loop"):
        pytest.skip("broomio.asyncio has no new_event_loop() yet")
    return bro_aio


def factory_for(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop factory called ``name`` (skips the test if it is not available)."""
    if name == "asyncio":
        # Stock asyncio's own loop, whatever event loop policy is installed.
        return asyncio.SelectorEventLoop
    if name == "broomio":
        return broomio_asyncio().new_event_loop  # type: ignore[no-any-return]
    raise ValueError(name)


def run_on_both(main: Callable[[], Any]) -> Any:
    """Run ``main()`` on stock asyncio (the oracle) and on broomio.asyncio, each in a fresh
    ``asyncio.Runner``; the two results must be equal, and broomio's is returned."""
    out = []
    for name in LOOP_NAMES:
        with asyncio.Runner(loop_factory=factory_for(name)) as runner:
            out.append(runner.run(main()))
    assert out[0] == out[1], out
    return out[1]


def broomio_xfail(reason: str) -> Callable[[T], T]:
    """Mark a test as a known difference of broomio's loop (strict xfail, broomio only)."""

    def mark(fn: T) -> T:
        fn._broomio_xfail = reason  # type: ignore[attr-defined]
        return fn

    return mark


def _apply_xfail(request: pytest.FixtureRequest, name: str) -> None:
    reason = getattr(request.function, "_broomio_xfail", None)
    if name == "broomio" and reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Shut a loop down the way ``asyncio.run`` does, then close it."""
    if loop.is_closed():
        return
    if loop.is_running():  # a broken test left it running from another thread: give up
        return
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        # A few more iterations: server-side transports whose peer just closed see the EOF
        # and close themselves (Python 3.11's Server.wait_closed() does not wait for them).
        loop.run_until_complete(asyncio.sleep(0.005))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture(params=LOOP_NAMES)
def loop_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    factory_for(name)  # skip now if unavailable
    _apply_xfail(request, name)
    return name


@pytest.fixture
def loop_factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return factory_for(loop_name)


@pytest.fixture
def aio_loop(loop_factory: Callable[[], asyncio.AbstractEventLoop]
             ) -> Iterator[asyncio.AbstractEventLoop]:
    loop = loop_factory()
    try:
        yield loop
    finally:
        close_loop(loop)
        # Transports/sockets a failed test leaked warn in __del__: collect now, inside the test.
        gc.collect()


def run(loop: asyncio.AbstractEventLoop, aw: Awaitable[T],
        timeout: float = SCENARIO_TIMEOUT) -> T:
    """``loop.run_until_complete(aw)``, failing with TimeoutError after ``timeout`` s."""

    async def bounded() -> T:
        return await asyncio.wait_for(aw, timeout)

    return loop.run_until_complete(bounded())


@contextlib.contextmanager
def unix_path() -> Iterator[str]:
    """A fresh path for a Unix socket (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bro-aio-") as d:
        yield os.path.join(d, "sock")


def nonblocking_pair(family: int = socket.AF_UNIX,
                     type: int = socket.SOCK_STREAM) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(family, type)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def tcp_listener() -> socket.socket:
    """A non-blocking listening TCP socket on 127.0.0.1 and a free port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    return s


class Recorder(asyncio.Protocol):
    """A Protocol that records every callback; ``done`` resolves on connection_lost."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[Any] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.made = loop.create_future()
        self.done = loop.create_future()
        self.eof = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        self.eof.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.done.done():
            self.done.set_result(exc)
