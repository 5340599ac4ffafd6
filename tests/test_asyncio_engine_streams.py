"""The socket transport's C path into asyncio's StreamReader, against asyncio's own code.

When the protocol is exactly asyncio.StreamReaderProtocol and its reader exactly
asyncio.StreamReader (nothing overridden), broomio.asyncio's transport appends received data
to the reader's buffer and wakes it in C instead of running data_received/feed_data.  Each
scenario runs on stock asyncio (the oracle) and on broomio.asyncio and must agree.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable
from typing import Any

import pytest

import broomio.asyncio as bra

from _aio_support import run_on_both as both


async def stream_pair(
    reader: asyncio.StreamReader | None = None,
    proto_cls: type[asyncio.StreamReaderProtocol] = asyncio.StreamReaderProtocol,
) -> tuple[asyncio.StreamReader, asyncio.Transport, asyncio.StreamReaderProtocol, socket.socket]:
    """A StreamReaderProtocol on one end of a socketpair; the other end is returned raw."""
    loop = asyncio.get_running_loop()
    if reader is None:
        reader = asyncio.StreamReader()
    a, b = socket.socketpair()
    tr, pr = await loop.connect_accepted_socket(lambda: proto_cls(reader), a)
    await asyncio.sleep(0)
    b.setblocking(False)
    return reader, tr, pr, b  # type: ignore[return-value]


async def settle(cond: Callable[[], bool]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


def test_stream_path_is_taken_for_asyncio_classes_only() -> None:
    class Sub(asyncio.StreamReaderProtocol):
        pass

    async def main() -> list[bool]:
        _, tr, _, b = await stream_pair()
        _, tr2, _, b2 = await stream_pair(proto_cls=Sub)
        res = [tr._broomio_stream, tr2._broomio_stream]  # type: ignore[attr-defined]
        tr.close()
        tr2.close()
        b.close()
        b2.close()
        return res

    with asyncio.Runner(loop_factory=bra.new_event_loop) as r:
        assert r.run(main()) == [True, False]


def test_read_wakeups_and_order() -> None:
    """Chunks of every size arrive complete, in order, and wake a waiting read()."""

    async def main() -> list[Any]:
        reader, tr, _, b = await stream_pair()
        loop = asyncio.get_running_loop()
        got = bytearray()
        sent = bytearray()
        for i, n in enumerate([1, 100, 5000, 16_384, 70_000, 3, 300_000]):
            chunk = bytes((i + j) & 0xFF for j in range(n))
            sent += chunk
            waiter = asyncio.ensure_future(reader.readexactly(n))
            await asyncio.sleep(0)
            await loop.sock_sendall(b, chunk)
            got += await asyncio.wait_for(waiter, 5)
        b.shutdown(socket.SHUT_WR)
        tail = await asyncio.wait_for(reader.read(), 5)
        tr.close()
        b.close()
        return [got == sent, tail, reader.at_eof()]

    assert both(main) == [True, b"", True]


@pytest.mark.parametrize("limit", [100, 10.5])
def test_flow_control_pauses_and_resumes_reading(limit: float) -> None:
    """More than 2 * limit buffered pauses the transport (int and float limits)."""

    async def main() -> list[Any]:
        reader, tr, _, b = await stream_pair(asyncio.StreamReader(limit=limit))  # type: ignore[arg-type]
        log: list[Any] = []
        b.send(b"x" * 10)
        await settle(lambda: len(reader._buffer) >= 10)  # type: ignore[attr-defined]
        log.append((tr.is_reading(), reader._paused))  # type: ignore[attr-defined]
        b.send(b"y" * 400)
        await settle(lambda: len(reader._buffer) >= 410)  # type: ignore[attr-defined]
        log.append((tr.is_reading(), reader._paused))  # type: ignore[attr-defined]
        b.send(b"z" * 50)
        await asyncio.sleep(0.02)
        log.append(len(reader._buffer))  # type: ignore[attr-defined]  # paused: not read
        data = await reader.read(1000)
        log.append(len(data))
        log.append((tr.is_reading(), reader._paused))  # type: ignore[attr-defined]
        await settle(lambda: len(reader._buffer) >= 50)  # type: ignore[attr-defined]
        log.append(await reader.read(1000))
        tr.close()
        b.close()
        return log

    assert both(main) == [(True, False), (False, True), 410, 410, (True, False), b"z" * 50]


def test_cancelled_read_keeps_the_data() -> None:
    async def main() -> list[Any]:
        reader, tr, _, b = await stream_pair()
        t = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0)
        t.cancel()
        b.send(b"kept")
        await asyncio.sleep(0.02)
        res = [t.cancelled(), await reader.read(100)]
        tr.close()
        b.close()
        return res

    assert both(main) == [True, b"kept"]


def test_instance_and_subclass_overrides_are_honoured() -> None:
    """A patched data_received / feed_data, or a StreamReader subclass, sees the data."""

    class Reader(asyncio.StreamReader):
        def feed_data(self, data: bytes) -> None:
            super().feed_data(data.upper())

    async def main() -> list[Any]:
        log: list[Any] = []
        r1, tr1, pr1, b1 = await stream_pair()
        pr1.data_received = lambda data: log.append(("proto", data))  # type: ignore[method-assign]
        r2, tr2, _, b2 = await stream_pair()
        orig = r2.feed_data
        r2.feed_data = lambda data: (log.append(("reader", data)), orig(data))  # type: ignore[method-assign]
        r3, tr3, _, b3 = await stream_pair(Reader())
        for b in (b1, b2, b3):
            b.send(b"abc")
        await asyncio.sleep(0.02)
        log += [bytes(r1._buffer), await r2.read(10), await r3.read(10)]  # type: ignore[attr-defined]
        for tr, b in ((tr1, b1), (tr2, b2), (tr3, b3)):
            tr.close()
            b.close()
        return log

    assert both(main) == [("proto", b"abc"), ("reader", b"abc"), b"", b"abc", b"ABC"]


def test_exported_buffer_is_a_fatal_error_like_asyncio() -> None:
    """A memoryview held on the reader's buffer makes extend() fail: asyncio's path runs."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))
        reader, tr, _, b = await stream_pair()
        b.send(b"first")
        await settle(lambda: len(reader._buffer) == 5)  # type: ignore[attr-defined]
        view = memoryview(reader._buffer)  # type: ignore[attr-defined]
        b.send(b"second")
        await asyncio.sleep(0.02)
        view.release()
        log.append(type(reader.exception()).__name__)
        log.append(tr.is_closing())
        b.close()
        return log

    assert both(main) == ["Fatal error: protocol.data_received() call failed.", "BufferError", True]


def test_dead_reader_drops_data_quietly() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))
        reader, tr, pr, b = await stream_pair()
        del reader
        gc.collect()
        b.send(b"nobody listens")
        await asyncio.sleep(0.02)
        log.append(tr.is_closing())
        tr.close()
        b.close()
        return log

    assert both(main) == [False]


def test_waiter_done_elsewhere_is_a_fatal_error_like_asyncio() -> None:
    """A waiter already resolved by someone else: set_result() raises InvalidStateError
    inside feed_data, which asyncio reports as a failed data_received()."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))
        reader, tr, _, b = await stream_pair()
        fut = loop.create_future()
        fut.set_result(None)
        reader._waiter = fut  # type: ignore[attr-defined]
        b.send(b"x")
        await asyncio.sleep(0.02)
        log.append(type(reader.exception()).__name__)
        b.close()
        return log

    assert both(main) == ["Fatal error: protocol.data_received() call failed.", "InvalidStateError"]
