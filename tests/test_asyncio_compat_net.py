"""asyncio compatibility, transports and servers: create_connection/create_server (TCP, TLS,
start_serving, serve_forever, reuse_port), Unix sockets, datagrams, connect_accepted_socket,
start_tls, loop.sendfile, flow control, half-close, BufferedProtocol and asyncio streams.
Each test runs on stock asyncio (the oracle) and on broomio.asyncio (tests/_aio_support.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys

import pytest

from _aio_support import (  # noqa: F401
    Recorder,
    aio_loop,
    broomio_xfail,
    loop_factory,
    loop_name,
    nonblocking_pair,
    run,
    tcp_listener,
    unix_path,
)
from tls_certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("aio-pki")), "aio")


class Echo(asyncio.Protocol):
    """Server side: echo everything; on EOF, close."""

    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Handlers:
    """Wraps a start_server callback; ``await handlers.wait()`` returns once every call that
    started has returned (Python 3.11's Server.wait_closed does not wait for them)."""

    def __init__(self, fn):
        self.fn = fn
        self.tasks = []

    async def __call__(self, reader, writer):
        self.tasks.append(asyncio.current_task())
        await self.fn(reader, writer)

    async def wait(self):
        await asyncio.gather(*self.tasks)


async def _collect(proto: Recorder, n: int) -> bytes:
    while len(proto.data) < n:
        await asyncio.sleep(0.001)
    return bytes(proto.data)


# ---------------------------------------------------------------------------
# TCP


def test_create_server_and_connection_echo(aio_loop):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.is_serving()
        assert server.get_loop() is aio_loop
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        sock = tr.get_extra_info("socket")
        assert sock.fileno() >= 0
        assert sock.getsockname() == tr.get_extra_info("sockname")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
        assert not tr.is_closing()
        payload = os.urandom(200_000)
        tr.write(payload[:1000])
        tr.writelines([payload[1000:5000], memoryview(payload)[5000:]])
        got = await _collect(proto, len(payload))
        tr.close()
        assert tr.is_closing()
        await proto.done
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        return got == payload, proto.events

    same, events = run(aio_loop, main())
    assert same
    assert events == ["made", "data", ("lost", None)]


def test_create_connection_with_sock(aio_loop):
    lsock = tcp_listener()
    s = socket.socket()
    try:
        s.connect(lsock.getsockname())
        conn, _ = lsock.accept()

        async def main():
            tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop), sock=s)
            conn.sendall(b"from peer")
            data = await _collect(proto, 9)
            tr.close()
            await proto.done
            return data

        assert run(aio_loop, main()) == b"from peer"
        conn.close()
    finally:
        lsock.close()


def test_create_connection_refused(aio_loop):
    lsock = tcp_listener()
    port = lsock.getsockname()[1]
    lsock.close()

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await aio_loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        return True

    assert run(aio_loop, main())


def test_create_connection_argument_errors(aio_loop):
    async def main():
        with pytest.raises(ValueError):
            await aio_loop.create_connection(asyncio.Protocol)  # no host/port, no sock
        with pytest.raises(ValueError):
            await aio_loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                             server_hostname="x")  # without ssl
        with pytest.raises(ValueError):
            await aio_loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                             ssl_handshake_timeout=1)
        return True

    assert run(aio_loop, main())


def test_create_server_start_serving_false_and_start_serving(aio_loop):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        port = server.sockets[0].getsockname()[1]
        await server.start_serving()
        assert server.is_serving()
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        tr.write(b"ping")
        got = await _collect(proto, 4)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return got

    assert run(aio_loop, main()) == b"ping"


def test_server_serve_forever_and_async_with(aio_loop):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        async with server:
            task = asyncio.ensure_future(server.serve_forever())
            await asyncio.sleep(0.01)
            assert server.is_serving()
            with pytest.raises(RuntimeError):
                await server.serve_forever()  # already being awaited
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # serve_forever's cancellation closes the server
            assert not server.is_serving()
        return True

    assert run(aio_loop, main())


