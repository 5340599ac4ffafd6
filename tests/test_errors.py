"""Clear errors for bad input and misuse."""

import asyncio
import math

import pytest

import broomio
from broomio import CancelScope, Loop, open_nursery, sleep, sleep_until
from conftest import Log, run, run_python


async def async_fn():
    return "ok"


def plain_function():
    return None


def returns_non_coroutine():
    return 5


async def async_gen():
    yield 1


BAD_TARGETS = [
    pytest.param(42, id="int"),
    pytest.param("coro", id="str"),
    pytest.param(None, id="None"),
    pytest.param(plain_function, id="plain-function"),
    pytest.param(returns_non_coroutine, id="function-returning-int"),
    pytest.param(async_gen, id="async-generator-function"),
    pytest.param(lambda: iter([]), id="function-returning-iterator"),
]


# ---------------------------------------------------------------------------
# start_soon / run with things that are not async functions or coroutines


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_loop_start_soon_rejects_non_coroutines(loop, target):
    with pytest.raises(TypeError):
        loop.start_soon(target)
    # The loop is still usable and nothing was scheduled.
    assert loop.run() is None


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_nursery_start_soon_rejects_non_coroutines(target):
    async def main():
        async with open_nursery() as n:
            with pytest.raises(TypeError):
                n.start_soon(target)
            return n.child_tasks

    assert run(main) == ()


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_broomio_run_rejects_non_coroutines(target):
    with pytest.raises(TypeError):
        broomio.run(target)


@pytest.mark.parametrize("target", [42, "coro", None])
def test_start_later_rejects_non_callables(loop, target):
    with pytest.raises(TypeError):
        loop.start_later(0.01, target)


def test_start_soon_type_error_message_is_clear(loop):
    with pytest.raises(TypeError) as ei:
        loop.start_soon(plain_function)
    msg = str(ei.value)
    assert msg, "TypeError without a message"


def test_coroutine_object_with_args_is_rejected(loop):
    coro = async_fn()
    try:
        with pytest.raises(TypeError):
            loop.start_soon(coro, 1)
    finally:
        coro.close()


def test_same_coroutine_started_twice(loop):
    log = Log()

    async def task():
        log("ran")

    coro = task()
    t = loop.start_soon(coro)
    with pytest.raises(RuntimeError):
        loop.start_soon(coro)
    loop.run()
    assert log == ["ran"]
    assert t.done() and t.result() is None


def test_same_coroutine_started_twice_in_nursery():
    log = Log()

    async def child():
        log("ran")

    async def main():
        coro = child()
        async with open_nursery() as n:
            n.start_soon(coro)
            with pytest.raises(RuntimeError):
                n.start_soon(coro)

    run(main)
    assert log == ["ran"]


# ---------------------------------------------------------------------------
# sleep / start_later arguments


@pytest.mark.parametrize("value", [-1, -0.001, -math.inf, math.nan])
def test_sleep_bad_value(value):
    async def main():
        with pytest.raises(ValueError):
            await sleep(value)
        return "ok"

    assert run(main) == "ok"


@pytest.mark.parametrize("value", ["1", None, b"1", [1], object()])
def test_sleep_bad_type(value):
    async def main():
        with pytest.raises(TypeError):
            await sleep(value)
        return "ok"

    assert run(main) == "ok"


@pytest.mark.parametrize("value", ["1", None])
def test_sleep_until_bad_type(value):
    async def main():
        with pytest.raises(TypeError):
            await sleep_until(value)
        return "ok"

    assert run(main) == "ok"


@pytest.mark.parametrize("delay", [-1, -0.5, math.nan])
def test_start_later_bad_delay(loop, delay):
    with pytest.raises(ValueError):
        loop.start_later(delay, async_fn)

    async def main():
        async with open_nursery() as n:
            with pytest.raises(ValueError):
                n.start_later(delay, async_fn)

    loop.run_until_complete(main)


# ---------------------------------------------------------------------------
# foreign awaitables


def test_awaiting_asyncio_future_inside_broomio_is_typeerror():
    aloop = asyncio.new_event_loop()
    try:
        fut = aloop.create_future()

        async def main():
            with pytest.raises(TypeError):
                await fut
            # The task survives and keeps working.
            await sleep(0.001)
            return "ok"

        assert run(main) == "ok"
    finally:
        aloop.close()


def test_awaiting_asyncio_sleep_inside_broomio_is_typeerror():
    async def main():
        with pytest.raises(TypeError):
            await asyncio.sleep(0)
        await sleep(0)
        return "ok"

    assert run(main) == "ok"


def test_yielding_garbage_inside_broomio_is_typeerror():
    class Weird:
        def __await__(self):
            yield "not a broomio trap"

    async def main():
        with pytest.raises(TypeError):
            await Weird()
        return "ok"

    assert run(main) == "ok"


@pytest.mark.parametrize("make", [
    pytest.param(lambda: sleep(0), id="sleep0"),
    pytest.param(lambda: sleep(0.01), id="sleep"),
    pytest.param(lambda: broomio.lowlevel.checkpoint(), id="checkpoint"),
])
def test_broomio_awaitable_inside_asyncio_is_runtimeerror(make):
    async def main():
        with pytest.raises(RuntimeError):
            await make()
        return "ok"

    assert asyncio.run(main()) == "ok"


