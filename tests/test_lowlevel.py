"""broomio.lowlevel: ParkingLot, fd readiness, checkpoint; Loop.call_soon_threadsafe."""

import socket
import sys
import threading
import time

import pytest

import broomio
from broomio import (
    BusyResourceError,
    CancelScope,
    Cancelled,
    ClosedResourceError,
    move_on_after,
    open_nursery,
    sleep,
)
from broomio.lowlevel import ParkingLot, checkpoint, notify_closing, wait_readable, wait_writable
from conftest import GUARD, Log, assert_at_least, run, run_python


async def wait_until(predicate, what="condition"):
    """Checkpoint until ``predicate()`` holds (bounded)."""
    for _ in range(10_000):
        if predicate():
            return
        await sleep(0)
    raise AssertionError(f"{what} never became true")


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def fill_send_buffer(sock):
    sent = 0
    chunk = b"x" * 65536
    while True:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            return sent


# ---------------------------------------------------------------------------
# ParkingLot


def test_parking_lot_fifo_unpark_order():
    log = Log()
    lot = ParkingLot()

    async def waiter(i):
        value = await lot.park()
        log(i, value)

    async def main():
        async with open_nursery() as n:
            for i in range(5):
                n.start_soon(waiter, i)
                await wait_until(lambda i=i: len(lot) == i + 1, "parked")
            for k in range(5):
                assert lot.unpark(value=f"v{k}") == 1
                await wait_until(lambda k=k: len(log) == k + 1, "woken")
        return len(lot)

    assert run(main) == 0
    assert log == [(i, f"v{i}") for i in range(5)]


def test_parking_lot_unpark_n_and_counts():
    log = Log()
    lot = ParkingLot()

    async def waiter(i):
        log(i, await lot.park())

    async def main():
        async with open_nursery() as n:
            for i in range(6):
                n.start_soon(waiter, i)
            await wait_until(lambda: len(lot) == 6, "all parked")
            assert lot.unpark(2, "a") == 2
            assert len(lot) == 4
            await wait_until(lambda: len(log) == 2)
            assert lot.unpark(n=3, value="b") == 3
            assert len(lot) == 1
            await wait_until(lambda: len(log) == 5)
            lot.unpark_all("c")
            assert len(lot) == 0
            assert lot.unpark() == 0
            assert lot.unpark(10) == 0

    run(main)
    # FIFO: the first two parked get "a", the next three "b", the last "c".
    assert sorted(log) == [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "b"), (5, "c")]
    assert log[:2] == [(0, "a"), (1, "a")]
    assert log[2:5] == [(2, "b"), (3, "b"), (4, "b")]


def test_parking_lot_unpark_more_than_parked():
    lot = ParkingLot()
    got = []

    async def waiter():
        got.append(await lot.park())

    async def main():
        async with open_nursery() as n:
            n.start_soon(waiter)
            n.start_soon(waiter)
            await wait_until(lambda: len(lot) == 2)
            assert lot.unpark(5) == 2

    run(main)
    assert got == [None, None]


def test_parking_lot_unpark_all_wakes_everyone():
    lot = ParkingLot()
    got = []

    async def waiter(i):
        got.append((i, await lot.park()))

    async def main():
        async with open_nursery() as n:
            for i in range(4):
                n.start_soon(waiter, i)
            await wait_until(lambda: len(lot) == 4)
            lot.unpark_all(value="all")

    run(main)
    assert got == [(i, "all") for i in range(4)]


def test_parking_lot_cancelled_waiter_leaves_queue():
    log = Log()
    lot = ParkingLot()
    scopes = {}

    async def waiter(i):
        with CancelScope() as scope:
            scopes[i] = scope
            log(i, await lot.park())
        if scope.cancelled_caught:
            log(i, "cancelled")

    async def main():
        async with open_nursery() as n:
            for i in range(3):
                n.start_soon(waiter, i)
                await wait_until(lambda i=i: len(lot) == i + 1)
            scopes[1].cancel()
            await wait_until(lambda: len(log) == 1, "cancelled waiter ran")
            assert len(lot) == 2
            assert lot.unpark(value="first") == 1
            await wait_until(lambda: len(log) == 2)
            assert lot.unpark(value="second") == 1
            await wait_until(lambda: len(log) == 3)
            assert lot.unpark() == 0

    run(main)
    assert log == [(1, "cancelled"), (0, "first"), (2, "second")]


def test_parking_lot_cancelled_task_leaves_queue():
    lot = ParkingLot()
    got = []

    async def waiter(i):
        got.append((i, await lot.park()))

    async def main():
        async with open_nursery() as n:
            t0 = n.start_soon(waiter, 0)
            await wait_until(lambda: len(lot) == 1)
            n.start_soon(waiter, 1)
            await wait_until(lambda: len(lot) == 2)
            t0.cancel()
            await wait_until(lambda: t0.done())
            assert len(lot) == 1
            assert lot.unpark(value="x") == 1
        return t0.cancelled()

    assert run(main) is True
    assert got == [(1, "x")]


