"""TLS: TLSStream over any stream, open_tls_stream, serve_tls, with certificates made at
test time (tests/tls_certs.py)."""

from __future__ import annotations

import functools
import random
import ssl

import pytest

import broomio
import broomio.socket as bs
from broomio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    IncompleteReadError,
    SocketStream,
    TLSStream,
    move_on_after,
    open_nursery,
    sleep,
)
from conftest import run
from tls_certs import make_pki

LOCAL = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")), "good")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki-other")), "other")


async def socket_stream_pair():
    with bs.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(1)
        client = bs.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return SocketStream(client), SocketStream(server)


async def tls_pair(pki, client_transport=None, server_transport=None, **client_kw):
    """Connected (client TLSStream, server TLSStream) with the handshake done."""
    if client_transport is None:
        client_transport, server_transport = await socket_stream_pair()
    client = TLSStream(client_transport, pki.client_context(),
                       server_hostname=client_kw.pop("server_hostname", "localhost"), **client_kw)
    server = TLSStream(server_transport, pki.server_context(), server_side=True)
    async with open_nursery() as n:
        n.start_soon(client.do_handshake)
        n.start_soon(server.do_handshake)
    return client, server


async def wait_parked(task):
    for _ in range(20):
        await sleep(0)
    assert not task.done()


# ---------------------------------------------------------------------------
# TLSStream


def test_tls_roundtrip_and_connection_info(pki):
    async def main():
        client, server = await tls_pair(pki)
        async with client, server:
            assert client.version() in ("TLSv1.2", "TLSv1.3")
            assert client.cipher() is not None
            cert = client.getpeercert()
            assert ("DNS", "localhost") in cert["subjectAltName"]
            await client.send_all(b"hello over tls\n")
            assert await server.read_line() == b"hello over tls\n"
            await server.send_all(b"and back")
            assert await client.read_exactly(8) == b"and back"
            # the transport really carries ciphertext
            assert isinstance(client.transport_stream, SocketStream)

    run(main)


def test_handshake_runs_implicitly_on_first_io(pki):
    async def main():
        ct, st = await socket_stream_pair()
        client = TLSStream(ct, pki.client_context(), server_hostname="localhost")
        server = TLSStream(st, pki.server_context(), server_side=True)
        async with client, server:
            async with open_nursery() as n:
                n.start_soon(client.send_all, b"implicit")
                assert await server.read_exactly(8) == b"implicit"
            await client.do_handshake()  # idempotent

    run(main)


def test_full_duplex_large_transfers(pki):
    """Both sides send 2 MB while receiving: a half-duplex implementation deadlocks."""
    data_c = random.Random(1).randbytes(2_000_000)
    data_s = random.Random(2).randbytes(2_000_000)

    async def main():
        client, server = await tls_pair(pki)
        got = {}
        async with client, server:
            async def side(stream, data, key):
                async with open_nursery() as n:
                    n.start_soon(stream.send_all, data)
                    got[key] = await stream.read_exactly(len(data))

            async with open_nursery() as n:
                n.start_soon(side, client, data_c, "client")
                n.start_soon(side, server, data_s, "server")
        assert got["client"] == data_s and got["server"] == data_c

    run(main)


def test_close_notify_gives_clean_eof(pki):
    async def main():
        client, server = await tls_pair(pki)
        async with server:
            await client.send_all(b"last")
            await client.aclose()
            assert await server.read_exactly(4) == b"last"
            assert await server.receive_some() == b""
            assert await server.read_line() == b""

    run(main)


def test_ragged_eof_is_broken_unless_https_compatible(pki):
    async def main():
        for compatible in (False, True):
            ct, st = await socket_stream_pair()
            client, server = await tls_pair(pki, ct, st, https_compatible=compatible)
            async with client:
                await st.aclose()  # the server's TCP goes away without close_notify
                if compatible:
                    assert await client.receive_some() == b""
                else:
                    with pytest.raises(BrokenResourceError):
                        await client.receive_some()

    run(main)


def test_unwrap_returns_the_transport(pki):
    async def main():
        client, server = await tls_pair(pki)
        results = {}

        async def unwrap(stream, key):
            results[key] = await stream.unwrap()

        async with open_nursery() as n:
            n.start_soon(unwrap, client, "client")
            n.start_soon(unwrap, server, "server")
        ct, c_left = results["client"]
        st, s_left = results["server"]
        assert c_left == b"" and s_left == b""
        async with ct, st:
            await ct.send_all(b"plaintext again")
            assert await st.read_exactly(15) == b"plaintext again"
        with pytest.raises(ClosedResourceError):
            await client.send_all(b"x")

    run(main)


def test_use_after_close_and_conflicts(pki):
    async def main():
        client, server = await tls_pair(pki)
        async with server:
            errors = []

            async def receiver():
                try:
                    await client.receive_some()
                except ClosedResourceError as exc:
                    errors.append(exc)

            async with open_nursery() as n:
                t = n.start_soon(receiver)
                await wait_parked(t)
                with pytest.raises(BusyResourceError):
                    await client.receive_some()
                await client.aclose()  # wakes the receiver
            assert len(errors) == 1
            for call in (client.receive_some, lambda: client.send_all(b"x"),
                         client.do_handshake, client.read_line):
                with pytest.raises(ClosedResourceError):
                    await call()
            await client.aclose()  # idempotent

    run(main)


