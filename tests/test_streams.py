"""Streams: SocketStream, open_tcp_stream (happy eyeballs), listeners, serve_tcp/serve_unix,
UDP endpoints."""

from __future__ import annotations

import errno
import functools
import os
import random
import resource
import socket as stdlib_socket
import struct

import pytest

import broomio
import broomio.socket as bs
from broomio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    IncompleteReadError,
    SocketListener,
    SocketStream,
    fail_after,
    move_on_after,
    open_nursery,
    sleep,
)
from conftest import run

LOCAL = "127.0.0.1"


async def wait_parked(task, what="task parked"):
    for _ in range(20):
        await sleep(0)
    assert not task.done(), f"{what}: the task finished instead of blocking"


async def stream_pair():
    """(client SocketStream, server SocketStream) over loopback TCP."""
    with bs.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(1)
        client = bs.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return SocketStream(client), SocketStream(server)


async def unix_stream_pair():
    a, b = bs.socketpair()
    return SocketStream(a), SocketStream(b)


def unused_port():
    s = stdlib_socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def linger_reset(stream):
    stream.socket.setsockopt(bs.SOL_SOCKET, bs.SO_LINGER, struct.pack("ii", 1, 0))


# ---------------------------------------------------------------------------
# SocketStream basics


def test_receive_some_send_all_and_eof():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            await a.send_all(b"hello world")
            got = b""
            while len(got) < 11:
                chunk = await b.receive_some(4)
                assert 1 <= len(chunk) <= 4
                got += chunk
            assert got == b"hello world"
            await a.aclose()
            assert await b.receive_some() == b""
            assert await b.receive_some() == b""

    run(main)


def test_receive_some_validates_max_bytes():
    async def main():
        a, b = await unix_stream_pair()
        async with a, b:
            for bad, exc in ((0, ValueError), (-5, ValueError), ("10", TypeError),
                             (1.5, TypeError), (True, TypeError), (2**70, OverflowError)):
                with pytest.raises(exc):
                    await a.receive_some(bad)
                with pytest.raises(exc):  # keyword form
                    await a.receive_some(max_bytes=bad)
            with pytest.raises(TypeError):
                a.receive_some(1, 2)
            with pytest.raises(TypeError):
                a.receive_some(max_bytes=1, other=2)
            with pytest.raises(TypeError):
                a.receive_some(size=1)
            await b.send_all(b"abcdef")
            assert await a.receive_some(max_bytes=2) == b"ab"
            assert await a.read_exactly(1) == b"c"

    run(main)


def test_receive_some_with_buffered_data_honours_max_bytes_and_errors():
    async def main():
        a, b = await unix_stream_pair()
        async with a, b:
            await b.send_all(b"x\nyz")
            assert await a.read_line() == b"x\n"
            while len(a._buffer) < 2:  # the rest of the first read stays buffered
                a._buffer += await a.socket.recv(10)
            with pytest.raises(ValueError):
                await a.receive_some(0)
            assert await a.receive_some(1) == b"y"
            assert await a.receive_some(None) == b"z"

    run(main)


def test_stream_buffer_only_accepts_a_bytearray():
    async def main():
        a, b = await unix_stream_pair()
        async with a, b:
            with pytest.raises(TypeError):
                a._buffer = b"bytes"
            with pytest.raises(TypeError):
                del a._buffer
            await b.send_all(b"ok")
            assert await a.receive_some() == b"ok"

    run(main)


def test_send_all_while_send_eof_runs_is_busy():
    async def main():
        a, b = await unix_stream_pair()
        async with a, b:
            with a._send_conflict:  # what send_eof holds while it shuts the socket down
                with pytest.raises(BusyResourceError):
                    a.send_all(b"x")
            await a.send_all(b"after")
            assert await b.read_exactly(5) == b"after"

    run(main)


def test_stream_core_without_init_raises_instead_of_crashing():
    stream = SocketStream.__new__(SocketStream)
    with pytest.raises(RuntimeError):
        stream.receive_some()
    with pytest.raises(RuntimeError):
        stream.send_all(b"x")
    with pytest.raises((RuntimeError, AttributeError)):
        stream._buffer