def test_create_server_with_sock_and_multiple_clients(aio_loop):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))

    async def main():
        server = await aio_loop.create_server(Echo, sock=lsock)
        port = lsock.getsockname()[1]

        async def client(i):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"client %d\n" % i)
            line = await r.readline()
            w.close()
            await w.wait_closed()
            return line

        lines = await asyncio.gather(*(client(i) for i in range(20)))
        server.close()
        await server.wait_closed()
        return lines

    assert run(aio_loop, main()) == [b"client %d\n" % i for i in range(20)]


def test_create_server_reuse_port(aio_loop):
    async def main():
        s1 = await aio_loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        s2 = await aio_loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        opts = [s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
                for s in (s1, s2)]
        with pytest.raises(OSError):
            await aio_loop.create_server(Echo, "127.0.0.1", port)  # no reuse_port: in use
        for s in (s1, s2):
            s.close()
            await s.wait_closed()
        return opts

    assert run(aio_loop, main()) == [True, True]


def test_server_close_clients(aio_loop):
    async def main():
        server_protos = []

        def factory():
            p = Echo()
            server_protos.append(p)
            return p

        server = await aio_loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        tr.write(b"x")
        await _collect(proto, 1)
        server.close()
        # Existing connections survive server.close() (asyncio 3.11 semantics).
        tr.write(b"y")
        await _collect(proto, 2)
        tr.close()
        await proto.done
        await server.wait_closed()
        return bytes(proto.data)

    assert run(aio_loop, main()) == b"xy"


def test_write_eof_half_close(aio_loop):
    class HalfServer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buf = b""

        def data_received(self, data):
            self.buf += data

        def eof_received(self):
            # Peer finished sending: answer, then close our side.
            self.transport.write(b"got:" + self.buf)
            self.transport.close()
            return True

    async def main():
        server = await aio_loop.create_server(HalfServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        assert tr.can_write_eof()
        tr.write(b"request")
        tr.write_eof()
        assert not tr.is_closing()
        await proto.eof
        await proto.done
        server.close()
        await server.wait_closed()
        return bytes(proto.data), proto.events

    data, events = run(aio_loop, main())
    assert data == b"got:request"
    assert events == ["made", "data", "eof", ("lost", None)]


def test_eof_received_returning_true_keeps_transport_open(aio_loop):
    a, b = nonblocking_pair()

    class KeepOpen(Recorder):
        def eof_received(self):
            super().eof_received()
            return True

    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: KeepOpen(aio_loop), a)
            b.shutdown(socket.SHUT_WR)
            await proto.eof
            await asyncio.sleep(0.01)
            assert not proto.done.done()
            tr.write(b"still writable")
            await asyncio.sleep(0.01)
            tr.close()
            await proto.done
            return b.recv(100), proto.events

        data, events = run(aio_loop, main())
        assert data == b"still writable"
        assert events == ["made", "eof", ("lost", None)]
    finally:
        b.close()


def test_transport_abort(aio_loop):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        tr.write(b"never mind")
        tr.abort()
        assert tr.is_closing()
        exc = await proto.done
        server.close()
        await server.wait_closed()
        return exc

    assert run(aio_loop, main()) is None


def test_peer_reset_reports_connection_lost(aio_loop):
    lsock = tcp_listener()

    async def main():
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     *lsock.getsockname())
        conn, _ = await aio_loop.sock_accept(lsock)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        conn.close()  # RST
        exc = await proto.done
        tr.close()
        return type(exc).__name__ if exc else None

    try:
        assert run(aio_loop, main()) in ("ConnectionResetError", None)
    finally:
        lsock.close()


