"""broomio.socket: every async socket method, error paths, cancellation, many connections."""

from __future__ import annotations

import array
import errno
import hashlib
import os
import sys
import random
import resource
import socket as stdlib_socket
import struct
import tempfile

import pytest

import broomio
import broomio.socket as bs
from broomio import (
    BusyResourceError,
    ClosedResourceError,
    fail_after,
    move_on_after,
    open_nursery,
    sleep,
)
from conftest import run

LOCAL = "127.0.0.1"


async def wait_until(predicate, what="condition"):
    """Checkpoint until ``predicate()`` holds (bounded)."""
    for _ in range(10_000):
        if predicate():
            return
        await sleep(0)
    raise AssertionError(f"{what} never became true")


async def wait_parked(task, what="task parked"):
    """Let ``task`` run until it is blocked (it stops making progress at checkpoints)."""
    for _ in range(20):
        await sleep(0)
    assert not task.done(), f"{what}: the task finished instead of blocking"


async def tcp_pair(family=bs.AF_INET):
    """A connected (client, server-side) pair of async TCP sockets over loopback."""
    host = LOCAL if family == bs.AF_INET else "::1"
    with bs.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = bs.socket(family)
        await client.connect(listener.getsockname()[:2])
        server, _ = await listener.accept()
    return client, server


def linger_reset(sock):
    """Make close() send a RST instead of a FIN."""
    sock.setsockopt(bs.SOL_SOCKET, bs.SO_LINGER, struct.pack("ii", 1, 0))


async def recv_exactly(sock, n):
    out = bytearray()
    for _ in range(1_000_000):
        if len(out) >= n:
            break
        chunk = await sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def unused_port():
    """A loopback port nothing listens on (bound then released)."""
    s = stdlib_socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------
# module surface


def test_module_mirrors_stdlib_constants_and_types():
    assert bs.AF_INET == stdlib_socket.AF_INET
    assert bs.SOCK_DGRAM == stdlib_socket.SOCK_DGRAM
    assert bs.SOL_SOCKET == stdlib_socket.SOL_SOCKET
    assert bs.SHUT_WR == stdlib_socket.SHUT_WR
    assert bs.error is OSError
    assert bs.gaierror is stdlib_socket.gaierror
    assert bs.SocketType is bs.socket
    s = bs.socket()
    try:
        assert s.family == bs.AF_INET and s.type == bs.SOCK_STREAM and s.proto == 0
        assert s._sock.getblocking() is False
        assert "fd=" in repr(s)
    finally:
        s.close()
    assert s.closed and s.fileno() == -1
    assert "closed" in repr(s)


# ---------------------------------------------------------------------------
# the normal path


def test_tcp_connect_accept_and_exchange():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            assert client.getpeername() == server.getsockname()
            assert server.getpeername() == client.getsockname()
            await client.send_all(b"ping")
            assert await recv_exactly(server, 4) == b"ping"
            n = await server.send(b"pong!")
            assert n == 5
            assert await recv_exactly(client, 5) == b"pong!"
            await client.sendall(b"alias")
            assert await recv_exactly(server, 5) == b"alias"
            await server.send_all(b"recv-alias")
            assert await client.receive(3) == b"rec"

    run(main)


def test_tcp_over_ipv6_loopback():
    async def main():
        client, server = await tcp_pair(bs.AF_INET6)
        with client, server:
            assert client.getpeername()[0] == "::1"
            await client.send_all(b"six")
            assert await recv_exactly(server, 3) == b"six"

    run(main)


def test_connect_resolves_a_host_name():
    async def main():
        with bs.socket() as listener:
            listener.bind((LOCAL, 0))
            listener.listen(1)
            with bs.socket() as client:
                await client.connect(("localhost", listener.getsockname()[1]))
                conn, addr = await listener.accept()
                with conn:
                    assert addr == client.getsockname()

    run(main)


