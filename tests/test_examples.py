"""The examples shipped in examples/ run and behave as documented."""

import os
import subprocess
import sys
import time

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, timeout=30):
    path = os.path.join(EXAMPLES, name)
    assert os.path.exists(path), f"missing example {path}"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, path], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES)
    return proc, time.monotonic() - t0


@pytest.mark.slow
def test_readme_loop_example():
    """The README example: three tasks each `await sleep(2)` finish in ~2 s, not 6 s."""
    proc, elapsed = run_example("readme_loop.py")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    started = [i for i, line in enumerate(lines) if "started" in line]
    stopped = [i for i, line in enumerate(lines) if "stopped" in line]
    assert len(started) == 3, proc.stdout
    assert len(stopped) == 3, proc.stdout
    # All three start before any of them stops: they ran concurrently.
    assert max(started) < min(stopped), proc.stdout
    assert elapsed >= 2.0, f"finished too early: {elapsed:.2f}s"
    assert elapsed < 3.5, f"tasks did not sleep concurrently: {elapsed:.2f}s"


def test_mock_clock_example():
    """examples/mock_clock.py: an hour of clock time passes, in far less real time."""
    proc, elapsed = run_example("mock_clock.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:5] == [
        "beat at t=900s", "beat at t=1800s", "beat at t=2700s", "beat at t=3600s",
        "timeout hit: True, clock: 3600s",
    ]
    assert lines[5].startswith("real time: ")
    assert elapsed < 30  # hang guard (an hour of real time would never get here)
