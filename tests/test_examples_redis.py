"""examples/redis_pipeline.py against a real redis-server: the example end to end, its RESP
parser over the server's own bytes split at random points, and the client's behaviour
when replies are errors or the server goes away.

redis-server is required (``apt-get install redis-server``): without it these tests FAIL,
they do not skip, so a CI machine that lost it cannot go green by accident.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import broomio

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
EXAMPLE = os.path.join(EXAMPLES, "redis_pipeline.py")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("redis_pipeline_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses & co look their module up
    spec.loader.exec_module(module)
    return module


rp = load_example()


def require_redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    return exe


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    """A redis-server of our own on 127.0.0.1 (the example's own start/stop helper)."""
    require_redis_server()
    with rp.redis_server() as port:
        yield port


def raw_roundtrip(port: int, payload: bytes, expected_replies: int) -> bytes:
    """Send ``payload`` with a plain blocking socket and return the raw reply bytes, read
    until the stdlib-independent count of CRLF-terminated top-level replies is reached
    (checked by the caller with a one-shot parse)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            assert chunk, "server closed the connection early"
            data += chunk
            parser = rp.RespParser()
            parser.feed(data)
            if len(list(parser.replies())) >= expected_replies:
                return data
        raise AssertionError(f"did not get {expected_replies} replies: {data!r}")


def test_example_runs_with_its_own_server() -> None:
    require_redis_server()
    proc = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True,
                          timeout=60, cwd=EXAMPLES, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "started redis-server on 127.0.0.1:" in out
    assert "10200 pipelined SET/GET/INCR commands from 100 tasks over 1 connection" in out
    assert "all replies checked" in out
    assert "'ERR value is not an integer or out of range'" in out
    assert out.rstrip().endswith("redis-server stopped")
    # Requests really were pipelined: many in flight, far fewer writes than commands.
    in_flight = int(out.split("up to ", 1)[1].split()[0])
    writes = int(out.split(" commands in ", 1)[1].split()[0])
    assert in_flight > 1
    assert writes < 10200


def test_example_uses_a_given_server(redis_port: int) -> None:
    for extra_env, args in (({}, ["--port", str(redis_port), "--tasks", "7", "--rounds", "5"]),
                            ({"REDIS_URL": f"redis://127.0.0.1:{redis_port}"},
                             ["--tasks", "3", "--rounds", "4"])):
        proc = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                              timeout=60, cwd=EXAMPLES, stdin=subprocess.DEVNULL,
                              env={**os.environ, **extra_env})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "started redis-server" not in proc.stdout  # it used ours
        assert "all replies checked" in proc.stdout
    # The example cleaned up its keys on our server.
    raw = raw_roundtrip(redis_port, rp.encode_command("DBSIZE"), 1)
    assert raw == b":0\r\n"


# Commands covering every RESP2 reply type, with the replies a RESP2 server must send.
COMMANDS: list[tuple[tuple[Any, ...], Any]] = [
    (("PING",), "PONG"),                                              # simple string
    (("SET", "t:bin", b"a\r\nb\x00c$-1\r\n"), "OK"),                  # binary-safe bulk
    (("GET", "t:bin"), b"a\r\nb\x00c$-1\r\n"),
    (("GET", "t:missing"), None),                                     # null bulk
    (("SET", "t:empty", b""), "OK"),
    (("GET", "t:empty"), b""),                                        # empty bulk
    (("INCR", "t:n"), 1),                                             # integer
    (("INCRBY", "t:n", -5), -4),                                      # negative integer
    (("INCR", "t:bin"), rp.RedisError),                               # error
    (("LRANGE", "t:nolist", 0, -1), []),                              # empty array
    (("RPUSH", "t:list", "x", "yy", ""), 3),
    (("LRANGE", "t:list", 0, -1), [b"x", b"yy", b""]),                # array of bulks
    (("MGET", "t:n", "t:missing"), [b"-4", None]),                    # array with a null
    (("EVAL", "return {1, {'a', {}}, 'b'}", 0), [1, [b"a", []], b"b"]),  # nested arrays
    (("EVAL", "return redis.status_reply('FINE')", 0), "FINE"),
    (("BLPOP", "t:nolist", "0.01"), None),                            # null array (*-1)
    (("NOSUCHCOMMAND",), rp.RedisError),
    (("SET", "t:big", b"z" * 100_000), "OK"),                         # a bulk > one recv
    (("GET", "t:big"), b"z" * 100_000),
]


def check_replies(replies: list[Any], expected: list[Any]) -> None:
    assert len(replies) == len(expected)
    for got, want in zip(replies, expected):
        if want is rp.RedisError:
            assert isinstance(got, rp.RedisError), got
        else:
            assert got == want and type(got) is type(want), (got, want)


@pytest.fixture(scope="module")
def server_bytes(redis_port: int) -> bytes:
    """The server's raw reply bytes to COMMANDS, sent as one pipeline."""
    payload = b"".join(rp.encode_command(*args) for args, _ in COMMANDS)
    raw = raw_roundtrip(redis_port, payload, len(COMMANDS))
    assert raw.count(b"\r\n") > len(COMMANDS)
    return raw


def test_parser_whole(server_bytes: bytes) -> None:
    parser = rp.RespParser()
    parser.feed(server_bytes)
    check_replies(list(parser.replies()), [want for _, want in COMMANDS])
    assert list(parser.replies()) == []


@pytest.mark.parametrize("seed", range(40))
def test_parser_random_chunks(server_bytes: bytes, seed: int) -> None:
    """Any split of the byte stream gives the same replies, each exactly once."""
    rnd = random.Random(seed)
    parser = rp.RespParser()
    replies: list[Any] = []
    pos = 0
    max_chunk = rnd.choice([1, 2, 3, 7, 64, 4096, 70_000])
    while pos < len(server_bytes):
        n = rnd.randint(1, max_chunk)
        parser.feed(server_bytes[pos : pos + n])
        pos += n
        replies.extend(parser.replies())
    check_replies(replies, [want for _, want in COMMANDS])


def test_parser_byte_by_byte(server_bytes: bytes) -> None:
    parser = rp.RespParser()
    replies: list[Any] = []
    # The 100 kB bulk strings byte by byte would be quadratic; the rest is enough.
    small = server_bytes[: server_bytes.index(b"$100000")]
    for i in range(len(small)):
        parser.feed(small[i : i + 1])
        replies.extend(parser.replies())
    check_replies(replies, [want for _, want in COMMANDS[:-1]])


def test_parser_rejects_garbage() -> None:
    for bad in (b"?what\r\n", b":12x\r\n", b"$-2\r\n", b"$3\r\nabcXY", b"*-5\r\n"):
        parser = rp.RespParser()
        parser.feed(bad)
        with pytest.raises(rp.ProtocolError):
            list(parser.replies())


def test_encode_command() -> None:
    assert rp.encode_command("SET", b"k", 12) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert rp.encode_command() == b"*0\r\n"
    with pytest.raises(TypeError, match="bool"):
        rp.encode_command("SET", "k", True)
    with pytest.raises(TypeError, match="float"):
        rp.encode_command("SET", "k", 1.5)


def test_client_every_reply_type_pipelined(redis_port: int) -> None:
    """All COMMANDS at once from concurrent tasks over one connection: each task gets its
    own reply (errors raised as RedisError in that task only)."""
    results: dict[int, Any] = {}

    async def one(redis: Any, i: int, args: tuple[Any, ...]) -> None:
        try:
            results[i] = await redis.execute(*args)
        except rp.RedisError as exc:
            results[i] = exc

    async def main() -> int:
        async with rp.connect("127.0.0.1", redis_port) as redis:
            await redis.execute("DEL", "t:list", "t:n")
            # Order matters for the keys they share, so start them in order: the
            # requests are queued synchronously when each task first runs, in start order.
            async with broomio.open_nursery() as nursery:
                for i, (args, _) in enumerate(COMMANDS):
                    nursery.start_soon(one, redis, i, args)
            return int(redis.max_in_flight)

    in_flight = broomio.run(main)
    check_replies([results[i] for i in range(len(COMMANDS))], [w for _, w in COMMANDS])
    assert in_flight == len(COMMANDS)


def test_client_cancelled_request_keeps_replies_in_step(redis_port: int) -> None:
    """A request cancelled while waiting for its reply does not shift later replies."""

    async def main() -> None:
        async with rp.connect("127.0.0.1", redis_port) as redis:
            with broomio.move_on_after(0.05) as scope:
                await redis.execute("BLPOP", "t:never", "0.5")  # blocks the server 0.5 s
            assert scope.cancelled_caught
            # Queued behind the BLPOP: its null reply must go to the dropped waiter.
            assert await redis.execute("ECHO", "after") == b"after"
            assert await redis.ping() == "PONG"

    broomio.run(main)


def test_client_server_closes_connection(redis_port: int) -> None:
    """The server closing the connection fails every pending and later request with
    ConnectionError instead of hanging them."""

    async def main() -> None:
        async with rp.connect("127.0.0.1", redis_port) as redis:
            errors: list[BaseException] = []

            async def doomed() -> None:
                try:
                    await redis.execute("PING")
                except ConnectionError as exc:
                    errors.append(exc)

            # QUIT: the server answers +OK and closes; the PINGs pipelined behind it
            # never get a reply.
            async with broomio.open_nursery() as nursery:
                quit_task = nursery.start_soon(redis.execute, "QUIT")
                for _ in range(5):
                    nursery.start_soon(doomed)
            assert quit_task.result() == "OK"
            assert len(errors) == 5
            with pytest.raises(ConnectionError):
                await redis.execute("PING")

    broomio.run(main)


def test_example_without_redis_server_fails_clearly(tmp_path: Any) -> None:
    """No server given and no redis-server on PATH: a clear message, non-zero exit."""
    env = {**os.environ, "PATH": str(tmp_path)}
    env.pop("REDIS_URL", None)
    proc = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True,
                          timeout=60, cwd=EXAMPLES, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "redis-server is not installed" in proc.stderr