def test_recv_into_fills_the_buffer():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            await client.send_all(b"abcdefgh")
            buf = bytearray(16)
            n = await server.recv_into(buf, 4)
            assert n == 4 and buf[:4] == b"abcd"
            view = memoryview(buf)[4:]
            n2 = await server.recv_into(view)
            assert n2 == 4 and buf[:8] == b"abcdefgh"
            with pytest.raises(ValueError):
                server.recv_into(bytearray(2), 5)
            with pytest.raises((TypeError, BufferError)):
                server.recv_into(b"immutable")

    run(main)


def test_recv_with_msg_peek_then_recv():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            async with open_nursery() as n:
                # Park first, so that the socket is registered with the loop's epoll.
                t = n.start_soon(server.recv, 100, bs.MSG_PEEK)
                await wait_parked(t)
                await client.send_all(b"peekaboo")
            peeked = t.result()
            assert peeked and b"peekaboo".startswith(peeked)
            # The data is still there: a peek must not make the next recv wait for an edge.
            with fail_after(5):
                assert await recv_exactly(server, 8) == b"peekaboo"

    run(main)


def test_large_recv_beyond_scratch_buffer():
    payload = os.urandom(300_000)

    async def main():
        client, server = await tcp_pair()
        with client, server:
            async with open_nursery() as n:
                n.start_soon(client.send_all, payload)
                got = bytearray()
                while len(got) < len(payload):
                    chunk = await server.recv(200_000)
                    assert chunk
                    got += chunk
            assert bytes(got) == payload

    run(main)


async def send_and_receive_each(sizes):
    """Over a fresh TCP pair, send one random message per size and receive it with
    ``recv(65536)`` until it is whole: every byte arrives once, in order, and each chunk is
    a proper, exact-size bytes object (hashable, equal to its data; its memory is its
    length plus the header, never an oversized direct-read block)."""
    client, server = await tcp_pair()
    with client, server:
        for size in sizes:
            payload = os.urandom(size)
            await client.send_all(payload)
            got = bytearray()
            with fail_after(10):
                while len(got) < size:
                    chunk = await server.recv(65536)
                    assert chunk
                    assert type(chunk) is bytes
                    assert hash(chunk) == hash(bytes(bytearray(chunk)))
                    assert sys.getsizeof(chunk) < len(chunk) + 64
                    got += chunk
            assert bytes(got) == payload


def test_recv_switches_between_scratch_and_direct_reads():
    """Large receives read straight into the result, small ones through the scratch buffer:
    whichever path a receive takes, it returns exactly the bytes sent."""
    run(send_and_receive_each, [100, 20_000, 16_384, 3, 5_000, 64, 40_000, 1, 4_096, 4_095, 10])


def test_recv_size_guess_grows_without_losing_or_reordering_bytes():
    """A direct receive allocates about what the last one returned.  When a bigger message
    fills that guess, the receive returns a short chunk and the next receive returns the
    rest at once; a message of exactly the guess, or just past it, is no different."""
    run(send_and_receive_each, [8_000, 8_000, 32_000, 32_000, 9_000, 60_000, 5_000, 5_016,
                                5_017, 65_536])


def test_recv_size_guess_never_truncates_a_datagram():
    """The size guess is for streams only: a datagram bigger than the previous one still
    arrives whole."""

    async def main():
        a = bs.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        b = bs.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        with a, b:
            a.bind((LOCAL, 0))
            b.bind((LOCAL, 0))
            for size in (5_000, 5_000, 20_000, 6_000, 40_000):
                payload = os.urandom(size)
                await b.sendto(payload, a.getsockname())
                with fail_after(10):
                    data, _addr = await a.recvfrom(65536)
                assert data == payload
                await b.sendto(payload, a.getsockname())
                with fail_after(10):
                    assert await a.recv(65536) == payload

    run(main)


