"""Shared helpers for broomio's black-box test suite.

The tests only use the public API documented in ``docs/api.md``.  Helpers here
are imported by the test modules with ``from conftest import ...`` (pytest puts
this directory on ``sys.path``).

* ``run`` -- ``broomio.run``.
* ``Log`` -- an append-only event log (``log("x")`` / ``log("x", 1)``).
* ``exc_shape`` / ``leaves`` -- structure of (nested) exception groups.
* ``oracle`` -- run the same scenario under trio and under broomio and return
  what both observed, so that tests can compare broomio against trio where
  their semantics are documented to match.
* ``run_python`` / ``PythonChild`` -- run code in a fresh interpreter.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import trio

import broomio
from broomio import lowlevel

# broomio's own pytest plugin (@pytest.mark.broomio, broomio_loop, mock_clock).  Installed
# copies also register it through the pytest11 entry point, under this same name, so pytest
# loads it once either way.  pytester runs the plugin in throw-away test directories.
pytest_plugins = ["broomio.testing._pytest_plugin", "pytester"]

# ---------------------------------------------------------------------------
# running

run = broomio.run

# Differences of time.monotonic() values are exact to ~1e-11 s; this tolerance
# only absorbs float rounding, never a real early wake-up (>= 1 us).
EPS = 1e-9

# Guard used around code that would hang forever if the engine misbehaved.
GUARD = 5.0


def assert_at_least(elapsed: float, expected: float, what: str = "elapsed") -> None:
    assert elapsed >= expected - EPS, f"{what} {elapsed!r} < requested {expected!r}"


class Log(list):
    """Event log: ``log(a)`` appends ``a``; ``log(a, b)`` appends ``(a, b)``."""

    def __call__(self, *item):
        self.append(item[0] if len(item) == 1 else item)


# ---------------------------------------------------------------------------
# exceptions


def exc_shape(exc: BaseException):
    """A comparable description of an exception (group).

    Groups become ``("group", sorted child shapes)``; leaves become
    ``(type name, str(exc))``.  The group class itself is ignored (trio uses
    its own MultiError subclasses), the order of children too.
    """
    if isinstance(exc, BaseExceptionGroup):
        return ("group", tuple(sorted((exc_shape(e) for e in exc.exceptions), key=repr)))
    return (type(exc).__name__, str(exc))


def leaves(exc: BaseException) -> list[BaseException]:
    """All non-group exceptions inside ``exc`` (depth first)."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(leaves(e))
        return out
    return [exc]


# ---------------------------------------------------------------------------
# trio as a behavioural oracle
#
# NOTE: trio randomises the order in which tasks that become runnable in the
# same scheduler batch actually run, so scenarios compared through ``oracle``
# must only log events whose order is causally fixed (one task's own
# sequence, cancellation consequences, ...), or log per task.

TRIO = SimpleNamespace(
    name="trio",
    run=lambda fn, *args: trio.run(fn, *args, strict_exception_groups=True),
    sleep=trio.sleep,
    sleep_until=trio.sleep_until,
    sleep_forever=trio.sleep_forever,
    checkpoint=trio.lowlevel.checkpoint,
    current_time=trio.current_time,
    open_nursery=trio.open_nursery,
    CancelScope=trio.CancelScope,
    Cancelled=trio.Cancelled,
    move_on_after=trio.move_on_after,
    move_on_at=trio.move_on_at,
    fail_after=trio.fail_after,
    fail_at=trio.fail_at,
    Timeout=trio.TooSlowError,
    current_effective_deadline=trio.current_effective_deadline,
)

BROOMIO = SimpleNamespace(
    name="broomio",
    run=broomio.run,
    sleep=broomio.sleep,
    sleep_until=broomio.sleep_until,
    sleep_forever=broomio.sleep_forever,
    checkpoint=lowlevel.checkpoint,
    current_time=broomio.current_time,
    open_nursery=broomio.open_nursery,
    CancelScope=broomio.CancelScope,
    Cancelled=broomio.Cancelled,
    move_on_after=broomio.move_on_after,
    move_on_at=broomio.move_on_at,
    fail_after=broomio.fail_after,
    fail_at=broomio.fail_at,
    Timeout=TimeoutError,
    current_effective_deadline=broomio.current_effective_deadline,
)


