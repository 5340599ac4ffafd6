"""Subprocesses: run_process, open_process, Process, and FdStream over pipes.

Every test ends with no child process left (running or zombie): see ``no_children``.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import broomio
from broomio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    FdStream,
    fail_after,
    move_on_after,
    open_nursery,
    open_process,
    run_process,
)
import broomio._subprocess as _subprocess
from conftest import GUARD, open_fd_count, run

PY = sys.executable
MB = 1024 * 1024

# Copies stdin to stdout in 64 KiB chunks until EOF.
CAT = [PY, "-c", textwrap.dedent("""
    import os
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(1, view):]
""")]


def py(code):
    return [PY, "-c", textwrap.dedent(code)]


def assert_reaped(pid):
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def assert_gone(pid):
    """Not our child any more and not running (as far as the pid can tell)."""
    assert_reaped(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _resource_tracker_pid():
    """multiprocessing's resource tracker: a process-wide helper child that multiprocessing
    starts (spawn context, e.g. for run_in_process in earlier tests) and keeps for the life
    of the interpreter.  It is not a child this module's code started."""
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _children():
    pids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    pids.discard(_resource_tracker_pid())
    return pids


@pytest.fixture(autouse=True)
def no_children():
    yield
    # Every child was reaped: there is neither a zombie nor a running child left.  If one
    # is, reap it here (so that the next tests start clean) and fail this one.
    left = _children()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    assert not left, f"children left behind: {sorted(left)}"
    if _resource_tracker_pid() is None:
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
    else:  # the tracker is alive, so there is a child; but none has exited unreaped
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)


@pytest.fixture(params=["pidfd", "thread"])
def reaper(request, monkeypatch):
    """Run the test with pidfd reaping and with the thread fallback (kernels without it)."""
    if request.param == "thread":
        monkeypatch.setattr(_subprocess, "_HAS_PIDFD", False)
    elif not _subprocess._HAS_PIDFD:
        pytest.skip("no os.pidfd_open")
    return request.param


# ---------------------------------------------------------------------------
# run_process


def test_run_process_captures_stdout():
    async def main():
        return await run_process([PY, "-c", "print('hello')"], capture_stdout=True)

    result = run(main)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.args == [PY, "-c", "print('hello')"]
    assert result.returncode == 0
    assert result.stdout == b"hello\n"
    assert result.stderr is None


def test_ten_megabytes_in_and_out_at_once(reaper):
    """The child writes 10 MB to stdout while reading 10 MB from stdin: no deadlock."""
    data = os.urandom(10 * MB)

    async def main():
        with fail_after(60):
            return await run_process(CAT, input=data, capture_stdout=True)

    result = run(main)
    assert result.returncode == 0
    assert len(result.stdout) == len(data)
    assert result.stdout == data


def test_ten_megabytes_through_process_streams():
    """The same with open_process: one task writes, another reads, both at once."""
    data = os.urandom(10 * MB)
    received = bytearray()

    async def main():
        async with await open_process(CAT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE) as proc:
            async def writer():
                view = memoryview(data)
                for i in range(0, len(view), 1000003):  # odd sizes on purpose
                    await proc.stdin.send_all(view[i:i + 1000003])
                await proc.stdin.send_eof()

            async with open_nursery() as n:
                n.start_soon(writer)
                async for chunk in proc.stdout:
                    received.extend(chunk)
            return await proc.wait(), proc.pid

    returncode, pid = run(main)
    assert returncode == 0
    assert bytes(received) == data
    assert_reaped(pid)


def test_stderr_capture_and_separation():
    async def main():
        return await run_process(
            py("import sys; sys.stdout.write('out'); sys.stderr.write('err')"),
            capture_stdout=True, capture_stderr=True)

    result = run(main)
    assert (result.stdout, result.stderr) == (b"out", b"err")


