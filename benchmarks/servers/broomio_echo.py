"""broomio echo server: one task per connection.

usage: python -m benchmarks.servers.broomio_echo --port PORT [--api auto|socket|streams]

* ``socket``: the low-level API, ``broomio.socket``::

      sock = broomio.socket.socket(); sock.bind(...); sock.listen()
      conn, addr = await sock.accept()       # one task per connection:
      data = await conn.recv(65536); await conn.send_all(data)

* ``streams``: ``await broomio.serve_tcp(handler, port, host=..., task_status=...)``;
  ``handler(stream)`` gets a ``broomio.SocketStream`` and loops
  ``await stream.receive_some(65536)`` / ``await stream.send_all(data)``.
* ``auto`` (default): ``socket`` if ``broomio.socket`` imports, else ``streams``.

Listens on 127.0.0.1, prints the bound port on stdout once listening (the API
used goes to stderr), serves until killed.  If broomio has neither API, exits
with status 1 and a one-line reason on stderr (the harness shows it in the
table).

This file is the only place that knows broomio's socket API: if a name
changes, fix it here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import socket as stdlib_socket
import sys
from typing import Any

import broomio as _broomio  # type: ignore[import-not-found, unused-ignore]

#: Untyped on purpose: this server uses an API newer than the installed stubs may know.
broomio: Any = _broomio

HOST = "127.0.0.1"
BACKLOG = 1024
READ_SIZE = 65536

#: A peer that resets the connection mid-echo is not an error for an echo server.
_PEER_GONE: tuple[type[BaseException], ...] = (OSError, broomio.BrokenResourceError)


# -- low-level socket API ----------------------------------------------------


def socket_module() -> Any | None:
    """``broomio.socket``, or None when this broomio has no socket layer yet."""
    try:
        return importlib.import_module("broomio.socket")
    except ModuleNotFoundError as exc:
        if exc.name != "broomio.socket":
            raise  # broomio.socket exists but is broken: show that, don't fall back
        return None


async def echo_socket(conn: Any) -> None:
    """Echo one accepted socket until EOF, then close it."""
    try:
        while True:
            data = await conn.recv(READ_SIZE)
            if not data:
                break
            await conn.send_all(data)
    except _PEER_GONE:
        pass
    finally:
        conn.close()


async def serve_socket(bsocket: Any, port: int) -> None:
    """Accept loop on a ``broomio.socket`` listener; one task per connection."""
    sock = bsocket.socket()  # AF_INET, SOCK_STREAM
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(BACKLOG)
    print(sock.getsockname()[1], flush=True)
    async with broomio.open_nursery() as nursery:
        while True:
            conn, _addr = await sock.accept()
            # asyncio, uvloop and trio set TCP_NODELAY on accepted sockets; so must we.
            conn.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
            nursery.start_soon(echo_socket, conn)


# -- streams API ---------------------------------------------------------------


async def echo_stream(stream: Any) -> None:
    """``serve_tcp`` handler: echo one ``SocketStream`` until EOF."""
    try:
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                break
            await stream.send_all(data)
    except _PEER_GONE:
        pass


def free_port() -> int:
    """A port that is free on HOST right now (for ``--port 0`` with ``serve_tcp``)."""
    with stdlib_socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def serve_streams(port: int) -> None:
    """``broomio.serve_tcp`` with :func:`echo_stream`; prints the port once listening."""
    if port == 0:
        # What task_status.started() reports is not settled yet: pick the port here
        # (a tiny race with other processes, harmless on a benchmark machine).
        port = free_port()
    async with broomio.open_nursery() as nursery:
        await nursery.start(functools.partial(broomio.serve_tcp, echo_stream, port, host=HOST))
        print(port, flush=True)


# -- main ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, pick the API, serve until killed."""
    parser = argparse.ArgumentParser(description="broomio TCP echo server on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="port (0: any free port)")
    parser.add_argument("--api", choices=("auto", "socket", "streams"), default="auto",
                        help="auto: the socket API if broomio has it, else serve_tcp")
    args = parser.parse_args(argv)

    bsocket = socket_module() if args.api in ("auto", "socket") else None
    has_streams = hasattr(broomio, "serve_tcp")
    version = getattr(broomio, "__version__", "?")
    if bsocket is not None:
        print("broomio_echo: socket API (broomio.socket)", file=sys.stderr, flush=True)
        broomio.run(serve_socket, bsocket, args.port)
    elif args.api != "socket" and has_streams:
        print("broomio_echo: streams API (broomio.serve_tcp)", file=sys.stderr, flush=True)
        broomio.run(serve_streams, args.port)
    else:
        wanted = {"auto": "neither broomio.socket nor broomio.serve_tcp",
                  "socket": "no broomio.socket", "streams": "no broomio.serve_tcp"}[args.api]
        print(f"broomio_echo: {wanted} in broomio {version}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
