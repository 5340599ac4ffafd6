"""Subprocesses with async pipes: open_process, run_process, Process.

Semantics follow trio's:

* ``open_process`` starts the child (``subprocess.Popen`` does the fork/exec) and returns a
  ``Process`` whose ``stdin`` is a writable ``FdStream`` and ``stdout``/``stderr`` readable
  ones for the streams requested with ``subprocess.PIPE``.  Pipes are created here, not by
  Popen, so the parent's ends are plain fds owned by the streams (no Python file objects).
* ``Process.wait()`` waits on a pidfd (``os.pidfd_open``), which becomes readable when the
  child exits, and then reaps it with ``waitpid(WNOHANG)``.  Without pidfds (Linux < 5.3) a
  worker thread blocks in ``waitid(WEXITED | WNOWAIT)``: it only *observes* the exit, the
  reaping still happens in the loop's thread, so a wait abandoned by cancellation can never
  reap the child behind our back and lose its status.  Only one task watches the pidfd
  (the fd table has one reader per fd); other waiters park and take over if it leaves.
* ``run_process`` feeds ``input`` and drains the captured pipes concurrently (one task each)
  while waiting for the exit, so no amount of input or output can deadlock.  If it is
  cancelled (or fails) before the child exited, the child gets SIGTERM, then SIGKILL after
  a grace period, and is always reaped before the exception propagates.
* Signals are sent through the pidfd when there is one (no pid-reuse race), and never
  after the child was reaped.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Union

from ._core import move_on_after, open_nursery
from ._engine import (
    BrokenResourceError,
    CancelScope,
    ClosedResourceError,
    CapacityLimiter,
    ParkingLot,
    checkpoint,
    notify_closing,
    wait_readable,
)
from ._streams import FdStream
from ._threads import run_in_thread

__all__ = ["Process", "open_process", "run_process"]

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Command = Union[StrOrBytesPath, Sequence[StrOrBytesPath]]

# How long a cancelled run_process() waits after SIGTERM before sending SIGKILL.
TERMINATE_GRACE = 5.0

_HAS_PIDFD = hasattr(os, "pidfd_open")

# Popen arguments that would turn the pipes into text files or buffered objects: broomio's
# pipes are byte streams.
_TEXT_OPTIONS = ("text", "universal_newlines", "encoding", "errors")


def _check_command(command: object, shell: bool) -> None:
    if isinstance(command, (str, bytes, os.PathLike)):
        return
    if shell:
        raise TypeError("with shell=True the command must be one string, not a sequence")
    if not isinstance(command, Sequence):
        raise TypeError(
            "the command must be a str, bytes or path-like (one program) or a sequence of "
            f"them (a program and its arguments), not {type(command).__name__}"
        )
    if not command:
        raise ValueError("the command is an empty sequence")
    for arg in command:
        if not isinstance(arg, (str, bytes, os.PathLike)):
            raise TypeError(
                f"command arguments must be str, bytes or path-like, not {type(arg).__name__}"
            )


def _wait_exited(pid: int) -> None:
    """Block (in a worker thread) until the child has exited, without reaping it."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass  # already reaped (by the loop's thread): poll() has its status