def test_recv_size_guess_does_not_shorten_a_peek():
    """MSG_PEEK is not guessed either: after a small receive, a peek sees the whole larger
    message that is queued, and a receive then returns it."""

    async def main():
        client, server = await tcp_pair()
        with client, server:
            await client.send_all(os.urandom(5_000))
            got = 0
            while got < 5_000:
                got += len(await server.recv(65536))
            payload = os.urandom(30_000)
            await client.send_all(payload)
            with fail_after(10):
                while True:
                    peeked = await server.recv(65536, stdlib_socket.MSG_PEEK)
                    if len(peeked) == len(payload):
                        break
                    await sleep(0.01)
            assert peeked == payload
            got = bytearray()
            while len(got) < len(payload):
                got += await server.recv(65536)
            assert bytes(got) == payload

    run(main)


def test_send_and_send_all_accept_every_buffer_type():
    """bytes are read in place, every other buffer through the buffer protocol: either way
    the receiver gets exactly what was sent, and a buffer changed after its send_all
    returned does not change what was sent."""

    class Bytes(bytes):
        pass

    chunks = [os.urandom(n) for n in (1, 64, 1000, 70_000)]

    def variants(data):
        yield data
        yield Bytes(data)
        yield bytearray(data)
        yield memoryview(b"\0" + data + b"\0")[1:-1]
        yield array.array("B", data)

    async def main():
        client, server = await tcp_pair()
        with client, server:
            expected = bytearray()
            async with open_nursery() as n:

                async def receiver():
                    got = bytearray()
                    while len(got) < 5 * 2 * sum(map(len, chunks)):
                        chunk = await server.recv(65536)
                        assert chunk
                        got += chunk
                    assert got == expected

                n.start_soon(receiver)
                for data in chunks:
                    for buf in variants(data):
                        expected += data
                        await client.send_all(buf)
                        if isinstance(buf, bytearray):
                            buf[:] = b"x" * len(buf)
                    for buf in variants(data):
                        expected += data
                        rest = buf
                        while len(rest):
                            rest = rest[await client.send(rest):]

    run(main)


# ---------------------------------------------------------------------------
# EOF, reset, half-close, refused


def test_eof_is_repeatable():
    """After the peer closes, every recv returns b'' (it must not wait for a new edge)."""

    async def main():
        a, b = bs.socketpair()
        with a:

            async def close_later():
                await sleep(0.02)
                b.close()

            async with open_nursery() as n:
                n.start_soon(close_later)
                assert await a.recv(10) == b""  # parked first, then woken by the EOF
            with fail_after(5):
                assert await a.recv(10) == b""
                assert await a.recv_into(bytearray(4)) == 0
                assert await a.recv(10) == b""

    run(main)


def test_eof_after_data():
    async def main():
        client, server = await tcp_pair()
        with server:
            await client.send_all(b"last words")
            client.close()
            assert await recv_exactly(server, 100) == b"last words"
            assert await server.recv(100) == b""

    run(main)


def test_peer_reset_raises_connection_reset():
    async def main():
        client, server = await tcp_pair()
        with client:
            linger_reset(server)
            server.close()
            with fail_after(5), pytest.raises(ConnectionResetError):
                await client.recv(100)

    run(main)


def test_send_after_peer_reset_raises():
    async def main():
        client, server = await tcp_pair()
        with client:
            linger_reset(server)
            server.close()
            with fail_after(5), pytest.raises((ConnectionResetError, BrokenPipeError)):
                for _ in range(100):
                    await client.send_all(b"x" * 65536)
                    await sleep(0.01)

    run(main)


def test_reset_wakes_a_parked_receiver():
    async def main():
        client, server = await tcp_pair()
        errors = []
        with client:

            async def reader():
                try:
                    await client.recv(100)
                except ConnectionResetError as exc:
                    errors.append(exc)

            async with open_nursery() as n:
                t = n.start_soon(reader)
                await wait_parked(t)
                linger_reset(server)
                server.close()
        assert len(errors) == 1

    run(main)