def test_stream_requires_a_broomio_stream_socket():
    with stdlib_socket.socket() as raw, pytest.raises(TypeError):
        SocketStream(raw)
    udp = bs.socket(bs.AF_INET, bs.SOCK_DGRAM)
    with udp, pytest.raises(ValueError):
        SocketStream(udp)


def test_tcp_nodelay_is_on_for_tcp_streams():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            assert a.getsockopt(bs.IPPROTO_TCP, bs.TCP_NODELAY) != 0
            assert b.getsockopt(bs.IPPROTO_TCP, bs.TCP_NODELAY) != 0

    run(main)


async def trickle(stream, data, step=1):
    """Send data a few bytes at a time, yielding in between."""
    for i in range(0, len(data), step):
        await stream.send_all(data[i:i + step])
        await sleep(0.001)


def test_read_exactly_across_small_chunks_and_keeps_the_rest():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            async with open_nursery() as n:
                n.start_soon(trickle, a, b"0123456789abcdef", 3)
                assert await b.read_exactly(5) == b"01234"
                assert await b.read_exactly(0) == b""
                assert await b.read_exactly(7) == b"56789ab"
                assert await b.read_exactly(4) == b"cdef"

    run(main)


def test_read_exactly_incomplete_at_eof():
    async def main():
        a, b = await stream_pair()
        async with b:
            await a.send_all(b"short")
            await a.aclose()
            with pytest.raises(IncompleteReadError) as info:
                await b.read_exactly(10)
            assert isinstance(info.value, EOFError)
            assert info.value.partial == b"short"
            assert info.value.expected == 10
            assert await b.receive_some() == b""

    run(main)


def test_read_exactly_cancelled_midway_loses_nothing():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            await a.send_all(b"12345")
            with move_on_after(0.05) as scope:
                await b.read_exactly(10)
            assert scope.cancelled_caught
            await a.send_all(b"67890")
            assert await b.read_exactly(10) == b"1234567890"

    run(main)


