"""run_in_process and BrokenWorkerError."""

import os
import select
import signal
import time
import traceback

import pytest

import broomio
from broomio import BrokenWorkerError, Loop, move_on_after, open_nursery, run_in_process

import _process_support as ps
from conftest import GUARD, run


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Still in the table: only acceptable if it is a zombie of someone else (not ours).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] == "Z"


def test_returns_the_result_from_another_process():
    async def main():
        return await run_in_process(ps.square, 12), await run_in_process(ps.getpid)

    value, pid = run(main)
    assert value == 144
    assert pid != os.getpid()


def test_workers_are_reused_and_bounded():
    async def main():
        pids = [await run_in_process(ps.getpid) for _ in range(20)]
        results = {}

        async def one(i):
            results[i] = await run_in_process(ps.square, i)

        async with open_nursery() as n:
            for i in range(40):
                n.start_soon(one, i)
        return pids, results

    pids, results = run(main)
    assert len(set(pids)) == 1  # sequential calls reuse one worker
    assert results == {i: i * i for i in range(40)}


def test_error_keeps_type_and_remote_traceback():
    async def main():
        try:
            await run_in_process(ps.fail_deep)
        except ValueError as exc:
            return exc

    exc = run(main)
    assert type(exc) is ValueError and str(exc) == "raised in the worker"
    remote = exc.__cause__
    assert type(remote).__name__ == "RemoteTraceback"
    assert "innermost" in str(remote) and "fail_deep" in str(remote)
    text = "".join(traceback.format_exception(exc))
    assert "innermost" in text and "main" in text


def test_unpicklable_exception_becomes_runtime_error_with_the_traceback():
    async def main():
        with pytest.raises(RuntimeError, match="Unpicklable: 1/2") as info:
            await run_in_process(ps.raise_unpicklable)
        assert "raise_unpicklable" in str(info.value.__cause__)
        # The worker survived and is reused.
        return await run_in_process(ps.square, 3)

    assert run(main) == 9


def test_exception_that_cannot_be_rebuilt_becomes_runtime_error():
    async def main():
        with pytest.raises(RuntimeError, match="NeedsTwoArgs: a b") as info:
            await run_in_process(ps.raise_needs_two_args)
        assert "raise_needs_two_args" in str(info.value.__cause__)

    run(main)


def test_unpicklable_result_is_an_error_in_the_caller():
    async def main():
        with pytest.raises(TypeError, match=r"the result \(function\) could not be pickled"):
            await run_in_process(ps.return_unpicklable)

    run(main)


def test_unpicklable_function_or_arguments_are_a_type_error():
    async def main():
        with pytest.raises(TypeError, match="picklable"):
            await run_in_process(lambda: 1)
        with pytest.raises(TypeError, match="picklable"):
            await run_in_process(ps.square, lambda: 1)
        with pytest.raises(TypeError, match="'fn' must be callable"):
            await run_in_process(3)

    run(main)


def test_worker_killed_by_sigkill_mid_call_raises_broken_worker_and_is_replaced():
    async def main():
        first = await run_in_process(ps.getpid)
        with pytest.raises(BrokenWorkerError, match="SIGKILL") as info:
            await run_in_process(ps.kill_myself, signal.SIGKILL)
        assert str(first) in str(info.value)
        replacement = await run_in_process(ps.getpid)
        return first, replacement

    first, replacement = run(main)
    assert first != replacement
    assert _gone(first)


def test_worker_killed_from_outside_mid_call(tmp_path):
    pidfile = tmp_path / "pid"

    async def main():
        async with open_nursery() as n:
            async def killer():
                deadline = time.monotonic() + GUARD * 4
                while not pidfile.exists() or not pidfile.read_text():
                    assert time.monotonic() < deadline
                    await broomio.sleep(0.01)
                os.kill(int(pidfile.read_text()), signal.SIGKILL)

            n.start_soon(killer)
            with pytest.raises(BrokenWorkerError):
                await run_in_process(ps.announce_and_sleep, str(pidfile), 30)
        return await run_in_process(ps.square, 5)

    assert run(main) == 25


def test_worker_that_exits_is_reported():
    async def main():
        with pytest.raises(BrokenWorkerError, match="exited with code 7"):
            await run_in_process(ps.exit_hard, 7)
        return await run_in_process(ps.square, 2)

    assert run(main) == 4


def test_cancellation_kills_the_worker(tmp_path):
    pidfile = tmp_path / "pid"

    async def main():
        with broomio.CancelScope() as scope:
            async with open_nursery() as n:
                async def cancel_once_running():
                    deadline = time.monotonic() + GUARD * 4
                    while not pidfile.exists() or not pidfile.read_text():
                        assert time.monotonic() < deadline
                        await broomio.sleep(0.01)
                    scope.cancel()

                n.start_soon(cancel_once_running)
                await run_in_process(ps.announce_and_sleep, str(pidfile), 30)
        assert scope.cancelled_caught
        pid = int(pidfile.read_text())
        assert _gone(pid)  # killed and reaped before the cancelled call returned
        return await run_in_process(ps.square, 6)

    assert run(main) == 36


def test_loop_close_stops_the_workers():
    loop = Loop()
    pid = loop.run_until_complete(run_in_process, ps.getpid)
    os.kill(pid, 0)  # alive and idle in the pool
    loop.close()
    assert _gone(pid)


def test_ctrl_c_kills_the_worker_and_exits(python_child):
    child = python_child("""
import broomio
from broomio import Cancelled
import _process_support as ps

async def main():
    try:
        await broomio.run_in_process(ps.print_pid_and_sleep, 30)
    except Cancelled:
        print("saw Cancelled", flush=True)
        raise

if __name__ == "__main__":
    try:
        broomio.run(main)
    except KeyboardInterrupt:
        print("KI", flush=True)
        raise
""")
    deadline = time.monotonic() + 30
    fd = child.proc.stdout.fileno()
    while b"\n" not in child._out:  # the worker's "worker pid N" line
        left = deadline - time.monotonic()
        assert left > 0, child._out
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, child.finish()
            child._out += chunk
    pid = int(child._out.decode().split("worker pid ")[1].split()[0])
    time.sleep(0.2)  # let the parent settle in its poller
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=15)
    assert out.splitlines()[1:] == ["saw Cancelled", "KI"], (out, err)
    assert "KeyboardInterrupt" in err
    assert _gone(pid)


def test_no_fd_or_process_leaks_across_calls_kills_and_cancellations(tmp_path):
    from conftest import open_fd_count

    def children():
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return set(f.read().split())

    run(lambda: run_in_process(ps.square, 1))  # the one-time multiprocessing set-up
    fds_before, children_before = open_fd_count(), children()

    async def main():
        for i in range(50):
            assert await run_in_process(ps.square, i) == i * i
        for _ in range(3):
            with pytest.raises(BrokenWorkerError):
                await run_in_process(ps.kill_myself)
            with move_on_after(0.3):
                await run_in_process(ps.announce_and_sleep, str(tmp_path / "p"), 30)
        with pytest.raises(ValueError):
            await run_in_process(ps.fail_deep)

    run(main)
    assert open_fd_count() == fds_before
    assert children() == children_before
