"""Event, Lock, Semaphore, Condition, CapacityLimiter: behaviour, fairness, errors.

Queue has its own file (test_sync_queue.py); the randomized model/oracle tests are in
test_sync_model.py.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time

import pytest

import broomio
from broomio import (
    CancelScope,
    Cancelled,
    CapacityLimiter,
    Condition,
    Event,
    Lock,
    Semaphore,
    WouldBlock,
    open_nursery,
    sleep,
)
from broomio.lowlevel import checkpoint

from _sync_support import Log, assert_budget_yields, assert_no_suspension, run, settle

# ---------------------------------------------------------------------------
# Event


def test_event_set_and_is_set():
    async def main():
        ev = Event()
        assert not ev.is_set()
        ev.set()
        assert ev.is_set()
        ev.set()  # idempotent
        assert ev.is_set()

    run(main)


def test_event_wait_wakes_every_waiter_in_fifo_order():
    log = Log()

    async def waiter(ev, i):
        await ev.wait()
        log(i)

    async def main():
        ev = Event()
        async with open_nursery() as n:
            for i in range(5):
                n.start_soon(waiter, ev, i)
            await settle()
            assert log == []
            ev.set()
        assert log == [0, 1, 2, 3, 4]

    run(main)


def test_event_wait_on_set_event_does_not_suspend():
    async def main():
        ev = Event()
        ev.set()
        assert await assert_no_suspension(ev.wait) is None

    run(main)


def test_event_wait_honours_budget():
    async def main():
        ev = Event()
        ev.set()
        await assert_budget_yields(ev.wait)

    run(main)


def test_event_wait_is_a_checkpoint_even_when_set():
    log = Log()

    async def main():
        ev = Event()
        ev.set()
        with CancelScope() as scope:
            scope.cancel()
            await ev.wait()
            log("not reached")
        assert scope.cancelled_caught
        assert log == []

    run(main)


def test_event_cancelled_waiter_leaves_and_others_still_wake():
    log = Log()

    async def waiter(ev, i, scope):
        with scope:
            await ev.wait()
            log("woke", i)
        if scope.cancelled_caught:
            log("cancelled", i)

    async def main():
        ev = Event()
        scopes = [CancelScope() for _ in range(3)]
        async with open_nursery() as n:
            for i in range(3):
                n.start_soon(waiter, ev, i, scopes[i])
            await settle()
            scopes[1].cancel()
            await settle()
            assert log == [("cancelled", 1)]
            assert "waiters=2" in repr(ev)
            ev.set()
        assert log == [("cancelled", 1), ("woke", 0), ("woke", 2)]

    run(main)


def test_event_takes_no_arguments():
    with pytest.raises(TypeError):
        Event(1)


def test_event_set_from_another_thread_is_refused_but_call_soon_threadsafe_works():
    ev = Event()
    loop = broomio.Loop()
    parked = threading.Event()
    errors = []

    async def waiter():
        parked.set()
        await ev.wait()
        return "woken"

    def outsider():
        parked.wait(10)
        for _ in range(10_000):  # until the waiter is parked (repr is safe under the GIL)
            if "waiters=1" in repr(ev):
                break
            time.sleep(0.001)
        try:
            ev.set()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.call_soon_threadsafe(ev.set)

    thread = threading.Thread(target=outsider)
    thread.start()
    try:
        assert loop.run_until_complete(waiter) == "woken"
    finally:
        thread.join()
        loop.close()
    assert len(errors) == 1 and "call_soon_threadsafe" in errors[0]


def test_awaiting_twice_is_an_error():
    async def main():
        ev = Event()
        ev.set()
        w = ev.wait()
        await w
        with pytest.raises(RuntimeError, match="reuse"):
            await w

    run(main)


def test_primitives_refuse_foreign_event_loops():
    async def in_asyncio():
        ev = Event()
        ev.set()
        await ev.wait()

    with pytest.raises(RuntimeError, match="broomio"):
        asyncio.run(in_asyncio())


# ---------------------------------------------------------------------------
# Lock


def test_lock_acquire_release_and_locked():
    async def main():
        lock = Lock()
        assert not lock.locked()
        await lock.acquire()
        assert lock.locked()
        lock.release()
        assert not lock.locked()
        async with lock:
            assert lock.locked()
        assert not lock.locked()

    run(main)


def test_lock_uncontended_acquire_does_not_suspend():
    async def main():
        lock = Lock()
        await assert_no_suspension(lock.acquire)
        assert lock.locked()
        lock.release()

    run(main)


def test_lock_acquire_release_loop_honours_budget():
    async def main():
        lock = Lock()

        async def cycle():
            async with lock:
                pass

        await assert_budget_yields(cycle)

    run(main)


def test_lock_waiters_acquire_in_fifo_order():
    log = Log()

    async def worker(lock, i):
        async with lock:
            log("in", i)
            await sleep(0)
            log("out", i)

    async def main():
        lock = Lock()
        async with open_nursery() as n:
            await lock.acquire()
            for i in range(5):
                n.start_soon(worker, lock, i)
                await settle()  # arrival order = i
            lock.release()
        assert log == [x for i in range(5) for x in (("in", i), ("out", i))]

    run(main)


def test_lock_release_hands_off_so_releaser_cannot_barge():
    async def main():
        lock = Lock()
        got = []

        async def waiter():
            await lock.acquire()
            got.append("waiter")
            lock.release()

        async with open_nursery() as n:
            await lock.acquire()
            n.start_soon(waiter)
            await settle()
            lock.release()
            # The waiter owns the lock already, although it has not run yet.
            assert lock.locked()
            with pytest.raises(WouldBlock):
                lock.acquire_nowait()
            await lock.acquire()  # queues behind the waiter
            got.append("main")
            lock.release()
        assert got == ["waiter", "main"]

    run(main)


def test_lock_release_unheld_is_runtime_error():
    async def main():
        lock = Lock()
        with pytest.raises(RuntimeError, match="not held"):
            lock.release()

    run(main)


def test_lock_release_by_another_task_is_runtime_error_and_keeps_owner():
    async def main():
        lock = Lock()
        errors = []

        async def intruder():
            try:
                lock.release()
            except RuntimeError as exc:
                errors.append(str(exc))

        await lock.acquire()
        async with open_nursery() as n:
            n.start_soon(intruder)
        assert len(errors) == 1 and "another task" in errors[0]
        assert lock.locked()
        lock.release()  # still ours

    run(main)


def test_lock_release_outside_a_task_is_runtime_error():
    lock = Lock()
    with pytest.raises(RuntimeError):
        lock.release()


def test_lock_reacquire_by_owner_is_runtime_error():
    async def main():
        lock = Lock()
        async with lock:
            with pytest.raises(RuntimeError, match="re-acquire"):
                await lock.acquire()
            with pytest.raises(RuntimeError, match="re-acquire"):
                lock.acquire_nowait()
            assert lock.locked()

    run(main)


def test_lock_acquire_nowait():
    async def main():
        lock = Lock()
        lock.acquire_nowait()
        assert lock.locked()

        async def other():
            with pytest.raises(WouldBlock):
                lock.acquire_nowait()

        async with open_nursery() as n:
            n.start_soon(other)
        lock.release()

    run(main)
    with pytest.raises(RuntimeError, match="task"):
        Lock().acquire_nowait()


def test_lock_acquire_in_cancelled_scope_raises_and_does_not_take_the_lock():
    async def main():
        lock = Lock()
        with CancelScope() as scope:
            scope.cancel()
            await lock.acquire()
        assert scope.cancelled_caught
        assert not lock.locked()

    run(main)


def test_lock_cancelled_waiter_is_skipped():
    log = Log()

    async def worker(lock, i, scope):
        with scope:
            async with lock:
                log(i)

    async def main():
        lock = Lock()
        scopes = [CancelScope() for _ in range(3)]
        async with open_nursery() as n:
            await lock.acquire()
            for i in range(3):
                n.start_soon(worker, lock, i, scopes[i])
                await settle()
            scopes[1].cancel()
            await settle()
            assert "waiters=2" in repr(lock)
            lock.release()
        assert log == [0, 2]
        assert not lock.locked()

    run(main)


def test_lock_handed_to_a_waiter_that_is_then_cancelled_is_not_lost():
    log = Log()

    async def worker(lock, name, scope):
        with scope:
            async with lock:
                log("got", name)
                await checkpoint()  # a's cancellation lands here
                log("after checkpoint", name)
        log("left", name)

    async def main():
        lock = Lock()
        a, b = CancelScope(), CancelScope()
        async with open_nursery() as n:
            await lock.acquire()
            n.start_soon(worker, lock, "a", a)
            await settle()
            n.start_soon(worker, lock, "b", b)
            await settle()
            lock.release()  # hands the lock to a (ready, not yet running)
            a.cancel()  # too late to abort the wait: a owns the lock
        assert log == [
            ("got", "a"),
            ("left", "a"),
            ("got", "b"),
            ("after checkpoint", "b"),
            ("left", "b"),
        ]
        assert not lock.locked()

    run(main)


def test_lock_can_be_used_by_one_loop_after_another():
    lock = Lock()

    async def use():
        async with lock:
            await sleep(0)
        return lock.locked()

    assert run(use) is False
    assert run(use) is False


def test_lock_takes_no_arguments():
    with pytest.raises(TypeError):
        Lock(1)


def test_lock_held_by_finished_task_stays_held():
    async def main():
        lock = Lock()

        async def grab():
            await lock.acquire()

        async with open_nursery() as n:
            n.start_soon(grab)
        assert lock.locked()
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()
        with pytest.raises(RuntimeError):
            lock.release()

    run(main)


def test_lock_owned_by_finished_task_is_collected_with_its_cycle():
    class Marker:
        collected = False

        def __del__(self):
            Marker.collected = True

    async def main():
        lock = Lock()

        async def grab():
            await lock.acquire()
            return lock, Marker()  # lock -> owner task -> its result -> lock

        async with open_nursery() as n:
            n.start_soon(grab)

    run(main)
    gc.collect()
    assert Marker.collected


# ---------------------------------------------------------------------------
# Semaphore


def test_semaphore_constructor_validation():
    with pytest.raises(TypeError):
        Semaphore()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Semaphore(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Semaphore(True)
    with pytest.raises(ValueError):
        Semaphore(-1)
    with pytest.raises(ValueError, match="max_value"):
        Semaphore(3, max_value=2)
    with pytest.raises(TypeError):
        Semaphore(1, 2)  # type: ignore[misc]  (max_value is keyword-only)
    s = Semaphore(2, max_value=5)
    assert (s.value, s.max_value) == (2, 5)
    assert Semaphore(0).max_value is None


def test_semaphore_counts_permits():
    async def main():
        s = Semaphore(2)
        await s.acquire()
        assert s.value == 1 and not s.locked()
        await s.acquire()
        assert s.value == 0 and s.locked()
        with pytest.raises(WouldBlock):
            s.acquire_nowait()
        s.release()
        s.release()
        s.release()  # no max_value: may go above the initial value
        assert s.value == 3
        s.acquire_nowait()
        assert s.value == 2
        async with s:
            assert s.value == 1
        assert s.value == 2

    run(main)


def test_semaphore_release_above_max_value_is_value_error():
    async def main():
        s = Semaphore(1, max_value=1)
        with pytest.raises(ValueError, match="too many"):
            s.release()
        assert s.value == 1
        await s.acquire()
        s.release()
        with pytest.raises(ValueError):
            s.release()
        assert s.value == 1

    run(main)


def test_semaphore_uncontended_acquire_does_not_suspend_and_honours_budget():
    async def main():
        s = Semaphore(1)
        await assert_no_suspension(s.acquire)
        s.release()

        async def cycle():
            async with s:
                pass

        await assert_budget_yields(cycle)

    run(main)


def test_semaphore_acquire_alone_honours_budget():
    async def main():
        s = Semaphore(10_000)
        await assert_budget_yields(s.acquire, count=10_000)
        assert s.value == 0

    run(main)


def test_semaphore_fifo_and_hand_off():
    log = Log()

    async def worker(s, i):
        async with s:
            log(i)
            await sleep(0)

    async def main():
        s = Semaphore(0)
        async with open_nursery() as n:
            for i in range(4):
                n.start_soon(worker, s, i)
                await settle()
            s.release()  # handed to waiter 0: the value stays 0
            assert s.value == 0
            with pytest.raises(WouldBlock):
                s.acquire_nowait()
        assert log == [0, 1, 2, 3]
        assert s.value == 1

    run(main)


def test_semaphore_cancelled_waiter_loses_no_permit():
    async def main():
        s = Semaphore(0)
        scopes = [CancelScope() for _ in range(3)]
        got = []

        async def worker(i):
            with scopes[i]:
                await s.acquire()
                got.append(i)

        async with open_nursery() as n:
            for i in range(3):
                n.start_soon(worker, i)
                await settle()
            scopes[0].cancel()
            await settle()
            s.release()
            s.release()
        assert got == [1, 2]
        assert s.value == 0
        s.release()
        assert s.value == 1

    run(main)


# ---------------------------------------------------------------------------
# Condition


def test_condition_requires_the_lock():
    async def main():
        c = Condition()
        with pytest.raises(RuntimeError, match="hold the lock"):
            await c.wait()
        with pytest.raises(RuntimeError, match="hold the lock"):
            c.notify()
        with pytest.raises(RuntimeError, match="hold the lock"):
            c.notify_all()
        async with c:
            with pytest.raises(TypeError):
                c.notify("1")  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                c.notify(-1)
        with pytest.raises(TypeError):
            Condition(object())  # type: ignore[arg-type]

    run(main)


def test_condition_uses_the_given_lock():
    async def main():
        lock = Lock()
        c = Condition(lock)
        assert c.lock is lock
        async with c:
            assert lock.locked() and c.locked()
        assert not lock.locked()
        await c.acquire()
        assert lock.locked()
        c.release()
        c.acquire_nowait()
        assert lock.locked()
        c.release()

    run(main)


def test_condition_notify_wakes_in_fifo_order_holding_the_lock():
    log = Log()

    async def waiter(c, i):
        async with c:
            await c.wait()
            assert c.locked()
            log(i)

    async def main():
        c = Condition()
        async with open_nursery() as n:
            for i in range(4):
                n.start_soon(waiter, c, i)
                await settle()
            async with c:
                c.notify()
            await settle()
            assert log == [0]
            async with c:
                c.notify(2)
            await settle()
            assert log == [0, 1, 2]
            async with c:
                c.notify_all()
        assert log == [0, 1, 2, 3]
        assert not c.locked()

    run(main)


def test_condition_notified_waiters_go_before_later_acquirers():
    log = Log()

    async def waiter(c):
        async with c:
            await c.wait()
            log("waiter")

    async def latecomer(c):
        async with c:
            log("latecomer")

    async def main():
        c = Condition()
        async with open_nursery() as n:
            n.start_soon(waiter, c)
            await settle()
            async with c:
                c.notify()
                n.start_soon(latecomer, c)
                await settle()  # the latecomer queues on the lock after the notified waiter
        assert log == ["waiter", "latecomer"]

    run(main)


def test_condition_cancelled_wait_reacquires_the_lock_before_raising():
    log = Log()

    async def waiter(c, scope):
        async with c:
            with scope:
                await c.wait()
            log("after", scope.cancelled_caught, c.locked())
            c.release()  # would raise RuntimeError if we did not hold it
            await c.acquire()

    async def holder(c, started):
        async with c:
            started.set()
            await sleep(0)
            await sleep(0)
            log("holder done")

    async def main():
        c = Condition()
        scope = CancelScope()
        started = Event()
        async with open_nursery() as n:
            n.start_soon(waiter, c, scope)
            await settle()
            n.start_soon(holder, c, started)
            await started.wait()
            scope.cancel()  # the waiter must wait for the lock before it can leave
        assert log == ["holder done", ("after", True, True)]

    run(main)


def test_condition_wait_for():
    async def main():
        c = Condition()
        state = {"n": 0}

        async def bump():
            for _ in range(3):
                async with c:
                    state["n"] += 1
                    c.notify_all()
                await sleep(0)

        async with open_nursery() as n:
            n.start_soon(bump)
            async with c:
                result = await c.wait_for(lambda: state["n"] >= 3 and "ok")
                assert c.locked()
        assert result == "ok"

    run(main)


# ---------------------------------------------------------------------------
# CapacityLimiter


def test_capacity_limiter_constructor_and_properties():
    with pytest.raises(ValueError):
        CapacityLimiter(0)
    with pytest.raises(TypeError):
        CapacityLimiter(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CapacityLimiter("2")  # type: ignore[arg-type]
    lim = CapacityLimiter(2)
    assert (lim.total_tokens, lim.borrowed_tokens, lim.available_tokens) == (2, 0, 2)
    inf = CapacityLimiter(math.inf)
    assert inf.total_tokens == math.inf and inf.available_tokens == math.inf
    with pytest.raises(ValueError):
        lim.total_tokens = 0
    with pytest.raises(TypeError):
        lim.total_tokens = "3"  # type: ignore[assignment]
    assert lim.total_tokens == 2


def test_capacity_limiter_borrowing_rules():
    async def main():
        lim = CapacityLimiter(2)
        await lim.acquire()
        assert lim.borrowed_tokens == 1
        with pytest.raises(RuntimeError, match="already holding"):
            await lim.acquire()
        with pytest.raises(RuntimeError, match="already holding"):
            lim.acquire_nowait()
        lim.release()
        with pytest.raises(RuntimeError, match="not holding"):
            lim.release()
        a, b, c = object(), object(), object()
        await lim.acquire_on_behalf_of(a)
        lim.acquire_on_behalf_of_nowait(b)
        assert lim.available_tokens == 0
        with pytest.raises(WouldBlock):
            lim.acquire_on_behalf_of_nowait(c)
        with pytest.raises(TypeError):
            await lim.acquire_on_behalf_of([])  # unhashable
        lim.release_on_behalf_of(a)
        lim.release_on_behalf_of(b)
        with pytest.raises(RuntimeError, match="not holding"):
            lim.release_on_behalf_of(a)
        async with lim:
            assert lim.borrowed_tokens == 1
        assert lim.borrowed_tokens == 0

    run(main)


def test_capacity_limiter_uncontended_acquire_does_not_suspend_and_honours_budget():
    async def main():
        lim = CapacityLimiter(10_000)
        await assert_no_suspension(lim.acquire)
        lim.release()
        borrowers = iter(range(10_000))
        await assert_budget_yields(lambda: lim.acquire_on_behalf_of(next(borrowers)), 10_000)
        assert lim.borrowed_tokens == 10_000

    run(main)


def test_capacity_limiter_fifo_and_total_tokens_changes():
    log = Log()

    async def worker(lim, i, release):
        async with lim:
            log(i)
            await release.wait()

    async def main():
        lim = CapacityLimiter(1)
        release = Event()
        async with open_nursery() as n:
            for i in range(5):
                n.start_soon(worker, lim, i, release)
                await settle()
            assert log == [0]
            lim.total_tokens = 3  # wakes the next two, oldest first
            await settle()
            assert log == [0, 1, 2]
            assert lim.borrowed_tokens == 3
            lim.total_tokens = 1  # never takes tokens back
            assert lim.borrowed_tokens == 3 and lim.available_tokens == 0
            release.set()
        assert log == [0, 1, 2, 3, 4]
        assert lim.borrowed_tokens == 0

    run(main)


def test_capacity_limiter_cancelled_waiter_loses_no_token():
    async def main():
        lim = CapacityLimiter(1)
        scope = CancelScope()
        got = []

        async def worker(name, sc):
            with sc:
                async with lim:
                    got.append(name)

        await lim.acquire()
        async with open_nursery() as n:
            n.start_soon(worker, "cancelled", scope)
            await settle()
            n.start_soon(worker, "served", CancelScope())
            await settle()
            scope.cancel()
            await settle()
            lim.release()
        assert got == ["served"]
        assert lim.borrowed_tokens == 0

    run(main)


def test_capacity_limiter_two_waiters_for_one_borrower():
    async def main():
        lim = CapacityLimiter(1)
        borrower = object()
        results = []

        async def worker():
            try:
                await lim.acquire_on_behalf_of(borrower)
                results.append("ok")
            except RuntimeError:
                results.append("refused")

        await lim.acquire()
        async with open_nursery() as n:
            n.start_soon(worker)
            n.start_soon(worker)
            await settle()
            lim.total_tokens = 3
        assert results == ["ok", "refused"]
        assert lim.borrowed_tokens == 2  # main and borrower
        lim.release_on_behalf_of(borrower)
        lim.release()

    run(main)


def test_capacity_limiter_outside_a_task():
    lim = CapacityLimiter(1)
    with pytest.raises(RuntimeError):
        lim.acquire_nowait()
    with pytest.raises(RuntimeError):
        lim.release()
    lim.acquire_on_behalf_of_nowait("x")  # on behalf of something: no task needed
    lim.release_on_behalf_of("x")


def test_reprs():
    async def main():
        lock = Lock()
        async with lock:
            assert "locked" in repr(lock)
        assert "unlocked" in repr(lock)
        assert "value=2" in repr(Semaphore(2))
        assert "max_value=3" in repr(Semaphore(2, max_value=3))
        assert "unset" in repr(Event())
        assert "0/4" in repr(CapacityLimiter(4))
        assert "waiters=0" in repr(Condition())

    run(main)


def test_lock_and_semaphore_are_not_subclassable():
    with pytest.raises(TypeError):

        class MyLock(Lock):  # type: ignore[misc]
            pass


def test_capacity_limiter_survives_borrower_eq_that_cancels_the_waiter():
    """The borrowers' __eq__ runs while the limiter serves its waiters; if it cancels the
    very waiter being served, that waiter gets nothing and no token is lost."""
    scope = CancelScope()
    armed = []

    class Borrower:
        def __hash__(self):
            return 42

        def __eq__(self, other):
            if armed:
                scope.cancel()
            return self is other

    async def main():
        lim = CapacityLimiter(2)
        holder, waiting_for = Borrower(), Borrower()
        lim.acquire_on_behalf_of_nowait(holder)  # same hash: later lookups call __eq__
        await lim.acquire()
        outcome = []

        async def waiter():
            with scope:
                await lim.acquire_on_behalf_of(waiting_for)
                outcome.append("served")
            outcome.append(scope.cancelled_caught)

        async with open_nursery() as n:
            n.start_soon(waiter)
            await settle()
            armed.append(True)
            lim.release()  # serving the waiter runs Borrower.__eq__, which cancels it
        assert outcome == [True]
        assert lim.borrowed_tokens == 1  # only `holder`
        lim.release_on_behalf_of(holder)
        assert lim.borrowed_tokens == 0

    run(main)


def test_capacity_limiter_borrower_eq_cancelling_its_own_acquire():
    """If the borrower's __eq__ cancels the acquiring task during acquire itself, the
    acquire raises Cancelled instead of parking a cancelled task."""
    scope = CancelScope()

    class Borrower:
        def __hash__(self):
            return 7

        def __eq__(self, other):
            scope.cancel()
            return self is other

    async def main():
        lim = CapacityLimiter(1)
        lim.acquire_on_behalf_of_nowait(Borrower())  # same hash: the next lookup calls __eq__
        with scope:
            await lim.acquire_on_behalf_of(Borrower())
        assert scope.cancelled_caught
        assert lim.borrowed_tokens == 1

    run(main)