def test_stderr_to_stdout():
    async def main():
        return await run_process(
            py("import sys; sys.stdout.write('out'); sys.stdout.flush(); sys.stderr.write('err')"),
            capture_stdout=True, stderr=subprocess.STDOUT)

    result = run(main)
    assert result.stdout == b"outerr"
    assert result.stderr is None


def test_check_raises_called_process_error_with_output():
    cmd = py("import sys; print('partial'); sys.stderr.write('boom'); sys.exit(3)")

    async def main():
        await run_process(cmd, capture_stdout=True, capture_stderr=True)

    with pytest.raises(subprocess.CalledProcessError) as info:
        run(main)
    err = info.value
    assert err.returncode == 3
    assert err.cmd == cmd
    assert err.stdout == b"partial\n"
    assert err.stderr == b"boom"


def test_nonzero_returncode_without_check():
    async def main():
        return await run_process(py("import sys; sys.exit(7)"), check=False)

    result = run(main)
    assert result.returncode == 7
    assert result.stdout is None


def test_returncode_is_minus_signal_when_killed():
    async def main():
        return await run_process(py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
                                 check=False)

    assert run(main).returncode == -signal.SIGKILL


def test_stdin_defaults_to_devnull():
    async def main():
        return await run_process(py("import sys; print(repr(sys.stdin.buffer.read()))"),
                                 capture_stdout=True)

    assert run(main).stdout == b"b''\n"


def test_stdin_from_a_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"from a file")

    async def main():
        with open(path, "rb") as f:
            return await run_process(CAT, stdin=f, capture_stdout=True)

    assert run(main).stdout == b"from a file"


def test_env_and_cwd(tmp_path):
    async def main():
        return await run_process(
            py("import os; print(os.getcwd()); print(os.environ['BROOMIO_TEST_VAR'])"),
            capture_stdout=True, cwd=tmp_path,
            env={**os.environ, "BROOMIO_TEST_VAR": "forty-two"})

    out = run(main).stdout.decode().splitlines()
    assert out == [os.path.realpath(tmp_path), "forty-two"]


def test_shell_command_and_path_arguments():
    async def main():
        shell = await run_process("echo $((40 + 2))", shell=True, capture_stdout=True)
        path = await run_process([pathlib.Path(PY), "-c", "print('path ok')"],
                                 capture_stdout=True)
        return shell.stdout, path.stdout

    assert run(main) == (b"42\n", b"path ok\n")


def test_child_that_does_not_read_its_input():
    """The child exits without reading: the rest of the input is dropped, no error."""
    async def main():
        return await run_process(py("pass"), input=b"x" * (4 * MB))

    assert run(main).returncode == 0


def test_many_concurrent_processes():
    results = {}

    async def one(i):
        r = await run_process(py(f"import sys; sys.stdout.write(sys.stdin.read() * {i})"),
                              input=b"ab", capture_stdout=True)
        results[i] = r.stdout

    async def main():
        with fail_after(60):
            async with open_nursery() as n:
                for i in range(40):
                    n.start_soon(one, i)

    run(main)
    assert results == {i: b"ab" * i for i in range(40)}


def _pid_file_child(path, body):
    return py(f"""
        import os, signal, sys, time
        def log(text):
            with open({str(path)!r}, "a") as f:
                f.write(text + "\\n")
        {body}
        log(str(os.getpid()))
        time.sleep(60)
    """)


def test_cancellation_terminates_and_reaps_the_child(tmp_path, reaper):
    path = tmp_path / "log"
    cmd = _pid_file_child(path, """
        def on_term(signum, frame):
            log("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
    """)

    async def main():
        async def wait_started():
            while not (path.exists() and path.read_text().endswith("\n")):
                await broomio.sleep(0.01)
            raise KeyError("stop")  # fails the nursery: cancels run_process

        with fail_after(30):
            async with open_nursery() as n:
                n.start_soon(run_process, cmd)
                n.start_soon(wait_started)

    with pytest.raises(ExceptionGroup) as info:
        run(main)
    assert [type(e) for e in info.value.exceptions] == [KeyError]
    lines = path.read_text().splitlines()
    assert lines[1:] == ["SIGTERM"], lines  # it was asked to stop, and had stopped
    assert_gone(int(lines[0]))