def test_read_until_delimiter_split_across_chunks():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            async with open_nursery() as n:
                n.start_soon(trickle, a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY", 1)
                assert await b.read_until(b"\r\n") == b"GET / HTTP/1.1\r\n"
                assert await b.read_until(b"\r\n\r\n") == b"Host: x\r\n\r\n"
                assert await b.read_exactly(4) == b"BODY"

    run(main)


def test_read_until_max_size_and_eof():
    async def main():
        a, b = await stream_pair()
        async with b:
            await a.send_all(b"x" * 100 + b"\n")
            with pytest.raises(ValueError):
                await b.read_until(b"\n", max_size=50)
            # the data stayed buffered
            assert await b.read_until(b"\n", max_size=200) == b"x" * 100 + b"\n"
            await a.send_all(b"no delimiter")
            await a.aclose()
            with pytest.raises(IncompleteReadError) as info:
                await b.read_until(b";")
            assert info.value.partial == b"no delimiter"
            with pytest.raises(ValueError):
                await b.read_until(b"")

    run(main)


def test_read_line():
    async def main():
        a, b = await stream_pair()
        async with b:
            await a.send_all(b"one\ntwo\nthree")
            await a.send_eof()
            assert await b.read_line() == b"one\n"
            assert await b.read_line() == b"two\n"
            assert await b.read_line() == b"three"
            assert await b.read_line() == b""
            await a.aclose()

    run(main)


def test_read_line_too_long():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            await a.send_all(b"y" * 300)
            with pytest.raises(ValueError):
                await b.read_line(max_size=100)
            assert len(await b.receive_some()) >= 1

    run(main)


def test_async_for_collects_until_eof():
    payload = random.Random(5).randbytes(500_000)

    async def main():
        a, b = await stream_pair()
        async with b:
            async def send():
                await a.send_all(payload)
                await a.aclose()

            got = bytearray()
            async with open_nursery() as n:
                n.start_soon(send)
                async for chunk in b:
                    assert chunk
                    got += chunk
            assert bytes(got) == payload

    run(main)


def test_buffered_data_is_served_by_receive_some_first():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            await a.send_all(b"line\nrest")
            assert await b.read_line() == b"line\n"
            got = b""
            while len(got) < 4:
                got += await b.receive_some(2)
            assert got == b"rest"

    run(main)


def test_buffered_reads_are_cancellation_points():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            await a.send_all(b"l1\nl2\n")
            assert await b.read_line() == b"l1\n"
            for read in (b.read_line, b.receive_some, lambda: b.read_exactly(1),
                         lambda: b.read_until(b"\n")):
                with move_on_after(0) as scope:
                    await read()
                assert scope.cancelled_caught
            assert await b.read_line() == b"l2\n"  # nothing was lost

    run(main)


def test_send_eof_half_close():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            await a.send_all(b"question")
            await a.send_eof()
            assert await b.read_exactly(8) == b"question"
            assert await b.receive_some() == b""
            await b.send_all(b"answer")
            assert await a.read_exactly(6) == b"answer"
            with pytest.raises(BrokenResourceError):
                await a.send_all(b"after eof")

    run(main)


# ---------------------------------------------------------------------------
# errors


def test_peer_reset_is_broken_resource_error():
    async def main():
        a, b = await stream_pair()
        async with a:
            linger_reset(b)
            await b.aclose()
            with pytest.raises(BrokenResourceError) as info:
                await a.receive_some()
            assert isinstance(info.value.__cause__, ConnectionResetError)

    run(main)


def test_send_to_dead_peer_is_broken_resource_error():
    async def main():
        a, b = await stream_pair()
        async with a:
            linger_reset(b)
            await b.aclose()
            with pytest.raises(BrokenResourceError) as info:
                for _ in range(100):
                    await a.send_all(b"z" * 65536)
                    await sleep(0.01)
            assert isinstance(info.value.__cause__, (ConnectionResetError, BrokenPipeError))

    run(main)


def test_use_after_close_is_closed_resource_error():
    async def main():
        a, b = await stream_pair()
        await a.aclose()
        await a.aclose()  # idempotent
        for call in (a.receive_some, lambda: a.send_all(b"x"), lambda: a.read_exactly(1),
                     lambda: a.read_until(b"\n"), a.read_line, a.send_eof):
            with pytest.raises(ClosedResourceError):
                await call()
        await b.aclose()

    run(main)


def test_aclose_wakes_a_blocked_receiver():
    async def main():
        a, b = await stream_pair()
        errors = []

        async def reader():
            try:
                await b.read_exactly(10)
            except ClosedResourceError as exc:
                errors.append(exc)

        async with open_nursery() as n:
            t = n.start_soon(reader)
            await wait_parked(t)
            await b.aclose()
        assert len(errors) == 1
        await a.aclose()

    run(main)


def test_two_receivers_or_two_senders_conflict():
    async def main():
        a, b = await stream_pair()
        async with a, b:
            async with open_nursery() as n:
                t = n.start_soon(b.receive_some)
                await wait_parked(t)
                with pytest.raises(BusyResourceError):
                    await b.receive_some()
                with pytest.raises(BusyResourceError):
                    await b.read_line()
                a.socket.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 4096)
                s = n.start_soon(a.send_all, b"q" * 3_000_000)
                await wait_parked(s)
                with pytest.raises(BusyResourceError):
                    await a.send_all(b"more")
                n.cancel()

    run(main)


def test_full_duplex_one_sender_one_receiver_per_side():
    data_a = random.Random(1).randbytes(2_000_000)
    data_b = random.Random(2).randbytes(2_000_000)

    async def main():
        a, b = await stream_pair()
        got = {}
        async with a, b:
            async def pump(stream, data, key):
                async def send():
                    await stream.send_all(data)

                async with open_nursery() as n:
                    n.start_soon(send)
                    got[key] = await stream.read_exactly(len(data))

            async with open_nursery() as n:
                n.start_soon(pump, a, data_a, "a")
                n.start_soon(pump, b, data_b, "b")
        assert got["a"] == data_b and got["b"] == data_a

    run(main)


# ---------------------------------------------------------------------------
# open_tcp_stream and happy eyeballs


