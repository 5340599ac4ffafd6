"""The welcome-and-echo server from giambio's README, on broomio's native API.

Each client is greeted with "Welcome to the server pal!" and every chunk it sends comes
back prefixed with "Got: ".  Like the original, it uses plain sockets: a stdlib listening
socket wrapped with ``loop.wrap_socket``, ``accept``, ``send_all`` and ``receive``.

Run:
    python examples/echo_server.py             # demo: server + 3 clients, then exit
    python examples/echo_server.py --serve     # serve on port 25000 until Ctrl-C
    python examples/echo_server.py --serve 8000
Then try ``nc localhost 25000`` or ``python examples/echo_client.py --port 25000``.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import Any

import broomio
import broomio.socket as bsocket

logging.basicConfig(
    level=20, format="[%(levelname)s] %(asctime)s %(message)s", datefmt="%d/%m/%Y %H:%M:%S"
)


async def server(address: tuple[str, int], task_status: Any = None) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(5)
    asock = broomio.current_loop().wrap_socket(sock)
    logging.info(f"Echo server serving asynchronously at {asock.getsockname()}")
    if task_status is not None:
        task_status.started(asock.getsockname())
    async with asock, broomio.open_nursery() as nursery:
        while True:
            try:
                conn, addr = await asock.accept()
            except OSError as exc:
                # Out of descriptors or memory (a connection storm): this is no reason to
                # stop serving the clients already connected.  Wait for some to leave.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logging.error(f"accept() failed ({errno.errorcode[exc.errno]}: "
                                  f"{exc.strerror}); retrying in 0.1 s")
                    await broomio.sleep(0.1)
                    continue
                if exc.errno == errno.ECONNABORTED:  # reset before we accepted it
                    continue
                raise
            logging.info(f"{addr} connected")
            nursery.start_soon(echo_handler, conn, addr)


# Connections the server is handling (the demo waits for them before stopping it).
open_connections: set[tuple[str, int]] = set()


async def echo_handler(sock: bsocket.socket, addr: tuple[str, int]) -> None:
    open_connections.add(addr)
    with sock:
        try:
            await sock.send_all(b"Welcome to the server pal!\n")
            while True:
                data = await sock.receive(1000)
                if not data:
                    break
                escaped = data.decode("utf-8", "replace").encode("unicode_escape").decode()
                logging.info(f"Got: '{escaped}' from {addr}")
                await sock.send_all(b"Got: " + data)
                logging.info(f"Echoed back '{escaped}' to {addr}")
        except ConnectionError as exc:  # the client went away rudely: only this one ends
            logging.info(f"{addr}: {exc!r}")
    logging.info(f"Connection from {addr} closed")
    open_connections.discard(addr)


async def recv_exactly(sock: bsocket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await sock.receive(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def demo_client(i: int, address: tuple[str, int]) -> None:
    async with bsocket.socket() as sock:
        await sock.connect(address)
        welcome = await recv_exactly(sock, len(b"Welcome to the server pal!\n"))
        print(f"client {i} received: {welcome!r}")
        for n in range(2):
            message = f"message {n} from client {i}\n".encode()
            await sock.send_all(message)
            reply = await recv_exactly(sock, len(b"Got: ") + len(message))
            print(f"client {i} received: {reply!r}")


async def demo() -> None:
    async with broomio.open_nursery() as nursery:
        address = await nursery.start(server, ("127.0.0.1", 0))
        async with broomio.open_nursery() as clients:
            for i in range(3):
                clients.start_soon(demo_client, i, address)
        with broomio.fail_after(10):  # let the server see every client leave
            while open_connections:
                await broomio.sleep(0.01)
        nursery.cancel()  # stop the server
    print("demo finished")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        rest = sys.argv[sys.argv.index("--serve") + 1:]
        port = int(rest[0]) if rest else 25000
        try:
            broomio.run(server, ("", port))
        except KeyboardInterrupt:  # Exceptions propagate!
            print("Exiting...")
    else:
        broomio.run(demo)
