"""An echo client on broomio's streams: open_tcp_stream, read_line, send_all.

It talks to the welcome-and-echo protocol of examples/echo_server.py: read the welcome
line, send each message, print each "Got: ..." reply.

Run:
    python examples/echo_client.py                      # demo: starts its own server
    python examples/echo_client.py --port 25000 hi yo   # against echo_server.py --serve
    python examples/echo_client.py --host example.org --port 7 hello
"""

from __future__ import annotations

import argparse
import functools

import broomio


async def talk(host: str, port: int, messages: list[str]) -> None:
    async with await broomio.open_tcp_stream(host, port) as stream:
        welcome = await stream.read_line()
        print(f"server says: {welcome.decode().rstrip()}")
        for message in messages:
            line = message.encode() + b"\n"
            await stream.send_all(line)
            reply = await stream.read_exactly(len(b"Got: ") + len(line))
            print(f"sent {message!r}, server replied {reply.decode().rstrip()!r}")
        await stream.send_eof()  # we are done; the server closes its side too
        assert await stream.receive_some() == b""
    print("connection closed")


async def welcome_echo(stream: broomio.SocketStream) -> None:
    """The same protocol as examples/echo_server.py, on streams."""
    await stream.send_all(b"Welcome to the server pal!\n")
    async for chunk in stream:
        await stream.send_all(b"Got: " + chunk)


async def demo(messages: list[str]) -> None:
    async with broomio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(broomio.serve_tcp, welcome_echo, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        await talk("127.0.0.1", port, messages)
        nursery.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="connect to this port (default: demo)")
    parser.add_argument("messages", nargs="*", default=["hello", "broomio", "bye"])
    args = parser.parse_args()
    if args.port is None:
        broomio.run(demo, args.messages)
    else:
        broomio.run(talk, args.host, args.port, args.messages)


if __name__ == "__main__":
    main()