def test_half_close_with_shutdown():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            await client.send_all(b"request")
            await client.shutdown(bs.SHUT_WR)
            assert await recv_exactly(server, 100) == b"request"
            assert await server.recv(100) == b""  # the client's direction is finished
            # ... but the other direction still works.
            await server.send_all(b"response")
            await server.shutdown(bs.SHUT_WR)
            assert await recv_exactly(client, 100) == b"response"
            assert await client.recv(100) == b""

    run(main)


def test_connection_refused():
    port = unused_port()

    async def main():
        sock = bs.socket()
        with sock:
            with pytest.raises(ConnectionRefusedError) as info:
                await sock.connect((LOCAL, port))
            assert info.value.errno == errno.ECONNREFUSED

    run(main)


def test_unix_connect_waits_while_the_backlog_is_full(tmp_path):
    """EAGAIN from a Unix connect means 'backlog full': connect must wait, not pretend."""
    path = str(tmp_path / "full.sock")

    async def main():
        with bs.socket(bs.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen(0)
            fillers = []
            for _ in range(10):
                c = stdlib_socket.socket(stdlib_socket.AF_UNIX)
                c.setblocking(False)
                if c.connect_ex(path) != 0:
                    c.close()
                    break
                fillers.append(c)
            assert fillers, "could not queue a single connection"
            client = bs.socket(bs.AF_UNIX)
            with client:
                async with open_nursery() as n:
                    t = n.start_soon(client.connect, path)
                    await sleep(0.05)
                    assert not t.done(), "connect returned while the backlog was full"
                    for _ in fillers:
                        conn, _ = await listener.accept()
                        conn.close()
                conn, _ = await listener.accept()
                with conn:
                    await client.send_all(b"in")
                    assert await conn.recv(10) == b"in"
            for c in fillers:
                c.close()

    run(main)


def test_connect_to_bad_family_address_is_type_error():
    async def main():
        with bs.socket() as s:
            with pytest.raises(TypeError):
                await s.connect("not-a-tuple")

    run(main)


# ---------------------------------------------------------------------------
# timeouts and cancellation


def test_fail_after_on_recv_leaves_socket_usable():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            with pytest.raises(TimeoutError):
                with fail_after(0.05):
                    await server.recv(10)
            await client.send_all(b"after")
            with fail_after(5):
                assert await recv_exactly(server, 5) == b"after"

    run(main)


def test_task_cancel_during_recv_frees_the_direction():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            async with open_nursery() as n:
                t = n.start_soon(server.recv, 10)
                await wait_parked(t)
                t.cancel()
            assert t.cancelled()
            # No BusyResourceError: the cancelled receiver left the fd slot.
            await client.send_all(b"ok")
            with fail_after(5):
                assert await recv_exactly(server, 2) == b"ok"

    run(main)


def fill_with(sock, chunk=b"x" * 65536):
    """Fill the kernel send buffer of a stdlib-level view of sock (non-blocking)."""
    total = 0
    while True:
        try:
            total += sock._sock.send(chunk)
        except BlockingIOError:
            return total


def test_cancel_during_send_all_keeps_order_and_usability():
    """A cancelled send_all sent some prefix; the socket still works afterwards."""
    payload = bytes(random.Random(1).randbytes(4_000_000))

    async def main():
        client, server = await tcp_pair()
        with client, server:
            client.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 4096)
            with move_on_after(0.1) as scope:
                await client.send_all(payload)
            assert scope.cancelled_caught
            received = []

            async def reader():
                received.append(await recv_exactly(server, 10**8))

            async with open_nursery() as n:
                n.start_soon(reader)
                await client.send_all(b"MARK")
                await client.shutdown(bs.SHUT_WR)
            got = received[0]
            assert got.endswith(b"MARK")
            prefix = got[:-4]
            assert 0 < len(prefix) < len(payload)
            assert payload.startswith(prefix)

    run(main)


def test_fail_after_on_accept_then_accept_works():
    async def main():
        with bs.socket() as listener:
            listener.bind((LOCAL, 0))
            listener.listen(5)
            with pytest.raises(TimeoutError):
                with fail_after(0.05):
                    await listener.accept()
            with bs.socket() as client:
                await client.connect(listener.getsockname())
                with fail_after(5):
                    conn, addr = await listener.accept()
                with conn:
                    assert addr == client.getsockname()

    run(main)


