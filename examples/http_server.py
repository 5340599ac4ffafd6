"""A keep-alive HTTP/1.1 server on broomio streams (no HTTP library).

Routes: ``GET /`` says hello and how many requests this connection has carried;
``POST /echo`` returns the request body; anything else is 404.  Connections stay open
between requests (HTTP/1.1 keep-alive) until the client sends ``Connection: close``, speaks
HTTP/1.0 without keep-alive, or goes away; malformed requests get 400 and are closed.

Run:
    python examples/http_server.py               # demo: server + http.client, then exit
    python examples/http_server.py --serve 8080  # serve until Ctrl-C
    curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/   # two requests, one connection
"""

from __future__ import annotations

import functools
import http.client
import sys
import threading
from collections.abc import Callable
from typing import Any

import broomio

MAX_HEAD = 16384
MAX_BODY = 1 << 20
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
           501: "Not Implemented"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(400, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
    return method, target, version, headers


async def respond(stream: broomio.SocketStream, status: int, body: bytes, *,
                  keep_alive: bool, content_type: str = "text/plain; charset=utf-8") -> None:
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "Server: broomio-example\r\n\r\n"
    ).encode("latin-1")
    await stream.send_all(head + body)


async def handle_connection(stream: broomio.SocketStream) -> None:
    count = 0
    try:
        while True:
            try:
                head = await stream.read_until(b"\r\n\r\n", max_size=MAX_HEAD)
            except broomio.IncompleteReadError:
                return  # the client closed the connection between requests
            count += 1
            try:
                method, target, version, headers = parse_head(head[:-4])
                if "transfer-encoding" in headers:
                    raise BadRequest(501, "chunked request bodies are not supported")
                length = int(headers.get("content-length", "0") or "0")
                if length < 0:
                    raise BadRequest(400, "negative Content-Length")
                if length > MAX_BODY:
                    raise BadRequest(413, "body too large")
            except (BadRequest, ValueError) as exc:
                status = exc.status if isinstance(exc, BadRequest) else 400
                await respond(stream, status, f"{exc}\n".encode(), keep_alive=False)
                return
            body = await stream.read_exactly(length)
            connection = headers.get("connection", "").lower()
            keep_alive = connection != "close" and (
                version == "HTTP/1.1" or connection == "keep-alive"
            )
            if method == "GET" and target == "/":
                text = f"Hello from broomio! request {count} on this connection\n"
                await respond(stream, 200, text.encode(), keep_alive=keep_alive)
            elif method == "POST" and target == "/echo":
                await respond(stream, 200, body, keep_alive=keep_alive,
                              content_type="application/octet-stream")
            else:
                await respond(stream, 404, f"no route for {method} {target}\n".encode(),
                              keep_alive=keep_alive)
            if not keep_alive:
                return
    except (broomio.BrokenResourceError, broomio.IncompleteReadError, ValueError):
        return  # the client vanished mid-request, or sent an oversized head


async def run_in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking function in a thread; wait for it without blocking the loop."""
    loop = broomio.current_loop()
    lot = broomio.lowlevel.ParkingLot()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            loop.call_soon_threadsafe(lot.unpark_all)

    threading.Thread(target=target, daemon=True).start()
    while not outcome:
        await lot.park()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def http_client_demo(port: int) -> None:
    """A real HTTP client (the stdlib's), several requests on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/")
        response = conn.getresponse()
        print(response.status, response.reason, response.read().decode().rstrip())
    first_socket = conn.sock
    conn.request("POST", "/echo", body=b"echo this body")
    response = conn.getresponse()
    print(response.status, response.reason, response.read().decode())
    conn.request("GET", "/missing")
    response = conn.getresponse()
    print(response.status, response.reason, response.read().decode().rstrip())
    print("same connection for every request:", conn.sock is first_socket)
    conn.request("GET", "/", headers={"Connection": "close"})
    response = conn.getresponse()
    print(response.status, response.getheader("Connection"), response.read().decode().rstrip())
    conn.close()


async def demo() -> None:
    async with broomio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(broomio.serve_tcp, handle_connection, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        print(f"serving on http://127.0.0.1:{port}/")
        await run_in_thread(http_client_demo, port)
        nursery.cancel()
    print("demo finished")


async def serve(port: int) -> None:
    async with broomio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(broomio.serve_tcp, handle_connection, port, host="127.0.0.1")
        )
        print(f"serving on http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/",
              flush=True)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        rest = sys.argv[sys.argv.index("--serve") + 1:]
        try:
            broomio.run(serve, int(rest[0]) if rest else 8080)
        except KeyboardInterrupt:
            print("Exiting...")
    else:
        broomio.run(demo)
