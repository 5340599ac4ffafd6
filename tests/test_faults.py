"""Fault injection against the example servers (examples/echo_server.py, http_server.py,
tls_echo_server.py), each run in serve mode in its own process.

Misbehaving peers -- a reset in the middle of a message (SO_LINGER 0), a peer that connects
and stalls (slowloris), a half-close, garbage instead of TLS, a storm of connections while
the server is short of file descriptors (EMFILE, under a low RLIMIT_NOFILE) -- must only
ever end their own connection: healthy clients served alongside them get every answer
right, the server's own accounting adds up, and it still stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

#: Enough to get through the steps below on a loaded 2-core machine, never a tuning knob:
#: every wait polls for a condition and fails with what it saw.
WAIT = 15.0

WELCOME = b"Welcome to the server pal!\n"


class ExampleServer:
    """An example in serve mode, optionally under a low RLIMIT_NOFILE.

    Its output goes to a file (not a pipe a chatty server could fill up and block on);
    :meth:`wait_for` polls that file for a pattern.
    """

    def __init__(self, name: str, *args: str, pattern: str, nofile: int | None = None) -> None:
        self.log = tempfile.TemporaryFile()
        path = os.path.join(EXAMPLES, name)
        code = (
            "import resource, runpy, sys\n"
            f"limit = {nofile!r}\n"
            "if limit is not None:\n"
            "    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
            f"sys.argv = [{path!r}, *sys.argv[1:]]\n"
            f"runpy.run_path({path!r}, run_name='__main__')\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=EXAMPLES,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.match = self.wait_for(pattern)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = WAIT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            matches = list(re.finditer(pattern, text))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) before "
                                     f"{count} x {pattern!r}:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {count} x {pattern!r} "
                                     f"(saw {len(matches)}):\n{text[-4000:]}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("server did not stop on SIGINT:\n"
                                     + self.output()[-4000:]) from None
        out = self.output()
        self.log.close()
        return self.proc.returncode, out


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER {on, 0}: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---------------------------------------------------------------------------
# examples/echo_server.py


@pytest.fixture
def echo_server() -> Iterator[ExampleServer]:
    server = ExampleServer("echo_server.py", "--serve", "0",
                           pattern=r"serving asynchronously at \('[\d.]+', (\d+)\)")
    try:
        yield server
    finally:
        if server.alive():
            server.proc.kill()
            server.proc.wait()


def echo_round_trips(port: int, messages: int) -> int:
    """A well-behaved client: the welcome, then ``messages`` round trips; how many were right."""
    good = 0
    with connect(port) as sock:
        assert recv_exactly(sock, len(WELCOME)) == WELCOME
        for i in range(messages):
            msg = f"healthy message {i}\n".encode()
            sock.sendall(msg)
            good += recv_exactly(sock, 5 + len(msg)) == b"Got: " + msg
    return good


def test_echo_server_survives_resets_stalls_and_half_closes(echo_server: ExampleServer) -> None:
    port = int(echo_server.match.group(1))
    opened = 0
    # Slowloris: connect and never send anything; held open for the whole test.
    stalled = [connect(port) for _ in range(5)]
    opened += 5
    assert echo_round_trips(port, 3) == 3
    opened += 1
    # Resets: before the welcome is read, in the middle of a message, while the server
    # is writing (a big message whose echo is never read).
    for payload in (b"", b"half a mess", b"x" * 200_000):
        sock = connect(port)
        opened += 1
        if payload:
            sock.sendall(payload)
        reset(sock)
        assert echo_round_trips(port, 2) == 2
        opened += 1
    # Half-close: the server answers what it got, then sees EOF and closes its side.
    with connect(port) as sock:
        opened += 1
        sock.sendall(b"last words\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == WELCOME + b"Got: last words\n"
    # The stalled peers still hold their connections: close them, rudely for half.
    for i, sock in enumerate(stalled):
        if i % 2:
            reset(sock)
        else:
            sock.close()
    assert echo_round_trips(port, 3) == 3
    opened += 1
    # The accounting adds up: every connection accepted was also closed.
    echo_server.wait_for(r"Connection from \('127\.0\.0\.1', \d+\) closed", count=opened)
    rc, out = echo_server.stop()
    assert rc == 0 and "Exiting..." in out, out[-4000:]
    assert len(re.findall(r"\('127\.0\.0\.1', \d+\) connected", out)) == opened
    assert len(re.findall(r"Connection from \('127\.0\.0\.1', \d+\) closed", out)) == opened
    assert "Traceback" not in out, out[-4000:]


def storm(port: int, count: int) -> list[socket.socket]:
    """``count`` non-blocking connects in quick succession (no waiting for them)."""
    socks = []
    for i in range(count):
        if i % 4 == 3:
            time.sleep(0.02)  # let the server drain a short listen backlog (no SYN drops)
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        assert err in (0, errno.EINPROGRESS, errno.EAGAIN), os.strerror(err)
        socks.append(s)
    return socks


def retry(fn, *args, timeout: float = WAIT):  # type: ignore[no-untyped-def]
    """``fn(*args)`` until it stops failing with OSError (the server is catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(*args)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
def test_echo_server_survives_emfile_storm() -> None:
    server = ExampleServer("echo_server.py", "--serve", "0", nofile=24,
                           pattern=r"serving asynchronously at \('[\d.]+', (\d+)\)")
    try:
        port = int(server.match.group(1))
        crowd = storm(port, 60)
        server.wait_for(r"Too many open files|EMFILE")
        assert server.alive()
        for sock in crowd:
            sock.close()
        # Descriptors free up again: the server goes back to serving.
        assert retry(echo_round_trips, port, 3) == 3
        assert server.alive()
        rc, out = server.stop()
        assert rc == 0 and "Exiting..." in out, out[-4000:]
    finally:
        if server.alive():
            server.proc.kill()
            server.proc.wait()


# ---------------------------------------------------------------------------
# examples/http_server.py


@pytest.fixture
def http_server() -> Iterator[ExampleServer]:
    server = ExampleServer("http_server.py", "--serve", "0",
                           pattern=r"serving on http://127\.0\.0\.1:(\d+)/")
    try:
        yield server
    finally:
        if server.alive():
            server.proc.kill()
            server.proc.wait()


def http_get(port: int, close: bool = True) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return recv_all(sock)


def http_ok(port: int) -> bool:
    reply = http_get(port)
    return reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(
        b"Hello from broomio! request 1 on this connection\n")


def test_http_server_survives_faults(http_server: ExampleServer) -> None:
    port = int(http_server.match.group(1))
    # Slowloris: a request head trickled in and then abandoned, and idle connections.
    loris = [connect(port) for _ in range(5)]
    for sock in loris:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: ")
    assert http_ok(port)
    # Resets mid-head, mid-body (Content-Length promises more) and while reading a reply.
    partials = [b"GET / HT", b"POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\nabc",
                b"POST /echo HTTP/1.1\r\nContent-Length: 900000\r\n\r\n" + b"z" * 900_000]
    for data in partials:
        sock = connect(port)
        try:
            sock.sendall(data)
        except ConnectionError:
            pass
        reset(sock)
        assert http_ok(port)
    # Garbage: binary junk, an oversized head, a bad Content-Length: 400s, not a crash.
    for junk in (os.urandom(3000) + b"\r\n\r\n", b"A" * 20_000,
                 b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n"):
        with connect(port) as sock:
            try:
                sock.sendall(junk)
                reply = recv_all(sock)
            except ConnectionError:
                reply = b""  # the server may close before reading it all: also fine
            assert reply == b"" or reply.startswith(b"HTTP/1.1 400 "), reply[:200]
        assert http_ok(port)
    # Half-close after a complete request: the answer still arrives.
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    for sock in loris:
        reset(sock)
    healthy = sum(http_ok(port) for _ in range(10))
    assert healthy == 10
    rc, out = http_server.stop()
    assert rc == 0 and "Exiting..." in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]


@pytest.mark.slow
def test_http_server_survives_emfile_storm() -> None:
    server = ExampleServer("http_server.py", "--serve", "0", nofile=24,
                           pattern=r"serving on http://127\.0\.0\.1:(\d+)/")
    try:
        port = int(server.match.group(1))
        crowd = storm(port, 60)
        server.wait_for(r"EMFILE")  # serve_tcp logs the errno name and backs off
        assert server.alive()
        for sock in crowd:
            sock.close()
        assert all(retry(http_ok, port) for _ in range(5))
        rc, out = server.stop()
        assert rc == 0 and "Exiting..." in out, out[-4000:]
    finally:
        if server.alive():
            server.proc.kill()
            server.proc.wait()


# ---------------------------------------------------------------------------
# examples/tls_echo_server.py


@pytest.fixture(scope="module")
def certificate() -> Iterator[tuple[str, str]]:
    if shutil.which("openssl") is None:
        pytest.skip("the TLS example needs the openssl command")
    sys.path.insert(0, EXAMPLES)
    try:
        import tls_echo_server
    finally:
        sys.path.remove(EXAMPLES)
    with tempfile.TemporaryDirectory() as directory:
        yield tls_echo_server.self_signed_certificate(directory)


@pytest.fixture
def tls_server(certificate: tuple[str, str]) -> Iterator[tuple[ExampleServer, int, str]]:
    cert, key = certificate
    # The example prints nothing when serving: take a free port, then poll it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ExampleServer("tls_echo_server.py", "--serve", str(port), "--cert", cert,
                           "--key", key, pattern=r"")
    try:
        retry(lambda: connect(port).close())
        yield server, port, cert
    finally:
        if server.alive():
            server.proc.kill()
            server.proc.wait()