def test_broomio_sleep_outside_any_loop_is_runtimeerror():
    async def main():
        await sleep(0)

    coro = main()
    try:
        with pytest.raises(RuntimeError):
            coro.send(None)
    finally:
        coro.close()


# ---------------------------------------------------------------------------
# running a loop twice / nested loops / closed loops


def test_run_while_running_raises(loop):
    seen = Log()

    async def main():
        with pytest.raises(RuntimeError):
            loop.run()
        seen("run")
        coro = async_fn()
        try:
            with pytest.raises(RuntimeError):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        seen("run_until_complete")
        with pytest.raises(RuntimeError):
            broomio.current_loop().run()
        seen("current_loop().run")
        return "ok"

    assert loop.run_until_complete(main) == "ok"
    assert seen == ["run", "run_until_complete", "current_loop().run"]


def test_other_loop_in_same_thread_raises(loop):
    async def main():
        other = Loop()
        try:
            with pytest.raises(RuntimeError):
                other.run()
            coro = async_fn()
            try:
                with pytest.raises(RuntimeError):
                    other.run_until_complete(coro)
            finally:
                coro.close()
        finally:
            other.close()
        coro = async_fn()
        try:
            with pytest.raises(RuntimeError):
                broomio.run(coro)
        finally:
            coro.close()
        return "ok"

    assert loop.run_until_complete(main) == "ok"


def test_run_from_second_thread_while_running_raises():
    proc = run_python("""
        import threading
        import broomio
        from broomio.lowlevel import ParkingLot

        loop = broomio.Loop()
        lot = ParkingLot()
        result = []

        def other_thread():
            try:
                loop.run()
            except RuntimeError:
                result.append("RuntimeError")
            except BaseException as e:
                result.append(repr(e))
            else:
                result.append("no error")
            loop.call_soon_threadsafe(lot.unpark_all)

        async def main():
            th = threading.Thread(target=other_thread)
            th.start()
            with broomio.move_on_after(10):
                await lot.park()
            th.join()

        loop.run_until_complete(main)
        loop.close()
        print(result)
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['RuntimeError']"


def test_closed_loop_raises():
    loop = Loop()
    loop.close()
    assert loop.closed
    with pytest.raises(RuntimeError):
        loop.run()
    with pytest.raises(RuntimeError):
        loop.start_soon(async_fn)
    coro = async_fn()
    try:
        with pytest.raises(RuntimeError):
            loop.start_soon(coro)
        with pytest.raises(RuntimeError):
            loop.run_until_complete(coro)
    finally:
        coro.close()
    with pytest.raises(RuntimeError):
        loop.start_later(0, async_fn)
    loop.close()  # idempotent


def test_close_running_loop_raises(loop):
    async def main():
        with pytest.raises(RuntimeError):
            loop.close()
        with pytest.raises(RuntimeError):
            broomio.current_loop().close()
        await sleep(0)
        return loop.closed

    assert loop.run_until_complete(main) is False
    loop.close()
    assert loop.closed


def test_closed_loop_after_use():
    loop = Loop()

    async def main():
        await sleep(0)
        return 1

    assert loop.run_until_complete(main) == 1
    loop.close()
    with pytest.raises(RuntimeError):
        loop.start_soon(main)


# ---------------------------------------------------------------------------
# Loop() arguments


@pytest.mark.parametrize("backend", ["select", "poll", "kqueue", "", "EPOLL", 1])
def test_loop_bad_backend(backend):
    with pytest.raises((ValueError, TypeError)) as ei:
        Loop(backend=backend)
    if isinstance(backend, str):
        assert ei.type is ValueError


def test_broomio_run_bad_backend():
    coro = async_fn()
    try:
        with pytest.raises(ValueError):
            broomio.run(coro, backend="select")
    finally:
        coro.close()


@pytest.mark.parametrize("clock", [object(), 1.0, "monotonic", lambda: 0.0])
def test_loop_bad_clock(clock):
    with pytest.raises(TypeError):
        Loop(clock=clock)


# ---------------------------------------------------------------------------
# misuse of scopes and accessors


def test_cancel_scope_reuse_raises():
    async def main():
        scope = CancelScope()
        with scope:
            await sleep(0)
        with pytest.raises(RuntimeError):
            with scope:
                pass
        return "ok"

    assert run(main) == "ok"


def test_current_loop_outside_raises_runtimeerror():
    with pytest.raises(RuntimeError):
        broomio.current_loop()
    with pytest.raises(RuntimeError):
        broomio.current_time()
    with pytest.raises(RuntimeError):
        broomio.current_task()


def test_task_result_before_done_raises():
    async def child():
        await sleep(0.01)

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(child)
            with pytest.raises(RuntimeError):
                t.result()
            with pytest.raises(RuntimeError):
                t.exception()
        return t.result()

    assert run(main) is None


def test_nursery_start_with_function_not_accepting_task_status():
    async def no_status():
        await sleep(0)

    async def main():
        async with open_nursery() as n:
            with pytest.raises(TypeError):
                await n.start(no_status)
        return "ok"

    assert run(main) == "ok"


def test_exception_hierarchy():
    for name in ("BusyResourceError", "ClosedResourceError", "BrokenResourceError",
                 "WouldBlock", "IncompleteReadError", "TaskCancelled"):
        cls = getattr(broomio, name)
        assert issubclass(cls, Exception), name
    assert issubclass(broomio.Cancelled, BaseException)
    assert not issubclass(broomio.Cancelled, Exception)
