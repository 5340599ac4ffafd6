"""asyncio compatibility, processes and signals: subprocess_exec/subprocess_shell (through
asyncio.create_subprocess_*), SubprocessProtocol, add_signal_handler/remove_signal_handler.
Each test runs on stock asyncio (the oracle) and on broomio.asyncio (tests/_aio_support.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from _aio_support import aio_loop, broomio_xfail, loop_factory, loop_name, run  # noqa: F401

PY = sys.executable

# ---------------------------------------------------------------------------
# subprocesses


@pytest.mark.slow
def test_create_subprocess_exec_pipes_1mb(aio_loop):
    payload = os.urandom(1 << 20)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; d = sys.stdin.buffer.read(); "
                      "sys.stdout.buffer.write(d); sys.stderr.write(str(len(d)))",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.pid > 0
        out, err = await proc.communicate(payload)
        return out == payload, err, proc.returncode

    assert run(aio_loop, main(), timeout=60) == (True, b"1048576", 0)


@pytest.mark.slow
def test_subprocess_streaming_lines(aio_loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-u", "-c",
            "import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        got = []
        for word in ("one", "two", "three"):
            proc.stdin.write(word.encode() + b"\n")
            await proc.stdin.drain()
            got.append(await proc.stdout.readline())
        proc.stdin.close()
        await proc.stdin.wait_closed()
        rest = await proc.stdout.read()
        return got, rest, await proc.wait()

    assert run(aio_loop, main(), timeout=60) == ([b"ONE\n", b"TWO\n", b"THREE\n"], b"", 0)


@pytest.mark.slow
def test_create_subprocess_shell(aio_loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo hello; echo oops 1>&2; exit 3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, err = await proc.communicate()
        return out, err, proc.returncode

    assert run(aio_loop, main(), timeout=60) == (b"hello\noops\n", None, 3)


@pytest.mark.slow
def test_subprocess_kill_and_returncode(aio_loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(30)")
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = await proc.wait()
        return rc

    assert run(aio_loop, main(), timeout=60) == -signal.SIGTERM


@pytest.mark.slow
def test_subprocess_wait_concurrently(aio_loop):
    async def main():
        procs = [await asyncio.create_subprocess_exec(PY, "-c", f"raise SystemExit({i})")
                 for i in range(4)]
        return await asyncio.gather(*(p.wait() for p in procs))

    assert run(aio_loop, main(), timeout=60) == [0, 1, 2, 3]


def test_subprocess_missing_program(aio_loop):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program/broomio")
        return True

    assert run(aio_loop, main())


def test_subprocess_shell_rejects_bad_arguments(aio_loop):
    async def main():
        with pytest.raises(ValueError):
            await aio_loop.subprocess_shell(asyncio.SubprocessProtocol, "true",
                                            universal_newlines=True)
        with pytest.raises(ValueError):
            await aio_loop.subprocess_exec(asyncio.SubprocessProtocol, PY, shell=True)
        with pytest.raises(ValueError, match="cmd must be a string"):
            await aio_loop.subprocess_shell(asyncio.SubprocessProtocol, ["true"])
        return True

    assert run(aio_loop, main())


@pytest.mark.slow
def test_subprocess_exec_protocol(aio_loop):
    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.out = bytearray()
            self.exited = aio_loop.create_future()
            self.closed = aio_loop.create_future()

        def connection_made(self, transport):
            self.events.append("made")

        def pipe_data_received(self, fd, data):
            assert fd == 1
            self.out += data

        def pipe_connection_lost(self, fd, exc):
            self.events.append(("pipe lost", fd))

        def process_exited(self):
            self.exited.set_result(None)

        def connection_lost(self, exc):
            self.closed.set_result(exc)

    async def main():
        tr, proto = await aio_loop.subprocess_exec(
            Proto, PY, "-c", "print('via protocol')",
            stdin=None, stdout=subprocess.PIPE, stderr=None)
        assert isinstance(tr, asyncio.SubprocessTransport)
        pid = tr.get_pid()
        await proto.exited
        await proto.closed
        rc = tr.get_returncode()
        tr.close()
        return pid > 0, bytes(proto.out), rc, proto.events

    ok, out, rc, events = run(aio_loop, main(), timeout=60)
    assert ok and out == b"via protocol\n" and rc == 0
    assert events[0] == "made" and ("pipe lost", 1) in events


# ---------------------------------------------------------------------------
# signals


def test_add_signal_handler(aio_loop):
    async def main():
        got = asyncio.Queue()
        aio_loop.add_signal_handler(signal.SIGUSR1, got.put_nowait, "usr1")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            first = await got.get()
            os.kill(os.getpid(), signal.SIGUSR1)
            second = await got.get()
        finally:
            assert aio_loop.remove_signal_handler(signal.SIGUSR1) is True
        assert aio_loop.remove_signal_handler(signal.SIGUSR1) is False
        return first, second

    assert run(aio_loop, main()) == ("usr1", "usr1")
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_signal_handler_runs_in_loop_thread_with_args(aio_loop):
    import threading

    async def main():
        fut = aio_loop.create_future()

        def handler(a, b):
            fut.set_result((a, b, threading.current_thread() is threading.main_thread()))

        aio_loop.add_signal_handler(signal.SIGUSR2, handler, 1, 2)
        try:
            signal.raise_signal(signal.SIGUSR2)
            return await fut
        finally:
            aio_loop.remove_signal_handler(signal.SIGUSR2)

    assert run(aio_loop, main()) == (1, 2, True)


def test_remove_sigint_handler_restores_default_int_handler(aio_loop):
    async def main():
        aio_loop.add_signal_handler(signal.SIGINT, print)
        aio_loop.remove_signal_handler(signal.SIGINT)
        return signal.getsignal(signal.SIGINT)

    assert run(aio_loop, main()) is signal.default_int_handler


def test_add_signal_handler_errors(aio_loop):
    async def coro():
        pass

    async def main():
        with pytest.raises(TypeError):
            aio_loop.add_signal_handler(signal.SIGUSR1, coro)  # coroutine function
        with pytest.raises(ValueError):
            aio_loop.add_signal_handler(0, print)
        with pytest.raises(ValueError):
            aio_loop.add_signal_handler(signal.NSIG + 1, print)
        with pytest.raises(RuntimeError):
            aio_loop.add_signal_handler(signal.SIGKILL, print)
        return True

    assert run(aio_loop, main())


def test_signal_handler_replaced(aio_loop):
    async def main():
        fut = aio_loop.create_future()
        aio_loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "old")
        aio_loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "new")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            return await fut
        finally:
            aio_loop.remove_signal_handler(signal.SIGUSR1)

    assert run(aio_loop, main()) == "new"


def test_signal_handlers_removed_on_close(loop_factory):
    loop = loop_factory()
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_add_signal_handler_outside_main_thread_fails(aio_loop):
    import threading

    errors = []

    def other_thread():
        loop = type(aio_loop)()
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except (RuntimeError, ValueError) as exc:
            errors.append(type(exc).__name__)
        finally:
            loop.close()

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert errors == ["RuntimeError"]