def test_write_after_close_is_ignored(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            tr.close()
            tr.write(b"dropped")  # asyncio ignores (warns after several) writes when closing
            await proto.done
            return True

        assert run(aio_loop, main())
    finally:
        b.close()


def test_write_rejects_str(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            with pytest.raises(TypeError):
                tr.write("text")
            tr.close()
            await proto.done
            return True

        assert run(aio_loop, main())
    finally:
        b.close()


# ---------------------------------------------------------------------------
# flow control


def test_pause_writing_resume_writing(aio_loop):
    a, b = nonblocking_pair()

    class Flow(Recorder):
        def pause_writing(self):
            self.events.append("pause")

        def resume_writing(self):
            self.events.append("resume")

    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Flow(aio_loop), a)
            tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            chunk = b"z" * 65536
            for _ in range(40):
                tr.write(chunk)
                if "pause" in proto.events:
                    break
            assert "pause" in proto.events
            assert tr.get_write_buffer_size() > 64 * 1024
            total = 0
            while "resume" not in proto.events:
                try:
                    total += len(b.recv(1 << 20))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert tr.get_write_buffer_size() <= 16 * 1024
            tr.close()
            while True:
                try:
                    data = b.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                if not data:
                    break
                total += len(data)
            await proto.done
            return [e for e in proto.events if e in ("pause", "resume")], total % 65536

        assert run(aio_loop, main()) == (["pause", "resume"], 0)
    finally:
        b.close()


def test_set_write_buffer_limits_validation(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=10, low=20)
            tr.set_write_buffer_limits(high=100)
            limits = tr.get_write_buffer_limits()
            tr.close()
            await proto.done
            return limits

        assert run(aio_loop, main()) == (25, 100)
    finally:
        b.close()


def test_pause_reading_resume_reading(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(lambda: Recorder(aio_loop), a)
            assert tr.is_reading()
            tr.pause_reading()
            assert not tr.is_reading()
            tr.pause_reading()  # idempotent
            b.send(b"held back")
            await asyncio.sleep(0.03)
            held = bytes(proto.data)
            tr.resume_reading()
            assert tr.is_reading()
            got = await _collect(proto, 9)
            tr.close()
            await proto.done
            return held, got

        assert run(aio_loop, main()) == (b"", b"held back")
    finally:
        b.close()


# ---------------------------------------------------------------------------
# BufferedProtocol


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size=7):
        self.buf = bytearray(size)
        self.data = bytearray()
        self.sizes_hint = []
        self.done = loop.create_future()
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.sizes_hint.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.done.set_result(exc)


def test_buffered_protocol(aio_loop):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Buffered(aio_loop),
                                                     "127.0.0.1", port)
        payload = os.urandom(100_000)
        tr.write(payload)
        while len(proto.data) < len(payload):
            await asyncio.sleep(0.001)
        tr.write_eof()
        await proto.done
        server.close()
        await server.wait_closed()
        return bytes(proto.data) == payload, proto.eof, set(proto.sizes_hint)

    # A plain socket transport passes no size hint: -1.
    assert run(aio_loop, main()) == (True, True, {-1})


def test_buffered_protocol_empty_buffer_is_error(aio_loop):
    a, b = nonblocking_pair()
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))
    try:
        async def main():
            proto = Buffered(aio_loop, size=0)
            tr, _ = await aio_loop.connect_accepted_socket(lambda: proto, a)
            b.send(b"x")
            exc = await proto.done
            tr.close()
            return type(exc).__name__

        assert run(aio_loop, main()) == "RuntimeError"
        assert ctxs  # the fatal error went through the exception handler
    finally:
        b.close()


# ---------------------------------------------------------------------------
# connect_accepted_socket


def test_connect_accepted_socket(aio_loop):
    lsock = tcp_listener()
    client = socket.create_connection(lsock.getsockname())
    try:
        conn, _ = lsock.accept()

        async def main():
            tr, proto = await aio_loop.connect_accepted_socket(Echo, conn)
            client.setblocking(False)
            await aio_loop.sock_sendall(client, b"accepted")
            got = await aio_loop.sock_recv(client, 100)
            client.shutdown(socket.SHUT_WR)
            await proto.lost
            return got

        assert run(aio_loop, main()) == b"accepted"
    finally:
        client.close()
        lsock.close()