def test_open_tcp_stream_numeric_and_named():
    async def main():
        listeners = await broomio.open_tcp_listeners(0, host=LOCAL)
        port = listeners[0].socket.getsockname()[1]
        for host in (LOCAL, "localhost", b"127.0.0.1"):
            s = await broomio.open_tcp_stream(host, port)
            server = await listeners[0].accept()
            async with s, server:
                assert s.socket.getpeername() == (LOCAL, port)
                assert s.getsockopt(bs.IPPROTO_TCP, bs.TCP_NODELAY) != 0
                await s.send_all(b"x")
                assert await server.receive_some() == b"x"
        await listeners[0].aclose()

    run(main)


def test_open_tcp_stream_refused():
    port = unused_port()

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await broomio.open_tcp_stream(LOCAL, port)

    run(main)


def test_open_tcp_stream_local_address():
    async def main():
        listeners = await broomio.open_tcp_listeners(0, host=LOCAL)
        port = listeners[0].socket.getsockname()[1]
        s = await broomio.open_tcp_stream(LOCAL, port, local_address=LOCAL)
        server = await listeners[0].accept()
        async with s, server:
            assert s.socket.getsockname()[0] == LOCAL
            assert server.socket.getpeername() == s.socket.getsockname()
        await listeners[0].aclose()

    run(main)


def test_open_tcp_stream_argument_errors():
    async def main():
        with pytest.raises(TypeError):
            await broomio.open_tcp_stream(None, 80)
        with pytest.raises(ValueError):
            await broomio.open_tcp_stream(LOCAL, 70000)
        with pytest.raises(ValueError):
            await broomio.open_tcp_stream(LOCAL, 80, happy_eyeballs_delay=-1)

    run(main)


def test_interleave_alternates_families():
    from broomio._streams import _interleave

    v6a, v6b = (bs.AF_INET6, 1, 6, "", ("::1", 1, 0, 0)), (bs.AF_INET6, 1, 6, "", ("::2", 1, 0, 0))
    v4a, v4b = (bs.AF_INET, 1, 6, "", ("1.1.1.1", 1)), (bs.AF_INET, 1, 6, "", ("2.2.2.2", 1))
    assert _interleave([v6a, v6b, v4a, v4b]) == [v6a, v4a, v6b, v4b]
    assert _interleave([v4a, v6a, v6b, v4b]) == [v4a, v6a, v4b, v6b]
    assert _interleave([v4a, v4b]) == [v4a, v4b]


class EyeballsLab:
    """White-box harness: fake resolver answers and a record of every attempt's socket."""

    def __init__(self, monkeypatch, targets):
        import broomio._streams as streams

        self.sockets = []
        self.attempt_times = []

        async def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            await broomio.lowlevel.checkpoint()
            return [(bs.AF_INET, bs.SOCK_STREAM, 6, "", addr) for addr in targets]

        def factory(family, type_, proto):
            sock = bs.socket(family, type_, proto)
            self.sockets.append(sock)
            self.attempt_times.append(broomio.current_time())
            return sock

        monkeypatch.setattr(streams, "_getaddrinfo", fake_getaddrinfo)
        monkeypatch.setattr(streams, "_socket_factory", factory)


def pending_target():
    """A loopback listener whose accept queue is full: connects to it stay pending."""
    listener = stdlib_socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        c = stdlib_socket.socket()
        c.setblocking(False)
        c.connect_ex(listener.getsockname())
        fillers.append(c)
    return listener, fillers


@pytest.fixture
def hanging_address():
    listener, fillers = pending_target()
    yield listener.getsockname()
    for c in fillers:
        c.close()
    listener.close()


def test_happy_eyeballs_slow_first_address_loses_to_the_second(monkeypatch, hanging_address):
    good = stdlib_socket.socket()
    good.bind((LOCAL, 0))
    good.listen(5)
    lab = EyeballsLab(monkeypatch, [hanging_address, good.getsockname()])

    async def main():
        s = await broomio.open_tcp_stream("example.test", 1, happy_eyeballs_delay=0.1)
        async with s:
            assert s.socket.getpeername() == good.getsockname()
        assert len(lab.sockets) == 2
        # The second attempt started only after the delay ...
        assert lab.attempt_times[1] - lab.attempt_times[0] >= 0.1 - 1e-3
        # ... and the losing attempt was cancelled and its socket closed.
        assert lab.sockets[0].closed
        assert lab.sockets[1] is s.socket

    try:
        run(main)
    finally:
        good.close()


