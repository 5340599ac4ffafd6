"""A short soak (benchmarks/soak.py): many connections, checksummed messages, both sides on
broomio in separate processes; every byte must come back verified and RSS stay bounded.
The full 60 s x 10,000-connection run is ``python -m benchmarks soak`` (docs/reliability.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import soak  # noqa: E402


@pytest.mark.slow
def test_short_soak_passes() -> None:
    lines: list[str] = []
    result = soak.run_soak(soak.SoakConfig(connections=300, duration=3, interval=1), lines.append)
    text = "\n".join(lines)
    assert result.ok, text
    assert result.failures == []
    c, s = result.client, result.server
    assert c["errors"] == 0 and s["errors"] == 0, text
    assert c["done"] == 300 and s["done"] == 300, text
    assert c["messages"] >= 300 and c["messages"] == s["messages"], text
    assert c["bytes_sent"] == c["bytes_verified"] == s["bytes"] > 0, text
    assert "PASS" in lines[-1]
    # Progress lines with RSS of both processes.
    assert any("RSS server" in line and "client" in line for line in lines), text


def test_soak_cli_rejects_bad_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "soak", "--connections", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert "--connections" in proc.stderr


def test_fd_limit_too_low_fails_clearly() -> None:
    code = (
        "import resource, sys; sys.path.insert(0, %r)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from benchmarks import soak\n"
        "r = soak.run_soak(soak.SoakConfig(connections=1000, duration=1), print)\n"
        "sys.exit(0 if r.ok else 1)\n"
    ) % ROOT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "hard limit is 256" in proc.stdout and "1064" in proc.stdout, proc.stdout


def test_soak_detects_lost_bytes() -> None:
    # The verdict must fail when the counts do not add up (a fake result; no processes).
    class FakeProc:
        returncode = 0

    class FakeChild:
        def __init__(self, name: str, final: dict) -> None:
            self.name, self.proc, self.final = name, FakeProc(), final

        def stderr_tail(self) -> str:
            return ""

    cfg = soak.SoakConfig(connections=2, duration=1)
    client = {"messages": 5, "bytes_sent": 100, "bytes_verified": 90, "errors": 0, "done": 2}
    server = {"messages": 5, "bytes": 100, "errors": 0, "done": 2}
    result = soak.SoakResult(ok=False, client=client, server=server,
                             rss={"peak": {"server": 1, "client": 1}})
    lines: list[str] = []
    soak._verdict(cfg, result, FakeChild("client", client), FakeChild("server", server),
                  {"server": 1 << 20, "client": 1 << 20},
                  {"server": 1 << 20, "client": 100 << 20}, lines.append, 1.0)
    assert not result.ok
    assert any("10 bytes" in f for f in result.failures), result.failures
    assert any("client RSS grew" in f for f in result.failures), result.failures
