"""asyncio compatibility, core loop API: callbacks, time, futures/tasks, lifecycle, executors,
exception handler, debug mode.  Each test runs on stock asyncio (the oracle) and on
broomio.asyncio (see tests/_aio_support.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
import time

import pytest

from _aio_support import aio_loop, broomio_xfail, loop_factory, loop_name, run  # noqa: F401

# ---------------------------------------------------------------------------
# call_soon / call_later / call_at


def test_call_soon_fifo_and_args(aio_loop):
    log = []
    for i in range(5):
        aio_loop.call_soon(log.append, i)
    aio_loop.call_soon(lambda *a: log.append(a), "x", "y")
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == [0, 1, 2, 3, 4, ("x", "y")]


def test_call_soon_returns_cancellable_handle(aio_loop):
    log = []
    h = aio_loop.call_soon(log.append, "no")
    assert isinstance(h, asyncio.Handle)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    aio_loop.call_soon(log.append, "yes")
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["yes"]


def test_call_soon_scheduled_from_callback_runs_next_iteration(aio_loop):
    log = []

    def first():
        log.append("first")
        aio_loop.call_soon(log.append, "nested")

    aio_loop.call_soon(first)
    aio_loop.call_soon(log.append, "second")
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    # stop() lets the current iteration finish; "nested" was scheduled after stop's handle.
    assert log == ["first", "second"]
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["first", "second", "nested"]


def test_debug_call_soon_rejects_non_callable_and_coroutine_function(aio_loop):
    async def coro():
        pass

    aio_loop.set_debug(True)
    with pytest.raises(TypeError):
        aio_loop.call_soon(coro)
    with pytest.raises(TypeError):
        aio_loop.call_soon(42)
    with pytest.raises(TypeError):
        aio_loop.call_later(0.1, "nope")


def test_call_soon_context(aio_loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    aio_loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    aio_loop.call_soon(lambda: seen.append(var.get()))
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert seen == ["in-ctx", "default"]


def test_call_later_ordering_by_delay_then_fifo(aio_loop):
    log = []
    aio_loop.call_later(0.03, log.append, "c")
    aio_loop.call_later(0.01, log.append, "a")
    aio_loop.call_later(0.02, log.append, "b1")
    aio_loop.call_later(0.02, log.append, "b2")  # same deadline: FIFO
    aio_loop.call_later(0.05, aio_loop.stop)
    aio_loop.call_soon(log.append, "soon")
    aio_loop.run_forever()
    assert log == ["soon", "a", "b1", "b2", "c"]


def test_call_later_waits_at_least_delay(aio_loop):
    t = {}
    start = aio_loop.time()
    aio_loop.call_later(0.05, lambda: (t.setdefault("at", aio_loop.time()), aio_loop.stop()))
    aio_loop.run_forever()
    # asyncio may fire up to clock_resolution early.
    assert t["at"] - start >= 0.05 - 0.01


def test_call_later_negative_and_zero_delay_run(aio_loop):
    log = []
    aio_loop.call_later(-1, log.append, "neg")
    aio_loop.call_later(0, log.append, "zero")
    aio_loop.call_later(0.01, aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["neg", "zero"]


def test_call_later_timer_handle_and_cancel(aio_loop):
    log = []
    h = aio_loop.call_later(0.01, log.append, "cancelled")
    assert isinstance(h, asyncio.TimerHandle)
    assert abs(h.when() - (aio_loop.time() + 0.01)) < 0.01
    h.cancel()
    assert h.cancelled()
    aio_loop.call_later(0.03, aio_loop.stop)
    aio_loop.run_forever()
    assert log == []


def test_call_at_uses_loop_time(aio_loop):
    log = []
    now = aio_loop.time()
    h = aio_loop.call_at(now + 0.02, log.append, 2)
    aio_loop.call_at(now + 0.01, log.append, 1)
    assert h.when() == now + 0.02
    aio_loop.call_at(now + 0.04, aio_loop.stop)
    aio_loop.run_forever()
    assert log == [1, 2]


def test_call_later_rejects_bad_delay(aio_loop):
    with pytest.raises(TypeError):
        aio_loop.call_later(None, print)


def test_cancel_timer_from_other_callback(aio_loop):
    log = []
    h = aio_loop.call_later(0.02, log.append, "late")
    aio_loop.call_later(0.01, h.cancel)
    aio_loop.call_later(0.04, aio_loop.stop)
    aio_loop.run_forever()
    assert log == []


def test_many_timers_sorted(aio_loop):
    log = []
    now = aio_loop.time()
    order = [7, 3, 9, 1, 5, 8, 2, 6, 4, 0]
    for i in order:
        aio_loop.call_at(now + 0.001 * i, log.append, i)
    aio_loop.call_at(now + 0.05, aio_loop.stop)
    aio_loop.run_forever()
    assert log == sorted(order)


def test_time_is_monotonic_clock(aio_loop):
    a = aio_loop.time()
    b = time.monotonic()
    c = aio_loop.time()
    assert isinstance(a, float)
    assert a <= c
    assert abs(b - a) < 1.0


# ---------------------------------------------------------------------------
# call_soon_threadsafe


def test_call_soon_threadsafe_from_threads(aio_loop):
    n_threads, per_thread = 4, 200
    got = []
    done = aio_loop.create_future()

    def on_item(item):
        got.append(item)
        if len(got) == n_threads * per_thread and not done.done():
            done.set_result(None)

    def worker(k):
        for i in range(per_thread):
            aio_loop.call_soon_threadsafe(on_item, (k, i))

    async def main():
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        await done
        for t in threads:
            t.join()

    run(aio_loop, main())
    assert sorted(got) == [(k, i) for k in range(n_threads) for i in range(per_thread)]
    for k in range(n_threads):  # per-thread order is kept
        assert [i for kk, i in got if kk == k] == list(range(per_thread))


def test_call_soon_threadsafe_wakes_idle_loop(aio_loop):
    async def main():
        fut = aio_loop.create_future()

        def later():
            time.sleep(0.05)
            aio_loop.call_soon_threadsafe(fut.set_result, "woken")

        t = threading.Thread(target=later)
        t.start()
        try:
            return await fut
        finally:
            t.join()

    assert run(aio_loop, main()) == "woken"


def test_call_soon_threadsafe_handle_cancel_and_context(aio_loop):
    var = contextvars.ContextVar("v", default=0)
    ctx = contextvars.copy_context()
    ctx.run(var.set, 7)
    log = []
    h = aio_loop.call_soon_threadsafe(log.append, "no")
    h.cancel()
    aio_loop.call_soon_threadsafe(lambda: log.append(var.get()), context=ctx)
    aio_loop.call_soon_threadsafe(aio_loop.stop)
    aio_loop.run_forever()
    assert log == [7]


def test_run_forever_stopped_from_thread(aio_loop):
    t = threading.Timer(0.05, aio_loop.call_soon_threadsafe, args=(aio_loop.stop,))
    t.start()
    aio_loop.run_forever()
    t.join()
    assert not aio_loop.is_running()


# ---------------------------------------------------------------------------
# futures and tasks


def test_create_future_is_bound_to_loop(aio_loop):
    fut = aio_loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is aio_loop
    assert not fut.done()
    aio_loop.call_soon(fut.set_result, 5)
    assert aio_loop.run_until_complete(fut) == 5


def test_future_callbacks_run_via_loop(aio_loop):
    fut = aio_loop.create_future()
    log = []
    fut.add_done_callback(lambda f: log.append(("cb", f.result())))
    fut.set_result(1)
    assert log == []  # callbacks are scheduled with call_soon, not run inline
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == [("cb", 1)]


def test_create_task_name_and_result(aio_loop):
    async def work(x):
        await asyncio.sleep(0)
        return x * 2

    async def main():
        t = aio_loop.create_task(work(21), name="worker")
        assert isinstance(t, asyncio.Task)
        assert t.get_name() == "worker"
        t.set_name("renamed")
        assert t.get_name() == "renamed"
        unnamed = aio_loop.create_task(work(1))
        assert unnamed.get_name().startswith("Task-")
        assert asyncio.current_task() is not t
        return await t, await unnamed

    assert run(aio_loop, main()) == (42, 2)


def test_create_task_context(aio_loop):
    var = contextvars.ContextVar("var", default="default")

    async def read():
        return var.get()

    async def main():
        ctx = contextvars.copy_context()
        ctx.run(var.set, "custom")
        var.set("main")
        copied = await aio_loop.create_task(read())
        explicit = await aio_loop.create_task(read(), context=ctx)
        return copied, explicit

    assert run(aio_loop, main()) == ("main", "custom")


def test_create_task_rejects_non_coroutine(aio_loop):
    with pytest.raises(TypeError):
        aio_loop.create_task(42)


def test_task_cancel(aio_loop):
    async def sleeper(log):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async def main():
        log = []
        t = aio_loop.create_task(sleeper(log))
        await asyncio.sleep(0)
        t.cancel("why")
        with pytest.raises(asyncio.CancelledError):
            await t
        return log, t.cancelled()

    assert run(aio_loop, main()) == (["cancelled"], True)


def test_set_task_factory(aio_loop):
    made = []

    def factory(loop, coro, **kwargs):
        t = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(t)
        return t

    assert aio_loop.get_task_factory() is None
    aio_loop.set_task_factory(factory)
    assert aio_loop.get_task_factory() is factory

    async def child():
        return 1

    async def main():
        return await aio_loop.create_task(child())

    assert run(aio_loop, main()) == 1
    assert len(made) >= 2  # run()'s wrapper task and the child
    aio_loop.set_task_factory(None)
    with pytest.raises(TypeError):
        aio_loop.set_task_factory(42)


def test_ensure_future_and_gather(aio_loop):
    async def val(x, delay):
        await asyncio.sleep(delay)
        return x

    async def main():
        f = asyncio.ensure_future(val("a", 0.02))
        assert f.get_loop() is aio_loop
        return await asyncio.gather(f, val("b", 0.01), val("c", 0))

    assert run(aio_loop, main()) == ["a", "b", "c"]


def test_current_and_all_tasks(aio_loop):
    async def main():
        me = asyncio.current_task()
        other = asyncio.create_task(asyncio.sleep(0.01))
        tasks = asyncio.all_tasks()
        await other
        return me in tasks and other in tasks, asyncio.get_running_loop() is aio_loop

    assert run(aio_loop, main()) == (True, True)


# ---------------------------------------------------------------------------
# run_forever / run_until_complete / stop / close


def test_run_until_complete_returns_and_raises(aio_loop):
    async def ok():
        return "ok"

    async def bad():
        raise ValueError("boom")

    assert aio_loop.run_until_complete(ok()) == "ok"
    with pytest.raises(ValueError, match="boom"):
        aio_loop.run_until_complete(bad())
    assert not aio_loop.is_running()


def test_run_until_complete_accepts_future(aio_loop):
    fut = aio_loop.create_future()
    aio_loop.call_later(0.01, fut.set_result, "f")
    assert aio_loop.run_until_complete(fut) == "f"


def test_run_until_complete_future_from_other_loop(aio_loop):
    other = asyncio.new_event_loop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            aio_loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_stopped_early(aio_loop):
    async def forever():
        await asyncio.sleep(10)

    aio_loop.call_later(0.01, aio_loop.stop)
    task = aio_loop.create_task(forever())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        aio_loop.run_until_complete(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        aio_loop.run_until_complete(task)


def test_is_running_and_get_running_loop(aio_loop):
    seen = []

    def probe():
        seen.append(aio_loop.is_running())
        seen.append(asyncio.get_running_loop() is aio_loop)
        seen.append(asyncio.get_event_loop() is aio_loop)
        aio_loop.stop()

    assert not aio_loop.is_running()
    aio_loop.call_soon(probe)
    aio_loop.run_forever()
    assert seen == [True, True, True]
    assert not aio_loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_nested_run_is_refused(aio_loop):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match="already running"):
                aio_loop.run_until_complete(coro)
            with pytest.raises(RuntimeError, match="already running"):
                aio_loop.run_forever()
        finally:
            coro.close()
        return "refused"

    assert run(aio_loop, main()) == "refused"


def test_second_loop_in_same_thread_is_refused(loop_factory):
    a = loop_factory()
    b = loop_factory()
    try:
        async def main():
            coro = asyncio.sleep(0)
            try:
                with pytest.raises(RuntimeError):
                    b.run_until_complete(coro)
            finally:
                coro.close()
            return True

        assert a.run_until_complete(main())
    finally:
        b.close()
        a.close()


def test_stop_before_run_forever_runs_one_iteration(aio_loop):
    log = []
    aio_loop.call_soon(log.append, 1)
    aio_loop.stop()
    aio_loop.run_forever()
    assert log == [1]


def test_close_semantics(loop_factory):
    loop = loop_factory()
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(print)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_forever()


def test_close_running_loop_refused(aio_loop):
    def try_close():
        with pytest.raises(RuntimeError, match="running"):
            aio_loop.close()
        aio_loop.stop()

    aio_loop.call_soon(try_close)
    aio_loop.run_forever()
    assert not aio_loop.is_closed()


def test_loop_reusable_after_stop(aio_loop):
    for i in range(3):
        assert aio_loop.run_until_complete(asyncio.sleep(0, i)) == i


def test_exception_in_callback_goes_to_handler_and_loop_continues(aio_loop):
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))
    log = []

    def bad():
        raise ZeroDivisionError("cb")

    aio_loop.call_soon(bad)
    aio_loop.call_soon(log.append, "after")
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["after"]
    assert len(ctxs) == 1
    assert isinstance(ctxs[0]["exception"], ZeroDivisionError)
    assert "handle" in ctxs[0]
    assert "message" in ctxs[0]


def test_keyboard_interrupt_in_callback_propagates(aio_loop):
    def interrupt():
        raise KeyboardInterrupt

    aio_loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        aio_loop.run_forever()
    assert not aio_loop.is_running()
    assert aio_loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


# ---------------------------------------------------------------------------
# exception handler API


def test_exception_handler_api(aio_loop):
    assert aio_loop.get_exception_handler() is None
    got = []

    def handler(loop, context):
        got.append((loop, context))

    aio_loop.set_exception_handler(handler)
    assert aio_loop.get_exception_handler() is handler
    aio_loop.call_exception_handler({"message": "hello", "extra": 1})
    assert got == [(aio_loop, {"message": "hello", "extra": 1})]
    with pytest.raises(TypeError):
        aio_loop.set_exception_handler(42)
    aio_loop.set_exception_handler(None)
    assert aio_loop.get_exception_handler() is None


def test_default_exception_handler_logs(aio_loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        aio_loop.default_exception_handler({"message": "custom message",
                                            "exception": ValueError("v")})
        aio_loop.call_exception_handler({"message": "via call"})
    messages = [r.getMessage() for r in caplog.records]
    assert any("custom message" in m for m in messages)
    assert any("via call" in m for m in messages)
    rec = next(r for r in caplog.records if "custom message" in r.getMessage())
    assert rec.exc_info is not None and isinstance(rec.exc_info[1], ValueError)


def test_failing_exception_handler_falls_back_to_default(aio_loop, caplog):
    def broken(loop, ctx):
        raise RuntimeError("handler broke")

    aio_loop.set_exception_handler(broken)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        aio_loop.call_exception_handler({"message": "original"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Unhandled error in exception handler" in text


def test_unretrieved_task_exception_reported(aio_loop):
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))

    async def fail():
        raise KeyError("lost")

    async def main():
        asyncio.ensure_future(fail())
        await asyncio.sleep(0.01)

    run(aio_loop, main())
    import gc

    gc.collect()
    assert any(isinstance(c.get("exception"), KeyError) for c in ctxs)


# ---------------------------------------------------------------------------
# debug mode


def test_debug_flag(aio_loop):
    aio_loop.set_debug(True)
    assert aio_loop.get_debug() is True
    aio_loop.set_debug(False)
    assert aio_loop.get_debug() is False


def test_debug_rejects_call_soon_from_other_thread(aio_loop):
    aio_loop.set_debug(True)
    errors = []

    def from_thread():
        try:
            aio_loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    async def main():
        t = threading.Thread(target=from_thread)
        t.start()
        await aio_loop.run_in_executor(None, t.join)

    run(aio_loop, main())
    assert errors and "thread" in errors[0].lower()


def test_slow_callback_logged_in_debug(aio_loop, caplog):
    aio_loop.set_debug(True)
    assert aio_loop.slow_callback_duration == 0.1
    aio_loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        aio_loop.call_soon(slow)
        aio_loop.call_soon(aio_loop.stop)
        aio_loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("took" in m and "seconds" in m for m in msgs), msgs


def test_slow_callback_not_logged_without_debug(aio_loop, caplog):
    aio_loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        aio_loop.call_soon(time.sleep, 0.03)
        aio_loop.call_soon(aio_loop.stop)
        aio_loop.run_forever()
    assert not [r for r in caplog.records if "took" in r.getMessage()]


# ---------------------------------------------------------------------------
# executors


def test_run_in_executor_default_thread_pool(aio_loop):
    main_thread = threading.get_ident()

    async def main():
        ident = await aio_loop.run_in_executor(None, threading.get_ident)
        total = await aio_loop.run_in_executor(None, sum, [1, 2, 3])
        return ident, total

    ident, total = run(aio_loop, main())
    assert ident != main_thread
    assert total == 6


def test_run_in_executor_exception(aio_loop):
    def fail():
        raise OSError("from thread")

    async def main():
        with pytest.raises(OSError, match="from thread"):
            await aio_loop.run_in_executor(None, fail)
        return True

    assert run(aio_loop, main())


def test_debug_run_in_executor_rejects_coroutine_function(aio_loop):
    async def coro():
        pass

    aio_loop.set_debug(True)
    with pytest.raises(TypeError):
        aio_loop.run_in_executor(None, coro)


def test_run_in_executor_explicit_thread_pool(aio_loop):
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="explicit") as ex:
        async def main():
            return await aio_loop.run_in_executor(ex, lambda: threading.current_thread().name)

        assert run(aio_loop, main()).startswith("explicit")


def _square(x: int) -> int:
    return x * x


def _pid() -> int:
    return os.getpid()


@pytest.mark.slow
def test_run_in_executor_process_pool(aio_loop):
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        async def main():
            squares = await asyncio.gather(*(aio_loop.run_in_executor(ex, _square, i)
                                             for i in range(6)))
            pid = await aio_loop.run_in_executor(ex, _pid)
            return squares, pid

        squares, pid = run(aio_loop, main(), timeout=60)
    assert squares == [0, 1, 4, 9, 16, 25]
    assert pid != os.getpid()


def test_set_default_executor(aio_loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mydefault") as ex:
        aio_loop.set_default_executor(ex)

        async def main():
            name = await aio_loop.run_in_executor(None, lambda: threading.current_thread().name)
            via_to_thread = await asyncio.to_thread(lambda: threading.current_thread().name)
            return name, via_to_thread

        name, via = run(aio_loop, main())
        assert name.startswith("mydefault") and via.startswith("mydefault")
        with pytest.raises(TypeError):
            aio_loop.set_default_executor(
                concurrent.futures.ProcessPoolExecutor)  # not an instance
        aio_loop.run_until_complete(aio_loop.shutdown_default_executor())


def test_shutdown_default_executor(aio_loop):
    thread_ids = []

    async def main():
        thread_ids.append(await aio_loop.run_in_executor(None, threading.get_ident))
        await aio_loop.shutdown_default_executor()

    run(aio_loop, main())
    alive = {t.ident for t in threading.enumerate()}
    assert thread_ids[0] not in alive
    # After shutdown, the default executor refuses new work.
    with pytest.raises(RuntimeError):
        aio_loop.run_until_complete(aio_loop.run_in_executor(None, int))


# ---------------------------------------------------------------------------
# async generators


def test_shutdown_asyncgens_finalizes_pending_generators(aio_loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("finalized")

    holder = []

    async def main():
        g = agen()
        holder.append(g)
        assert await g.__anext__() == 1

    run(aio_loop, main())
    assert log == []
    aio_loop.run_until_complete(aio_loop.shutdown_asyncgens())
    assert log == ["finalized"]


def test_asyncgen_finalizer_hook_on_gc(aio_loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            log.append("finalized")

    async def main():
        g = agen()
        await g.__anext__()
        del g
        import gc

        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    run(aio_loop, main())
    assert log == ["finalized"]


# ---------------------------------------------------------------------------
# high level: Queue, timeouts, TaskGroup, Runner


def test_queue_producer_consumer(aio_loop):
    async def main():
        q = asyncio.Queue(maxsize=2)
        out = []

        async def producer():
            for i in range(10):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while (item := await q.get()) is not None:
                out.append(item)
                q.task_done()
            q.task_done()

        await asyncio.gather(producer(), consumer())
        await q.join()
        return out

    assert run(aio_loop, main()) == list(range(10))


def test_priority_and_lifo_queues(aio_loop):
    async def main():
        pq = asyncio.PriorityQueue()
        for x in (5, 1, 3):
            pq.put_nowait(x)
        lq = asyncio.LifoQueue()
        for x in (5, 1, 3):
            lq.put_nowait(x)
        with pytest.raises(asyncio.QueueEmpty):
            asyncio.Queue().get_nowait()
        return [pq.get_nowait() for _ in range(3)], [lq.get_nowait() for _ in range(3)]

    assert run(aio_loop, main()) == ([1, 3, 5], [3, 1, 5])


def test_wait_for_and_timeout(aio_loop):
    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        async with asyncio.timeout(0.01) as cm:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("not cancelled")
        assert cm.expired()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(aio_loop.time() + 0.01):
                await asyncio.sleep(10)
        async with asyncio.timeout(None) as cm2:
            cm2.reschedule(aio_loop.time() + 10)
            await asyncio.sleep(0)
        return await asyncio.wait_for(asyncio.sleep(0, "fast"), 1)

    assert run(aio_loop, main()) == "fast"


def test_asyncio_wait_first_completed(aio_loop):
    async def main():
        a = asyncio.create_task(asyncio.sleep(0.01, "a"))
        b = asyncio.create_task(asyncio.sleep(5, "b"))
        done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        b.cancel()
        return [t.result() for t in done], len(pending)

    assert run(aio_loop, main()) == (["a"], 1)


def test_taskgroup(aio_loop):
    async def child(x, log):
        for _ in range(x):  # x scheduler rounds: the finishing order is fixed, not timed
            await asyncio.sleep(0)
        log.append(x)
        return x

    async def failing():
        for _ in range(5):
            await asyncio.sleep(0)
        raise ValueError("tg")

    async def main():
        log = []
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(x, log)) for x in (3, 1, 2)]
        results = [t.result() for t in tasks]
        cancelled = []

        async def victim():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        with pytest.raises(ExceptionGroup) as ei:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(victim())
                tg.create_task(failing())
        assert [type(e) for e in ei.value.exceptions] == [ValueError]
        return log, results, cancelled

    assert run(aio_loop, main()) == ([1, 2, 3], [3, 1, 2], [True])


def test_runner_with_loop_factory(loop_factory):
    seen = {}

    async def main(x):
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0)
        return x + 1

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(main(1)) == 2
        assert runner.run(main(2)) == 3
        loop = runner.get_loop()
        assert seen["loop"] is loop
        assert isinstance(loop, asyncio.AbstractEventLoop)
    assert loop.is_closed()


def test_runner_debug_and_cancel_on_interrupt_free_path(loop_factory):
    async def main():
        return asyncio.get_running_loop().get_debug()

    with asyncio.Runner(debug=True, loop_factory=loop_factory) as runner:
        assert runner.run(main()) is True


def test_asyncio_run_semantics_via_runner_cleans_up(loop_factory):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("agen closed")

    async def background():
        try:
            await asyncio.sleep(10)
        finally:
            log.append("background cancelled")

    keep = []

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()
        keep.append(asyncio.create_task(background()))
        await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert sorted(log) == ["agen closed", "background cancelled"]


def test_runner_run_with_context_and_closed_runner(loop_factory):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "from ctx")

    async def read():
        return var.get()

    runner = asyncio.Runner(loop_factory=loop_factory)
    try:
        assert runner.run(read(), context=ctx) == "from ctx"
        assert runner.run(read()) == "unset"
    finally:
        runner.close()
    coro = read()
    with pytest.raises(RuntimeError):
        runner.run(coro)
    coro.close()


def test_runner_refuses_to_run_inside_running_loop(loop_factory):
    async def inner():
        return 1

    async def outer():
        coro = inner()
        try:
            with pytest.raises(RuntimeError):
                asyncio.Runner(loop_factory=loop_factory).run(coro)
        finally:
            coro.close()
        return "refused"

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(outer()) == "refused"


def test_set_event_loop_and_get_event_loop(aio_loop):
    asyncio.set_event_loop(aio_loop)
    try:
        assert asyncio.get_event_loop() is aio_loop
        # The seed's style: get the current loop, then run_until_complete on it.
        assert asyncio.get_event_loop().run_until_complete(asyncio.sleep(0, "x")) == "x"
    finally:
        asyncio.set_event_loop(None)


def test_shutdown_default_executor_waits_for_running_jobs(aio_loop):
    finished = threading.Event()

    def job():
        time.sleep(0.05)
        finished.set()

    async def main():
        fut = aio_loop.run_in_executor(None, job)
        await asyncio.sleep(0)
        await aio_loop.shutdown_default_executor()
        done_at_shutdown = finished.is_set()
        await fut
        return done_at_shutdown

    assert run(aio_loop, main()) is True