def pending_connect_target():
    """A listener whose accept queue is full: further connects stay pending (SYN dropped)."""
    listener = stdlib_socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        c = stdlib_socket.socket()
        c.setblocking(False)
        c.connect_ex(listener.getsockname())
        fillers.append(c)
    return listener, fillers


def test_fail_after_on_connect_closes_the_socket():
    listener, fillers = pending_connect_target()

    async def main():
        timed_out = []
        for _ in range(8):
            sock = bs.socket()
            try:
                with fail_after(0.2):
                    await sock.connect(listener.getsockname())
            except TimeoutError:
                timed_out.append(sock)
                # A half-open connect cannot be resumed: it was closed, not left wedged.
                assert sock.closed
                break
            sock.close()
        assert timed_out, "no connect ever stayed pending"

    try:
        run(main)
    finally:
        for c in fillers:
            c.close()
        listener.close()


def test_cancel_before_connect_closes_the_socket():
    async def main():
        with bs.socket() as listener:
            listener.bind((LOCAL, 0))
            listener.listen(1)
            sock = bs.socket()
            with move_on_after(0) as scope:
                await sock.connect(listener.getsockname())
            assert scope.cancelled_caught
            assert sock.closed
            with pytest.raises(ClosedResourceError):
                await sock.recv(1)

    run(main)


# ---------------------------------------------------------------------------
# send_all under back-pressure


def test_send_all_tiny_sndbuf_slow_reader_delivers_everything_in_order():
    rng = random.Random(42)
    payload = rng.randbytes(300_000)

    async def main():
        client, server = await tcp_pair()
        with client, server:
            client.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 2048)
            got = bytearray()
            sent = []

            async def sender():
                await client.send_all(payload)
                sent.append(True)
                await client.shutdown(bs.SHUT_WR)

            async def slow_reader():
                reads = 0
                while True:
                    chunk = await server.recv(rng.randint(1, 3000))
                    if not chunk:
                        return
                    got.extend(chunk)
                    reads += 1
                    if reads % 20 == 0:
                        await sleep(0.001)

            async with open_nursery() as n:
                n.start_soon(sender)
                n.start_soon(slow_reader)
            assert sent == [True]
            assert len(got) == len(payload)
            assert bytes(got) == payload

    run(main)


# ---------------------------------------------------------------------------
# BusyResourceError, close while waiting, use after close


def test_second_receiver_gets_busy_resource_error():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            async with open_nursery() as n:
                t = n.start_soon(server.recv, 10)
                await wait_parked(t)
                with pytest.raises(BusyResourceError):
                    await server.recv(10)
                with pytest.raises(BusyResourceError):
                    await server.recv_into(bytearray(4))
                # The first receiver is unaffected.
                await client.send_all(b"hi")
            assert t.result() == b"hi"

    run(main)


def test_second_sender_gets_busy_resource_error():
    async def main():
        client, server = await tcp_pair()
        with client, server:
            client.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 4096)
            fill_with(client)
            async with open_nursery() as n:
                t = n.start_soon(client.send_all, b"y" * 100_000)
                await wait_parked(t)
                with pytest.raises(BusyResourceError):
                    await client.send(b"z")
                n.cancel()

    run(main)


def test_second_acceptor_gets_busy_resource_error():
    async def main():
        with bs.socket() as listener:
            listener.bind((LOCAL, 0))
            listener.listen(1)
            async with open_nursery() as n:
                t = n.start_soon(listener.accept)
                await wait_parked(t)
                with pytest.raises(BusyResourceError):
                    await listener.accept()
                n.cancel()

    run(main)


