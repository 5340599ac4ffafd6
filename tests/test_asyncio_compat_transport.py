"""asyncio compatibility, socket transport details a C transport must reproduce: buffer
ownership, graceful close vs abort, protocol errors, set_protocol, reading control from
inside callbacks.  Each test runs on stock asyncio (the oracle) and on broomio.asyncio
(see tests/_aio_support.py)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from _aio_support import (  # noqa: F401
    Recorder,
    aio_loop,
    broomio_xfail,
    loop_factory,
    loop_name,
    nonblocking_pair,
    run,
)


async def _read_all(loop, sock, n=None):
    """Read from a non-blocking socket until EOF (or n bytes)."""
    out = bytearray()
    while n is None or len(out) < n:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _fill_kernel_buffers(sock):
    """Make the next send() on ``sock`` block (fill the send and the peer's receive buffers)."""
    total = 0
    while True:
        try:
            total += sock.send(b"\0" * 65536)
        except BlockingIOError:
            return total


def test_write_copies_mutable_buffer(aio_loop):
    """The caller may reuse its bytearray right after write(): the queued part is a copy."""
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            pre = _fill_kernel_buffers(a)  # everything written now gets queued
            buf = bytearray(b"A" * 100_000)
            tr.write(buf)
            buf[:] = b"B" * 100_000  # mutate after write
            view_src = bytearray(b"C" * 1000)
            tr.write(memoryview(view_src))
            view_src[:] = b"D" * 1000
            size = tr.get_write_buffer_size()
            tr.close()
            data = await _read_all(aio_loop, b)
            await proto.done
            return size, data[pre:]

        size, data = run(aio_loop, main())
        assert size == 101_000
        assert data == b"A" * 100_000 + b"C" * 1000
    finally:
        a.close()
        b.close()


def test_close_flushes_pending_data_then_abort_discards(aio_loop):
    a, b = nonblocking_pair()
    c, d = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.write(b"x" * 3_000_000)
            tr.close()
            assert tr.is_closing()
            flushed = await _read_all(aio_loop, b)
            await proto.done

            tr2, proto2 = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), c)
            pre = _fill_kernel_buffers(c)
            tr2.write(b"y" * 1_000_000)
            tr2.abort()
            dropped = await _read_all(aio_loop, d)
            await proto2.done
            return len(flushed), len(dropped) - pre, proto.events[-1], proto2.events[-1]

        flushed, extra, lost1, lost2 = run(aio_loop, main())
        assert flushed == 3_000_000
        assert extra == 0  # nothing queued after the kernel buffers was sent
        assert lost1 == ("lost", None) and lost2 == ("lost", None)
    finally:
        for s in (a, b, c, d):
            s.close()


def test_write_empty_is_noop_and_writelines_mixed(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.write(b"")
            tr.writelines([b"ab", bytearray(b"cd"), memoryview(b"ef"), b""])
            tr.write_eof()
            data = await _read_all(aio_loop, b)
            tr.close()
            await proto.done
            return data

        assert run(aio_loop, main()) == b"abcdef"
    finally:
        a.close()
        b.close()


def test_write_after_write_eof_raises(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.write_eof()
            with pytest.raises(RuntimeError, match="write_eof"):
                tr.write(b"late")
            tr.close()
            await proto.done
            return True

        assert run(aio_loop, main())
    finally:
        a.close()
        b.close()


def test_data_received_exception_is_fatal(aio_loop):
    a, b = nonblocking_pair()
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))

    class Broken(Recorder):
        def data_received(self, data):
            raise ValueError("protocol bug")

    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Broken(aio_loop), a)
            b.send(b"trigger")
            exc = await proto.done
            return type(exc).__name__, tr.is_closing()

        assert run(aio_loop, main()) == ("ValueError", True)
        assert len(ctxs) == 1
        assert ctxs[0]["message"] == "Fatal error: protocol.data_received() call failed."
        assert isinstance(ctxs[0]["exception"], ValueError)
        assert ctxs[0]["protocol"] is not None and ctxs[0]["transport"] is not None
    finally:
        a.close()
        b.close()