def test_cancellation_kills_a_child_that_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(_subprocess, "TERMINATE_GRACE", 1.0)
    path = tmp_path / "log"
    cmd = _pid_file_child(path, """
        signal.signal(signal.SIGTERM, lambda *a: log("ignored SIGTERM"))
    """)

    async def main():
        async with open_nursery() as n:
            n.start_soon(run_process, cmd)
            with fail_after(GUARD * 3):  # the child's startup, not what is tested
                while not (path.exists() and path.read_text().endswith("\n")):
                    await broomio.sleep(0.01)
            n.cancel()

    t0 = time.monotonic()
    run(main)
    assert time.monotonic() - t0 >= 1.0  # the grace period was granted
    lines = path.read_text().splitlines()
    assert lines[1:] == ["ignored SIGTERM"], lines
    assert_gone(int(lines[0]))


def test_cancelled_run_process_with_ignored_sigterm_still_returns(monkeypatch):
    """SIGTERM is ignored: SIGKILL after the grace period, and the child is reaped."""
    monkeypatch.setattr(_subprocess, "TERMINATE_GRACE", 0.1)

    async def main():
        with move_on_after(1.0) as scope:
            await run_process(py("""
                import signal, time
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(60)
            """))
        return scope.cancelled_caught

    assert run(main) is True


# ---------------------------------------------------------------------------
# open_process / Process


def test_process_kill_while_reading(reaper):
    async def main():
        proc = await open_process(py("print('ready', flush=True); import time; time.sleep(60)"),
                                  stdout=subprocess.PIPE)
        assert await proc.stdout.read_line() == b"ready\n"
        assert proc.poll() is None and proc.returncode is None

        async def reader():
            return await proc.stdout.receive_some()

        async with open_nursery() as n:
            task = n.start_soon(reader)
            await broomio.sleep(0.05)
            proc.kill()
        eof = task.result()
        code = await proc.wait()
        await proc.aclose()
        return eof, code, proc.pid

    eof, code, pid = run(main)
    assert eof == b""
    assert code == -signal.SIGKILL
    assert_reaped(pid)


def test_eof_semantics_with_cat():
    async def main():
        async with await open_process(CAT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE) as proc:
            await proc.stdin.send_all(b"line one\nline two\n")
            first = await proc.stdout.read_line()
            await proc.stdin.send_eof()
            with pytest.raises(ClosedResourceError):
                await proc.stdin.send_all(b"too late")
            rest = await proc.stdout.receive_some()
            eof = await proc.stdout.receive_some()
            eof_again = await proc.stdout.receive_some()
        return first, rest, eof, eof_again, proc.returncode

    assert run(main) == (b"line one\n", b"line two\n", b"", b"", 0)