@pytest.mark.parametrize("op", ["recv", "recv_into", "send_all", "accept", "recvfrom"])
def test_close_while_waiting_raises_closed_resource_error(op):
    async def main():
        if op == "accept":
            sock = bs.socket()
            sock.bind((LOCAL, 0))
            sock.listen(1)
            waiter = sock.accept
            others = []
        elif op == "recvfrom":
            sock = bs.socket(bs.AF_INET, bs.SOCK_DGRAM)
            sock.bind((LOCAL, 0))
            waiter = lambda: sock.recvfrom(100)  # noqa: E731
            others = []
        else:
            sock, peer = await tcp_pair()
            others = [peer]
            if op == "recv":
                waiter = lambda: sock.recv(10)  # noqa: E731
            elif op == "recv_into":
                waiter = lambda: sock.recv_into(bytearray(10))  # noqa: E731
            else:
                sock.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 4096)
                fill_with(sock)
                waiter = lambda: sock.send_all(b"q" * 100_000)  # noqa: E731
        errors = []

        async def wait_on_it():
            try:
                await waiter()
            except ClosedResourceError as exc:
                errors.append(exc)

        async with open_nursery() as n:
            t = n.start_soon(wait_on_it)
            await wait_parked(t)
            sock.close()
        assert len(errors) == 1
        assert sock.closed
        with pytest.raises(ClosedResourceError):
            await waiter()
        for s in others:
            s.close()

    run(main)


def test_methods_on_closed_socket_raise_closed_resource_error():
    async def main():
        s = bs.socket()
        s.close()
        s.close()  # idempotent
        for call in (lambda: s.recv(1), lambda: s.send(b"x"), lambda: s.send_all(b"x"),
                     lambda: s.recv_into(bytearray(1)), lambda: s.accept()):
            with pytest.raises(ClosedResourceError):
                await call()

    run(main)


def test_async_with_closes_and_detach_keeps_fd():
    async def main():
        async with bs.socket() as s:
            fd = s.fileno()
            assert fd >= 0
        assert s.closed
        t = bs.socket()
        fd = t.detach()
        assert t.closed and fd >= 0
        os.fstat(fd)  # still open
        os.close(fd)

    run(main)


def test_socket_used_by_two_loops_in_turn():
    a, b = bs.socketpair()
    with a, b:

        async def exchange(tag):
            async with open_nursery() as n:
                t = n.start_soon(b.recv, 10)
                await wait_parked(t)  # registers b with this loop's epoll
                await a.send_all(tag)
            return t.result()

        assert run(exchange, b"one") == b"one"
        assert run(exchange, b"two") == b"two"


# ---------------------------------------------------------------------------
# datagrams and the stdlib-call operations


def udp_pair():
    a = bs.socket(bs.AF_INET, bs.SOCK_DGRAM)
    b = bs.socket(bs.AF_INET, bs.SOCK_DGRAM)
    a.bind((LOCAL, 0))
    b.bind((LOCAL, 0))
    return a, b


def test_sendto_recvfrom_and_recvfrom_into():
    async def main():
        a, b = udp_pair()
        with a, b:
            async with open_nursery() as n:
                t = n.start_soon(b.recvfrom, 100)
                await wait_parked(t)
                assert await a.sendto(b"dgram", b.getsockname()) == 5
            assert t.result() == (b"dgram", a.getsockname())
            await a.sendto(b"flags", 0, b.getsockname())
            buf = bytearray(10)
            nbytes, addr = await b.recvfrom_into(buf)
            assert (bytes(buf[:nbytes]), addr) == (b"flags", a.getsockname())

    run(main)


def test_connected_udp_receives_every_queued_datagram():
    """recv on a datagram socket returns one datagram; the rest must not wait for an edge."""

    async def main():
        a, b = udp_pair()
        with a, b:
            await a.connect(b.getsockname())
            await b.connect(a.getsockname())
            async with open_nursery() as n:
                t = n.start_soon(b.recv, 100)
                await wait_parked(t)
                for i in range(5):
                    await a.send(b"d%d" % i)
            got = [t.result()]
            with fail_after(5):
                for _ in range(4):
                    got.append(await b.recv(100))
            assert got == [b"d0", b"d1", b"d2", b"d3", b"d4"]

    run(main)