def test_set_protocol_switches_receiver(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, first = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            assert tr.get_protocol() is first
            b.send(b"one")
            while not first.data:
                await asyncio.sleep(0.001)
            second = Recorder(aio_loop)
            tr.set_protocol(second)
            assert tr.get_protocol() is second
            b.send(b"two")
            while not second.data:
                await asyncio.sleep(0.001)
            tr.close()
            await second.done
            return bytes(first.data), bytes(second.data), first.done.done()

        assert run(aio_loop, main()) == (b"one", b"two", False)
    finally:
        a.close()
        b.close()


def test_pause_reading_from_data_received(aio_loop):
    a, b = nonblocking_pair()

    class OneShot(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: OneShot(aio_loop), a)
            b.send(b"first")
            while not proto.data:
                await asyncio.sleep(0.001)
            b.send(b"second")
            await asyncio.sleep(0.03)
            held = bytes(proto.data)
            tr.resume_reading()
            while len(proto.data) < 11:
                await asyncio.sleep(0.001)
            tr.close()
            await proto.done
            return held, bytes(proto.data), tr.is_reading()

        assert run(aio_loop, main()) == (b"first", b"firstsecond", False)
    finally:
        a.close()
        b.close()


def test_large_bidirectional_transfer_with_small_reads(aio_loop):
    """10 MB each way at once through one connection, no data lost or reordered."""
    payload = os.urandom(10 << 20)

    class Sink(Recorder):
        pass

    async def main():
        server_side = {}

        def factory():
            p = Sink(aio_loop)
            server_side["p"] = p
            return p

        server = await aio_loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Sink(aio_loop), "127.0.0.1", port)
        await asyncio.sleep(0)
        while "p" not in server_side:
            await asyncio.sleep(0.001)
        srv = server_side["p"]
        await srv.made
        tr.write(payload)
        srv.transport.write(payload[::-1])
        while len(proto.data) < len(payload) or len(srv.data) < len(payload):
            await asyncio.sleep(0.005)
        tr.close()
        await proto.done
        await srv.done
        server.close()
        await server.wait_closed()
        return bytes(srv.data) == payload, bytes(proto.data) == payload[::-1]

    assert run(aio_loop, main(), timeout=25) == (True, True)