def test_parking_is_a_checkpoint():
    lot = ParkingLot()

    async def main():
        with CancelScope() as scope:
            scope.cancel()
            try:
                await lot.park()
            except Cancelled:
                return "cancelled", len(lot)
        return "not cancelled", len(lot)

    assert run(main) == ("cancelled", 0)


def test_parking_lot_timeout():
    lot = ParkingLot()

    async def main():
        t0 = time.monotonic()
        with move_on_after(0.05) as scope:
            await lot.park()
        return scope.cancelled_caught, time.monotonic() - t0, len(lot)

    caught, elapsed, left = run(main)
    assert caught is True
    assert_at_least(elapsed, 0.05)
    assert left == 0


# ---------------------------------------------------------------------------
# checkpoint


def test_checkpoint_round_robin():
    log = Log()

    async def worker(i):
        for k in range(3):
            log(i, k)
            await checkpoint()

    async def main():
        async with open_nursery() as n:
            for i in range(3):
                n.start_soon(worker, i)

    run(main)
    assert log == [(i, k) for k in range(3) for i in range(3)]


def test_checkpoint_raises_when_cancelled():
    async def main():
        with CancelScope() as scope:
            scope.cancel()
            await checkpoint()
            return "unreachable"
        return scope.cancelled_caught

    assert run(main) is True


# ---------------------------------------------------------------------------
# wait_readable / wait_writable / notify_closing


def test_wait_readable_blocks_until_data(sockpair):
    a, b = sockpair
    log = Log()

    async def reader():
        t0 = time.monotonic()
        await wait_readable(a)
        log("readable", time.monotonic() - t0, a.recv(100))

    async def writer():
        await sleep(0.05)
        log("sending")
        b.send(b"hello")

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(reader)
                n.start_soon(writer)

    run(main)
    assert log[0] == "sending"
    assert log[1][0] == "readable"
    assert_at_least(log[1][1], 0.05)
    assert log[1][2] == b"hello"


def test_wait_readable_int_fd(sockpair):
    a, b = sockpair

    async def main():
        b.send(b"x")
        with move_on_after(GUARD) as guard:
            await wait_readable(a.fileno())
        return guard.cancelled_caught, a.recv(10)

    assert run(main) == (False, b"x")


def test_wait_writable_ready_socket(sockpair):
    a, _ = sockpair

    async def main():
        with move_on_after(GUARD) as guard:
            await wait_writable(a)
            await wait_writable(a.fileno())
        return guard.cancelled_caught

    assert run(main) is False


def test_wait_writable_blocks_until_drained(sockpair):
    a, b = sockpair
    log = Log()

    async def writer():
        fill_send_buffer(a)
        t0 = time.monotonic()
        await wait_writable(a)
        log("writable", time.monotonic() - t0)

    async def drainer():
        await sleep(0.05)
        log("draining")
        while True:
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                break

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(writer)
                n.start_soon(drainer)

    run(main)
    assert log[0] == "draining"
    assert log[1][0] == "writable"
    assert_at_least(log[1][1], 0.05)


def test_reader_and_writer_on_same_fd(sockpair):
    a, b = sockpair
    log = Log()

    async def reader():
        await wait_readable(a)
        log("readable")

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(reader)
                await sleep(0.01)
                await wait_writable(a)  # other direction: not busy
                log("writable")
                b.send(b"!")

    run(main)
    assert log == ["writable", "readable"]


@pytest.mark.parametrize("direction", ["read", "write"])
def test_second_waiter_same_direction_is_busy(sockpair, direction):
    a, b = sockpair
    log = Log()
    if direction == "write":
        fill_send_buffer(a)
        wait = wait_writable
    else:
        wait = wait_readable

    async def first():
        await wait(a)
        log("first woke")

    async def second():
        try:
            await wait(a)
        except BusyResourceError:
            log("second busy")

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(first)
                await sleep(0.01)
                n.start_soon(second)
                await sleep(0.01)
                log("making ready")
                if direction == "read":
                    b.send(b"data")
                else:
                    while True:
                        try:
                            b.recv(1 << 20)
                        except BlockingIOError:
                            break

    run(main)
    assert log == ["second busy", "making ready", "first woke"]


def test_busy_with_int_and_socket_object_same_fd(sockpair):
    a, b = sockpair
    log = Log()

    async def first():
        await wait_readable(a.fileno())
        log("first woke")

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(first)
                await sleep(0.01)
                with pytest.raises(BusyResourceError):
                    await wait_readable(a)
                b.send(b"x")

    run(main)
    assert log == ["first woke"]