def test_connect_accepted_socket_rejects_non_stream(aio_loop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async def main():
            with pytest.raises(ValueError):
                await aio_loop.connect_accepted_socket(asyncio.Protocol, s)
            return True

        assert run(aio_loop, main())
    finally:
        s.close()


# ---------------------------------------------------------------------------
# Unix sockets


def test_unix_server_and_connection(aio_loop):
    with unix_path() as path:
        async def main():
            server = await aio_loop.create_unix_server(Echo, path)
            assert server.sockets[0].family == socket.AF_UNIX
            tr, proto = await aio_loop.create_unix_connection(lambda: Recorder(aio_loop), path)
            tr.write(b"over unix")
            got = await _collect(proto, 9)
            peer = tr.get_extra_info("peername")
            tr.close()
            await proto.done
            server.close()
            await server.wait_closed()
            return got, peer

        got, peer = run(aio_loop, main())
        assert got == b"over unix"
        assert peer == path
        # Python 3.11's unix server leaves its socket file behind (3.13 removes it).
        assert os.path.exists(path) == (sys.version_info < (3, 13))


def test_unix_server_replaces_stale_socket_file(aio_loop):
    with unix_path() as path:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        assert os.path.exists(path)

        async def main():
            server = await aio_loop.create_unix_server(Echo, path)
            r, w = await asyncio.open_unix_connection(path)
            w.write(b"hi")
            data = await r.readexactly(2)
            w.close()
            await w.wait_closed()
            server.close()
            await server.wait_closed()
            return data

        assert run(aio_loop, main()) == b"hi"


def test_unix_connection_missing_path(aio_loop):
    with unix_path() as path:
        async def main():
            with pytest.raises(FileNotFoundError):
                await aio_loop.create_unix_connection(asyncio.Protocol, path)
            return True

        assert run(aio_loop, main())


# ---------------------------------------------------------------------------
# datagrams


class DatagramRecorder(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.packets = asyncio.Queue()
        self.errors = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.packets.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.done.set_result(exc)


def test_create_datagram_endpoint(aio_loop):
    async def main():
        srv_tr, srv = await aio_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(aio_loop), local_addr=("127.0.0.1", 0))
        addr = srv_tr.get_extra_info("sockname")
        cli_tr, cli = await aio_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(aio_loop), remote_addr=addr)
        assert isinstance(cli_tr, asyncio.BaseTransport)
        cli_tr.sendto(b"one")
        cli_tr.sendto(b"two", None)
        first = await srv.packets.get()
        second = await srv.packets.get()
        srv_tr.sendto(b"reply", first[1])
        reply = await cli.packets.get()
        with pytest.raises(ValueError):
            cli_tr.sendto(b"x", ("127.0.0.1", 1))  # connected: other address refused
        cli_tr.close()
        srv_tr.close()
        await cli.done
        await srv.done
        return first[0], second[0], reply[0], first[1] == cli_tr.get_extra_info("sockname")

    assert run(aio_loop, main()) == (b"one", b"two", b"reply", True)


def test_datagram_endpoint_unix(aio_loop):
    with unix_path() as path:
        async def main():
            srv_tr, srv = await aio_loop.create_datagram_endpoint(
                lambda: DatagramRecorder(aio_loop), local_addr=path, family=socket.AF_UNIX)
            cli_tr, cli = await aio_loop.create_datagram_endpoint(
                lambda: DatagramRecorder(aio_loop), remote_addr=path, family=socket.AF_UNIX)
            cli_tr.sendto(b"unix dgram")
            data, _ = await srv.packets.get()
            cli_tr.close()
            srv_tr.close()
            await cli.done
            await srv.done
            return data

        assert run(aio_loop, main()) == b"unix dgram"