def observe(lib, scenario):
    """Run ``scenario(lib, log)`` under ``lib``; return (log, outcome)."""
    log = Log()
    try:
        result = lib.run(scenario, lib, log)
    except BaseException as exc:  # noqa: BLE001 - we record everything
        outcome = ("raised", exc_shape(exc))
    else:
        outcome = ("returned", result)
    return list(log), outcome


def oracle(scenario):
    """Observe ``scenario`` under trio and broomio: ``(trio_obs, broomio_obs)``."""
    return observe(TRIO, scenario), observe(BROOMIO, scenario)


# ---------------------------------------------------------------------------
# memory / resources


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------
# subprocesses


def _child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("BROOMIO_DEBUG", None)
    # Not PYTHONUNBUFFERED: with it, print() writes the text and the newline
    # separately and a signal could land between the two writes.
    env.pop("PYTHONUNBUFFERED", None)
    env["PYTHONFAULTHANDLER"] = "1"
    if extra:
        env.update(extra)
    return env


def run_python(code: str, timeout: float = 60, env: dict | None = None,
               args: tuple = ()) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in a fresh process; capture output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_child_env(env),
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )


class PythonChild:
    """A Python subprocess whose stdout can be waited on line by line."""

    def __init__(self, code: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=_child_env(env),
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        self._out = b""

    def wait_for_line(self, text: str, timeout: float = 15.0, settle: float = 0.0) -> None:
        """Block until a complete stdout line equal to ``text`` has been printed.

        ``settle``: then sleep that long, e.g. so that the child is surely
        blocked in the loop's poller before a signal is sent.
        """
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while text.encode() not in self._out.split(b"\n")[:-1]:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"child never printed {text!r}; stdout so far: {self._out!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    out, err = self.finish(timeout=5)
                    raise AssertionError(
                        f"child exited before printing {text!r} (rc={self.proc.returncode})\n"
                        f"stdout: {out}\nstderr: {err}")
                self._out += chunk
        if settle:
            time.sleep(settle)

    def send_signal(self, sig=signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 15.0) -> tuple[str, str]:
        """Wait for exit; return the complete (stdout, stderr) as text."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate(timeout=5)
            raise AssertionError(
                f"child did not exit within {timeout}s\nstdout: {(self._out + out)!r}\n"
                f"stderr: {err!r}") from None
        return (self._out + out).decode(errors="replace"), err.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


@pytest.fixture
def python_child():
    children: list[PythonChild] = []

    def spawn(code: str, env: dict | None = None) -> PythonChild:
        child = PythonChild(code, env)
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.kill()
        if child.proc.poll() is None or child.proc.stdout:
            try:
                child.proc.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError):
                pass


# ---------------------------------------------------------------------------
# fixtures

# A test that hangs (e.g. a lost wake-up in the engine) is failed after this
# many seconds instead of blocking the whole run.  Best effort: it relies on
# the engine letting Python signal handlers run (SIGALRM interrupts its wait).
HANG_TIMEOUT = 30
SLOW_HANG_TIMEOUT = 120  # for tests marked slow (they wait on subprocesses)


class HangError(BaseException):
    """Raised by the SIGALRM guard in a test that ran for HANG_TIMEOUT seconds."""


@pytest.fixture(autouse=True)
def _hang_guard(request):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    limit = SLOW_HANG_TIMEOUT if request.node.get_closest_marker("slow") else HANG_TIMEOUT

    def on_alarm(signum, frame):
        raise HangError(f"test still running after {limit}s (hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)



@pytest.fixture
def loop():
    """A fresh ``broomio.Loop`` that is closed after the test."""
    lp = broomio.Loop()
    yield lp
    if not lp.running:
        lp.close()
