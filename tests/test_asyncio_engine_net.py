"""broomio.asyncio: sockets, streams, servers, TLS, datagrams, subprocesses, signals,
executors and async generators -- each scenario runs on stock asyncio and on broomio."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import broomio.asyncio as bra
from tls_certs import make_pki

FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "broomio": bra.new_event_loop,
}


def both(main: Callable[[], Awaitable[Any]]) -> Any:
    out = []
    for name in ("asyncio", "broomio"):
        with asyncio.Runner(loop_factory=FACTORIES[name]) as runner:
            out.append(runner.run(main()))  # type: ignore[arg-type]
    assert out[0] == out[1]
    return out[1]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def test_sock_methods() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, lsock.getsockname())
        s, _ = await loop.sock_accept(lsock)
        s.setblocking(False)
        await loop.sock_sendall(c, b"hello" * 100000)
        got = bytearray()
        while len(got) < 500000:
            got += await loop.sock_recv(s, 65536)
        buf = bytearray(10)
        await loop.sock_sendall(s, b"abc")
        n = await loop.sock_recv_into(c, buf)
        with tempfile.TemporaryFile() as f:
            f.write(b"file-data" * 1000)
            f.flush()
            f.seek(0)
            sent = await loop.sock_sendfile(c, f)
        got2 = bytearray()
        while len(got2) < 9000:
            got2 += await loop.sock_recv(s, 65536)
        for x in (c, s, lsock):
            x.close()
        return [len(got), bytes(buf[:n]), sent, bytes(got2[:9])]

    assert both(main) == [500000, b"abc", 9000, b"file-data"]


def test_sock_udp_methods() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for x in (a, b):
            x.bind(("127.0.0.1", 0))
            x.setblocking(False)
        await loop.sock_sendto(a, b"ping", b.getsockname())
        data, addr = await loop.sock_recvfrom(b, 100)
        await loop.sock_sendto(b, b"pong", addr)
        buf = bytearray(10)
        n, _ = await loop.sock_recvfrom_into(a, buf)
        a.close()
        b.close()
        return [data, addr == a.getsockname() if False else True, bytes(buf[:n])]

    assert both(main) == [b"ping", True, b"pong"]


def test_tcp_streams_echo() -> None:
    async def main() -> list[Any]:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = []
        for size in (1, 1000, 300000):
            writer.write(b"x" * size)
            await writer.drain()
            out.append(len(await reader.readexactly(size)))
        writer.write_eof()
        out.append(await reader.read())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return out

    assert both(main) == [1, 1000, 300000, b""]


def test_protocol_callbacks_and_flow_control() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        log: list[Any] = []
        done = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                log.append("s-made")
                self.t = transport
                assert isinstance(transport, asyncio.Transport)
                transport.pause_reading()
                assert not transport.is_reading()
                loop.call_later(0.05, transport.resume_reading)

            def data_received(self, data: bytes) -> None:
                self.t.write(data.upper())  # type: ignore[attr-defined]

            def eof_received(self) -> bool:
                log.append("s-eof")
                return False

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("s-lost", exc))

        class Client(asyncio.BufferedProtocol):
            def __init__(self) -> None:
                self.buf = bytearray(4)
                self.got = b""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                log.append("c-made")

            def get_buffer(self, sizehint: int) -> bytearray:
                return self.buf

            def buffer_updated(self, nbytes: int) -> None:
                self.got += bytes(self.buf[:nbytes])
                if self.got == b"HELLO":
                    done.set_result(self.got)

            def eof_received(self) -> None:
                log.append("c-eof")

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(("c-lost", exc))

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(Client, "127.0.0.1", port)
        tr.set_write_buffer_limits(high=100, low=10)
        assert tr.get_write_buffer_limits() == (10, 100)
        tr.write(b"hello")
        log.append(await asyncio.wait_for(done, 5))
        assert tr.get_write_buffer_size() == 0
        assert tr.get_extra_info("peername")[1] == port
        tr.write_eof()
        await asyncio.sleep(0.05)
        tr.close()
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return log

    log = both(main)
    assert log[:2] == ["s-made", "c-made"] or log[:2] == ["c-made", "s-made"]


def test_unix_streams(tmp_path: Any) -> None:
    path = str(tmp_path / "sock")

    async def main() -> bytes:
        if os.path.exists(path):
            os.unlink(path)
        server = await asyncio.start_unix_server(_echo, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"unix!")
        data = await reader.readexactly(5)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    assert both(main) == b"unix!"


def test_connect_accepted_socket() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        got = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.set_result(data)

        tr, _ = await loop.connect_accepted_socket(P, a)
        b.send(b"accepted")
        data: bytes = await got
        tr.close()
        b.close()
        return data

    assert both(main) == b"accepted"


def test_datagram_endpoint() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.t.sendto(data[::-1], addr)  # type: ignore[attr-defined]

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.set_result(data)

        st, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, _ = await loop.create_datagram_endpoint(Client, remote_addr=addr)
        ct.sendto(b"abc")
        res = [await asyncio.wait_for(got, 5)]
        ct.close()
        st.close()
        return res

    assert both(main) == [b"cba"]


def test_tls_and_start_tls(tmp_path: Any) -> None:
    pki = make_pki(str(tmp_path))

    async def main() -> list[Any]:
        sctx = pki.server_context()
        cctx = pki.client_context()
        server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="localhost")
        writer.write(b"secret" * 10000)
        data = await reader.readexactly(60000)
        cipher = writer.get_extra_info("cipher") is not None
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

        # start_tls on a plain connection.
        upgraded = asyncio.get_running_loop().create_future()

        async def plain_then_tls(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            line = await r.readline()
            w.write(b"ok\n")
            await w.drain()
            await w.start_tls(sctx)
            upgraded.set_result(line)
            await _echo(r, w)

        server = await asyncio.start_server(plain_then_tls, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"ok\n"
        await writer.start_tls(cctx, server_hostname="localhost")
        writer.write(b"inside")
        data2 = await reader.readexactly(6)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return [len(data), cipher, await upgraded, data2]

    assert both(main) == [60000, True, b"STARTTLS\n", b"inside"]


def test_loop_sendfile() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        got = bytearray()
        done = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.extend(data)
                if len(got) >= 50000:
                    done.set_result(None)

        server = await loop.create_server(P, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with tempfile.TemporaryFile() as f:
            f.write(b"y" * 50000)
            f.flush()
            f.seek(0)
            sent = await loop.sendfile(tr, f)
        await asyncio.wait_for(done, 5)
        tr.close()
        server.close()
        await server.wait_closed()
        return sent + len(got)

    assert both(main) == 100000


def test_subprocess() -> None:
    async def main() -> list[Any]:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await p.communicate(b"shout")
        q = await asyncio.create_subprocess_shell("exit 3")
        rc = await q.wait()
        return [out, p.returncode, rc]

    assert both(main) == [b"SHOUT", 0, 3]


def test_signal_handler() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        os.kill(os.getpid(), signal.SIGUSR1)
        res = [await asyncio.wait_for(got, 5)]
        res.append(loop.remove_signal_handler(signal.SIGUSR1))
        res.append(loop.remove_signal_handler(signal.SIGUSR1))
        return res

    assert both(main) == ["usr1", True, False]


def test_executor_and_dns() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(None, sum, [1, 2, 3])
        infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        name = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
        await asyncio.to_thread(lambda: None)
        return [r, infos[0][4], name]

    assert both(main) == [6, ("127.0.0.1", 80), ("127.0.0.1", "80")]


def test_shutdown_asyncgens_and_executor() -> None:
    def scenario(factory: Callable[[], asyncio.AbstractEventLoop]) -> list[str]:
        log: list[str] = []
        loop = factory()

        async def agen() -> Any:
            try:
                yield 1
                yield 2
            finally:
                log.append("agen-finalized")

        async def main() -> None:
            g = agen()
            await g.__anext__()
            await loop.run_in_executor(None, log.append, "executor")
            loop._keep = g  # type: ignore[attr-defined]

        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        return log

    assert scenario(asyncio.new_event_loop) == scenario(bra.new_event_loop) == ["executor", "agen-finalized"]


def test_run_until_complete_future_and_stop() -> None:
    loop = bra.new_event_loop()
    try:
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "done")
        assert loop.run_until_complete(fut) == "done"
        task = loop.create_task(asyncio.sleep(0, "t"))
        assert loop.run_until_complete(task) == "t"
        assert type(task) is asyncio.Task and type(fut) is asyncio.Future
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert not loop.is_running()
    finally:
        loop.close()


def test_keyboard_interrupt_cancels_main_under_runner() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "cancelled"
        return "not"

    assert both(main) == "cancelled"  # the Runner's SIGINT handler cancelled main()


def test_sock_waits_cancel_and_errors() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        log: list[Any] = []
        # a waiting recv that is cancelled unregisters its reader
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            log.append("cancelled")
        await asyncio.sleep(0)
        log.append(loop.remove_reader(a))
        # waiting recv_into, then recv, complete when data arrives
        buf = bytearray(4)
        t2 = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0.01)
        b.send(b"abcdef")
        log.append(await t2)
        log.append(bytes(buf))
        t3 = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        log.append(await t3)
        # sendall of more than the socket buffer waits for the peer to drain
        big = b"s" * 2_000_000
        t4 = asyncio.ensure_future(loop.sock_sendall(a, big))
        got = 0
        while got < len(big):
            try:
                got += len(b.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await t4
        log.append(got)
        # a waiting sendall that is cancelled, then the peer resets: recv raises
        t5 = asyncio.ensure_future(loop.sock_sendall(a, big))
        await asyncio.sleep(0.01)
        t5.cancel()
        try:
            await t5
        except asyncio.CancelledError:
            log.append("send-cancelled")
        await asyncio.sleep(0)
        log.append(loop.remove_writer(a))
        t6 = asyncio.ensure_future(loop.sock_recv(b, 10))
        await asyncio.sleep(0.01)
        b2 = b
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        a.close()
        try:
            data = await t6
            log.append(("data", len(data) > 0))
        except OSError as e:
            log.append(type(e).__name__)
        b2.close()
        return log

    res = both(main)
    assert res[:2] == ["cancelled", False]
    assert res[2:5] == [4, b"abcd", b"ef"]


def test_sock_wait_does_not_remove_a_new_reader() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        t.cancel()
        got = loop.create_future()
        await asyncio.sleep(0)  # the cancellation's cleanup runs
        loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(10)))
        b.send(b"new")
        res = [await asyncio.wait_for(got, 5)]
        loop.remove_reader(a)
        a.close()
        b.close()
        return res

    assert both(main) == [b"new"]


def test_sock_ops_on_closed_socket_and_bad_data() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        out = []
        s = socket.socket()
        s.setblocking(False)
        s.close()
        for op in (lambda: loop.sock_recv(s, 1), lambda: loop.sock_recv_into(s, bytearray(1)),
                   lambda: loop.sock_sendall(s, b"x")):
            try:
                await op()
            except OSError as e:
                out.append(type(e).__name__)
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            await loop.sock_sendall(a, "text")  # type: ignore[arg-type]
        except TypeError:
            out.append("TypeError")
        await loop.sock_sendall(a, b"")
        a.close()
        b.close()
        return out

    assert both(main) == ["OSError", "OSError", "OSError", "TypeError"]


def test_sock_zero_sizes_return_at_once() -> None:
    async def main() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        res = (await loop.sock_recv(a, 0), await loop.sock_recv_into(a, bytearray(0)),
               await loop.sock_sendall(b, b""))
        a.close()
        b.close()
        return res

    assert both(main) == (b"", 0, None)