@pytest.mark.parametrize("direction", ["read", "write"])
def test_notify_closing_wakes_waiter(sockpair, direction):
    a, _ = sockpair
    log = Log()
    if direction == "write":
        fill_send_buffer(a)
    wait = wait_readable if direction == "read" else wait_writable

    async def waiter():
        try:
            await wait(a)
        except ClosedResourceError:
            log("closed")

    async def main():
        with move_on_after(GUARD) as guard:
            async with open_nursery() as n:
                n.start_soon(waiter)
                await sleep(0.02)
                log("notify")
                notify_closing(a)
        log("guard", guard.cancelled_caught)

    run(main)
    assert log == ["notify", "closed", ("guard", False)]


def test_notify_closing_wakes_both_directions(sockpair):
    a, _ = sockpair
    fill_send_buffer(a)
    log = Log()

    async def waiter(wait, name):
        with pytest.raises(ClosedResourceError):
            await wait(a)
        log(name)

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(waiter, wait_readable, "reader")
                n.start_soon(waiter, wait_writable, "writer")
                await sleep(0.02)
                notify_closing(a.fileno())

    run(main)
    assert sorted(log) == ["reader", "writer"]


def test_notify_closing_without_waiters_is_harmless(sockpair):
    a, b = sockpair

    async def main():
        notify_closing(a)
        b.send(b"z")
        with move_on_after(GUARD) as guard:
            await wait_readable(a)
        return guard.cancelled_caught

    assert run(main) is False


def test_cancelled_wait_unregisters(sockpair):
    a, b = sockpair

    async def main():
        with move_on_after(0.02) as scope:
            await wait_readable(a)
        assert scope.cancelled_caught
        # The cancelled waiter is gone: waiting again is not "busy", and works.
        b.send(b"again")
        with move_on_after(GUARD) as guard:
            await wait_readable(a)
        return guard.cancelled_caught, a.recv(10)

    assert run(main) == (False, b"again")


def test_wait_readable_on_reused_fd_numbers():
    """Closing a socket and getting the same fd number back must still work."""
    async def main():
        numbers = []
        for i in range(5):
            a, b = socket.socketpair()
            a.setblocking(False)
            try:
                numbers.append(a.fileno())
                b.send(b"%d" % i)
                with move_on_after(GUARD) as guard:
                    await wait_readable(a)
                assert not guard.cancelled_caught
                assert a.recv(10) == b"%d" % i
                # Leave a registration behind on purpose (waiter cancelled), then close.
                with move_on_after(0.005):
                    await wait_readable(a)
                notify_closing(a)
            finally:
                a.close()
                b.close()
        return numbers

    numbers = run(main)
    assert len(set(numbers)) < len(numbers), f"fd numbers were not reused: {numbers}"


def test_wait_readable_is_a_checkpoint(sockpair):
    a, b = sockpair
    b.send(b"ready")

    async def main():
        with CancelScope() as scope:
            scope.cancel()
            await wait_readable(a)
            return "not cancelled"
        return scope.cancelled_caught

    assert run(main) is True


def test_readiness_from_many_sockets():
    pairs = [socket.socketpair() for _ in range(20)]
    for a, b in pairs:
        a.setblocking(False)
    got = []

    async def reader(i, a):
        await wait_readable(a)
        got.append((i, a.recv(10)))

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                for i, (a, _) in enumerate(pairs):
                    n.start_soon(reader, i, a)
                await sleep(0.01)
                for i, (_, b) in reversed(list(enumerate(pairs))):
                    b.send(b"%d" % i)

    try:
        run(main)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert sorted(got) == [(i, b"%d" % i) for i in range(20)]


# ---------------------------------------------------------------------------
# call_soon_threadsafe


def test_call_soon_threadsafe_wakes_sleeping_loop():
    loop = broomio.Loop()
    lot = ParkingLot()
    seen = {}

    def callback(value):
        seen["thread"] = threading.get_ident()
        lot.unpark(1, value)

    def in_thread():
        time.sleep(0.1)
        loop.call_soon_threadsafe(callback, "from-thread")

    async def main():
        seen["loop_thread"] = threading.get_ident()
        th = threading.Thread(target=in_thread)
        t0 = time.monotonic()
        th.start()
        with move_on_after(GUARD) as guard:
            value = await lot.park()
        elapsed = time.monotonic() - t0
        th.join()
        return value, guard.cancelled_caught, elapsed

    value, guard_fired, elapsed = loop.run_until_complete(main)
    loop.close()
    assert guard_fired is False
    assert value == "from-thread"
    assert seen["thread"] == seen["loop_thread"]
    assert_at_least(elapsed, 0.1)