def test_cancelled_send_breaks_the_stream(pki):
    async def main():
        client, server = await tls_pair(pki)
        async with client, server:
            client.transport_stream.socket.setsockopt(bs.SOL_SOCKET, bs.SO_SNDBUF, 4096)
            with move_on_after(0.1) as scope:
                await client.send_all(b"x" * 20_000_000)  # nobody reads: blocks
            assert scope.cancelled_caught
            with pytest.raises(BrokenResourceError):
                await client.send_all(b"more")

    run(main)


def test_tls_over_tls_works_over_any_stream(pki):
    """TLSStream only needs receive_some/send_all/aclose: nest TLS inside TLS."""

    async def main():
        outer_c, outer_s = await tls_pair(pki)
        inner_c, inner_s = await tls_pair(pki, outer_c, outer_s)
        async with inner_c, inner_s:
            await inner_c.send_all(b"double wrapped\n")
            assert await inner_s.read_line() == b"double wrapped\n"

    run(main)


def test_read_until_incomplete_over_tls(pki):
    async def main():
        client, server = await tls_pair(pki)
        async with server:
            await client.send_all(b"no newline")
            await client.aclose()
            with pytest.raises(IncompleteReadError) as info:
                await server.read_until(b"\n")
            assert info.value.partial == b"no newline"

    run(main)


def test_handshake_errors_are_ssl_errors(pki, other_pki):
    async def main():
        # A client that trusts another CA.
        ct, st = await socket_stream_pair()
        client = TLSStream(ct, other_pki.client_context(), server_hostname="localhost")
        server = TLSStream(st, pki.server_context(), server_side=True)
        errors = {}

        async def shake(stream, key):
            try:
                await stream.do_handshake()
            except (ssl.SSLError, BrokenResourceError) as exc:
                errors[key] = exc

        async with open_nursery() as n:
            n.start_soon(shake, client, "client")
            n.start_soon(shake, server, "server")
        assert isinstance(errors["client"], ssl.SSLCertVerificationError)
        assert "server" in errors  # the server learned of the failure (alert or EOF)
        with pytest.raises(BrokenResourceError):
            await client.send_all(b"x")
        await client.aclose()
        await server.aclose()

    run(main)


# ---------------------------------------------------------------------------
# open_tls_stream / serve_tls


async def tls_echo(stream):
    await stream.send_all(b"Welcome\n")
    async for chunk in stream:
        await stream.send_all(b"Got: " + chunk)


def test_serve_tls_and_open_tls_stream(pki):
    async def main():
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(
                broomio.serve_tls, tls_echo, 0, pki.server_context(), host=LOCAL))
            port = listeners[0].socket.getsockname()[1]
            for host in (LOCAL, "localhost"):
                s = await broomio.open_tls_stream(host, port, ssl_context=pki.client_context())
                async with s:
                    assert isinstance(s, TLSStream)
                    assert await s.read_line() == b"Welcome\n"
                    await s.send_all(b"secret\n")
                    assert await s.read_line() == b"Got: secret\n"
            n.cancel()

    run(main)


def test_wrong_hostname_and_untrusted_certificate_are_rejected(pki, other_pki):
    async def main():
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(
                broomio.serve_tls, tls_echo, 0, pki.server_context(), host=LOCAL))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await broomio.open_tls_stream(LOCAL, port, ssl_context=pki.client_context(),
                                              server_hostname="wrong.example")
            assert "wrong.example" in str(info.value)
            with pytest.raises(ssl.SSLCertVerificationError):
                await broomio.open_tls_stream(LOCAL, port,
                                              ssl_context=other_pki.client_context())
            # The default context (system CAs) does not trust the test CA either.
            with pytest.raises(ssl.SSLCertVerificationError):
                await broomio.open_tls_stream("localhost", port)
            # The failed handshakes did not take the server down.
            s = await broomio.open_tls_stream(LOCAL, port, ssl_context=pki.client_context())
            async with s:
                assert await s.read_line() == b"Welcome\n"
            n.cancel()

    run(main)


def test_serve_tls_survives_a_plaintext_client(pki):
    async def main():
        async with open_nursery() as n:
            listeners = await n.start(functools.partial(
                broomio.serve_tls, tls_echo, 0, pki.server_context(), host=LOCAL))
            port = listeners[0].socket.getsockname()[1]
            plain = await broomio.open_tcp_stream(LOCAL, port)
            async with plain:
                await plain.send_all(b"GET / HTTP/1.0\r\n\r\n")
                # the server rejects the garbage handshake and closes the connection
                while True:
                    data = await plain.receive_some()
                    if not data:
                        break
            s = await broomio.open_tls_stream(LOCAL, port, ssl_context=pki.client_context())
            async with s:
                assert await s.read_line() == b"Welcome\n"
            n.cancel()

    run(main)


def test_serve_tls_type_check():
    async def main():
        with pytest.raises(TypeError):
            await broomio.serve_tls(tls_echo, 0, None)
        with pytest.raises(TypeError):
            TLSStream(None, None)

    run(main)
