"""broomio.asyncio's socket transport (C read/write paths) against asyncio's own."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

import broomio.asyncio as bra

from _aio_support import run_on_both as both


async def pair(proto: Callable[[], asyncio.BaseProtocol]) -> tuple[asyncio.Transport, Any, socket.socket]:
    """A transport over one end of a socketpair; the other end is returned raw."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    tr, pr = await loop.connect_accepted_socket(proto, a)
    await asyncio.sleep(0)
    b.setblocking(False)
    return tr, pr, b  # type: ignore[return-value]


def test_transport_class_is_c_accelerated() -> None:
    async def main() -> list[Any]:
        tr, _, b = await pair(asyncio.Protocol)
        res = [isinstance(tr, asyncio.Transport), type(tr).__name__]
        tr.close()
        b.close()
        return res

    with asyncio.Runner(loop_factory=bra.new_event_loop) as r:
        ok, name = r.run(main())
    assert ok and name == "_SocketTransport"


def test_noncontiguous_memoryview_write_is_fatal_like_asyncio() -> None:
    async def main() -> list[Any]:
        log: list[Any] = []

        class P(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                log.append(type(exc).__name__)

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))
        tr, _, b = await pair(P)
        tr.write(memoryview(b"abcdef")[::2])
        await asyncio.sleep(0.01)
        b.close()
        return log

    assert both(main) == ["Fatal write error on socket transport", "BufferError"]


def test_write_type_and_state_errors() -> None:
    async def main() -> list[str]:
        tr, _, b = await pair(asyncio.Protocol)
        errs = []
        for bad in ("str", 5, None):
            try:
                tr.write(bad)  # type: ignore[arg-type]
            except TypeError as e:
                errs.append(str(e))
        tr.write(b"")
        tr.write_eof()
        try:
            tr.write(b"x")
        except RuntimeError as e:
            errs.append(str(e))
        await asyncio.sleep(0.01)
        errs.append(repr(b.recv(100)))
        tr.close()
        b.close()
        return errs

    res = both(main)
    assert res[-2] == "Cannot call write() after write_eof()"


def test_write_backpressure_and_drain_order() -> None:
    async def main() -> list[Any]:
        log: list[Any] = []

        class P(asyncio.Protocol):
            def pause_writing(self) -> None:
                log.append("pause")

            def resume_writing(self) -> None:
                log.append("resume")

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("lost", exc))

        tr, _, b = await pair(P)
        tr.set_write_buffer_limits(high=64 * 1024, low=1024)
        chunk = b"z" * 65536
        total = 0
        for _ in range(40):
            tr.write(chunk)
            total += len(chunk)
        log.append(tr.get_write_buffer_size() > 0)
        got = 0
        while got < total:
            try:
                got += len(b.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        log.append(tr.get_write_buffer_size())
        tr.close()
        await asyncio.sleep(0.01)
        b.close()
        return log

    assert both(main) == ["pause", True, "resume", 0, ("lost", None)]


def test_close_with_pending_data_flushes_then_loses() -> None:
    async def main() -> list[Any]:
        log: list[Any] = []

        class P(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("lost", exc))

        tr, _, b = await pair(P)
        tr.write(b"q" * 3_000_000)
        tr.close()
        log.append(tr.is_closing())
        got = 0
        while got < 3_000_000:
            try:
                got += len(b.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        log.append(got)
        b.close()
        return log

    assert both(main) == [True, ("lost", None), 3_000_000]


def test_abort_and_peer_reset() -> None:
    async def main() -> list[Any]:
        log: list[Any] = []

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                log.append(data)

            def eof_received(self) -> None:
                log.append("eof")

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("lost", type(exc).__name__))

        tr, _, b = await pair(P)
        b.send(b"last words")
        b.close()
        await asyncio.sleep(0.02)
        tr2, _, b2 = await pair(P)
        tr2.abort()
        await asyncio.sleep(0.01)
        b2.close()
        return log

    assert both(main) == [b"last words", "eof", ("lost", "NoneType"), ("lost", "NoneType")]


def test_protocol_exception_is_fatal() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                raise ValueError("bad data")

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("lost", type(exc).__name__))

        tr, _, b = await pair(P)
        b.send(b"x")
        await asyncio.sleep(0.02)
        b.close()
        return log

    assert both(main) == ["Fatal error: protocol.data_received() call failed.", ("lost", "ValueError")]


def test_buffered_protocol_paths() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))

        class P(asyncio.BufferedProtocol):
            def __init__(self, size: int) -> None:
                self.buf = bytearray(size)

            def get_buffer(self, sizehint: int) -> bytearray:
                return self.buf

            def buffer_updated(self, nbytes: int) -> None:
                log.append(bytes(self.buf[:nbytes]))

            def eof_received(self) -> bool:
                log.append("eof")
                return True  # keep open: the reader is removed

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("lost", type(exc).__name__))

        tr, _, b = await pair(lambda: P(3))
        b.send(b"abcdefg")
        await asyncio.sleep(0.02)
        b.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.02)
        tr.write(b"still")
        await asyncio.sleep(0.01)
        log.append(b.recv(10))
        tr.close()
        await asyncio.sleep(0.01)
        tr2, _, b2 = await pair(lambda: P(0))
        b2.send(b"x")
        await asyncio.sleep(0.02)
        b.close()
        b2.close()
        return log

    res = both(main)
    assert res[:4] == [b"abc", b"def", b"g", "eof"]
    assert res[-2] == "Fatal error: protocol.get_buffer() call failed."