class Process:
    """A running child process (from ``open_process``).

    ``stdin``/``stdout``/``stderr`` are ``FdStream``s for the pipes requested with
    ``subprocess.PIPE`` (else ``None``).  ``async with process:`` closes the pipes and waits
    for the exit; if that wait is cancelled the child is killed (and still reaped).
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: FdStream | None,
        stdout: FdStream | None,
        stderr: FdStream | None,
    ) -> None:
        self._popen = popen
        self.args: Any = popen.args
        self.pid: int = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._returncode: int | None = None
        self._pidfd = -1
        if _HAS_PIDFD:
            try:
                self._pidfd = os.pidfd_open(popen.pid)
            except OSError:  # ENOSYS on old kernels, EPERM in some sandboxes
                self._pidfd = -1
        self._watching = False
        self._waiters = ParkingLot()

    def __del__(self) -> None:
        # Never waited for: the pidfd must not leak (the child itself is left to Popen's
        # own cleanup, which reaps it later and warns).
        if getattr(self, "_pidfd", -1) >= 0:
            self._close_pidfd()

    def __repr__(self) -> str:
        status = "running" if self._returncode is None else f"exited {self._returncode}"
        return f"<broomio.Process {self.args!r}: {status}>"

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""
        return self.poll()

    def poll(self) -> int | None:
        """Reap the child if it has exited; its return code, or None if it still runs."""
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Someone else reaped it (os.wait() elsewhere): its status is lost.
                pid, status = self.pid, 255 << 8
            if pid == 0:
                return None
            self._returncode = os.waitstatus_to_exitcode(status)
            # Popen warns about (and later reaps) a child it thinks is still running.
            self._popen.returncode = self._returncode
            self._close_pidfd()
        return self._returncode

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            try:
                notify_closing(self._pidfd)  # drop its epoll registration first
            except RuntimeError:
                pass  # no loop running here: nothing to notify
            os.close(self._pidfd)
            self._pidfd = -1

    async def wait(self) -> int:
        """Wait for the child to exit, reap it, and return its return code."""
        if self.poll() is not None:
            await checkpoint()
        while self.poll() is None:
            if self._watching:
                await self._waiters.park()  # woken when the watcher sees the exit or leaves
                continue
            self._watching = True
            try:
                if self._pidfd >= 0:
                    try:
                        await wait_readable(self._pidfd)
                    except ClosedResourceError:
                        # Another task's poll() reaped the child and closed the pidfd
                        # before this task ran: the loop condition sees the exit.
                        if self._returncode is None:
                            raise
                else:
                    # Not on the default limiter: a watcher can block for the child's whole
                    # life and must not starve run_in_thread (nor be starved by it).
                    await run_in_thread(_wait_exited, self.pid, cancellable=True,
                                        limiter=CapacityLimiter(1))
            finally:
                self._watching = False
                self._waiters.unpark_all()
        assert self._returncode is not None
        return self._returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child; does nothing once it has been reaped."""
        if self.poll() is not None:
            return
        if self._pidfd >= 0:
            signal.pidfd_send_signal(self._pidfd, sig)
        else:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    async def _close_pipes(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                await stream.aclose()

    async def aclose(self) -> None:
        """Close the pipes and wait for the exit; if cancelled meanwhile, kill the child and
        reap it before the cancellation propagates."""
        with CancelScope(shield=True):
            await self._close_pipes()
        try:
            await self.wait()
        finally:
            if self._returncode is None:
                with CancelScope(shield=True):
                    self.kill()
                    await self.wait()

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_process(
    command: Command,
    *,
    stdin: int | Any = None,
    stdout: int | Any = None,
    stderr: int | Any = None,
    **options: Any,
) -> Process:
    """Start ``command`` and return its ``Process``.

    ``stdin``/``stdout``/``stderr`` are as for ``subprocess.Popen`` (None inherits); with
    ``subprocess.PIPE`` the Process gets an async stream for that pipe.  Other keyword
    arguments (``cwd``, ``env``, ``shell``, ``start_new_session``, ...) go to Popen.
    """
    _check_command(command, bool(options.get("shell", False)))
    for name in _TEXT_OPTIONS:
        if options.get(name):
            raise TypeError(f"open_process() does not support {name}=: its pipes are byte streams")
    options.pop("bufsize", None)
    await checkpoint()
    parent_fds: list[int] = []
    child_fds: list[int] = []

    def pipe(spec: Any, child_reads: bool) -> tuple[Any, int]:
        if spec != subprocess.PIPE:
            return spec, -1
        r, w = os.pipe()
        child, parent = (r, w) if child_reads else (w, r)
        parent_fds.append(parent)
        child_fds.append(child)
        return child, parent

    try:
        stdin, in_fd = pipe(stdin, True)
        stdout, out_fd = pipe(stdout, False)
        stderr, err_fd = pipe(stderr, False)
        popen = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, **options)
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    try:
        streams = [FdStream(fd) if fd >= 0 else None for fd in (in_fd, out_fd, err_fd)]
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    return Process(popen, *streams)


