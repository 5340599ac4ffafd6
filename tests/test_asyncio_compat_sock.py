"""asyncio compatibility, low-level I/O: add_reader/add_writer and every sock_* method,
getaddrinfo/getnameinfo.  Each test runs on stock asyncio (the oracle) and on broomio.asyncio
(see tests/_aio_support.py)."""

from __future__ import annotations

import asyncio
import io
import os
import socket

import pytest

from _aio_support import (  # noqa: F401
    aio_loop,
    broomio_xfail,
    loop_factory,
    loop_name,
    nonblocking_pair,
    run,
    tcp_listener,
)

# ---------------------------------------------------------------------------
# add_reader / add_writer / remove_*


def test_add_reader_fires_on_data_and_remove(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            got = asyncio.Queue()
            aio_loop.add_reader(a.fileno(), lambda: got.put_nowait(a.recv(100)))
            b.send(b"one")
            first = await got.get()
            b.send(b"two")
            second = await got.get()
            assert aio_loop.remove_reader(a.fileno()) is True
            assert aio_loop.remove_reader(a.fileno()) is False
            b.send(b"three")
            await asyncio.sleep(0.02)
            return first, second, got.empty(), a.recv(100)

        assert run(aio_loop, main()) == (b"one", b"two", True, b"three")
    finally:
        a.close()
        b.close()


def test_add_reader_accepts_socket_object_and_args(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            fut = aio_loop.create_future()

            def ready(tag, sock):
                aio_loop.remove_reader(sock)
                fut.set_result((tag, sock.recv(10)))

            aio_loop.add_reader(a, ready, "tag", a)
            b.send(b"x")
            return await fut

        assert run(aio_loop, main()) == ("tag", b"x")
    finally:
        a.close()
        b.close()


def test_add_reader_replaces_previous_callback(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            fut = aio_loop.create_future()
            aio_loop.add_reader(a, lambda: fut.set_result("old"))
            aio_loop.add_reader(a, lambda: fut.set_result("new"))
            b.send(b"x")
            res = await fut
            aio_loop.remove_reader(a)
            return res

        assert run(aio_loop, main()) == "new"
    finally:
        a.close()
        b.close()


def test_add_writer_fires_when_writable(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            fut = aio_loop.create_future()

            def writable():
                assert aio_loop.remove_writer(a) is True
                fut.set_result(a.send(b"hello"))

            aio_loop.add_writer(a.fileno(), writable)
            n = await fut
            assert aio_loop.remove_writer(a) is False
            await asyncio.sleep(0.01)
            return n, b.recv(10)

        assert run(aio_loop, main()) == (5, b"hello")
    finally:
        a.close()
        b.close()


def test_add_writer_waits_for_buffer_space(aio_loop):
    a, b = nonblocking_pair()
    try:
        filled = 0
        while True:
            try:
                filled += a.send(b"x" * 65536)
            except BlockingIOError:
                break

        async def main():
            fut = aio_loop.create_future()
            aio_loop.add_writer(a, lambda: fut.done() or fut.set_result("writable"))
            await asyncio.sleep(0.02)
            early = fut.done()
            drained = 0
            while drained < filled:
                try:
                    drained += len(b.recv(1 << 20))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            res = await fut
            aio_loop.remove_writer(a)
            return early, res

        assert run(aio_loop, main()) == (False, "writable")
    finally:
        a.close()
        b.close()


def test_reader_and_writer_on_same_fd(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            events = []
            both = aio_loop.create_future()

            def check():
                if {"r", "w"} <= set(events) and not both.done():
                    both.set_result(None)

            def on_read():
                events.append("r")
                aio_loop.remove_reader(a)
                check()

            def on_write():
                events.append("w")
                aio_loop.remove_writer(a)
                check()

            aio_loop.add_reader(a, on_read)
            aio_loop.add_writer(a, on_write)
            b.send(b"x")
            await both
            return sorted(set(events))

        assert run(aio_loop, main()) == ["r", "w"]
    finally:
        a.close()
        b.close()


def test_add_reader_bad_fd(aio_loop):
    with pytest.raises(ValueError):
        aio_loop.add_reader(-1, print)
    with pytest.raises((TypeError, ValueError)):
        aio_loop.add_reader("nope", print)


def test_add_reader_on_closed_loop(loop_factory):
    loop = loop_factory()
    loop.close()
    a, b = nonblocking_pair()
    try:
        with pytest.raises(RuntimeError):
            loop.add_reader(a, print)
    finally:
        a.close()
        b.close()


def test_add_reader_refused_for_socket_owned_by_transport(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, _ = await aio_loop.connect_accepted_socket(asyncio.Protocol, a)
            try:
                with pytest.raises(RuntimeError, match="is used by transport"):
                    aio_loop.add_reader(a.fileno(), print)
            finally:
                tr.close()
                await asyncio.sleep(0)
            return True

        assert run(aio_loop, main())
    finally:
        b.close()


# ---------------------------------------------------------------------------
# sock_* methods


def test_debug_sock_methods_require_nonblocking_socket(aio_loop):
    aio_loop.set_debug(True)
    s, t = socket.socketpair()
    try:
        async def main():
            with pytest.raises(ValueError, match="non-blocking"):
                await aio_loop.sock_recv(s, 10)
            with pytest.raises(ValueError, match="non-blocking"):
                await aio_loop.sock_sendall(s, b"x")
            return True

        assert run(aio_loop, main())
    finally:
        s.close()
        t.close()


def test_sock_connect_accept_sendall_recv(aio_loop):
    lsock = tcp_listener()
    addr = lsock.getsockname()
    client = socket.socket()
    client.setblocking(False)
    try:
        async def main():
            accept = asyncio.ensure_future(aio_loop.sock_accept(lsock))
            await aio_loop.sock_connect(client, addr)
            conn, peer = await accept
            with conn:
                assert not conn.getblocking()  # asyncio returns a non-blocking socket
                assert peer == client.getsockname()
                payload = os.urandom(1 << 20)
                send = asyncio.ensure_future(aio_loop.sock_sendall(client, payload))
                got = bytearray()
                while len(got) < len(payload):
                    chunk = await aio_loop.sock_recv(conn, 65536)
                    assert chunk
                    got += chunk
                assert await send is None
                assert bytes(got) == payload
                client.shutdown(socket.SHUT_WR)
                return await aio_loop.sock_recv(conn, 10)

        assert run(aio_loop, main()) == b""
    finally:
        client.close()
        lsock.close()


def test_sock_recv_into(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            buf = bytearray(10)
            later = asyncio.ensure_future(aio_loop.sock_recv_into(a, buf))
            await asyncio.sleep(0.01)
            assert not later.done()
            await aio_loop.sock_sendall(b, b"abc")
            n = await later
            view = memoryview(buf)[5:]
            await aio_loop.sock_sendall(b, b"defghij")
            m = await aio_loop.sock_recv_into(a, view)
            return n, m, bytes(buf)

        assert run(aio_loop, main()) == (3, 5, b"abc\0\0defgh")
    finally:
        a.close()
        b.close()


def test_sock_recv_cancel_leaves_socket_usable(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            t = asyncio.ensure_future(aio_loop.sock_recv(a, 10))
            await asyncio.sleep(0.01)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            b.send(b"after")
            return await aio_loop.sock_recv(a, 10)

        assert run(aio_loop, main()) == b"after"
    finally:
        a.close()
        b.close()


def _udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    return a, b


def test_sock_sendto_recvfrom(aio_loop):
    a, b = _udp_pair()
    try:
        async def main():
            pending = asyncio.ensure_future(aio_loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert not pending.done()
            n = await aio_loop.sock_sendto(a, b"datagram", b.getsockname())
            data, addr = await pending
            return n, data, addr == a.getsockname()

        assert run(aio_loop, main()) == (8, b"datagram", True)
    finally:
        a.close()
        b.close()


def test_sock_recvfrom_into(aio_loop):
    a, b = _udp_pair()
    try:
        async def main():
            buf = bytearray(16)
            await aio_loop.sock_sendto(a, b"0123456789", b.getsockname())
            n, addr = await aio_loop.sock_recvfrom_into(b, buf)
            await aio_loop.sock_sendto(a, b"abcdef", b.getsockname())
            m, _ = await aio_loop.sock_recvfrom_into(b, buf, 3)  # nbytes bounds the read
            return n, m, bytes(buf[:10]), addr == a.getsockname()

        assert run(aio_loop, main()) == (10, 3, b"abc3456789", True)
    finally:
        a.close()
        b.close()


def test_sock_connect_refused(aio_loop):
    lsock = tcp_listener()
    addr = lsock.getsockname()
    lsock.close()  # nothing listens there now
    s = socket.socket()
    s.setblocking(False)
    try:
        async def main():
            with pytest.raises(ConnectionRefusedError):
                await aio_loop.sock_connect(s, addr)
            return True

        assert run(aio_loop, main())
    finally:
        s.close()


def test_sock_connect_resolves_hostname(aio_loop):
    lsock = tcp_listener()
    port = lsock.getsockname()[1]
    s = socket.socket()
    s.setblocking(False)
    try:
        async def main():
            await aio_loop.sock_connect(s, ("localhost", port))
            conn, _ = await aio_loop.sock_accept(lsock)
            conn.close()
            return s.getpeername()[1]

        assert run(aio_loop, main()) == port
    finally:
        s.close()
        lsock.close()


def test_sock_sendall_to_closed_peer(aio_loop):
    a, b = nonblocking_pair()
    b.close()
    try:
        async def main():
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                for _ in range(100):
                    await aio_loop.sock_sendall(a, b"x" * 65536)
            return True

        assert run(aio_loop, main())
    finally:
        a.close()


@pytest.mark.parametrize("count", [None, 5000])
def test_sock_sendfile(aio_loop, tmp_path, count):
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    a, b = nonblocking_pair()
    try:
        async def main():
            got = bytearray()

            async def reader():
                while True:
                    chunk = await aio_loop.sock_recv(b, 65536)
                    if not chunk:
                        return
                    got.extend(chunk)

            r = asyncio.ensure_future(reader())
            with open(path, "rb") as f:
                f.seek(100)
                sent = await aio_loop.sock_sendfile(a, f, 100, count)
                pos = f.tell()
            a.shutdown(socket.SHUT_WR)
            await r
            return sent, pos, bytes(got)

        sent, pos, got = run(aio_loop, main())
        expected = data[100:] if count is None else data[100:100 + count]
        assert sent == len(expected)
        assert pos == 100 + len(expected)
        assert got == expected
    finally:
        a.close()
        b.close()


def test_sock_sendfile_non_regular_file_fallback(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            f = io.BytesIO(b"in memory")
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await aio_loop.sock_sendfile(a, f, fallback=False)
            sent = await aio_loop.sock_sendfile(a, f)  # fallback: read + sock_sendall
            return sent, await aio_loop.sock_recv(b, 100)

        assert run(aio_loop, main()) == (9, b"in memory")
    finally:
        a.close()
        b.close()


def test_sock_sendfile_rejects_datagram_socket(aio_loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    a, b = _udp_pair()
    try:
        async def main():
            with open(path, "rb") as f:
                with pytest.raises(ValueError, match="SOCK_STREAM"):
                    await aio_loop.sock_sendfile(a, f)
            return True

        assert run(aio_loop, main())
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------
# name resolution


def test_getaddrinfo(aio_loop):
    async def main():
        infos = await aio_loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        named = await aio_loop.getaddrinfo("localhost", "80", family=socket.AF_INET,
                                           proto=socket.IPPROTO_TCP)
        return infos, named

    infos, named = run(aio_loop, main())
    assert infos == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    assert (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
            ("127.0.0.1", 80)) in named


def test_getaddrinfo_error(aio_loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await aio_loop.getaddrinfo("host.invalid.", 80, flags=socket.AI_NUMERICHOST)
        return True

    assert run(aio_loop, main())


def test_getnameinfo(aio_loop):
    async def main():
        return await aio_loop.getnameinfo(("127.0.0.1", 80),
                                          socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)

    assert run(aio_loop, main()) == ("127.0.0.1", "80")


def test_remove_reader_after_socket_closed(aio_loop):
    """Closing a socket before removing its reader (a common shutdown order) is tolerated."""
    a, b = nonblocking_pair()
    fd = a.fileno()

    async def main():
        aio_loop.add_reader(fd, print)
        aio_loop.add_writer(fd, print)
        await asyncio.sleep(0)
        aio_loop.remove_writer(fd)
        a.close()
        removed = aio_loop.remove_reader(fd)
        await asyncio.sleep(0.01)  # the loop keeps polling without the dead fd
        return removed

    try:
        assert run(aio_loop, main()) is True
    finally:
        b.close()


def test_reader_fd_number_reused_after_clean_removal(aio_loop):
    """remove_reader, close, then a new socket gets the same fd number and a new reader."""
    async def main():
        got = []
        for i in range(3):
            a, b = nonblocking_pair()
            fut = aio_loop.create_future()
            aio_loop.add_reader(a.fileno(), lambda s=a, f=fut: f.done() or f.set_result(s.recv(9)))
            b.send(b"round %d" % i)
            got.append((a.fileno(), await fut))
            aio_loop.remove_reader(a.fileno())
            a.close()
            b.close()
        return got

    got = run(aio_loop, main())
    assert [data for _, data in got] == [b"round 0", b"round 1", b"round 2"]
    assert len({fd for fd, _ in got}) == 1  # the same number each time


def test_sock_recv_zero_and_sendall_empty(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            zero = await aio_loop.sock_recv(a, 0)
            none = await aio_loop.sock_sendall(b, b"")
            into = await aio_loop.sock_recv_into(a, bytearray(0))
            return zero, none, into

        assert run(aio_loop, main()) == (b"", None, 0)
    finally:
        a.close()
        b.close()


def test_sock_recv_connection_reset(aio_loop):
    lsock = tcp_listener()
    client = socket.socket()
    client.setblocking(False)
    try:
        async def main():
            await aio_loop.sock_connect(client, lsock.getsockname())
            conn, _ = await aio_loop.sock_accept(lsock)
            pending = asyncio.ensure_future(aio_loop.sock_recv(client, 100))
            await asyncio.sleep(0.01)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()  # RST while the receive waits
            with pytest.raises(ConnectionResetError):
                await pending
            return True

        assert run(aio_loop, main())
    finally:
        client.close()
        lsock.close()


def test_concurrent_sock_ops_on_many_sockets(aio_loop):
    """50 socket pairs: a receive pending on each end while the other end sends, both
    directions at once, several rounds."""
    pairs = [nonblocking_pair() for _ in range(50)]
    try:
        async def echo_round(i, a, b):
            out = []
            for r in range(5):
                msg = b"%d:%d" % (i, r)
                recv_b = asyncio.ensure_future(aio_loop.sock_recv(b, 100))
                recv_a = asyncio.ensure_future(aio_loop.sock_recv(a, 100))
                await asyncio.sleep(0)
                await asyncio.gather(aio_loop.sock_sendall(a, msg),
                                     aio_loop.sock_sendall(b, msg[::-1]))
                out.append((await recv_b, await recv_a))
            return out

        async def main():
            return await asyncio.gather(*(echo_round(i, a, b) for i, (a, b) in enumerate(pairs)))

        results = run(aio_loop, main())
        for i, out in enumerate(results):
            assert out == [(b"%d:%d" % (i, r), (b"%d:%d" % (i, r))[::-1]) for r in range(5)]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_sock_sendall_cancelled_midway_then_socket_reusable(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            big = b"z" * (8 << 20)
            send = asyncio.ensure_future(aio_loop.sock_sendall(a, big))
            await asyncio.sleep(0.01)
            assert not send.done()  # nobody reads: it waits for buffer space
            send.cancel()
            with pytest.raises(asyncio.CancelledError):
                await send
            received = 0
            while True:  # drain what did go out
                try:
                    chunk = b.recv(1 << 20)
                except BlockingIOError:
                    break
                received += len(chunk)
            await aio_loop.sock_sendall(a, b"after")
            tail = await aio_loop.sock_recv(b, 100)
            return 0 < received < len(big), tail

        assert run(aio_loop, main()) == (True, b"after")
    finally:
        a.close()
        b.close()