def test_write_after_connection_lost_is_counted() -> None:
    async def main() -> list[Any]:
        tr, _, b = await pair(asyncio.Protocol)
        b.close()
        tr.write(b"x" * 100)
        await asyncio.sleep(0.02)
        for _ in range(3):
            tr.write(b"y")
        res = [tr.is_closing()]
        tr.close()
        return res

    assert both(main) == [True]


def test_pause_resume_reading() -> None:
    async def main() -> list[Any]:
        log: list[Any] = []

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                log.append(data)

        tr, _, b = await pair(P)
        tr.pause_reading()
        b.send(b"held")
        await asyncio.sleep(0.02)
        log.append(("reading", tr.is_reading()))
        tr.resume_reading()
        await asyncio.sleep(0.02)
        tr.close()
        b.close()
        return log

    assert both(main) == [("reading", False), b"held"]


def test_transport_protocol_cycle_is_collected() -> None:
    import gc
    import weakref

    refs: list[weakref.ref[Any]] = []

    class P(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport  # a cycle through the transport's C _protocol member

    async def main() -> None:
        tr, pr, b = await pair(P)
        refs.extend([weakref.ref(tr), weakref.ref(pr)])
        tr.close()
        b.close()
        await asyncio.sleep(0.01)

    bra.run(main())
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_write_ready_paths_eof_and_reset() -> None:
    async def main() -> list[Any]:
        log: list[Any] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))

        class P(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("lost", type(exc).__name__))

        # queued data, then write_eof: the peer sees all of it, then EOF
        tr, _, b = await pair(P)
        tr.write(b"e" * 3_000_000)
        tr.write_eof()
        got = 0
        while True:
            try:
                chunk = b.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            if not chunk:
                break
            got += len(chunk)
        log.append(got)
        tr.close()
        await asyncio.sleep(0.01)
        b.close()
        # queued data, then the peer resets: a fatal write error
        tr2, _, b2 = await pair(P)
        tr2.write(b"r" * 3_000_000)
        b2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b2.close()
        for _ in range(100):
            await asyncio.sleep(0.005)
            if len(log) >= 4:
                break
        log.append(tr2.get_write_buffer_size())
        return log

    res = both(main)
    assert res[0] == 3_000_000 and res[-1] == 0


# ---- large receives read straight into the result; max_size -------------------------------


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.events: list[Any] = []

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.chunks.append(data)

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__))


async def _feed(b: socket.socket, pr: _Collect, payload: bytes) -> None:
    """Sends payload and waits (bounded) until the protocol has all of it."""
    want = sum(map(len, pr.chunks)) + len(payload)
    await asyncio.get_running_loop().sock_sendall(b, payload)
    for _ in range(500):
        if sum(map(len, pr.chunks)) >= want:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("data did not arrive")


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


async def _feed_each(sizes: list[int]) -> list[Any]:
    """Over a fresh transport, send one patterned message per size, each once the previous
    one has arrived.  Returns [all bytes arrived once and in order, their count, no chunk
    larger than max_size, max_size, every chunk a proper bytes object (hashable, equal to
    its data)]."""
    tr, pr, b = await pair(_Collect)
    sent = b""
    for i, n in enumerate(sizes):
        chunk = _pattern(n, i)
        sent += chunk
        await _feed(b, pr, chunk)
    got = b"".join(pr.chunks)
    max_size = tr.max_size  # type: ignore[attr-defined]
    proper = all(
        type(c) is bytes and hash(c) == hash(bytes(bytearray(c))) and c == bytes(bytearray(c))
        for c in pr.chunks
    )
    res = [got == sent, len(got), max(map(len, pr.chunks)) <= max_size, max_size, proper]
    tr.close()
    b.close()
    return res


def test_reads_switch_between_scratch_and_direct_in_order() -> None:
    """Alternating small and large messages cross the scratch/direct switch both ways: every
    byte arrives once, in order, in bytes objects no larger than max_size."""
    sizes = [10, 5000, 3, 4096, 4095, 70_000, 1, 300_000, 64, 16_384, 16_384, 2, 600_000, 7]
    assert both(lambda: _feed_each(sizes)) == [True, sum(sizes), True, 256 * 1024, True]