def test_happy_eyeballs_failure_starts_the_next_attempt_at_once(monkeypatch):
    good = stdlib_socket.socket()
    good.bind((LOCAL, 0))
    good.listen(5)
    refused = (LOCAL, unused_port())
    lab = EyeballsLab(monkeypatch, [refused, refused, good.getsockname()])

    async def main():
        # With an hour of delay, only "start the next one when the previous failed" can
        # finish within the guard.
        with fail_after(20):
            s = await broomio.open_tcp_stream("example.test", 1, happy_eyeballs_delay=3600)
        async with s:
            assert s.socket.getpeername() == good.getsockname()
        assert len(lab.sockets) == 3
        assert lab.sockets[0].closed and lab.sockets[1].closed

    try:
        run(main)
    finally:
        good.close()


def test_happy_eyeballs_all_attempts_fail(monkeypatch):
    lab = EyeballsLab(monkeypatch, [(LOCAL, unused_port()), (LOCAL, unused_port())])

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await broomio.open_tcp_stream("example.test", 1)
        group = info.value.__cause__
        assert isinstance(group, ExceptionGroup) and len(group.exceptions) == 2
        assert all(isinstance(e, ConnectionRefusedError) for e in group.exceptions)
        assert all(s.closed for s in lab.sockets)

    run(main)


def test_happy_eyeballs_cancelled_from_outside_closes_every_attempt(monkeypatch,
                                                                    hanging_address):
    lab = EyeballsLab(monkeypatch, [hanging_address, hanging_address])

    async def main():
        with move_on_after(0.2) as scope:
            await broomio.open_tcp_stream("example.test", 1, happy_eyeballs_delay=0.05)
        assert scope.cancelled_caught
        assert len(lab.sockets) == 2
        assert all(s.closed for s in lab.sockets)

    run(main)


def test_happy_eyeballs_none_is_sequential(monkeypatch, hanging_address):
    good = stdlib_socket.socket()
    good.bind((LOCAL, 0))
    good.listen(5)
    lab = EyeballsLab(monkeypatch, [hanging_address, good.getsockname()])

    async def main():
        with move_on_after(0.3) as scope:
            await broomio.open_tcp_stream("example.test", 1, happy_eyeballs_delay=None)
        assert scope.cancelled_caught
        assert len(lab.sockets) == 1  # the second address was never tried

    try:
        run(main)
    finally:
        good.close()


# ---------------------------------------------------------------------------
# listeners


def test_open_tcp_listeners_on_one_host():
    async def main():
        listeners = await broomio.open_tcp_listeners(0, host=LOCAL, backlog=10)
        assert len(listeners) == 1
        sock = listeners[0].socket
        assert sock.getsockopt(bs.SOL_SOCKET, bs.SO_REUSEADDR) != 0
        assert sock.getsockopt(bs.SOL_SOCKET, bs.SO_ACCEPTCONN) != 0
        client = await broomio.open_tcp_stream(LOCAL, sock.getsockname()[1])
        server = await listeners[0].accept()
        async with client, server:
            assert isinstance(server, SocketStream)
            assert server.socket.getpeername() == client.socket.getsockname()
        await listeners[0].aclose()
        assert sock.closed

    run(main)


def test_open_tcp_listeners_all_interfaces_share_one_port():
    async def main():
        listeners = await broomio.open_tcp_listeners(0)
        await _check_all_interfaces(listeners)
        listeners = await broomio.open_tcp_listeners(0, host="")  # as in bind(("", port))
        await _check_all_interfaces(listeners)

    run(main)


async def _check_all_interfaces(listeners):
    try:
        families = {l.socket.family for l in listeners}
        assert bs.AF_INET in families
        ports = {l.socket.getsockname()[1] for l in listeners}
        assert len(ports) == 1
        port = ports.pop()
        for l in listeners:
            if l.socket.family == bs.AF_INET6:
                assert l.socket.getsockopt(bs.IPPROTO_IPV6, bs.IPV6_V6ONLY) == 1
        for l in listeners:
            host = LOCAL if l.socket.family == bs.AF_INET else "::1"
            client = await broomio.open_tcp_stream(host, port)
            server = await l.accept()
            async with client, server:
                await client.send_all(host.encode())
                assert await server.receive_some() == host.encode()
    finally:
        for l in listeners:
            await l.aclose()