def test_datagram_endpoint_with_sock_and_error_received(aio_loop):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    dead = lsock.getsockname()
    lsock.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(dead)

    async def main():
        tr, proto = await aio_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(aio_loop), sock=s)
        for _ in range(20):
            tr.sendto(b"nobody home")
            await asyncio.sleep(0.005)
            if proto.errors:
                break
        tr.close()
        await proto.done
        return [type(e).__name__ for e in proto.errors][:1]

    assert run(aio_loop, main()) == ["ConnectionRefusedError"]


def test_datagram_endpoint_argument_errors(aio_loop):
    async def main():
        with pytest.raises(ValueError):
            await aio_loop.create_datagram_endpoint(asyncio.DatagramProtocol)  # nothing
        return True

    assert run(aio_loop, main())


# ---------------------------------------------------------------------------
# TLS


def test_tls_server_and_client(aio_loop, pki):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0,
                                              ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(
            lambda: Recorder(aio_loop), "127.0.0.1", port, ssl=pki.client_context(),
            server_hostname="localhost")
        assert tr.get_extra_info("sslcontext") is not None
        obj = tr.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        assert obj.version() in ("TLSv1.2", "TLSv1.3")
        peercert = tr.get_extra_info("peercert")
        payload = os.urandom(300_000)
        tr.write(payload)
        got = await _collect(proto, len(payload))
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return got == payload, peercert["subject"]

    same, subject = run(aio_loop, main())
    assert same
    assert ((("commonName", "localhost"),),) == subject


def test_tls_verification_failure(aio_loop, pki):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0,
                                              ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            # Default context: the test CA is unknown.
            await aio_loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             ssl=ssl.create_default_context(),
                                             server_hostname="localhost")
        server.close()
        await server.wait_closed()
        return True

    assert run(aio_loop, main())


def test_tls_streams(aio_loop, pki):
    async def handle(r, w):
        line = await r.readline()
        w.write(line.upper())
        await w.drain()
        w.close()
        await w.wait_closed()

    async def main():
        server = await asyncio.start_server(handlers := Handlers(handle), "127.0.0.1", 0, ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                             server_hostname="localhost")
        w.write(b"secure line\n")
        data = await r.read()
        w.close()
        await w.wait_closed()
        await handlers.wait()
        server.close()
        await server.wait_closed()
        return data

    assert run(aio_loop, main()) == b"SECURE LINE\n"