def test_call_soon_threadsafe_wakes_loop_blocked_without_timers():
    """No timer at all: only the thread's wake-up can end the loop (own process: may hang)."""
    proc = run_python("""
        import threading, time
        import broomio
        from broomio.lowlevel import ParkingLot

        loop = broomio.Loop()
        lot = ParkingLot()

        def in_thread():
            time.sleep(0.2)
            loop.call_soon_threadsafe(lot.unpark_all, "done")

        async def main():
            return await lot.park()

        th = threading.Thread(target=in_thread)
        th.start()
        print("result", loop.run_until_complete(main))
        th.join()
        loop.close()
    """, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["result done"]


def test_call_soon_threadsafe_many_threads_preserve_per_thread_order():
    loop = broomio.Loop()
    lot = ParkingLot()
    n_threads, n_calls = 4, 500
    received = {i: [] for i in range(n_threads)}
    count = [0]

    def callback(i, k):
        received[i].append(k)
        count[0] += 1
        if count[0] == n_threads * n_calls:
            lot.unpark_all()

    def producer(i):
        for k in range(n_calls):
            loop.call_soon_threadsafe(callback, i, k)

    async def main():
        threads = [threading.Thread(target=producer, args=(i,)) for i in range(n_threads)]
        for th in threads:
            th.start()
        with move_on_after(GUARD) as guard:
            await lot.park()
        for th in threads:
            th.join()
        return guard.cancelled_caught

    assert loop.run_until_complete(main) is False
    loop.close()
    for i in range(n_threads):
        assert received[i] == list(range(n_calls))


def test_call_soon_threadsafe_from_loop_thread():
    loop = broomio.Loop()
    log = Log()

    async def main():
        loop.call_soon_threadsafe(log, "callback")
        log("scheduled")
        with move_on_after(GUARD):
            while "callback" not in log:
                await sleep(0.001)
        log("done")

    loop.run_until_complete(main)
    loop.close()
    assert log == ["scheduled", "callback", "done"]


def test_call_soon_threadsafe_exception_goes_to_unraisablehook(monkeypatch):
    loop = broomio.Loop()
    reports = []
    lot = ParkingLot()
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reports.append(u.exc_value))

    def bad():
        raise ValueError("callback failed")

    def in_thread():
        loop.call_soon_threadsafe(bad)
        loop.call_soon_threadsafe(lot.unpark)

    async def main():
        th = threading.Thread(target=in_thread)
        th.start()
        with move_on_after(GUARD) as guard:
            await lot.park()
        th.join()
        return guard.cancelled_caught

    # The loop keeps running after the failing callback.
    assert loop.run_until_complete(main) is False
    loop.close()
    assert len(reports) == 1
    assert type(reports[0]) is ValueError
    assert str(reports[0]) == "callback failed"


def test_suspend_and_reschedule_deliver_value_and_exception():
    from broomio.lowlevel import suspend

    async def main():
        loop = broomio.current_loop()
        me = broomio.current_task()

        async def waker(value=None, exception=None):
            await broomio.sleep(0.01)
            if exception is not None:
                loop.reschedule(me, exception=exception)
            else:
                loop.reschedule(me, value)

        async with broomio.open_nursery() as n:
            n.start_soon(waker, "v")
            got = await suspend()
            n.start_soon(waker, None, KeyError("k"))
            with pytest.raises(KeyError):
                await suspend()
        return got

    assert run(main) == "v"


def test_suspend_abort_fn_decides_cancellation():
    from broomio.lowlevel import suspend

    calls = []

    async def main():
        loop = broomio.current_loop()
        me = broomio.current_task()
        with broomio.move_on_after(0.02) as scope:
            await suspend(lambda: calls.append("abort") or True)
        refused = []

        async def waker():
            await broomio.sleep(0.05)
            loop.reschedule(me, "finished anyway")

        async with broomio.open_nursery() as n:
            n.start_soon(waker)
            with broomio.move_on_after(0.01):
                # The abort function refuses: the wait completes normally.
                refused.append(await suspend(lambda: calls.append("refuse") and False))
        return scope.cancelled_caught, refused

    assert run(main) == (True, ["finished anyway"])
    assert calls == ["abort", "refuse"]


def test_reschedule_misuse_is_a_clear_error():
    async def main():
        loop = broomio.current_loop()
        with pytest.raises(RuntimeError, match="not suspended"):
            loop.reschedule(broomio.current_task())
        with pytest.raises(TypeError):
            loop.reschedule("not a task")
        with pytest.raises(TypeError):
            broomio.lowlevel.suspend(42)
        return "ok"

    assert run(main) == "ok"