def test_open_tcp_listeners_argument_errors():
    async def main():
        with pytest.raises(TypeError):
            await broomio.open_tcp_listeners("80")
        with pytest.raises(TypeError):
            await broomio.open_tcp_listeners(0, host=LOCAL, backlog="x")

    run(main)


def test_listener_address_in_use():
    async def main():
        first = await broomio.open_tcp_listeners(0, host=LOCAL)
        port = first[0].socket.getsockname()[1]
        with pytest.raises(OSError) as info:
            await broomio.open_tcp_listeners(port, host=LOCAL)
        assert info.value.errno == errno.EADDRINUSE
        await first[0].aclose()

    run(main)


# ---------------------------------------------------------------------------
# serve_tcp


async def echo_handler(stream):
    await stream.send_all(b"Welcome\n")
    async for chunk in stream:
        await stream.send_all(b"Got: " + chunk)


def test_serve_tcp_one_task_per_connection_and_closes_streams():
    async def main():
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(broomio.serve_tcp, echo_handler, 0,
                                                        host=LOCAL))
            assert all(isinstance(l, SocketListener) for l in listeners)
            port = listeners[0].socket.getsockname()[1]

            async def client(i):
                s = await broomio.open_tcp_stream(LOCAL, port)
                async with s:
                    assert await s.read_line() == b"Welcome\n"
                    msg = f"client {i}\n".encode()
                    await s.send_all(msg)
                    assert await s.read_exactly(5 + len(msg)) == b"Got: " + msg
                    await s.send_eof()
                    # the handler returned: the server closed the stream
                    assert await s.receive_some() == b""

            async with open_nursery() as clients:
                for i in range(50):
                    clients.start_soon(client, i)
            n.cancel()
        assert all(l.socket.closed for l in listeners)

    run(main)


def test_serve_tcp_handler_nursery_outlives_the_server():
    events = []

    async def handler(stream):
        events.append("handler started")
        await stream.read_line()
        await stream.send_all(b"still here\n")
        events.append("handler finished")

    async def main():
        async with open_nursery() as handlers:
            async with open_nursery() as server_nursery:
                listeners = await server_nursery.start(functools.partial(
                    broomio.serve_tcp, handler, 0, host=LOCAL, handler_nursery=handlers))
                port = listeners[0].socket.getsockname()[1]
                s = await broomio.open_tcp_stream(LOCAL, port)
                for _ in range(1000):
                    if events:
                        break
                    await sleep(0.001)
                server_nursery.cancel()  # stop accepting; the handler lives on
            assert listeners[0].socket.closed
            await s.send_all(b"go\n")
            assert await s.read_line() == b"still here\n"
            await s.aclose()
        assert events == ["handler started", "handler finished"]

    run(main)


def test_serve_tcp_handler_error_propagates():
    async def handler(stream):
        raise KeyError("boom")

    async def main():
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(broomio.serve_tcp, handler, 0,
                                                        host=LOCAL))
            port = listeners[0].socket.getsockname()[1]
            s = await broomio.open_tcp_stream(LOCAL, port)
            await s.aclose()
            await sleep_forever_guarded()

    with pytest.raises(ExceptionGroup) as info:
        run(main)
    assert info.group_contains(KeyError)


async def sleep_forever_guarded():
    with fail_after(10):
        await broomio.sleep_forever()


def test_serve_tcp_closes_the_stream_when_the_handler_fails_or_is_cancelled():
    seen = []

    async def failing(stream):
        seen.append(stream)
        raise KeyError("boom")

    async def waiting(stream):
        seen.append(stream)
        await broomio.sleep_forever()

    async def serve(handler, cancel):
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(broomio.serve_tcp, handler, 0,
                                                        host=LOCAL))
            port = listeners[0].socket.getsockname()[1]
            s = await broomio.open_tcp_stream(LOCAL, port)
            async with s:
                with fail_after(10):
                    while not seen:
                        await sleep(0.001)
                assert not seen[-1].socket.closed
                if cancel:
                    n.cancel()
                else:
                    await sleep_forever_guarded()

    with pytest.raises(ExceptionGroup) as info:
        run(serve, failing, False)
    assert info.group_contains(KeyError)
    assert seen[-1].socket.closed
    seen.clear()
    run(serve, waiting, True)
    assert seen[-1].socket.closed


