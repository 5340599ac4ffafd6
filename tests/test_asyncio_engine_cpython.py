"""CPython's own asyncio test suite, run against broomio.asyncio.

Each listed module of ``test.test_asyncio`` runs in a fresh interpreter where asyncio's
selector loop class (what those tests instantiate) is replaced by a broomio loop; the run
must pass and must have created broomio loops.  Skipped when the interpreter ships without
its test package."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

HAVE_TESTS = importlib.util.find_spec("test.test_asyncio") is not None

RUNNER = textwrap.dedent(
    """
    import asyncio, asyncio.unix_events, sys, unittest
    import broomio.asyncio as bra

    class Loop(bra.EventLoop):
        count = 0

        def __init__(self, selector=None):
            super().__init__()
            Loop.count += 1

    asyncio.SelectorEventLoop = Loop
    asyncio.unix_events.SelectorEventLoop = Loop
    asyncio.unix_events._UnixDefaultEventLoopPolicy._loop_factory = Loop
    suite = unittest.defaultTestLoader.loadTestsFromName("test.test_asyncio." + sys.argv[1])
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    print("broomio loops:", Loop.count)
    sys.exit(0 if result.wasSuccessful() and Loop.count > 0 else 1)
    """
)

MODULES = ["test_events", "test_streams", "test_sock_lowlevel", "test_buffered_proto",
           "test_sslproto", "test_server", "test_sendfile", "test_subprocess", "test_tasks",
           "test_unix_events"]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TESTS, reason="CPython's test package is not installed")
@pytest.mark.parametrize("module", MODULES)
def test_cpython_asyncio_suite(module: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run([sys.executable, "-c", RUNNER, module], capture_output=True,
                          text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    assert "broomio loops:" in proc.stdout