async def _read_all(stream: FdStream, chunks: list[bytes]) -> None:
    async for chunk in stream:
        chunks.append(chunk)


async def _feed(stream: FdStream, data: bytes | bytearray | memoryview) -> None:
    try:
        await stream.send_all(data)
    except BrokenResourceError:
        pass  # the child closed its stdin (or exited) before reading everything: its choice
    finally:
        await stream.aclose()


async def _stop(process: Process) -> None:
    """SIGTERM, up to TERMINATE_GRACE seconds, SIGKILL; reaps.  Call it shielded."""
    process.terminate()
    with move_on_after(TERMINATE_GRACE):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def run_process(
    command: Command,
    *,
    input: bytes | bytearray | memoryview | None = None,
    capture_stdout: bool = False,
    capture_stderr: bool = False,
    check: bool = True,
    **options: Any,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` to completion and return a ``subprocess.CompletedProcess``.

    ``input`` is fed to the child's stdin (without it, stdin is ``/dev/null`` unless
    ``stdin=`` is given); ``capture_stdout``/``capture_stderr`` collect the output as bytes
    (otherwise it is inherited, or goes where ``stdout=``/``stderr=`` say).  Input and
    output are transferred concurrently, so any amount works.  With ``check`` (the default)
    a nonzero exit raises ``subprocess.CalledProcessError`` carrying the captured output.
    Cancellation sends SIGTERM, then SIGKILL after a grace period, and reaps the child
    before re-raising.
    """
    if input is not None:
        if isinstance(input, str):
            raise TypeError("input must be bytes, not str (encode it first)")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be a bytes-like object, not {type(input).__name__}")
        if "stdin" in options:
            raise ValueError("pass either input= or stdin=, not both")
    for name, instead in (("stdin", "input="), ("stdout", "capture_stdout=True"),
                          ("stderr", "capture_stderr=True")):
        if options.get(name) == subprocess.PIPE:
            raise ValueError(
                f"run_process() gives no access to its pipes: use {instead} instead of "
                f"{name}=subprocess.PIPE (or open_process())"
            )
    if capture_stdout and "stdout" in options:
        raise ValueError("pass either capture_stdout=True or stdout=, not both")
    if capture_stderr and "stderr" in options:
        raise ValueError("pass either capture_stderr=True or stderr=, not both")
    if input is not None:
        options["stdin"] = subprocess.PIPE
    else:
        options.setdefault("stdin", subprocess.DEVNULL)
    if capture_stdout:
        options["stdout"] = subprocess.PIPE
    if capture_stderr:
        options["stderr"] = subprocess.PIPE

    process = await open_process(command, **options)
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        async with open_nursery() as nursery:
            if input is not None and process.stdin is not None:
                nursery.start_soon(_feed, process.stdin, input)
            if capture_stdout and process.stdout is not None:
                nursery.start_soon(_read_all, process.stdout, out)
            if capture_stderr and process.stderr is not None:
                nursery.start_soon(_read_all, process.stderr, err)
            await process.wait()
    finally:
        with CancelScope(shield=True):
            if process.returncode is None:
                await _stop(process)
            await process._close_pipes()

    returncode = process.returncode
    assert returncode is not None
    stdout = b"".join(out) if capture_stdout else None
    stderr = b"".join(err) if capture_stderr else None
    if check and returncode != 0:
        raise subprocess.CalledProcessError(returncode, process.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, returncode, stdout, stderr)