def test_start_tls_upgrade(aio_loop, pki):
    """A plaintext greeting, then both sides upgrade the same connection with start_tls."""
    server_ctx = pki.server_context()

    class Upgrader(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if data == b"STARTTLS\n":
                self.transport.write(b"GO\n")
                asyncio.ensure_future(self.upgrade())

        async def upgrade(self):
            tls_tr = await aio_loop.start_tls(self.transport, self, server_ctx,
                                              server_side=True)
            self.transport = tls_tr
            self.data_received = lambda d: tls_tr.write(b"tls:" + d)
            # The client speaks only after this, so that no application data can arrive
            # with the handshake's last flight (before data_received is replaced).
            tls_tr.write(b"ready:")

    async def main():
        server = await aio_loop.create_server(Upgrader, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        tr.write(b"STARTTLS\n")
        assert await _collect(proto, 3) == b"GO\n"
        proto.data.clear()
        tls_tr = await aio_loop.start_tls(tr, proto, pki.client_context(),
                                          server_hostname="localhost")
        assert tls_tr.get_extra_info("ssl_object") is not None
        await _collect(proto, 6)
        tls_tr.write(b"hello")
        got = await _collect(proto, 15)
        tls_tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return got

    assert run(aio_loop, main()) == b"ready:tls:hello"


def test_start_tls_via_stream_writer(aio_loop, pki):
    async def handle(r, w):
        await w.start_tls(pki.server_context())
        data = await r.readexactly(5)
        w.write(data[::-1])
        await w.drain()
        w.close()
        await w.wait_closed()

    async def main():
        server = await asyncio.start_server(handlers := Handlers(handle), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await w.start_tls(pki.client_context(), server_hostname="localhost")
        w.write(b"abcde")
        data = await r.readexactly(5)
        w.close()
        await w.wait_closed()
        await handlers.wait()
        server.close()
        await server.wait_closed()
        return data

    assert run(aio_loop, main()) == b"edcba"


# ---------------------------------------------------------------------------
# loop.sendfile


@pytest.mark.parametrize("offset,count", [(0, None), (1000, 50_000)])
def test_loop_sendfile(aio_loop, tmp_path, offset, count):
    data = os.urandom(500_000)
    path = tmp_path / "payload"
    path.write_bytes(data)

    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(lambda: Recorder(aio_loop),
                                                     "127.0.0.1", port)
        tr.write(b"head:")
        with open(path, "rb") as f:
            sent = await aio_loop.sendfile(tr, f, offset, count)
            pos = f.tell()
        tr.write(b":tail")  # the transport is usable afterwards
        expected = b"head:" + data[offset:None if count is None else offset + count] + b":tail"
        got = await _collect(proto, len(expected))
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return sent, pos, got == expected

    expected_len = len(data) - offset if count is None else count
    assert run(aio_loop, main()) == (expected_len, offset + expected_len, True)


def test_loop_sendfile_over_tls_uses_fallback(aio_loop, tmp_path, pki):
    data = os.urandom(100_000)
    path = tmp_path / "payload"
    path.write_bytes(data)

    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(
            lambda: Recorder(aio_loop), "127.0.0.1", port, ssl=pki.client_context(),
            server_hostname="localhost")
        with open(path, "rb") as f:
            with pytest.raises(RuntimeError, match="fallback is disabled"):
                await aio_loop.sendfile(tr, f, fallback=False)
            sent = await aio_loop.sendfile(tr, f)
        got = await _collect(proto, len(data))
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return sent, got == data

    assert run(aio_loop, main()) == (len(data), True)


# ---------------------------------------------------------------------------
# asyncio streams


def test_streams_start_server_open_connection(aio_loop):
    async def handle(reader, writer):
        assert writer.get_extra_info("peername") is not None
        while line := await reader.readline():
            writer.write(line[:-1][::-1] + b"\n")
            await writer.drain()
        writer.write_eof()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handlers := Handlers(handle), "127.0.0.1", 0, limit=1 << 21)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = []
        for word in (b"alpha", b"beta", b"gamma"):
            writer.write(word + b"\n")
            await writer.drain()
            out.append(await reader.readline())
        writer.write(b"x" * 1_000_000 + b"\n")
        await writer.drain()
        big = await reader.readuntil(b"x" * 10)
        writer.write_eof()
        rest = await reader.read()
        writer.close()
        await writer.wait_closed()
        await handlers.wait()
        server.close()
        await server.wait_closed()
        return out, len(big) + len(rest), reader.at_eof()

    out, big, eof = run(aio_loop, main())
    assert out == [b"ahpla\n", b"ateb\n", b"ammag\n"]
    assert big == 1_000_001
    assert eof


def test_streams_readexactly_incomplete_and_limit(aio_loop):
    async def handle(reader, writer):
        writer.write(b"short")
        writer.write(b"y" * 200 + b"\n")
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handlers := Handlers(handle), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=100)
        first = await reader.readexactly(5)
        with pytest.raises(ValueError):  # LimitOverrunError surfaces as ValueError
            await reader.readline()
        with pytest.raises(asyncio.IncompleteReadError) as ei:
            await reader.readexactly(10_000)
        writer.close()
        await writer.wait_closed()
        await handlers.wait()
        server.close()
        await server.wait_closed()
        return first, ei.value.expected

    assert run(aio_loop, main()) == (b"short", 10_000)


def test_streams_unix(aio_loop):
    with unix_path() as path:
        async def handle(reader, writer):
            writer.write(await reader.readexactly(3))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async def main():
            server = await asyncio.start_unix_server(handlers := Handlers(handle), path)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"abc")
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            await handlers.wait()
            server.close()
            await server.wait_closed()
            return data

        assert run(aio_loop, main()) == b"abc"


