"""An HTTP/1.1 client with a keep-alive connection pool, on broomio streams.

Opening a TCP connection costs a round trip (and, with TLS, several): a client that makes
many requests to the same host should reuse connections.  :class:`ConnectionPool` does:

* a request takes an idle connection to its host if there is one, else opens a new one,
  but never more than ``max_per_host`` at once (a ``broomio.Semaphore`` per host: a
  request beyond that waits for a connection to come back);
* after the response, the connection goes back to the idle list if both sides allow it:
  the response was HTTP/1.1 without ``Connection: close`` (or HTTP/1.0 with
  ``Connection: keep-alive``) and its body had a known end (``Content-Length`` or
  ``Transfer-Encoding: chunked``, both decoded here; a body that ends at EOF uses up the
  connection);
* an idle connection the server closed in the meantime is noticed when the reused
  connection sees EOF before any byte of the response; an idempotent request (GET, HEAD)
  is then retried once on a fresh connection.

Run:
    python examples/http_client_pool.py              # demo: an in-process server, then exit
    python examples/http_client_pool.py --port 8080  # against: python http_server.py --serve 8080

The demo sends 200 requests from 20 concurrent tasks (content-length bodies, chunked
bodies, and a few responses with ``Connection: close``), checks every body, and prints
how many connections were opened for how many requests, as counted by the client and by
the server.
"""

from __future__ import annotations

import argparse
import collections
import functools
import random
from dataclasses import dataclass

import broomio

MAX_HEAD = 65536


