"""The networking examples in examples/ run on their own and do what they say; the servers
also work against real clients (the stdlib's http.client, curl, the echo client example)."""

from __future__ import annotations

import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    path = os.path.join(EXAMPLES, name)
    assert os.path.exists(path), f"missing example {path}"
    proc = subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


class Server:
    """An example started in serve mode; waits for a line matching ``pattern``."""

    def __init__(self, name: str, *args: str, pattern: str, stream: str = "stdout"):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, name), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=EXAMPLES,
        )
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        self.seen = b""
        deadline = time.monotonic() + 15
        while True:
            match = re.search(pattern.encode(), self.seen)
            if match:
                self.match = match
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"{name} never printed {pattern!r}: {self.seen!r}")
            ready, _, _ = select.select([pipe], [], [], left)
            if ready:
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    out, err = self.proc.communicate(timeout=5)
                    raise AssertionError(f"{name} exited early:\n{out!r}\n{err!r}")
                self.seen += chunk

    def stop(self) -> tuple[str, str, int]:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("server did not stop on SIGINT") from None
        return out.decode(), err.decode(), self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


# ---------------------------------------------------------------------------
# demos


def test_echo_server_demo():
    proc = run_example("echo_server.py")
    lines = proc.stdout.splitlines()
    for i in range(3):
        assert f"client {i} received: b'Welcome to the server pal!\\n'" in lines
        for n in range(2):
            assert f"client {i} received: b'Got: message {n} from client {i}\\n'" in lines
    assert lines[-1] == "demo finished"
    assert proc.stderr.count(" connected") == 3  # the server logged each client
    assert proc.stderr.count("Connection from") == 3


def test_echo_client_demo():
    proc = run_example("echo_client.py", "first", "second")
    assert proc.stdout.splitlines() == [
        "server says: Welcome to the server pal!",
        "sent 'first', server replied 'Got: first'",
        "sent 'second', server replied 'Got: second'",
        "connection closed",
    ]


def test_http_server_demo():
    proc = run_example("http_server.py")
    lines = proc.stdout.splitlines()
    assert lines[1:4] == [
        f"200 OK Hello from broomio! request {i} on this connection" for i in (1, 2, 3)
    ]
    assert "200 OK echo this body" in lines
    assert "404 Not Found no route for GET /missing" in lines
    assert "same connection for every request: True" in lines
    assert "200 close Hello from broomio! request 6 on this connection" in lines
    assert lines[-1] == "demo finished"


def test_tls_echo_server_demo():
    if shutil.which("openssl") is None:
        pytest.skip("the TLS example needs the openssl command")
    proc = run_example("tls_echo_server.py")
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"server says: Welcome to the TLS server pal! \(TLSv1\.[23]\)", lines[1])
    assert "server replied: Got: encrypted" in lines
    assert "server replied: Got: hello" in lines
    assert "peer certificate subject: {'commonName': 'localhost'}" in lines
    assert any(line.startswith("default trust store refused") for line in lines)
    assert lines[-1] == "demo finished"


# ---------------------------------------------------------------------------
# servers against real clients


@pytest.mark.slow
def test_echo_server_serves_the_echo_client_and_netcat_style_clients():
    server = Server("echo_server.py", "--serve", "0", stream="stderr",
                    pattern=r"serving asynchronously at \('[\d.]+', (\d+)\)")
    try:
        port = server.match.group(1).decode()
        client = run_example("echo_client.py", "--port", port, "one", "two")
        assert "sent 'two', server replied 'Got: two'" in client.stdout
        # A raw client that vanishes with a reset must not take the server down.
        rude = socket.create_connection(("127.0.0.1", int(port)))
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        rude.close()
        again = run_example("echo_client.py", "--port", port, "still alive")
        assert "server replied 'Got: still alive'" in again.stdout
    finally:
        out, err, rc = server.stop()
    assert rc == 0 and "Exiting..." in out


@pytest.fixture
def http_server():
    server = Server("http_server.py", "--serve", "0",
                    pattern=r"serving on http://127\.0\.0\.1:(\d+)/")
    yield int(server.match.group(1))
    out, err, rc = server.stop()
    assert rc == 0 and "Exiting..." in out, err


@pytest.mark.slow
def test_http_server_keep_alive_with_http_client(http_server):
    conn = http.client.HTTPConnection("127.0.0.1", http_server, timeout=10)
    try:
        bodies = []
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") == "keep-alive"
            bodies.append(response.read())
        assert bodies == [f"Hello from broomio! request {i} on this connection\n".encode()
                          for i in (1, 2, 3)]
        payload = os.urandom(200_000)
        conn.request("POST", "/echo", body=payload)
        response = conn.getresponse()
        assert response.status == 200 and response.read() == payload
        conn.request("GET", "/nope")
        response = conn.getresponse()
        assert response.status == 404
        response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_http_server_http10_and_malformed_requests(http_server):
    with socket.create_connection(("127.0.0.1", http_server), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = s.makefile("rb").read()  # HTTP/1.0 without keep-alive: server closes
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in data
    assert data.endswith(b"request 1 on this connection\n")
    with socket.create_connection(("127.0.0.1", http_server), timeout=10) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        data = s.makefile("rb").read()
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.slow
def test_http_server_with_curl(http_server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    url = f"http://127.0.0.1:{http_server}/"
    proc = subprocess.run([curl, "-sS", "-v", url, url], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 0, proc.stderr
    # curl reused the connection for the second URL: the server counted 2 requests on it.
    assert proc.stdout == ("Hello from broomio! request 1 on this connection\n"
                           "Hello from broomio! request 2 on this connection\n")