def test_task_close_on_exit():
    async def main():
        a, b = bs.socketpair()
        c, d = bs.socketpair()
        async with open_nursery() as n:
            gate = broomio.Event()

            async def child():
                await gate.wait()
                return "done"

            task = n.start_soon(child)
            task._close_on_exit(a)
            with pytest.raises(TypeError, match="broomio socket"):
                task._close_on_exit(object())
            await sleep(0)
            assert not a.closed  # not before the task finishes
            gate.set()
        assert a.closed and task.result() == "done"
        assert await b.recv(1) == b""  # the peer sees the close
        task._close_on_exit(c)  # an already finished task closes at once
        assert c.closed
        b.close()
        d.close()

    run(main)


def test_task_close_on_exit_when_the_loop_abandons_the_task():
    a, b = bs.socketpair()
    with broomio.Loop() as loop:
        task = loop.start_soon(broomio.sleep, 1)
        task._close_on_exit(a)
        assert not a.closed
    # close() abandoned the unfinished task: its socket is closed too
    assert a.closed and task.done()
    b.close()


def test_serve_tcp_argument_errors():
    async def main():
        with pytest.raises(ValueError):
            await broomio.serve_tcp(echo_handler, 0, workers=0)
        with pytest.raises(TypeError):
            await broomio.serve_tcp(echo_handler, 0, workers="2")
        async with open_nursery() as n:
            with pytest.raises(ValueError):
                await broomio.serve_tcp(echo_handler, 0, workers=2, handler_nursery=n)

    run(main)


class CountingAccept:
    """Wraps a listener socket's accept() to count calls and inject errors."""

    def __init__(self, sock, inject=()):
        self.real = sock.accept
        self.calls = 0
        self.inject = list(inject)
        sock.accept = self

    async def __call__(self):
        self.calls += 1
        if self.inject:
            code = self.inject.pop(0)
            await broomio.lowlevel.checkpoint()
            raise OSError(code, os.strerror(code))
        return await self.real()


def test_accept_loop_skips_econnaborted():
    async def main():
        listeners = await broomio.open_tcp_listeners(0, host=LOCAL)
        counter = CountingAccept(listeners[0].socket, [errno.ECONNABORTED, errno.EPROTO])
        port = listeners[0].socket.getsockname()[1]
        async with open_nursery() as n:
            await n.start(functools.partial(broomio.serve_listeners, echo_handler, listeners))
            s = await broomio.open_tcp_stream(LOCAL, port)
            async with s:
                assert await s.read_line() == b"Welcome\n"
            n.cancel()
        assert counter.calls >= 3

    run(main)


def test_accept_loop_backs_off_on_injected_emfile():
    async def main():
        listeners = await broomio.open_tcp_listeners(0, host=LOCAL)
        counter = CountingAccept(listeners[0].socket, [errno.EMFILE, errno.ENFILE])
        port = listeners[0].socket.getsockname()[1]
        async with open_nursery() as n:
            t0 = broomio.current_time()
            await n.start(functools.partial(broomio.serve_listeners, echo_handler, listeners))
            s = await broomio.open_tcp_stream(LOCAL, port)
            async with s:
                assert await s.read_line() == b"Welcome\n"
            # two failures, each followed by a 0.1 s back-off
            assert broomio.current_time() - t0 >= 0.2 - 1e-3
            n.cancel()
        assert counter.calls >= 3

    run(main)


