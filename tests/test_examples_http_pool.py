"""examples/http_client_pool.py: the demo, the client against examples/http_server.py, and
the pool's rules (reuse, per-host limit, Connection: close, bodies without a length,
retrying a connection the server closed while it was idle) against scripted servers."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest

import broomio

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
EXAMPLE = os.path.join(EXAMPLES, "http_client_pool.py")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("http_client_pool_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up
    spec.loader.exec_module(module)
    return module


hp = load_example()


def run_example(*args: str) -> str:
    proc = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                          timeout=60, cwd=EXAMPLES, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_demo_reuses_connections() -> None:
    out = run_example()
    m = re.search(r"(\d+) requests from 20 tasks over (\d+) connections \(at most 4 per host; "
                  r"(\d+) responses said Connection: close\)", out)
    assert m, out
    requests, conns, closes = map(int, m.groups())
    assert requests == 200
    assert closes == 4
    # Each Connection: close costs one new connection; otherwise at most 4 are opened.
    assert conns <= 4 + closes
    assert f"server: {conns} connections accepted" in out
    assert "every body checked" in out


def test_against_the_http_server_example() -> None:
    server = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "http_server.py"),
                               "--serve", "0"], cwd=EXAMPLES, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        out = run_example("--port", m.group(1), "--requests", "60", "--tasks", "6",
                          "--max-per-host", "3")
        m2 = re.search(r"60 requests over (\d+) connections; the server saw up to (\d+) "
                       r"requests on one connection", out)
        assert m2, out
        conns, most = map(int, m2.groups())
        assert conns <= 3
        assert most >= 60 // 3  # the server's own count proves the reuse
    finally:
        server.terminate()
        server.communicate(timeout=10)


# ---------------------------------------------------------------------------------------
# Scripted servers
# ---------------------------------------------------------------------------------------

Script = Callable[[int, int, bytes], Awaitable[tuple[bytes, bool]]]


class ScriptedServer:
    """For request k on connection c, ``script(c, k, request_head)`` returns the bytes to
    send and whether to close the connection afterwards."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.open = 0
        self.max_open = 0

    async def handle(self, stream: broomio.SocketStream) -> None:
        self.accepted += 1
        c = self.accepted
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            k = 0
            while True:
                try:
                    head = await stream.read_until(b"\r\n\r\n")
                except broomio.IncompleteReadError:
                    return
                length = re.search(rb"Content-Length: (\d+)", head)
                if length:
                    await stream.read_exactly(int(length.group(1)))
                k += 1
                data, close = await self.script(c, k, head)
                await stream.send_all(data)
                if close:
                    return
        except broomio.BrokenResourceError:
            return
        finally:
            self.open -= 1


def run_with(script: Script, client: Callable[[Any, int, ScriptedServer], Awaitable[Any]]) -> Any:
    server = ScriptedServer(script)

    async def main() -> Any:
        async with broomio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(broomio.serve_tcp, server.handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            pool = hp.ConnectionPool(max_per_host=2)
            try:
                return await client(pool, port, server)
            finally:
                await pool.aclose()
                nursery.cancel()

    return broomio.run(main)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_keep_alive_reuses_one_connection() -> None:
    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        return ok(b"c%d k%d" % (c, k)), False

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        bodies = [(await pool.request("GET", "127.0.0.1", port, "/")).body for _ in range(5)]
        assert bodies == [b"c1 k%d" % k for k in range(1, 6)]
        assert pool.connections_opened == 1 and server.accepted == 1

    run_with(script, client)


def test_per_host_limit_with_concurrent_requests() -> None:
    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        await broomio.sleep(0.01)  # keep requests overlapping
        return ok(b"x"), False

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        async with broomio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(pool.request, "GET", "127.0.0.1", port, "/")
        assert pool.requests_sent == 10
        assert pool.connections_opened == 2
        assert server.max_open == 2

    run_with(script, client)


@pytest.mark.parametrize("response, reused", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nh\r\n1;x=y\r\ni\r\n0\r\n\r\n",
     True),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nhi", False),  # ends at EOF
])
def test_when_a_connection_is_reused(response: bytes, reused: bool) -> None:
    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        close = not reused  # a server that means to close does close
        return response, close

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        for _ in range(3):
            resp = await pool.request("GET", "127.0.0.1", port, "/")
            assert resp.body == b"hi"
        assert pool.connections_opened == (1 if reused else 3)
        assert pool.retries == 0

    run_with(script, client)


def test_request_connection_close_is_honoured() -> None:
    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        return ok(b"x"), b"Connection: close" in head

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        for _ in range(3):
            await pool.request("GET", "127.0.0.1", port, "/", headers={"Connection": "close"})
        assert pool.connections_opened == 3

    run_with(script, client)


def test_no_body_for_head_and_204() -> None:
    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", False
        return b"HTTP/1.1 204 No Content\r\n\r\n", False

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        r1 = await pool.request("HEAD", "127.0.0.1", port, "/")
        r2 = await pool.request("GET", "127.0.0.1", port, "/")
        assert (r1.status, r1.body, r2.status, r2.body) == (200, b"", 204, b"")
        assert pool.connections_opened == 1

    run_with(script, client)


def test_stale_idle_connection_is_retried_for_get_only() -> None:
    """The server closes every connection after one response although it said nothing:
    the pool's next GET finds EOF on the reused connection and retries on a new one; a
    POST is not retried (it might have been processed)."""

    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        return ok(b"r"), True

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        await pool.request("GET", "127.0.0.1", port, "/")
        await broomio.sleep(0.05)  # let the server's close arrive
        assert (await pool.request("GET", "127.0.0.1", port, "/")).body == b"r"
        assert pool.retries == 1 and pool.connections_opened == 2
        await broomio.sleep(0.05)
        with pytest.raises(hp.HTTPError, match="broke"):
            await pool.request("POST", "127.0.0.1", port, "/", body=b"data")

    run_with(script, client)


@pytest.mark.parametrize("response, message", [
    (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab", "not followed by CRLF"),
])
def test_malformed_responses(response: bytes, message: str) -> None:
    async def script(c: int, k: int, head: bytes) -> tuple[bytes, bool]:
        return response + b"\r\n\r\n", False

    async def client(pool: Any, port: int, server: ScriptedServer) -> None:
        with pytest.raises(hp.HTTPError, match=message):
            await pool.request("GET", "127.0.0.1", port, "/")
        assert pool.connections_opened == 1
        # The broken connection was closed, not pooled.
        assert all(not conns for conns in pool._idle.values())

    run_with(script, client)


def test_bad_pool_size() -> None:
    with pytest.raises(ValueError, match="max_per_host"):
        hp.ConnectionPool(max_per_host=0)