def test_sendmsg_recvmsg_pass_a_file_descriptor():
    async def main():
        a, b = bs.socketpair()
        r, w = os.pipe()
        try:
            with a, b:
                fds = array.array("i", [w])
                n = await a.sendmsg([b"with ", b"fd"], [(bs.SOL_SOCKET, bs.SCM_RIGHTS, fds)])
                assert n == 7
                msg, ancdata, flags, _addr = await b.recvmsg(100, bs.CMSG_SPACE(4))
                assert msg == b"with fd"
                assert len(ancdata) == 1
                level, kind, data = ancdata[0]
                assert (level, kind) == (bs.SOL_SOCKET, bs.SCM_RIGHTS)
                (received_fd,) = array.array("i", data[:4])
                os.write(received_fd, b"through the passed fd")
                os.close(received_fd)
                assert os.read(r, 100) == b"through the passed fd"
        finally:
            os.close(r)
            os.close(w)

    run(main)


def test_recvmsg_waits_for_data():
    async def main():
        a, b = bs.socketpair()
        with a, b:
            async with open_nursery() as n:
                t = n.start_soon(b.recvmsg, 100)
                await wait_parked(t)
                await a.sendmsg([b"later"])
            assert t.result()[0] == b"later"

    run(main)


def test_sendfile_sends_the_requested_range_and_moves_the_file_position():
    content = random.Random(3).randbytes(3_000_000)

    async def main():
        client, server = await tcp_pair()
        with client, server, tempfile.TemporaryFile() as f:
            f.write(content)
            f.seek(0)
            client.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 8192)
            result = {}

            async def sender():
                result["whole"] = await client.sendfile(f)
                result["pos"] = f.tell()
                result["part"] = await client.sendfile(f, 10, 1000)
                result["pos2"] = f.tell()
                await client.shutdown(bs.SHUT_WR)

            async with open_nursery() as n:
                n.start_soon(sender)
                got = await recv_exactly(server, 10**8)
            assert result == {"whole": len(content), "pos": len(content), "part": 1000,
                              "pos2": 1010}
            assert got == content + content[10:1010]
            with pytest.raises(ValueError):
                await client.sendfile(f, 0, 0)

    run(main)


# ---------------------------------------------------------------------------
# resolver, constructors


def test_getaddrinfo_numeric_and_named():
    async def main():
        numeric = await bs.getaddrinfo("127.0.0.1", 80, type=bs.SOCK_STREAM)
        assert numeric == stdlib_socket.getaddrinfo("127.0.0.1", 80, type=stdlib_socket.SOCK_STREAM)
        named = await bs.getaddrinfo("localhost", "80", bs.AF_INET, bs.SOCK_STREAM)
        assert named and all(info[4] == ("127.0.0.1", 80) for info in named)
        with pytest.raises(bs.gaierror):
            await bs.getaddrinfo("no-such-host.invalid", 80)

    run(main)


def test_getaddrinfo_in_thread_is_cancellable():
    async def main():
        with move_on_after(0) as scope:
            await bs.getaddrinfo("localhost", 80)
        assert scope.cancelled_caught

    run(main)


def test_getnameinfo():
    async def main():
        numeric = await bs.getnameinfo(("127.0.0.1", 8080), bs.NI_NUMERICHOST | bs.NI_NUMERICSERV)
        assert numeric == ("127.0.0.1", "8080")
        named = await bs.getnameinfo(("127.0.0.1", 22), bs.NI_NUMERICSERV)
        assert named == stdlib_socket.getnameinfo(("127.0.0.1", 22), stdlib_socket.NI_NUMERICSERV)

    run(main)


def test_socketpair_is_connected_both_ways():
    async def main():
        a, b = bs.socketpair()
        with a, b:
            assert a.family == bs.AF_UNIX
            await a.send_all(b"ab")
            assert await b.recv(10) == b"ab"
            await b.send_all(b"ba")
            assert await a.recv(10) == b"ba"
        c, d = bs.socketpair(bs.AF_UNIX, bs.SOCK_DGRAM)
        with c, d:
            await c.send(b"1")
            await c.send(b"2")
            assert [await d.recv(10), await d.recv(10)] == [b"1", b"2"]

    run(main)