def test_streams_drain_applies_backpressure(aio_loop):
    a, b = nonblocking_pair()
    try:
        async def main():
            reader, writer = await asyncio.open_connection(sock=a)
            writer.transport.set_write_buffer_limits(high=32 * 1024)
            writer.write(b"q" * (4 << 20))
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0.02)
            blocked = not drain.done()
            total = 0
            while not drain.done():
                try:
                    total += len(b.recv(1 << 20))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            await drain
            writer.close()
            await writer.wait_closed()
            return blocked

        assert run(aio_loop, main()) is True
    finally:
        b.close()


# ---------------------------------------------------------------------------
# pipes: connect_read_pipe / connect_write_pipe


def test_connect_read_pipe(aio_loop):
    rfd, wfd = os.pipe()
    rfile = os.fdopen(rfd, "rb", buffering=0)

    async def main():
        tr, proto = await aio_loop.connect_read_pipe(lambda: Recorder(aio_loop), rfile)
        assert tr.get_extra_info("pipe") is rfile
        os.write(wfd, b"through the pipe")
        got = await _collect(proto, 16)
        os.close(wfd)
        await proto.done
        return got, proto.events

    got, events = run(aio_loop, main())
    assert got == b"through the pipe"
    assert events == ["made", "data", "eof", ("lost", None)]
    assert rfile.closed


def test_connect_write_pipe_and_flow_control(aio_loop):
    rfd, wfd = os.pipe()
    wfile = os.fdopen(wfd, "wb", buffering=0)

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.events = []
            self.done = aio_loop.create_future()

        def pause_writing(self):
            self.events.append("pause")

        def resume_writing(self):
            self.events.append("resume")

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        tr, proto = await aio_loop.connect_write_pipe(Writer, wfile)
        assert isinstance(tr, asyncio.WriteTransport)
        tr.set_write_buffer_limits(high=16 * 1024)
        payload = os.urandom(1 << 20)
        tr.write(payload)
        assert proto.events == ["pause"]
        got = bytearray()
        while len(got) < len(payload):
            chunk = await aio_loop.run_in_executor(None, os.read, rfd, 1 << 20)
            got += chunk
        while "resume" not in proto.events:
            await asyncio.sleep(0.001)
        tr.close()
        await proto.done
        return bytes(got) == payload, proto.events

    try:
        assert run(aio_loop, main()) == (True, ["pause", "resume"])
    finally:
        os.close(rfd)


def test_write_pipe_reader_closed_reports_lost(aio_loop):
    rfd, wfd = os.pipe()
    wfile = os.fdopen(wfd, "wb", buffering=0)

    async def main():
        tr, proto = await aio_loop.connect_write_pipe(lambda: Recorder(aio_loop), wfile)
        os.close(rfd)  # the reading end goes away: the write pipe sees EPOLLERR/EPOLLHUP
        exc = await proto.done
        tr.close()
        return exc

    assert run(aio_loop, main()) is None  # nothing was buffered: a clean close


# ---------------------------------------------------------------------------
# TLS timeouts


def test_tls_server_handshake_timeout_drops_silent_client(aio_loop, pki):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context(),
                                              ssl_handshake_timeout=0.1)
        port = server.sockets[0].getsockname()[1]
        # A plain TCP client that never starts the handshake.
        r, w = await asyncio.open_connection("127.0.0.1", port)
        t0 = aio_loop.time()
        data = await r.read()  # the server gives up and closes
        elapsed = aio_loop.time() - t0
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return data, elapsed < 5

    assert run(aio_loop, main()) == (b"", True)


