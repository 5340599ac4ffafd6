"""Regression tests for engine bugs found in review (each failed before its fix)."""

import gc
import socket as stdlib_socket
import threading
import time

import pytest

import broomio
import broomio.socket as bsocket
from broomio.lowlevel import ParkingLot
from conftest import run, run_python


def test_waits_work_through_tp_iternext_under_a_tracer():
    # With a tracer active, CPython 3.11's SEND uses tp_iternext (as 3.12+ always do); the
    # iterator wrapper once read the result before am_send produced it, so every wait
    # returned at once.
    proc = run_python("""
        import sys, time, broomio
        async def main():
            t0 = time.monotonic()
            await broomio.sleep(0.1)
            lot = broomio.lowlevel.ParkingLot()
            async def unparker():
                await broomio.sleep(0.05)
                lot.unpark(value="v")
            async with broomio.open_nursery() as n:
                n.start_soon(unparker)
                got = await lot.park()
            return time.monotonic() - t0, got
        sys.settrace(lambda *a: None)
        elapsed, got = broomio.run(main)
        sys.settrace(None)
        print(elapsed >= 0.15, got)
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "v"]


def test_explicit_send_protocol_returns_values():
    # The awaitable's send()/__next__ wrappers must report the real result.
    async def child():
        return 42

    async def main():
        async with broomio.open_nursery() as n:
            t = n.start_soon(child)
        aw = t.join()
        with pytest.raises(StopIteration) as info:
            aw.send(None)
        return info.value.value

    assert run(main) == 42


def test_abandoned_async_generator_cleanup_runs_in_its_own_task():
    log = []
    lot = ParkingLot()

    async def numbers():
        try:
            yield 1
            yield 2
        finally:
            await broomio.sleep(0.01)
            log.append("generator cleaned up")

    async def main():
        async for _ in numbers():
            break
        gc.collect()
        await broomio.sleep(0.1)
        # The task that abandoned the generator must not be left registered anywhere.
        return len(lot)

    assert run(main) == 0
    assert log == ["generator cleaned up"]


def test_start_later_in_cancelled_nursery_does_not_wait_out_the_delay():
    async def never():
        raise AssertionError("must not start")

    async def main():
        t0 = time.monotonic()
        async with broomio.open_nursery() as n:
            n.cancel()
            n.start_later(30, never)
        return time.monotonic() - t0

    assert run(main) < 10  # generous: the bug waited the full 30 s


def test_cancel_from_another_thread_wakes_a_sleeping_loop():
    loop = broomio.Loop()
    try:
        async def sleeper():
            await broomio.sleep_forever()

        task = loop.start_soon(sleeper)
        runner = threading.Thread(target=loop.run, daemon=True)
        runner.start()
        time.sleep(0.2)
        task.cancel()
        runner.join(10)
        assert not runner.is_alive()
        assert task.cancelled()
    finally:
        loop.close()


def test_recv_msg_trunc_never_returns_more_than_asked():
    async def main():
        a, b = bsocket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_DGRAM)
        with a, b:
            await a.send(b"0123456789" * 100)
            data = await b.recv(10, stdlib_socket.MSG_TRUNC)
        return data

    assert run(main) == b"0123456789"


def test_fd_reused_after_generic_wait_is_registered_again():
    async def main():
        a, b = bsocket.socketpair()
        async with broomio.open_nursery() as n:
            n.start_soon(broomio.lowlevel.wait_readable, a.fileno())
            await broomio.sleep(0.01)
            await b.send_all(b"x")
        fd = a.fileno()
        a.close()
        b.close()
        c, d = bsocket.socketpair()
        with c, d:
            assert fd in (c.fileno(), d.fileno())
            reader, writer = (c, d) if c.fileno() == fd else (d, c)
            async with broomio.open_nursery() as n:
                async def later():
                    await broomio.sleep(0.05)
                    await writer.send_all(b"ping")
                n.start_soon(later)
                with broomio.fail_after(10):
                    return await reader.recv(10)

    assert run(main) == b"ping"


def test_wait_on_huge_or_closed_fd_is_a_clear_error():
    async def main():
        with pytest.raises(OSError):
            await broomio.lowlevel.wait_readable(2**30 + 5)
        with pytest.raises(OSError):
            await broomio.lowlevel.wait_readable(20_000_000)
        return "ok"

    assert run(main) == "ok"


def test_loop_closed_by_a_finalizer_during_spawn_raises_cleanly():
    loop = broomio.Loop()

    class Owner:
        def __init__(self):
            self.me = self

        def __del__(self):
            loop.close()

    async def work():
        pass

    Owner()
    old = gc.get_threshold()
    gc.set_threshold(1)
    try:
        try:
            loop.start_soon(work)
        except RuntimeError as exc:
            assert "closed" in str(exc)
    finally:
        gc.set_threshold(*old)
        loop.close()


def test_async_generator_cleanup_error_is_reported_not_fatal():
    seen = []

    async def numbers():
        try:
            yield 1
        finally:
            raise ValueError("cleanup failed")

    async def main():
        async for _ in numbers():
            break
        gc.collect()
        await broomio.sleep(0.05)
        return "ok"

    import sys
    old = sys.unraisablehook
    sys.unraisablehook = lambda args: seen.append(args.exc_value)
    try:
        assert run(main) == "ok"
    finally:
        sys.unraisablehook = old
    assert len(seen) == 1 and isinstance(seen[0], ValueError)
