"""The asyncio-face examples (examples/asyncio_seed.py, examples/aiohttp_app.py) run on
broomio.asyncio and print what they document."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], capture_output=True,
                          text=True, timeout=timeout, cwd=EXAMPLES, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_asyncio_seed_example():
    """examples/asyncio_seed.py: every primer snippet on broomio's loop."""
    proc = run_example("asyncio_seed.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [
        "broomio loop: True",
        "Hello world!",
        "callbacks ran in order: ['soon', 'later']",
        "Hello world!",
        "queue gave [1, 2, 3]",
        "debug mode reported the blocking call: True",
        "thread pool: ['query 0 done', 'query 1 done', 'query 2 done', 'query 3 done']",
        "process pool: 112272535095293 is prime: True",
    ]


@pytest.mark.slow
def test_aiohttp_app_example():
    """examples/aiohttp_app.py: an aiohttp server and ClientSession on broomio's loop."""
    pytest.importorskip("aiohttp")
    proc = run_example("aiohttp_app.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "broomio loop: True",
        "GET / 200 Hello from aiohttp on broomio",
        "GET /add 200 {'a': 2, 'b': 40, 'sum': 42}",
        "GET /missing 404",
        "POST /echo 200 broomio!",
    ]
