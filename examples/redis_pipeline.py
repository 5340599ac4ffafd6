"""A pipelined Redis client on broomio streams: many tasks share one connection.

Redis speaks RESP, a request/response protocol in which replies come back in the order
the requests were sent.  So a single connection can carry many requests at once
("pipelining") if the client remembers who is waiting for which reply:

* every request appends its encoded command to one outgoing buffer *and* its waiter to
  a FIFO of pending requests, in the same step (no ``await`` in between), so the two
  always agree on the order;
* one writer task sends whatever the buffer holds in a single ``send_all`` (100 tasks
  asking at once become one write of 100 commands);
* one reader task parses replies as they arrive (:class:`RespParser`: simple strings,
  errors, integers, bulk strings including null, arrays including nested and null ones)
  and hands each reply to the oldest pending request, by setting that request's
  ``broomio.Event``.  An error reply is raised as :class:`RedisError` in the task that
  sent the command; the connection carries on.

A request whose task is cancelled while it waits leaves its waiter in the FIFO: its reply
still arrives, is handed to the waiter and dropped, so later replies still match.

Run:
    python examples/redis_pipeline.py                  # starts its own redis-server
    python examples/redis_pipeline.py --port 6379      # use a running server
    REDIS_URL=redis://127.0.0.1:6379 python examples/redis_pipeline.py

With no server given, it starts ``redis-server --port <free port> --bind 127.0.0.1
--save '' --appendonly no`` (in a temporary directory) and stops it at exit.  Then 100
tasks issue 10,000 pipelined SET/GET/INCR commands and every reply is checked.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Union

import broomio

#: What a reply decodes to: ``+OK`` -> str, ``:1`` -> int, ``$3 abc`` -> bytes,
#: ``$-1`` / ``*-1`` -> None, ``*2 ...`` -> list, ``-ERR ...`` -> RedisError (an instance,
#: raised by the client; the parser itself never raises for an error *reply*).
Reply = Union[str, int, bytes, None, list["Reply"], "RedisError"]


class RedisError(Exception):
    """An error reply from the server (``-ERR ...``, ``-WRONGTYPE ...``)."""


class ProtocolError(Exception):
    """The server sent bytes that are not RESP."""


# ---------------------------------------------------------------------------------------
# RESP: encoding commands, parsing replies (no I/O: feed it bytes, take replies out)
# ---------------------------------------------------------------------------------------


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings: ``SET k v`` ->
    ``*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n``."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("bool is not a Redis argument; pass an int or a string")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        else:
            raise TypeError(f"a Redis argument must be bytes, str or int, not {type(arg).__name__}")
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends in the middle of a reply: wait for more bytes."""


