"""asyncio / uvloop / broomio.asyncio echo servers: streams or Protocol API.

usage: python -m benchmarks.servers.asyncio_echo --port PORT
           [--api streams|protocol] [--loop asyncio|uvloop|broomio]

* ``streams``: one task per connection,
  ``data = await reader.read(65536); writer.write(data); await writer.drain()``.
* ``protocol``: ``data_received`` -> ``transport.write`` (no tasks at all).

Listens on 127.0.0.1, prints the bound port on stdout once listening, serves
until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import cast

HOST = "127.0.0.1"
BACKLOG = 1024
READ_SIZE = 65536


#: The event loops a server can run on (``--loop``).
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


async def handle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo one connection with the streams API until EOF."""
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    """Echo one connection from ``data_received``."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(port: int, api: str) -> None:
    """Listen on ``HOST:port``, print the bound port, serve forever."""
    server: asyncio.AbstractServer
    if api == "streams":
        server = await asyncio.start_server(handle_stream, HOST, port, backlog=BACKLOG)
    else:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, HOST, port, backlog=BACKLOG)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description="asyncio/uvloop TCP echo server on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="port (0: any free port)")
    parser.add_argument("--api", choices=("streams", "protocol"), default="streams")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    args = parser.parse_args(argv)
    loop_factory = loop_factory_for(args.loop)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.port, args.api))
    return 0


if __name__ == "__main__":
    sys.exit(main())
