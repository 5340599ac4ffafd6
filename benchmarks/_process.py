"""Child processes for the echo benchmark: pinned to a CPU, never left behind.

* :func:`child_setup` makes a ``preexec_fn`` that pins the child to one CPU
  and asks the kernel to SIGKILL it if the harness dies (``PR_SET_PDEATHSIG``),
  so even a ``kill -9`` of the harness leaves nothing running.
* :class:`ServerProcess` starts a server in its own session, waits for the
  port it prints, reads its CPU time from ``/proc/PID/stat``, and stops the
  whole process group (SIGTERM, then SIGKILL) on :meth:`~ServerProcess.stop`.
* :func:`signals_raise` turns SIGTERM/SIGHUP into :class:`SystemExit` so the
  harness's ``finally`` blocks (which stop the servers) run on those too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from ._runner import last_line, signal_name, text_tail

__all__ = [
    "ServerError",
    "ServerProcess",
    "child_setup",
    "children_cpu_seconds",
    "cpu_seconds",
    "per_cpu_times",
    "signals_raise",
]

_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()  # looked up before any fork: the child only calls it


def child_setup(cpu: int | None) -> Callable[[], None]:
    """A ``preexec_fn``: die with the harness; run on ``cpu`` (None: anywhere)."""
    parent = os.getpid()

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the harness died before prctl took effect
                os._exit(1)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads), in seconds.

    Reads fields 14 (utime) and 15 (stime) of ``/proc/PID/stat``, in clock ticks.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Field 2 (comm) is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def per_cpu_times(cpus: Iterable[int]) -> dict[int, tuple[float, float]]:
    """``{cpu: (busy, total)}`` seconds since boot for each of ``cpus``, from ``/proc/stat``.

    Busy is user + nice + system + irq + softirq + steal (steal: taken by the
    hypervisor); total adds idle and iowait.
    """
    wanted = {f"cpu{c}": c for c in cpus}
    times: dict[int, tuple[float, float]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name in wanted:
                v = [int(x) for x in rest.split()[:8]] + [0] * 8
                user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                busy = user + nice + system + irq + softirq + steal
                times[wanted[name]] = (busy / _CLOCK_TICKS, (busy + idle + iowait) / _CLOCK_TICKS)
    return times


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's waited-for children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class ServerError(Exception):
    """A server failed to start or died; ``stderr`` holds the end of its stderr."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class ServerProcess:
    """One echo server process, used as a context manager.

    ``cmd`` must print its listening port on the first stdout line.
    ``__enter__`` starts it and waits for the port (:class:`ServerError` on
    failure); ``__exit__`` stops it.  Read :meth:`stderr_tail` before that.
    """

    def __init__(self, cmd: Sequence[str], *, cpu: int | None, cwd: Path,
                 startup_timeout: float = 15.0) -> None:
        self.cmd = list(cmd)
        self.cpu = cpu
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id (it is started directly, not through a shell)."""
        assert self._proc is not None, "server not started"
        return self._proc.pid

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> int:
        """Start the server and return the port it printed."""
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,  # its own process group: Ctrl-C is ours to handle
                preexec_fn=child_setup(self.cpu),
            )
        except OSError as exc:
            raise ServerError(f"server could not start: {exc}") from None
        self.port = self._read_port()
        return self.port

    def _read_port(self) -> int:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"server printed no port within {self.startup_timeout:g} s",
                                  self.stderr_tail())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ServerError(self._death("exited at start"), self.stderr_tail())
            data += chunk
        line = data.split(b"\n", 1)[0].strip()
        try:
            port = int(line)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ServerError(f"server printed {line[:60]!r} instead of its port", self.stderr_tail())
        return port

    def _death(self, what: str) -> str:
        """``server WHAT (STATUS): LAST STDERR LINE`` for a server that exited."""
        assert self._proc is not None
        try:
            rc = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"server {what} (but is still running)"
        if rc < 0:  # the stderr tail (e.g. a faulthandler dump) is in the JSON
            return f"server {what}: crashed ({signal_name(rc)})"
        detail = last_line(self.stderr_tail())
        status = f"status {rc}"
        return f"server {what} ({status}): {detail}" if detail else f"server {what} ({status})"

    def check_alive(self) -> None:
        """Raise :class:`ServerError` if the server has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ServerError(self._death("died during the run"), self.stderr_tail())

    def cpu_seconds(self) -> float:
        """The server's CPU time so far (see :func:`cpu_seconds`)."""
        try:
            return cpu_seconds(self.pid)
        except (OSError, ValueError, IndexError) as exc:
            self.check_alive()
            raise ServerError(f"cannot read the server's CPU time: {exc}") from None

    def stderr_tail(self) -> str:
        """The end of what the server wrote on stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return text_tail(self._stderr.read())

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after 3 s."""
        proc = self._proc
        if proc is not None:
            for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)  # pgid == pid: start_new_session
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            # Anything the server forked is in its group too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise ``SystemExit(128 + signum)``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