def test_child_closing_stdin_early_breaks_our_writes():
    async def main():
        async with await open_process(
                py("import os, time; os.close(0); print('closed', flush=True); time.sleep(60)"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
            assert await proc.stdout.read_line() == b"closed\n"
            with pytest.raises(BrokenResourceError) as info:
                await proc.stdin.send_all(b"x" * MB)
            assert isinstance(info.value.__cause__, BrokenPipeError)
            proc.terminate()
        return proc.returncode

    assert run(main) == -signal.SIGTERM


def test_writing_to_a_dead_child_raises_broken_resource():
    async def main():
        proc = await open_process(py("pass"), stdin=subprocess.PIPE)
        assert await proc.wait() == 0
        with pytest.raises(BrokenResourceError):
            await proc.stdin.send_all(b"nobody reads this")
        await proc.aclose()

    run(main)


def test_async_with_closes_pipes_and_waits():
    async def main():
        async with await open_process(CAT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE) as proc:
            pass  # closing stdin makes cat exit
        assert proc.stdin.fileno() == -1 and proc.stdout.fileno() == -1
        return proc.returncode, proc.pid

    code, pid = run(main)
    assert code == 0
    assert_reaped(pid)


def test_cancelled_aclose_kills_the_child():
    async def main():
        with move_on_after(0.2):
            async with await open_process(py("import time; time.sleep(60)")) as proc:
                pass
        return proc.returncode

    assert run(main) == -signal.SIGKILL


def test_several_tasks_wait_on_one_process(reaper):
    codes = []

    async def main():
        proc = await open_process(py("import sys; sys.stdin.read(); sys.exit(5)"),
                                  stdin=subprocess.PIPE)

        async def waiter():
            codes.append(await proc.wait())

        async with open_nursery() as n:
            for _ in range(3):
                n.start_soon(waiter)
            # One more waiter gives up: the others keep waiting (one takes over the watch).
            with move_on_after(0.05):
                await proc.wait()
            await proc.stdin.aclose()
        codes.append(await proc.wait())  # already reaped: returns at once

    run(main)
    assert codes == [5, 5, 5, 5]


def test_signals_after_exit_are_ignored_and_terminate_works():
    async def main():
        proc = await open_process(py("import time; time.sleep(60)"))
        proc.terminate()
        code = await proc.wait()
        proc.kill()  # already reaped: must not signal a recycled pid
        proc.send_signal(signal.SIGTERM)
        return code, proc.poll()

    assert run(main) == (-signal.SIGTERM, -signal.SIGTERM)


def test_wait_is_a_checkpoint_even_when_exited():
    async def main():
        proc = await open_process(py("pass"))
        await proc.wait()
        with broomio.CancelScope() as scope:
            scope.cancel()
            await proc.wait()
        return scope.cancelled_caught

    assert run(main) is True


def test_process_repr_and_args():
    async def main():
        proc = await open_process([PY, "-c", "pass"])
        before = repr(proc)
        await proc.wait()
        return before, repr(proc), proc.args

    before, after, args = run(main)
    assert "running" in before
    assert "exited 0" in after
    assert args == [PY, "-c", "pass"]


def test_bad_arguments():
    async def main():
        with pytest.raises(TypeError, match="bytes, not str"):
            await run_process(CAT, input="text")
        with pytest.raises(TypeError, match="bytes-like"):
            await run_process(CAT, input=42)
        with pytest.raises(ValueError, match="input= or stdin="):
            await run_process(CAT, input=b"x", stdin=subprocess.DEVNULL)
        with pytest.raises(ValueError, match="capture_stdout"):
            await run_process(CAT, capture_stdout=True, stdout=subprocess.DEVNULL)
        with pytest.raises(ValueError, match="capture_stderr"):
            await run_process(CAT, capture_stderr=True, stderr=subprocess.DEVNULL)
        for name in ("stdin", "stdout", "stderr"):
            with pytest.raises(ValueError, match="no access to its pipes"):
                await run_process(CAT, **{name: subprocess.PIPE})
        with pytest.raises(TypeError, match="shell=True"):
            await run_process(["echo", "hi"], shell=True)
        with pytest.raises(TypeError, match="command must be"):
            await run_process(42)
        with pytest.raises(TypeError, match="arguments must be"):
            await run_process(["echo", 42])
        with pytest.raises(ValueError, match="empty"):
            await run_process([])
        with pytest.raises(TypeError, match="text="):
            await open_process(CAT, text=True)
        with pytest.raises(FileNotFoundError):
            await run_process(["/nonexistent/program"])

    fds = open_fd_count()
    run(main)
    assert open_fd_count() == fds  # a failed start leaks no pipe


# ---------------------------------------------------------------------------
# FdStream


def test_fdstream_over_a_pipe():
    async def main():
        r, w = os.pipe()
        async with FdStream(r) as reader, FdStream(w) as writer:
            await writer.send_all(b"hello\nworld")
            assert await reader.read_line() == b"hello\n"
            assert await reader.read_exactly(3) == b"wor"
            assert await reader.receive_some() == b"ld"  # served from the read-ahead buffer

            async def first_reader():
                assert await reader.receive_some() == b"!"

            async with open_nursery() as n:
                n.start_soon(first_reader)
                await broomio.sleep(0.01)
                with pytest.raises(BusyResourceError):
                    await reader.receive_some()
                await writer.send_all(b"!")
            await writer.aclose()
            assert [chunk async for chunk in reader] == []
        assert reader.fileno() == -1
        with pytest.raises(ClosedResourceError):
            await reader.receive_some()
        with pytest.raises(OSError):
            os.fstat(r)  # aclose closed the fd it owns

    run(main)


def test_fdstream_close_wakes_a_blocked_reader():
    async def main():
        r, w = os.pipe()
        reader = FdStream(r)
        try:
            async with open_nursery() as n:
                async def blocked():
                    with pytest.raises(ClosedResourceError):
                        await reader.receive_some()

                n.start_soon(blocked)
                await broomio.sleep(0.01)
                await reader.aclose()
        finally:
            os.close(w)

    run(main)


def test_fdstream_broken_pipe():
    async def main():
        r, w = os.pipe()
        os.close(r)
        writer = FdStream(w)
        with pytest.raises(BrokenResourceError) as info:
            await writer.send_all(b"x")
        assert isinstance(info.value.__cause__, BrokenPipeError)
        await writer.aclose()

    run(main)


def test_fdstream_bad_arguments():
    with pytest.raises(TypeError):
        FdStream("3")
    with pytest.raises(TypeError):
        FdStream(True)
    with pytest.raises(ValueError):
        FdStream(-1)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        FdStream(r)  # not open


def test_wait_survives_another_task_reaping_first(reaper):
    """One task waits; another polls in a busy loop and reaps the child first (closing the
    pidfd under the waiter): the waiter still gets the return code."""
    async def main():
        proc = await open_process(py("import time; time.sleep(0.1)"))

        async def poller():
            while proc.poll() is None:
                await broomio.sleep(0)

        async with open_nursery() as n:
            waiter = n.start_soon(proc.wait)
            n.start_soon(poller)
        return waiter.result()

    assert run(main) == 0


def test_same_results_as_trio():
    """trio.run_process as the oracle: the same CompletedProcess / CalledProcessError."""
    import trio

    ok = py("import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]);"
            "sys.stderr.write('e')")
    bad = py("import sys; print('out'); sys.exit(4)")

    def observe(lib_run, run_process_fn, stdin_kw):
        async def main():
            good = await run_process_fn(ok, capture_stdout=True, capture_stderr=True,
                                        **{stdin_kw: b"abc"})
            try:
                await run_process_fn(bad, capture_stdout=True)
            except subprocess.CalledProcessError as exc:
                failed = (exc.returncode, exc.cmd, exc.stdout, exc.stderr)
            return (good.args, good.returncode, good.stdout, good.stderr), failed

        return lib_run(main)

    assert observe(broomio.run, run_process, "input") == observe(trio.run, trio.run_process,
                                                                  "stdin")


def test_raw_fd_core_refuses_socket_flags():
    """The engine's raw fd mode (under FdStream) has no recv/send flags."""
    from broomio._engine import SocketCore

    r, w = os.pipe()
    core, wcore = SocketCore._from_fd(r), SocketCore._from_fd(w)
    try:
        with pytest.raises(ValueError, match="flags"):
            core.recv(10, socket_flag := 2)  # MSG_PEEK
        with pytest.raises(ValueError, match="flags"):
            core.recv_into(bytearray(10), 0, socket_flag)
        with pytest.raises(ValueError, match="flags"):
            wcore.send(b"x", socket_flag)
        assert wcore.detach() == w  # detach hands the fd back without closing it
        assert wcore.fileno() == -1
    finally:
        core.close()
        os.close(w)
    assert core.fileno() == -1