def test_wrap_socket_and_loop_wrap_socket():
    async def main():
        raw_a, raw_b = stdlib_socket.socketpair()
        assert raw_a.getblocking()
        a = bs.wrap_socket(raw_a)
        b = broomio.current_loop().wrap_socket(raw_b)
        with a, b:
            assert isinstance(a, bs.socket) and isinstance(b, bs.socket)
            assert not raw_a.getblocking() and not raw_b.getblocking()
            assert a.fileno() == raw_a.fileno()
            await a.send_all(b"wrapped")
            assert await b.recv(100) == b"wrapped"
        assert raw_a.fileno() == -1  # closing the async socket closed the stdlib one
        with pytest.raises(TypeError):
            bs.wrap_socket(object())

    run(main)


def test_loop_wrap_socket_outside_run():
    raw = stdlib_socket.socket()
    with broomio.Loop() as loop:
        s = loop.wrap_socket(raw)
        assert isinstance(s, bs.socket)
        s.close()
    assert raw.fileno() == -1


def test_fromfd_duplicates():
    async def main():
        a, b = bs.socketpair()
        with a, b:
            c = bs.fromfd(a.fileno(), bs.AF_UNIX, bs.SOCK_STREAM)
            with c:
                assert c.fileno() != a.fileno()
                await c.send_all(b"from dup")
                assert await b.recv(100) == b"from dup"
            # closing the duplicate leaves the original open
            await a.send_all(b"orig")
            assert await b.recv(100) == b"orig"

    run(main)


def test_socket_from_fileno_argument():
    raw = stdlib_socket.socket()
    fd = raw.detach()
    s = bs.socket(fileno=fd)
    with s:
        assert s.fileno() == fd and s.family == bs.AF_INET and s.type == bs.SOCK_STREAM


def test_sockopts_and_inheritable():
    with bs.socket() as s:
        s.setsockopt(bs.SOL_SOCKET, bs.SO_REUSEADDR, 1)
        assert s.getsockopt(bs.SOL_SOCKET, bs.SO_REUSEADDR) == 1
        assert s.get_inheritable() is False
        s.set_inheritable(True)
        assert s.get_inheritable() is True


# ---------------------------------------------------------------------------
# many connections


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


@pytest.mark.slow
def test_thousand_concurrent_connections_checksummed():
    N = 1000
    saved = raise_nofile(2 * N + 200)
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randint(1, 20_000)) for _ in range(N)]

    async def main():
        results = {}
        listener = bs.socket()
        listener.bind((LOCAL, 0))
        listener.listen(N)
        address = listener.getsockname()

        async def echo(conn):
            with conn:
                header = await recv_exactly(conn, 4)
                (size,) = struct.unpack("!I", header)
                data = await recv_exactly(conn, size)
                digest = hashlib.sha256(data).digest()
                await conn.send_all(digest + data[::-1])

        async def server(n):
            for _ in range(N):
                conn, _ = await listener.accept()
                n.start_soon(echo, conn)

        async def client(i):
            data = payloads[i]
            with bs.socket() as s:
                await s.connect(address)
                await s.send_all(struct.pack("!I", len(data)) + data)
                reply = await recv_exactly(s, 32 + len(data))
                results[i] = reply

        with listener:
            async with open_nursery() as n:
                n.start_soon(server, n)
                async with open_nursery() as clients:
                    for i in range(N):
                        clients.start_soon(client, i)
        return results

    try:
        results = run(main)
    finally:
        if saved:
            resource.setrlimit(resource.RLIMIT_NOFILE, saved)
    assert len(results) == N
    for i, data in enumerate(payloads):
        assert results[i] == hashlib.sha256(data).digest() + data[::-1], f"connection {i}"