def tls_round_trips(port: int, cafile: str, messages: int) -> int:
    context = ssl.create_default_context(cafile=cafile)
    good = 0
    with context.wrap_socket(connect(port), server_hostname="localhost") as tls:
        line = b""
        while not line.endswith(b"\n"):
            line += tls.recv(1)
        assert line.startswith(b"Welcome to the TLS server pal!")
        for i in range(messages):
            msg = f"secret {i}".encode()
            tls.sendall(msg)
            good += recv_exactly(tls, 5 + len(msg)) == b"Got: " + msg
    return good


def handshake_then(port: int, cafile: str
                   ) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO]:
    """A TLS handshake over memory BIOs, so the raw socket stays ours to abuse afterwards."""
    context = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    sock = connect(port)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)
    sock.sendall(outgoing.read())
    return sock, obj, outgoing


def test_tls_echo_server_survives_garbage_and_resets(
        tls_server: tuple[ExampleServer, int, str]) -> None:
    server, port, cert = tls_server
    stalled = [connect(port) for _ in range(3)]  # never say hello
    assert tls_round_trips(port, cert, 2) == 2
    # Not TLS at all: plain HTTP, random bytes, an SSLv2-looking header, half a hello.
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40)
    for junk in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(5000), b"\x80\x2e\x01\x03\x01",
                 hello):
        with connect(port) as sock:
            try:
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
                recv_all(sock)  # an alert, or nothing; then the server closes
            except ConnectionError:
                pass
        assert tls_round_trips(port, cert, 1) == 1
    # A reset in the middle of the handshake.
    sock = connect(port)
    sock.sendall(hello)
    reset(sock)
    assert tls_round_trips(port, cert, 1) == 1
    # After a good handshake: garbage records, a truncated record, a reset mid-record.
    for abuse in (os.urandom(3000), b"\x17\x03\x03\x40\x00" + b"x" * 100, b"\x17\x03\x03"):
        sock, _, _ = handshake_then(port, cert)
        try:
            sock.sendall(abuse)
        except ConnectionError:
            pass
        reset(sock)
        assert tls_round_trips(port, cert, 1) == 1
    # A reset while the server is sending to us (its welcome, and unread echoes).
    sock, obj, outgoing = handshake_then(port, cert)
    sock.settimeout(0.5)
    try:
        for _ in range(100):  # ~1.6 MB of echoes nobody reads: the server's sends block
            obj.write(b"y" * 16000)
            sock.sendall(outgoing.read())
    except (ConnectionError, TimeoutError):
        pass
    reset(sock)
    for sock in stalled:
        reset(sock)
    assert sum(tls_round_trips(port, cert, 2) for _ in range(5)) == 10
    assert server.alive()
    rc, out = server.stop()
    assert rc == 0 and "Exiting..." in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