def test_accept_loop_survives_real_emfile_without_spinning():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        listeners = await broomio.open_tcp_listeners(0, host=LOCAL)
        counter = CountingAccept(listeners[0].socket)
        port = listeners[0].socket.getsockname()[1]
        client = bs.socket()  # allocated before the fd table is exhausted
        with client:
            async with open_nursery() as n:
                await n.start(functools.partial(broomio.serve_listeners, echo_handler,
                                                listeners))
                hogs = []
                try:
                    limit = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 16
                    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                    r = os.open("/dev/null", os.O_RDONLY)
                    hogs.append(r)
                    for _ in range(limit):
                        try:
                            hogs.append(os.dup(r))
                        except OSError as exc:
                            assert exc.errno == errno.EMFILE
                            break
                    else:
                        raise AssertionError("never ran out of file descriptors")
                    calls_before = counter.calls
                    await client.connect((LOCAL, port))  # the server's accept fails: EMFILE
                    await sleep(0.35)
                    failed_calls = counter.calls - calls_before
                    # It retried (about every 0.1 s) but did not spin.
                    assert 1 <= failed_calls <= 10, failed_calls
                finally:
                    for fd in hogs:
                        os.close(fd)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                stream = SocketStream(client)
                with fail_after(10):
                    assert await stream.read_line() == b"Welcome\n"
                n.cancel()

    try:
        run(main)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# Unix sockets


def test_serve_unix_and_open_unix_stream(tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(broomio.serve_unix, echo_handler, path))
            assert listeners[0].socket.family == bs.AF_UNIX
            assert os.path.exists(path)
            s = await broomio.open_unix_stream(path)
            async with s:
                assert await s.read_line() == b"Welcome\n"
                await s.send_all(b"unix\n")
                assert await s.read_line() == b"Got: unix\n"
            n.cancel()
        assert not os.path.exists(path)  # removed when serving stopped

    run(main)


def test_unix_listener_replaces_a_stale_socket_but_not_a_live_one(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = stdlib_socket.socket(stdlib_socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens

    async def main():
        listener = await broomio.open_unix_listener(path)
        async with listener:
            with pytest.raises(OSError) as info:
                await broomio.open_unix_listener(path)
            assert info.value.errno == errno.EADDRINUSE
            # The liveness probe was a connection that closed at once.
            probe = await listener.accept()
            async with probe:
                assert await probe.receive_some() == b""
            s = await broomio.open_unix_stream(path)
            server = await listener.accept()
            async with s, server:
                await s.send_all(b"fresh")
                assert await server.receive_some() == b"fresh"

    run(main)


def test_open_unix_stream_missing_path(tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await broomio.open_unix_stream(str(tmp_path / "nothing"))

    run(main)


# ---------------------------------------------------------------------------
# UDP


def test_udp_sendto_recvfrom():
    async def main():
        a = await broomio.open_udp_socket(local=(LOCAL, 0))
        b = await broomio.open_udp_socket(local=("localhost", 0))
        async with a, b:
            assert a.remote_address is None
            async with open_nursery() as n:
                t = n.start_soon(b.recvfrom)
                await wait_parked(t)
                assert await a.sendto(b"ping", b.local_address) == 4
            assert t.result() == (b"ping", a.local_address)
            await b.sendto(b"pong", ("localhost", a.local_address[1]))
            assert await a.recvfrom(100) == (b"pong", b.local_address)
        with pytest.raises(ClosedResourceError):
            await a.recvfrom()

    run(main)


def test_udp_connected_send_recv():
    async def main():
        server = await broomio.open_udp_socket(local=(LOCAL, 0))
        client = await broomio.open_udp_socket(remote=server.local_address)
        async with server, client:
            assert client.remote_address == server.local_address
            for i in range(3):
                await client.send(b"m%d" % i)
            got = []
            for _ in range(3):
                data, addr = await server.recvfrom()
                got.append(data)
                assert addr == client.local_address
            assert got == [b"m0", b"m1", b"m2"]
            await server.sendto(b"reply", client.local_address)
            assert await client.recv() == b"reply"

    run(main)


def test_udp_ipv6_and_errors():
    async def main():
        a = await broomio.open_udp_socket(local=("::1", 0))
        async with a:
            assert a.socket.family == bs.AF_INET6
            b = await broomio.open_udp_socket(remote=a.local_address[:2])
            async with b:
                assert b.socket.family == bs.AF_INET6
                await b.send(b"six")
                assert (await a.recvfrom())[0] == b"six"
        with pytest.raises(TypeError):
            await broomio.open_udp_socket(local="127.0.0.1")

    run(main)
