"""broomio.Queue: FIFO, hand-off, bounded/unbounded, close, async for, errors."""

from __future__ import annotations

import gc

import pytest

from broomio import (
    CancelScope,
    ClosedResourceError,
    Queue,
    WouldBlock,
    open_nursery,
    sleep,
)
from broomio.lowlevel import checkpoint

from _sync_support import Log, assert_budget_yields, assert_no_suspension, run, settle


def test_queue_constructor_validation():
    assert Queue().maxsize == 0
    assert Queue(3).maxsize == 3
    assert Queue(maxsize=2).maxsize == 2
    with pytest.raises(ValueError):
        Queue(-1)
    with pytest.raises(TypeError):
        Queue(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Queue("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Queue(1, 2)  # type: ignore[call-arg]


def test_queue_generic_alias():
    alias = Queue[int]
    q = alias(2)
    assert isinstance(q, Queue) and q.maxsize == 2


def test_queue_fifo_sizes_and_nowait():
    async def main():
        q = Queue(3)
        assert q.empty() and not q.full() and q.qsize() == 0
        await q.put(1)
        q.put_nowait(2)
        await q.put(3)
        assert q.full() and q.qsize() == 3 and not q.empty()
        with pytest.raises(WouldBlock):
            q.put_nowait(4)
        assert [await q.get(), q.get_nowait(), await q.get()] == [1, 2, 3]
        with pytest.raises(WouldBlock):
            q.get_nowait()
        assert q.empty()

    run(main)


def test_unbounded_queue_is_never_full_and_keeps_order_through_growth():
    async def main():
        q = Queue()
        n = 100_000
        for i in range(n):
            q.put_nowait(i)
        assert not q.full() and q.qsize() == n
        out = [q.get_nowait() for _ in range(n // 2)]
        for i in range(n, n + 1000):  # wraps around the ring
            await q.put(i)
        while not q.empty():
            out.append(await q.get())
        assert out == list(range(n + 1000))

    run(main)


def test_uncontended_put_and_get_do_not_suspend():
    async def main():
        q = Queue(1)
        assert await assert_no_suspension(lambda: q.put("x")) is None
        assert await assert_no_suspension(q.get) == "x"

    run(main)


def test_put_get_loop_honours_budget():
    async def main():
        q = Queue()

        async def cycle():
            await q.put(1)
            await q.get()

        await assert_budget_yields(cycle)

    run(main)


def test_get_alone_and_put_alone_honour_budget():
    async def main():
        q = Queue()
        for i in range(10_000):
            q.put_nowait(i)
        await assert_budget_yields(q.get, count=10_000)
        await assert_budget_yields(lambda: q.put(None), count=10_000)
        assert q.qsize() == 10_000

    run(main)


def test_put_and_get_in_cancelled_scope_raise_without_effect():
    async def main():
        q = Queue()
        with CancelScope() as scope:
            scope.cancel()
            await q.put(1)
        assert scope.cancelled_caught and q.qsize() == 0
        q.put_nowait(2)
        with CancelScope() as scope:
            scope.cancel()
            await q.get()
        assert scope.cancelled_caught and q.qsize() == 1

    run(main)


def test_getters_are_served_in_fifo_order_by_hand_off():
    log = Log()

    async def getter(q, i):
        log(i, await q.get())

    async def main():
        q = Queue()
        async with open_nursery() as n:
            for i in range(3):
                n.start_soon(getter, q, i)
                await settle()
            q.put_nowait("a")
            # Handed to getter 0 directly: not in the buffer, a newcomer cannot take it.
            assert q.qsize() == 0
            with pytest.raises(WouldBlock):
                q.get_nowait()
            await q.put("b")
            q.put_nowait("c")
        assert log == [(0, "a"), (1, "b"), (2, "c")]

    run(main)


def test_putters_are_served_in_fifo_order_and_refill_the_buffer():
    log = Log()

    async def putter(q, item):
        await q.put(item)
        log("put", item)

    async def main():
        q = Queue(2)
        q.put_nowait(0)
        q.put_nowait(1)
        async with open_nursery() as n:
            for i in range(2, 5):
                n.start_soon(putter, q, i)
                await settle()
            assert q.qsize() == 2 and log == []
            assert q.get_nowait() == 0
            # Putter 2's item moved into the freed slot at once: the buffer is full again.
            assert q.full()
            with pytest.raises(WouldBlock):
                q.put_nowait("newcomer")
            got = [await q.get() for _ in range(4)]
        assert got == [1, 2, 3, 4]
        assert log == [("put", 2), ("put", 3), ("put", 4)]

    run(main)


def test_cancelled_getter_loses_no_item():
    log = Log()

    async def getter(q, name, scope):
        with scope:
            log(name, await q.get())

    async def main():
        q = Queue()
        scopes = {name: CancelScope() for name in "abc"}
        async with open_nursery() as n:
            for name in "abc":
                n.start_soon(getter, q, name, scopes[name])
                await settle()
            scopes["a"].cancel()
            await settle()
            q.put_nowait(1)
            q.put_nowait(2)
        assert log == [("b", 1), ("c", 2)]
        assert q.qsize() == 0

    run(main)


def test_cancelled_putter_puts_nothing():
    async def main():
        q = Queue(1)
        q.put_nowait("first")
        scope = CancelScope()
        outcome = []

        async def putter():
            with scope:
                await q.put("cancelled item")
                outcome.append("put")
            outcome.append(scope.cancelled_caught)

        async with open_nursery() as n:
            n.start_soon(putter)
            await settle()
            scope.cancel()
        assert outcome == [True]
        assert q.get_nowait() == "first"
        with pytest.raises(WouldBlock):
            q.get_nowait()

    run(main)


def test_getter_handed_an_item_then_cancelled_keeps_it():
    log = Log()

    async def getter(q, scope):
        with scope:
            item = await q.get()
            log("got", item)
            await checkpoint()  # the cancellation lands here
            log("after checkpoint")
        log("cancelled_caught", scope.cancelled_caught)

    async def main():
        q = Queue()
        scope = CancelScope()
        async with open_nursery() as n:
            n.start_soon(getter, q, scope)
            await settle()
            q.put_nowait("precious")  # handed over: the getter is ready, no longer waiting
            scope.cancel()
        assert log == [("got", "precious"), ("cancelled_caught", True)]

    run(main)


def test_putter_served_then_cancelled_has_put_its_item():
    log = Log()

    async def putter(q, scope):
        with scope:
            await q.put("second")
            log("put returned")
            await checkpoint()
        log("cancelled_caught", scope.cancelled_caught)

    async def main():
        q = Queue(1)
        q.put_nowait("first")
        scope = CancelScope()
        async with open_nursery() as n:
            n.start_soon(putter, q, scope)
            await settle()
            assert q.get_nowait() == "first"  # moves "second" in, wakes the putter
            scope.cancel()
        assert log == ["put returned", ("cancelled_caught", True)]
        assert q.get_nowait() == "second"

    run(main)


def test_close_semantics():
    async def main():
        q = Queue()
        q.put_nowait(1)
        q.put_nowait(2)
        assert not q.closed
        q.close()
        q.close()  # idempotent
        assert q.closed
        with pytest.raises(ClosedResourceError):
            await q.put(3)
        with pytest.raises(ClosedResourceError):
            q.put_nowait(3)
        assert await q.get() == 1  # drains what was put before close
        assert q.get_nowait() == 2
        with pytest.raises(ClosedResourceError):
            await q.get()
        with pytest.raises(ClosedResourceError):
            q.get_nowait()

    run(main)


def test_close_wakes_waiting_getters_and_putters():
    log = Log()

    async def getter(q, i):
        try:
            log("got", i, await q.get())
        except ClosedResourceError:
            log("closed", i)

    async def putter(q, item):
        try:
            await q.put(item)
            log("put", item)
        except ClosedResourceError:
            log("put refused", item)

    async def main():
        empty = Queue(1)
        async with open_nursery() as n:
            n.start_soon(getter, empty, 0)
            n.start_soon(getter, empty, 1)
            await settle()
            empty.close()
        assert log == [("closed", 0), ("closed", 1)]
        log.clear()

        full = Queue(1)
        full.put_nowait("kept")
        async with open_nursery() as n:
            n.start_soon(putter, full, "x")
            n.start_soon(putter, full, "y")
            await settle()
            full.close()
        assert log == [("put refused", "x"), ("put refused", "y")]
        assert full.get_nowait() == "kept"
        with pytest.raises(ClosedResourceError):
            full.get_nowait()

    run(main)


def test_async_for_drains_then_stops_when_closed():
    async def main():
        q = Queue(2)
        got = []

        async def producer():
            for i in range(10):
                await q.put(i)
            q.close()

        async with open_nursery() as n:
            n.start_soon(producer)
            async for item in q:
                got.append(item)
        assert got == list(range(10))

        # A consumer already waiting on an empty queue stops when it is closed.
        q2 = Queue()
        done = []

        async def consumer():
            async for item in q2:
                done.append(item)
            done.append("end")

        async with open_nursery() as n:
            n.start_soon(consumer)
            await settle()
            q2.put_nowait("a")
            await settle()
            q2.close()
        assert done == ["a", "end"]

    run(main)


def test_async_for_can_break_and_resume():
    async def main():
        q = Queue()
        for i in range(5):
            q.put_nowait(i)
        first = []
        async for item in q:
            first.append(item)
            if item == 2:
                break
        q.close()
        rest = [item async for item in q]
        assert (first, rest) == ([0, 1, 2], [3, 4])

    run(main)


def test_async_for_is_cancellable():
    async def main():
        q = Queue()
        with CancelScope() as scope:
            async with open_nursery() as n:

                async def cancel_soon():
                    await sleep(0)
                    scope.cancel()

                n.start_soon(cancel_soon)
                async for _ in q:
                    pass
        assert scope.cancelled_caught

    run(main)


def test_ping_pong_between_two_tasks():
    async def main():
        a, b = Queue(1), Queue(1)
        rounds = 1000

        async def pong():
            for _ in range(rounds):
                await b.put(await a.get() + 1)

        async with open_nursery() as n:
            n.start_soon(pong)
            value = 0
            for _ in range(rounds):
                await a.put(value)
                value = await b.get()
        assert value == rounds

    run(main)


def test_queue_items_in_a_cycle_are_collected():
    class Item:
        collected = False

        def __init__(self, q):
            self.q = q

        def __del__(self):
            Item.collected = True

    def build():
        q = Queue()
        q.put_nowait(Item(q))  # q -> item -> q

    build()
    gc.collect()
    assert Item.collected


def test_parked_putter_item_is_released_when_the_loop_is_torn_down():
    class Item:
        collected = False

        def __del__(self):
            Item.collected = True

    async def main():
        q = Queue(1)
        q.put_nowait(None)
        async with open_nursery() as n:

            async def putter():
                await q.put(Item())

            n.start_soon(putter)
            await settle()
            assert not Item.collected  # held by the parked putter
            n.cancel_scope.cancel()
        gc.collect()
        assert Item.collected  # the cancelled put dropped it

    run(main)
