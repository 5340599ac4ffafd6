"""aiohttp "hello world" HTTP server on stock asyncio, uvloop or broomio.asyncio.

usage: python -m benchmarks.servers.aiohttp_hello --port PORT [--loop asyncio|uvloop|broomio]

``GET /`` answers ``Hello, World!`` (text/plain, keep-alive); the access log is off so
that the loop, the HTTP parser and the transports are what is measured.  Listens on
127.0.0.1, prints the bound port on stdout once listening, serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from aiohttp import web

HOST = "127.0.0.1"
BACKLOG = 1024
LOOPS = ("asyncio", "uvloop", "broomio")


def loop_factory_for(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``asyncio.Runner`` loop factory of ``--loop NAME`` (None: stock asyncio)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "broomio":
        import broomio.asyncio

        return broomio.asyncio.new_event_loop
    return None


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello, World!")


async def serve(port: int) -> None:
    """Listen on ``HOST:port``, print the bound port, serve forever."""
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=BACKLOG)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description="aiohttp hello-world server on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="port (0: any free port)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory_for(args.loop)) as runner:
        runner.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
