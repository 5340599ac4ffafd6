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
    """The README example: three tasks each `await sleep(2)` run concurrently (all start before any stops)."""
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


def test_threads_example():
    """run_in_thread: the hash is right and the ticker kept running meanwhile."""
    proc, _ = run_example("threads.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "worker: hashing done, reported from the loop thread", proc.stdout
    assert "digest correct: True" in lines
    assert "loop stayed responsive: True" in lines


def test_processes_example():
    """run_in_process: every candidate classified correctly."""
    proc, _ = run_example("processes.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:6] == [
        "1000000007 is prime",
        "1000000011 is composite",
        "2147483647 is prime",
        "2147483649 is composite",
        "999999999989 is prime",
        "999999999991 is composite",
    ], proc.stdout
    assert lines[6].startswith("checked 6 numbers in ")


def test_files_example():
    """open_file line iteration and Path round trip."""
    proc, _ = run_example("files.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "wrote 154 bytes to poem.txt"
    assert lines[1] == "1: The loop is quick, the threads are few,"
    assert lines[4] == "4: and no one waits till all is done."
    assert lines[5:] == ["31 words", "last line now: (the end)"]


def test_subprocess_pipeline_example():
    """producer | broomio | consumer, then a one-shot run_process."""
    proc, _ = run_example("subprocess_pipeline.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        # "line 1\n" .. "line 1000\n": 1000 * len("line \n") + the digits
        f"copied {1000 * 6 + sum(len(str(i)) for i in range(1, 1001))} bytes from producer "
        "to consumer",
        "first: LINE 1, last: LINE 1000",
        "consumer saw 1000 lines",
        "exit codes: producer 0, consumer 0",
        "sum computed by a child: 55",
    ]


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