class HTTPError(Exception):
    """The server's response is not valid HTTP/1.x (or the connection broke mid-way)."""


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class _Connection:
    """One TCP connection to one host, used by one request at a time."""

    def __init__(self, stream: broomio.SocketStream) -> None:
        self.stream = stream
        self.requests = 0

    async def round_trip(self, method: str, host: str, path: str,
                         headers: dict[str, str], body: bytes) -> tuple[Response, bool]:
        """Send one request, read its response; return it and whether the connection
        can carry another request."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await self.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.requests += 1
        head = await self.stream.read_until(b"\r\n\r\n", max_size=MAX_HEAD)
        version, status, reason, resp_headers = parse_response_head(head[:-4])
        body_out, reusable = await self._read_body(method, status, resp_headers)
        connection = resp_headers.get("connection", "").lower()
        keep_alive = connection != "close" and (
            version == "HTTP/1.1" or connection == "keep-alive")
        request_close = headers.get("Connection", "").lower() == "close"
        response = Response(status, reason, version, resp_headers, body_out)
        return response, reusable and keep_alive and not request_close

    async def _read_body(self, method: str, status: int,
                         headers: dict[str, str]) -> tuple[bytes, bool]:
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            return b"", True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked(), True
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise HTTPError(f"bad Content-Length {headers['content-length']!r}") from None
            if length < 0:
                raise HTTPError(f"bad Content-Length {length}")
            return await self.stream.read_exactly(length), True
        # No length: the body ends when the server closes the connection.
        chunks = [chunk async for chunk in self.stream]
        return b"".join(chunks), False

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = await self.stream.read_until(b"\r\n", max_size=1024)
            size_text = line[:-2].split(b";", 1)[0].strip()  # drop chunk extensions
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPError(f"bad chunk size {size_text!r}") from None
            if size == 0:
                # Trailer headers (ignored) up to an empty line.
                while await self.stream.read_until(b"\r\n", max_size=MAX_HEAD) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await self.stream.read_exactly(size))
            if await self.stream.read_exactly(2) != b"\r\n":
                raise HTTPError("chunk not followed by CRLF")


def parse_response_head(head: bytes) -> tuple[str, int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        raise HTTPError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return version, int(status_text), reason, headers


class ConnectionPool:
    """Keep-alive connections, at most ``max_per_host`` per (host, port)."""

    def __init__(self, max_per_host: int = 4) -> None:
        if max_per_host < 1:
            raise ValueError("max_per_host must be at least 1")
        self.max_per_host = max_per_host
        self._idle: dict[tuple[str, int], list[_Connection]] = collections.defaultdict(list)
        self._limits: dict[tuple[str, int], broomio.Semaphore] = {}
        self.connections_opened = 0
        self.requests_sent = 0
        self.retries = 0

    async def request(self, method: str, host: str, port: int, path: str, *,
                      body: bytes = b"", headers: dict[str, str] | None = None) -> Response:
        key = (host, port)
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = broomio.Semaphore(self.max_per_host)
        async with limit:  # this request now owns one of the host's connection slots
            for attempt in (1, 2):
                idle = self._idle[key]
                conn = idle.pop() if idle else await self._open(host, port)
                reused = conn.requests > 0
                try:
                    response, reusable = await conn.round_trip(method, host, path,
                                                               headers or {}, body)
                except (broomio.IncompleteReadError, broomio.BrokenResourceError) as exc:
                    await conn.stream.aclose()
                    stale = (reused and attempt == 1 and method in ("GET", "HEAD")
                             and (not isinstance(exc, broomio.IncompleteReadError)
                                  or exc.partial == b""))
                    if stale:  # the server closed it while it was idle: try a new one
                        self.retries += 1
                        continue
                    raise HTTPError(f"connection to {host}:{port} broke: {exc!r}") from exc
                except BaseException:
                    await conn.stream.aclose()  # cancelled or garbled mid-response
                    raise
                self.requests_sent += 1
                if reusable:
                    idle.append(conn)
                else:
                    await conn.stream.aclose()
                return response
        raise AssertionError("unreachable")

    async def _open(self, host: str, port: int) -> _Connection:
        stream = await broomio.open_tcp_stream(host, port)
        self.connections_opened += 1
        return _Connection(stream)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            while conns:
                await conns.pop().stream.aclose()


# ---------------------------------------------------------------------------------------
# The demo: an in-process server with content-length, chunked and closing responses
# ---------------------------------------------------------------------------------------


class DemoServer:
    """GET /len/N: N bytes with Content-Length; GET /chunked/N: N bytes in random chunks;
    GET /close/N: N bytes, then ``Connection: close``.  The body is ``pattern(N)``."""

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.max_open = 0
        self._open = 0

    async def handle(self, stream: broomio.SocketStream) -> None:
        self.connections_accepted += 1
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        rnd = random.Random(self.connections_accepted)
        try:
            while True:
                try:
                    head = await stream.read_until(b"\r\n\r\n", max_size=MAX_HEAD)
                except broomio.IncompleteReadError:
                    return  # the client closed its idle connection
                request_line = head.split(b"\r\n", 1)[0].decode()
                _method, path, _version = request_line.split(" ")
                _, kind, size = path.split("/")
                body = pattern(int(size))
                if kind == "chunked":
                    out = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
                    pos = 0
                    while pos < len(body):
                        n = rnd.randint(1, 3000)
                        piece = body[pos : pos + n]
                        out.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                        pos += n
                    out.append(b"0\r\nX-Trailer: yes\r\n\r\n")
                    await stream.send_all(b"".join(out))
                else:
                    close = kind == "close"
                    await stream.send_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
                        % (len(body), b"close" if close else b"keep-alive", body))
                    if close:
                        return
        except broomio.BrokenResourceError:
            return
        finally:
            self._open -= 1


def pattern(n: int) -> bytes:
    return bytes((i * 7 + n) % 251 for i in range(n))


async def demo(requests: int, tasks: int, max_per_host: int) -> None:
    server = DemoServer()
    pool = ConnectionPool(max_per_host=max_per_host)
    async with broomio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(broomio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        rnd = random.Random(42)
        jobs = [(rnd.choice(["len", "len", "chunked"]), rnd.randint(0, 20000))
                for _ in range(requests)]
        for i in range(0, requests, 50):  # every 50th request gets Connection: close
            jobs[i] = ("close", jobs[i][1])

        async def client(mine: list[tuple[str, int]]) -> None:
            for kind, size in mine:
                resp = await pool.request("GET", "127.0.0.1", port, f"/{kind}/{size}")
                assert resp.status == 200, resp
                assert resp.body == pattern(size), f"/{kind}/{size}: wrong body"

        async with broomio.open_nursery() as clients:
            for t in range(tasks):
                clients.start_soon(client, jobs[t::tasks])
        await pool.aclose()
        nursery.cancel()
    closes = sum(1 for kind, _ in jobs if kind == "close")
    print(f"{pool.requests_sent} requests from {tasks} tasks over "
          f"{pool.connections_opened} connections (at most {max_per_host} per host; "
          f"{closes} responses said Connection: close)")
    print(f"server: {server.connections_accepted} connections accepted, "
          f"at most {server.max_open} open at once")
    assert pool.requests_sent == requests
    assert server.connections_accepted == pool.connections_opened
    assert server.max_open <= max_per_host
    assert pool.connections_opened <= max_per_host + closes
    print("every body checked")


async def against(host: str, port: int, requests: int, tasks: int, max_per_host: int) -> None:
    """GET / on examples/http_server.py: its reply counts requests per connection."""
    pool = ConnectionPool(max_per_host=max_per_host)
    counts: list[int] = []

    async def client(n: int) -> None:
        for _ in range(n):
            resp = await pool.request("GET", host, port, "/")
            text = resp.body.decode()
            counts.append(int(text.split("request ")[1].split()[0]))

    async with broomio.open_nursery() as nursery:
        for t in range(tasks):
            nursery.start_soon(client, requests // tasks)
    await pool.aclose()
    print(f"{pool.requests_sent} requests over {pool.connections_opened} connections; "
          f"the server saw up to {max(counts)} requests on one connection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running examples/http_server.py")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--max-per-host", type=int, default=4)
    args = parser.parse_args()
    if args.port is None:
        broomio.run(demo, args.requests, args.tasks, args.max_per_host)
    else:
        broomio.run(against, args.host, args.port, args.requests, args.tasks,
                    args.max_per_host)


if __name__ == "__main__":
    main()