class RespParser:
    """An incremental RESP2 reply parser.

    ``feed(data)`` adds received bytes (in chunks of any size, split anywhere);
    ``replies()`` yields every reply that is now complete, in order.  A reply split across
    chunks is parsed again from its start once more bytes arrive; the bytes of complete
    replies are dropped from the buffer.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def replies(self) -> Iterator[Reply]:
        pos = 0
        try:
            while pos < len(self._buf):
                reply, pos_after = self._parse(pos)
                pos = pos_after
                yield reply
        except _Incomplete:
            pass
        finally:
            del self._buf[:pos]

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Reply, int]:
        kind = self._buf[pos : pos + 1]
        line, pos = self._line(pos + 1)
        if kind == b"+":
            return line.decode("utf-8", "replace"), pos
        if kind == b"-":
            return RedisError(line.decode("utf-8", "replace")), pos
        if kind == b":":
            return self._int(line), pos
        if kind == b"$":
            n = self._int(line)
            if n == -1:
                return None, pos
            if n < 0:
                raise ProtocolError(f"bad bulk string length {n}")
            if len(self._buf) < pos + n + 2:
                raise _Incomplete
            if self._buf[pos + n : pos + n + 2] != b"\r\n":
                raise ProtocolError("bulk string not followed by CRLF")
            return bytes(self._buf[pos : pos + n]), pos + n + 2
        if kind == b"*":
            n = self._int(line)
            if n == -1:
                return None, pos
            if n < 0:
                raise ProtocolError(f"bad array length {n}")
            items: list[Reply] = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise ProtocolError(f"unknown reply type {bytes(kind)!r}")

    @staticmethod
    def _int(line: bytes) -> int:
        try:
            return int(line)
        except ValueError:
            raise ProtocolError(f"bad integer {line!r}") from None


# ---------------------------------------------------------------------------------------
# The client: one connection, one writer path, one reader task
# ---------------------------------------------------------------------------------------


class _Waiter:
    """One pending request: the reader sets ``reply`` (or ``error``), then ``done``."""

    __slots__ = ("done", "reply", "error")

    def __init__(self) -> None:
        self.done = broomio.Event()
        self.reply: Reply = None
        self.error: BaseException | None = None


class Redis:
    """A pipelined client over one connection; use :func:`connect` to make one."""

    def __init__(self, stream: broomio.SocketStream) -> None:
        self._stream = stream
        self._pending: collections.deque[_Waiter] = collections.deque()
        self._outgoing = bytearray()
        self._wake_writer: broomio.Queue[None] = broomio.Queue()
        self._broken: BaseException | None = None
        #: The most requests that were ever in flight at once (shows the pipelining).
        self.max_in_flight = 0
        self.commands_sent = 0
        self.writes = 0

    async def execute(self, *args: bytes | str | int) -> Reply:
        """Send one command and return its reply; an error reply raises RedisError."""
        if self._broken is not None:
            raise ConnectionError("the Redis connection is gone") from self._broken
        data = encode_command(*args)
        waiter = _Waiter()
        # The command and its waiter are queued together, with no await in between, so
        # the FIFO of waiters is always in the order the commands hit the wire.
        if not self._outgoing:
            self._wake_writer.put_nowait(None)
        self._outgoing += data
        self._pending.append(waiter)
        self.commands_sent += 1
        self.max_in_flight = max(self.max_in_flight, len(self._pending))
        await waiter.done.wait()
        if waiter.error is not None:
            raise ConnectionError("the Redis connection is gone") from waiter.error
        if isinstance(waiter.reply, RedisError):
            raise waiter.reply
        return waiter.reply

    async def _writer(self) -> None:
        try:
            async for _ in self._wake_writer:
                data = bytes(self._outgoing)
                self._outgoing.clear()
                if data:
                    self.writes += 1
                    await self._stream.send_all(data)
        except (broomio.BrokenResourceError, broomio.ClosedResourceError) as exc:
            self._fail(exc)

    async def _reader(self) -> None:
        parser = RespParser()
        try:
            async for chunk in self._stream:
                parser.feed(chunk)
                for reply in parser.replies():
                    if not self._pending:
                        raise ProtocolError(f"a reply nobody asked for: {reply!r}")
                    waiter = self._pending.popleft()
                    waiter.reply = reply
                    waiter.done.set()
            self._fail(ConnectionResetError("the server closed the connection"))
        except (broomio.BrokenResourceError, broomio.ClosedResourceError, ProtocolError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """The connection is unusable: every pending and later request fails."""
        if self._broken is None:
            self._broken = exc
        while self._pending:
            waiter = self._pending.popleft()
            waiter.error = exc
            waiter.done.set()
        self._wake_writer.close()

    # A few typed conveniences.
    async def ping(self) -> str:
        reply = await self.execute("PING")
        assert isinstance(reply, str)
        return reply

    async def set(self, key: str, value: bytes | str | int) -> None:
        await self.execute("SET", key, value)

    async def get(self, key: str) -> bytes | None:
        reply = await self.execute("GET", key)
        assert reply is None or isinstance(reply, bytes)
        return reply

    async def incr(self, key: str) -> int:
        reply = await self.execute("INCR", key)
        assert isinstance(reply, int)
        return reply


@contextlib.asynccontextmanager
async def connect(host: str, port: int) -> AsyncIterator[Redis]:
    """``async with connect(host, port) as redis:`` -- one connection, with its reader and
    writer tasks running until the block exits."""
    stream = await broomio.open_tcp_stream(host, port)
    async with stream, broomio.open_nursery() as nursery:
        client = Redis(stream)
        nursery.start_soon(client._reader)
        nursery.start_soon(client._writer)
        try:
            yield client
        finally:
            nursery.cancel()


# ---------------------------------------------------------------------------------------
# A redis-server of our own, when none is given
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """Start a throw-away redis-server on 127.0.0.1 and a free port; stop it at exit."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server), "
                         "and no server was given with --port or REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="broomio-redis-") as workdir:
        for _attempt in range(5):  # another process may take the free port first
            port = free_port()
            proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", workdir],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            if _wait_until_ready(proc, port):
                break
            proc.kill()
            proc.wait()
        else:
            raise SystemExit("could not start redis-server")
        try:
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _wait_until_ready(proc: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------
# The demo workload
# ---------------------------------------------------------------------------------------


async def worker(redis: Redis, prefix: str, i: int, rounds: int) -> None:
    """``rounds`` x (SET, GET, INCR), each reply checked."""
    key, counter = f"{prefix}:key:{i}", f"{prefix}:count:{i}"
    for j in range(rounds):
        value = f"value-{i}-{j}".encode()
        await redis.set(key, value)
        got = await redis.get(key)
        assert got == value, f"GET {key} returned {got!r}, expected {value!r}"
        n = await redis.incr(counter)
        assert n == j + 1, f"INCR {counter} returned {n}, expected {j + 1}"


async def main(host: str, port: int, tasks: int, rounds: int) -> None:
    prefix = f"broomio-example:{os.getpid()}"
    async with connect(host, port) as redis:
        assert await redis.ping() == "PONG"
        started = time.perf_counter()
        async with broomio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(worker, redis, prefix, i, rounds)
        elapsed = time.perf_counter() - started
        commands = tasks * rounds * 3

        # Every reply type, and an error that does not break the connection.
        missing = await redis.get(f"{prefix}:no-such-key")
        assert missing is None, missing
        counts = await redis.execute("MGET", *(f"{prefix}:count:{i}" for i in range(3)))
        assert counts == [str(rounds).encode()] * 3, counts
        try:
            await redis.execute("INCR", f"{prefix}:key:0")  # holds "value-0-..."
        except RedisError as exc:
            error = str(exc)
        else:
            raise AssertionError("INCR of a non-integer did not fail")
        assert await redis.ping() == "PONG"  # the connection is still in step
        keys = [f"{prefix}:{kind}:{i}" for i in range(tasks) for kind in ("key", "count")]
        deleted = await redis.execute("DEL", *keys)
        assert deleted == 2 * tasks, deleted

    print(f"{commands} pipelined SET/GET/INCR commands from {tasks} tasks over 1 connection "
          f"in {elapsed:.2f} s ({commands / elapsed:,.0f} commands/s)")
    print(f"up to {redis.max_in_flight} requests in flight at once; "
          f"{redis.commands_sent} commands in {redis.writes} writes")
    print(f"error replies are exceptions: {error!r}")
    print("all replies checked")


def parse_target(args: argparse.Namespace) -> tuple[str, int] | None:
    """The server to use: --port/--host, else REDIS_URL, else None (start our own)."""
    if args.port is not None:
        return args.host, args.port
    url = os.environ.get("REDIS_URL")
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis":
            raise SystemExit(f"REDIS_URL must look like redis://host:port, not {url!r}")
        return parts.hostname or "127.0.0.1", parts.port or 6379
    return None


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running Redis server's port")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=34,
                        help="SET+GET+INCR rounds per task (default 34: ~10,000 commands)")
    args = parser.parse_args()
    target = parse_target(args)
    if target is not None:
        broomio.run(main, *target, args.tasks, args.rounds)
        return
    with redis_server() as port:
        print(f"started redis-server on 127.0.0.1:{port}")
        broomio.run(main, "127.0.0.1", port, args.tasks, args.rounds)
    print("redis-server stopped")


if __name__ == "__main__":
    cli()
