"""trio echo server: ``trio.serve_tcp``, one task per connection.

usage: python -m benchmarks.servers.trio_echo --port PORT

The handler loops ``data = await stream.receive_some(65536)`` /
``await stream.send_all(data)``.  Listens on 127.0.0.1, prints the bound
port on stdout once listening, serves until killed.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

import trio  # type: ignore[import-untyped, unused-ignore]

HOST = "127.0.0.1"
BACKLOG = 1024
READ_SIZE = 65536


async def handle(stream: Any) -> None:
    """Echo one connection until EOF (``serve_tcp`` closes the stream afterwards)."""
    try:
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                break
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def serve(port: int) -> None:
    """Listen on ``HOST:port``, print the bound port, serve forever."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handle, port, host=HOST, backlog=BACKLOG)
        )
        print(listeners[0].socket.getsockname()[1], flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description="trio TCP echo server on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="port (0: any free port)")
    args = parser.parse_args(argv)
    trio.run(serve, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