def test_tls_client_handshake_timeout(aio_loop, pki):
    lsock = tcp_listener()  # accepts (backlog) but never speaks TLS

    async def main():
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
            await aio_loop.create_connection(
                asyncio.Protocol, *lsock.getsockname(), ssl=pki.client_context(),
                server_hostname="localhost", ssl_handshake_timeout=0.1)
        return True

    try:
        assert run(aio_loop, main())
    finally:
        lsock.close()


def test_tls_write_eof_not_supported_and_half_close_by_peer(aio_loop, pki):
    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(
            lambda: Recorder(aio_loop), "127.0.0.1", port, ssl=pki.client_context(),
            server_hostname="localhost")
        can = tr.can_write_eof()
        tr.write(b"ping")
        await _collect(proto, 4)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return can, bytes(proto.data)

    assert run(aio_loop, main()) == (False, b"ping")


# ---------------------------------------------------------------------------
# more server shapes


def test_create_server_on_several_hosts(aio_loop):
    async def main():
        server = await aio_loop.create_server(Echo, ["127.0.0.1", "127.0.0.2"], 0,
                                              family=socket.AF_INET)
        addrs = sorted(s.getsockname()[0] for s in server.sockets)
        replies = []
        for s in server.sockets:
            r, w = await asyncio.open_connection(*s.getsockname())
            w.write(b"hi")
            replies.append(await r.readexactly(2))
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()
        return addrs, replies

    assert run(aio_loop, main()) == (["127.0.0.1", "127.0.0.2"], [b"hi", b"hi"])


def test_unix_server_and_connection_from_sockets(aio_loop):
    with unix_path() as path:
        lsock = socket.socket(socket.AF_UNIX)
        lsock.bind(path)

        async def main():
            server = await aio_loop.create_unix_server(Echo, sock=lsock)
            csock = socket.socket(socket.AF_UNIX)
            csock.connect(path)
            tr, proto = await aio_loop.create_unix_connection(lambda: Recorder(aio_loop),
                                                              sock=csock)
            tr.write(b"sock=")
            got = await _collect(proto, 5)
            tr.close()
            await proto.done
            server.close()
            await server.wait_closed()
            return got

        assert run(aio_loop, main()) == b"sock="


class ViewBuffered(Buffered):
    """get_buffer() returns a memoryview: asyncio's TLS layer (3.11) fills a bytearray's
    tail through a slice, i.e. a copy, and loses those bytes; a view is filled in place."""

    def get_buffer(self, sizehint):
        self.sizes_hint.append(sizehint)
        return memoryview(self.buf)


def test_tls_buffered_protocol_and_flow_control(aio_loop, pki):
    """A BufferedProtocol behind TLS, and pause/resume_writing on the TLS transport."""
    events = []

    class FlowRecorder(Recorder):
        def pause_writing(self):
            events.append("pause")

        def resume_writing(self):
            events.append("resume")

    async def main():
        server = await aio_loop.create_server(Echo, "127.0.0.1", 0, ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        tr, proto = await aio_loop.create_connection(
            lambda: ViewBuffered(aio_loop, size=1000), "127.0.0.1", port,
            ssl=pki.client_context(), server_hostname="localhost")
        payload = os.urandom(500_000)
        tr.write(payload)
        while len(proto.data) < len(payload):
            await asyncio.sleep(0.001)
        tr.close()
        await proto.done

        tr2, proto2 = await aio_loop.create_connection(
            lambda: FlowRecorder(aio_loop), "127.0.0.1", port, ssl=pki.client_context(),
            server_hostname="localhost")
        tr2.set_write_buffer_limits(high=64 * 1024)
        tr2.pause_reading()  # the echo comes back slowly: our writes back up
        for _ in range(64):
            tr2.write(b"f" * 65536)
        tr2.resume_reading()
        while len(proto2.data) < 64 * 65536:
            await asyncio.sleep(0.001)
        tr2.close()
        await proto2.done
        server.close()
        await server.wait_closed()
        return bytes(proto.data) == payload, events

    same, flow = run(aio_loop, main(), timeout=20)
    assert same
    assert flow[:1] == ["pause"] and flow[-1] == "resume"