def test_max_size_instance_override() -> None:
    async def main() -> list[Any]:
        tr, pr, b = await pair(_Collect)
        res: list[Any] = [tr.max_size]  # type: ignore[attr-defined]
        tr.max_size = 1000  # type: ignore[attr-defined]
        res.append(tr.max_size)  # type: ignore[attr-defined]
        payload = _pattern(10_000, 1) + _pattern(50_000, 2)
        await _feed(b, pr, payload[:10_000])
        await _feed(b, pr, payload[10_000:])
        res += [b"".join(pr.chunks) == payload, max(map(len, pr.chunks))]
        del tr.max_size  # type: ignore[attr-defined]
        res.append(tr.max_size)  # type: ignore[attr-defined]
        pr.chunks.clear()
        await _feed(b, pr, _pattern(200_000, 3))
        res.append(max(map(len, pr.chunks)) > 1000)
        tr.close()
        b.close()
        return res

    assert both(main) == [256 * 1024, 1000, True, 1000, 256 * 1024, True]


def test_max_size_class_override() -> None:
    """A subclass's class attribute is what recv() asks for, as with asyncio's transport."""

    async def main() -> list[Any]:
        tr, pr, b = await pair(_Collect)
        Small = type("Small", (type(tr),), {"max_size": 700})
        tr.__class__ = Small
        await _feed(b, pr, _pattern(20_000, 5))
        await _feed(b, pr, _pattern(9, 6))
        res = [b"".join(pr.chunks) == _pattern(20_000, 5) + _pattern(9, 6),
               max(map(len, pr.chunks)), tr.max_size]  # type: ignore[attr-defined]
        tr.close()
        b.close()
        return res

    assert both(main) == [True, 700, 700]


@pytest.mark.parametrize("value", [0, -1, "big"])
def test_max_size_odd_values_behave_like_asyncio(value: Any) -> None:
    """max_size 0 reads b'' (seen as EOF), a negative one or a str fails the recv(): asyncio's
    own method runs and decides."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: log.append(ctx["message"]))
        tr, pr, b = await pair(_Collect)
        tr.max_size = value  # type: ignore[attr-defined]
        log.append(tr.max_size)  # type: ignore[attr-defined]
        b.send(b"data")
        await asyncio.sleep(0.02)
        tr.close()
        await asyncio.sleep(0.01)
        b.close()
        return log + pr.chunks + pr.events

    res = both(main)
    assert res[0] == value and b"data" not in res


def test_buffered_protocol_ignores_max_size_and_direct_reads() -> None:
    """A BufferedProtocol reads into its own buffer whatever max_size says, as asyncio's does."""

    async def main() -> list[Any]:
        got = bytearray()
        sizes: list[int] = []

        class P(asyncio.BufferedProtocol):
            buf = bytearray(100_000)

            def get_buffer(self, sizehint: int) -> bytearray:
                sizes.append(sizehint)
                return self.buf

            def buffer_updated(self, nbytes: int) -> None:
                got.extend(self.buf[:nbytes])

        tr, _, b = await pair(P)
        tr.max_size = 10  # type: ignore[attr-defined]
        payload = _pattern(50_000, 9) + _pattern(5, 1)
        b.sendall(payload[:50_000])
        for _ in range(500):
            if len(got) >= 50_000:
                break
            await asyncio.sleep(0.002)
        b.sendall(payload[50_000:])
        for _ in range(500):
            if len(got) >= len(payload):
                break
            await asyncio.sleep(0.002)
        tr.close()
        b.close()
        return [bytes(got) == payload, set(sizes), len(sizes) < 50]

    assert both(main) == [True, {-1}, True]


def test_direct_read_switch_follows_the_traffic() -> None:
    """broomio only: 4-64 KiB receives switch the transport to direct reads, a small or a
    64 KiB-and-more receive switches it back; the data is the same either way."""

    async def main() -> list[Any]:
        tr, pr, b = await pair(_Collect)
        states: list[bool] = [tr._broomio_big_reads]  # type: ignore[attr-defined]
        sent = b""
        for i, n in enumerate([16_384, 16_384, 10, 5000, 200_000, 20_000]):
            chunk = _pattern(n, i)
            sent += chunk
            await _feed(b, pr, chunk)
            states.append(tr._broomio_big_reads)  # type: ignore[attr-defined]
        tr.max_size = 10_000  # type: ignore[attr-defined]
        pr.chunks.clear()
        await _feed(b, pr, _pattern(50_000, 7))
        res = [states, b"".join(pr.chunks) == _pattern(50_000, 7), max(map(len, pr.chunks))]
        tr.close()
        b.close()
        return res

    with asyncio.Runner(loop_factory=bra.new_event_loop) as r:
        states, ok, biggest = r.run(main())
    # 200 KB arrives as chunks, the last of which may be small: only its prefix is fixed.
    assert states[:5] == [False, True, True, False, True]
    assert ok and biggest == 10_000


def test_direct_read_size_guess_grows_and_shrinks_in_order() -> None:
    """A direct receive allocates about what the last one returned: messages that grow past
    that guess, shrink below it or repeat it exactly all arrive once, in order, as proper
    bytes objects."""
    sizes = [8_000, 8_000, 8_000, 30_000, 30_000, 9_000, 60_000, 5_000, 5_016, 5_017, 4_999]
    assert both(lambda: _feed_each(sizes)) == [True, sum(sizes), True, 256 * 1024, True]