def test_is_reading_and_closing_states(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            states = [tr.is_reading(), tr.is_closing()]
            tr.close()
            states += [tr.is_reading(), tr.is_closing()]
            tr.close()  # idempotent
            tr.pause_reading()  # no-ops once closing
            tr.resume_reading()
            await proto.done
            return states, proto.events

        states, events = run(aio_loop, main())
        assert states == [True, False, False, True]
        assert events == ["made", ("lost", None)]
    finally:
        a.close()
        b.close()


def test_peer_close_with_unread_data_gives_eof_then_lost(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            b.sendall(b"last words")
            b.close()
            exc = await proto.done
            return bytes(proto.data), proto.events, exc

        data, events, exc = run(aio_loop, main())
        assert data == b"last words"
        assert events == ["made", "data", "eof", ("lost", None)]
        assert exc is None
    finally:
        a.close()


def test_get_extra_info_on_unix_socketpair(aio_loop):
    a, b = nonblocking_pair(socket.AF_UNIX)
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            info = (tr.get_extra_info("peername"), tr.get_extra_info("sockname"),
                    tr.get_extra_info("socket").fileno() == a.fileno())
            tr.close()
            await proto.done
            return info

        assert run(aio_loop, main()) == ("", "", True)
    finally:
        a.close()
        b.close()


class _Buf(asyncio.BufferedProtocol):
    def __init__(self, loop, fail_in=None):
        self.fail_in = fail_in
        self.buf = bytearray(64)
        self.data = bytearray()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        if self.fail_in == "get_buffer":
            raise KeyError("no buffer")
        return self.buf

    def buffer_updated(self, nbytes):
        if self.fail_in == "buffer_updated":
            raise KeyError("cannot take it")
        self.data += self.buf[:nbytes]

    def eof_received(self):
        if self.fail_in == "eof_received":
            raise KeyError("eof")

    def connection_lost(self, exc):
        self.done.set_result(exc)


@pytest.mark.parametrize("where", ["get_buffer", "buffer_updated", "eof_received"])
def test_buffered_protocol_callback_errors_are_fatal(aio_loop, where):
    a, b = nonblocking_pair()
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(
                lambda: _Buf(aio_loop, fail_in=where), a)
            b.send(b"payload")
            if where == "eof_received":
                b.shutdown(socket.SHUT_WR)
            exc = await proto.done
            return type(exc).__name__

        assert run(aio_loop, main()) == "KeyError"
        assert [c["message"] for c in ctxs] == [f"Fatal error: protocol.{where}() call failed."]
    finally:
        a.close()
        b.close()


def test_set_protocol_between_protocol_and_buffered_protocol(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, plain = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            b.send(b"plain")
            while not plain.data:
                await asyncio.sleep(0.001)
            buffered = _Buf(aio_loop)
            tr.set_protocol(buffered)
            b.send(b"buffered")
            while len(buffered.data) < 8:
                await asyncio.sleep(0.001)
            back = Recorder(aio_loop)
            tr.set_protocol(back)
            b.send(b"again")
            while not back.data:
                await asyncio.sleep(0.001)
            tr.close()
            await back.done
            return bytes(plain.data), bytes(buffered.data), bytes(back.data)

        assert run(aio_loop, main()) == (b"plain", b"buffered", b"again")
    finally:
        a.close()
        b.close()


def test_connection_lost_is_called_soon_not_inline(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.close()
            inline = list(proto.events)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return inline, proto.events

        inline, later = run(aio_loop, main())
        assert inline == ["made"]
        assert later == ["made", ("lost", None)]
    finally:
        a.close()
        b.close()


def test_no_data_delivered_after_close(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.pause_reading()
            b.send(b"unwanted")
            await asyncio.sleep(0.01)
            tr.close()
            await proto.done
            return bytes(proto.data), proto.events

        assert run(aio_loop, main()) == (b"", ["made", ("lost", None)])
    finally:
        a.close()
        b.close()


def test_write_from_data_received_and_connection_made(aio_loop):
    """Greeting written from connection_made, replies written from data_received."""
    lost = []

    class Greeter(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            transport.write(b"hello\n")

        def data_received(self, data):
            self.transport.write(b"re:" + data)

        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        server = await aio_loop.create_server(Greeter, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        greeting = await r.readline()
        w.write(b"x")
        reply = await r.readexactly(4)
        w.close()
        await w.wait_closed()
        while not lost:  # the server side sees EOF and closes
            await asyncio.sleep(0.001)
        server.close()
        await server.wait_closed()
        return greeting, reply, lost

    assert run(aio_loop, main()) == (b"hello\n", b"re:x", [None])


def test_write_to_reset_peer_reports_lost_without_handler(aio_loop, caplog):
    import logging

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))

    async def main():
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     *lsock.getsockname())
        conn, _ = await aio_loop.sock_accept(lsock)
        tr.pause_reading()  # the reset must be discovered by write()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        conn.close()  # RST
        await asyncio.sleep(0.05)
        for _ in range(3):
            tr.write(b"x" * 1000)
            await asyncio.sleep(0.01)
        exc = await proto.done
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(6):  # writes after the connection was lost: counted, then logged
                tr.write(b"late")
        tr.close()
        return type(exc).__name__

    try:
        assert run(aio_loop, main()) == "ConnectionResetError"
    finally:
        lsock.close()
    assert ctxs == []  # connection errors are not "unexpected": no exception handler call
    assert any("socket.send() raised exception." in r.getMessage() for r in caplog.records)


def test_data_received_gets_independent_bytes_objects(aio_loop):
    """Each data_received() argument is a bytes object the protocol may keep: later reads
    must not overwrite earlier chunks (no shared read buffer leaks out)."""
    payload = os.urandom(2 << 20)

    class Keeper(asyncio.Protocol):
        def __init__(self):
            self.chunks = []
            self.done = aio_loop.create_future()

        def data_received(self, data):
            self.chunks.append(data)  # kept as is, not copied

        def connection_lost(self, exc):
            self.done.set_result(exc)

    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(Keeper, a)
            await aio_loop.sock_sendall(b, payload)
            b.shutdown(socket.SHUT_WR)
            await proto.done
            return proto.chunks

        chunks = run(aio_loop, main())
        assert {type(c) for c in chunks} == {bytes}
        assert len(chunks) > 1
        assert b"".join(chunks) == payload
    finally:
        a.close()
        b.close()


def test_many_small_queued_writes_keep_order(aio_loop):
    """Thousands of small writes queued behind a full socket are sent in order (writev of
    queued buffers must not reorder, drop or duplicate any)."""
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.set_write_buffer_limits(high=1 << 30)  # never pause: queue everything
            pre = _fill_kernel_buffers(a)
            expected = bytearray()
            for i in range(20_000):
                chunk = b"%d," % i
                expected += chunk
                tr.write(chunk if i % 3 else bytearray(chunk))
            queued = tr.get_write_buffer_size()
            tr.write_eof()
            data = await _read_all(aio_loop, b)
            tr.close()
            await proto.done
            return queued == len(expected), data[pre:] == bytes(expected)

        assert run(aio_loop, main()) == (True, True)
    finally:
        a.close()
        b.close()
