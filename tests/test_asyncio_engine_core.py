"""broomio.asyncio's C core: handles, the ready queue, timers, readiness, errors, debug.

Most tests run the same scenario on stock asyncio and on broomio.asyncio and compare what
they observed (asyncio is the oracle)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import broomio.asyncio as bra

FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "broomio": bra.new_event_loop,
}


@pytest.fixture(params=sorted(FACTORIES))
def any_loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    loop = FACTORIES[request.param]()
    yield loop
    loop.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = bra.new_event_loop()
    yield lp
    lp.close()


def both(scenario: Callable[[asyncio.AbstractEventLoop], Any]) -> Any:
    """Runs scenario on a stock loop and on a broomio loop; asserts equal results."""
    out = []
    for name in ("asyncio", "broomio"):
        lp = FACTORIES[name]()
        try:
            out.append(scenario(lp))
        finally:
            lp.close()
    assert out[0] == out[1]
    return out[1]


# ---- call_soon / handles -----------------------------------------------------------------


def test_call_soon_order_and_args() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[Any]:
        log: list[Any] = []
        lp.call_soon(log.append, 1)
        lp.call_soon(lambda *a: log.append(a), 2, 3)
        lp.call_soon(log.append, 4)
        lp.call_soon(lp.stop)
        lp.run_forever()
        return log

    assert both(scenario) == [1, (2, 3), 4]


def test_callbacks_scheduled_during_iteration_run_next_iteration() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[str]:
        log: list[str] = []

        def first() -> None:
            log.append("first")
            lp.call_soon(log.append, "nested")
            lp.stop()

        lp.call_soon(first)
        lp.call_soon(log.append, "second")
        lp.run_forever()
        log.append("stopped")
        lp.run_until_complete(asyncio.sleep(0))
        return log

    assert both(scenario) == ["first", "second", "stopped", "nested"]


def test_handle_is_asyncio_handle(loop: asyncio.AbstractEventLoop) -> None:
    h = loop.call_soon(print)
    assert isinstance(h, asyncio.Handle)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    assert "cancelled" in repr(h)
    t = loop.call_later(10, print)
    assert isinstance(t, asyncio.TimerHandle)
    assert t.when() == pytest.approx(loop.time() + 10, abs=1)
    t.cancel()
    assert t.cancelled()


def test_cancelled_handle_does_not_run() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[int]:
        log: list[int] = []
        h = lp.call_soon(log.append, 1)
        lp.call_soon(log.append, 2)
        h.cancel()
        lp.call_soon(lp.stop)
        lp.run_forever()
        return log

    assert both(scenario) == [2]


def test_call_soon_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="default")

    def scenario(lp: asyncio.AbstractEventLoop) -> list[str]:
        log: list[str] = []
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in-ctx")
        lp.call_soon(lambda: log.append(var.get()), context=ctx)
        lp.call_soon(lambda: log.append(var.get()))
        lp.call_soon(lp.stop)
        lp.run_forever()
        return log

    assert both(scenario) == ["in-ctx", "default"]


def test_call_soon_bad_keyword(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(TypeError):
        loop.call_soon(print, bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        loop.call_soon()  # type: ignore[call-arg]


def test_closed_loop_refuses(any_loop: asyncio.AbstractEventLoop) -> None:
    any_loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        any_loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        any_loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="closed"):
        any_loop.run_forever()


def test_call_soon_threadsafe() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[str]:
        log: list[str] = []

        def worker() -> None:
            time.sleep(0.05)
            lp.call_soon_threadsafe(log.append, "from-thread")
            lp.call_soon_threadsafe(lp.stop)

        th = threading.Thread(target=worker)
        th.start()
        lp.run_forever()  # blocks in the poller until the thread wakes it
        th.join()
        return log

    assert both(scenario) == ["from-thread"]


# ---- timers ------------------------------------------------------------------------------


def test_call_later_order() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[int]:
        log: list[int] = []
        lp.call_later(0.03, log.append, 3)
        lp.call_later(0.01, log.append, 1)
        lp.call_later(0.02, log.append, 2)
        lp.call_later(0.04, lp.stop)
        lp.run_forever()
        return log

    assert both(scenario) == [1, 2, 3]


def test_call_at_and_time(loop: asyncio.AbstractEventLoop) -> None:
    log: list[float] = []
    start = loop.time()
    assert abs(start - time.monotonic()) < 0.5
    loop.call_at(start + 0.02, lambda: log.append(loop.time()))
    loop.call_at(start + 0.03, loop.stop)
    loop.run_forever()
    assert len(log) == 1 and log[0] >= start + 0.02 - 0.002


def test_call_at_none_and_nan(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(TypeError):
        loop.call_at(None, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        loop.call_later(None, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        loop.call_later("1", print)  # type: ignore[arg-type]


def test_cancelled_timers_swept(loop: asyncio.AbstractEventLoop) -> None:
    handles = [loop.call_later(100 + i, print) for i in range(300)]
    for h in handles[:250]:
        h.cancel()
    assert loop._timer_cancelled_count == 250  # type: ignore[attr-defined]
    loop.run_until_complete(asyncio.sleep(0))
    assert len(loop._scheduled) == 50  # type: ignore[attr-defined]
    assert loop._timer_cancelled_count == 0  # type: ignore[attr-defined]
    assert all(not h._scheduled for h in handles[:250])  # type: ignore[attr-defined]
    for h in handles[250:]:
        h.cancel()


def test_asyncio_sleep_and_wait_for() -> None:
    async def main() -> list[str]:
        log = []
        await asyncio.sleep(0.01)
        log.append("slept")
        try:
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        except asyncio.TimeoutError:
            log.append("timeout")
        return log

    assert both(lambda lp: lp.run_until_complete(main())) == ["slept", "timeout"]


def test_tasks_gather_cancel() -> None:
    async def main() -> list[Any]:
        async def child(i: int) -> int:
            await asyncio.sleep(0.001 * i)
            return i

        res: list[Any] = list(await asyncio.gather(*(child(i) for i in range(10))))
        t = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            res.append("cancelled")
        return res

    assert both(lambda lp: lp.run_until_complete(main())) == [*range(10), "cancelled"]


# ---- errors ------------------------------------------------------------------------------


def test_callback_exception_goes_to_handler() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[Any]:
        seen: list[Any] = []

        def handler(loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
            seen.append((type(ctx["exception"]), ctx["message"].split(" ")[:3], "handle" in ctx))

        lp.set_exception_handler(handler)

        def boom() -> None:
            raise ValueError("x")

        lp.call_soon(boom)
        lp.call_soon(seen.append, "after")
        lp.call_soon(lp.stop)
        lp.run_forever()
        assert lp.get_exception_handler() is handler
        return seen

    assert both(scenario) == [(ValueError, ["Exception", "in", "callback"], True), "after"]


def test_keyboard_interrupt_propagates(any_loop: asyncio.AbstractEventLoop) -> None:
    def boom() -> None:
        raise KeyboardInterrupt

    log: list[int] = []
    any_loop.call_soon(boom)
    any_loop.call_soon(log.append, 1)
    with pytest.raises(KeyboardInterrupt):
        any_loop.run_forever()
    any_loop.call_soon(any_loop.stop)
    any_loop.run_forever()
    assert log == [1]


def test_default_exception_handler_logs(loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise ValueError("logged")

    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert any("logged" in (r.exc_text or "") or "Exception in callback" in r.getMessage() for r in caplog.records)


# ---- debug mode --------------------------------------------------------------------------


def test_debug_slow_callback_warning(loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Executing <Handle") and "took" in m for m in msgs), msgs


def test_debug_handle_source_traceback(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_debug(True)
    h = loop.call_soon(print)
    tb = h._source_traceback  # type: ignore[attr-defined]
    assert tb and tb[-1].name == "test_debug_handle_source_traceback"
    h.cancel()


def test_debug_rejects_coroutine_and_wrong_thread(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_debug(True)

    async def coro() -> None:
        pass

    c = coro()
    with pytest.raises(TypeError):
        loop.call_soon(c)  # type: ignore[arg-type]
    c.close()
    errors: list[BaseException] = []

    async def main() -> None:
        def other() -> None:
            try:
                loop.call_soon(print)
            except RuntimeError as e:
                errors.append(e)

        th = threading.Thread(target=other)
        th.start()
        th.join()

    loop.run_until_complete(main())
    assert errors and "thread" in str(errors[0])


def test_pythonasynciodebug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    import asyncio.coroutines

    monkeypatch.setattr(asyncio.coroutines, "_is_debug_mode", lambda: True)
    lp = bra.new_event_loop()
    try:
        assert lp.get_debug()
    finally:
        lp.close()


# ---- readiness ---------------------------------------------------------------------------


def test_add_reader_writer() -> None:
    def scenario(lp: asyncio.AbstractEventLoop) -> list[Any]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        log: list[Any] = []

        def on_writable() -> None:
            log.append("writable")
            assert lp.remove_writer(a)
            a.send(b"hi")

        def on_readable() -> None:
            log.append(b.recv(10))
            assert lp.remove_reader(b.fileno())
            assert not lp.remove_reader(b.fileno())
            lp.stop()

        lp.add_writer(a, on_writable)
        lp.add_reader(b.fileno(), on_readable)
        lp.run_forever()
        a.close()
        b.close()
        return log

    assert both(scenario) == ["writable", b"hi"]


def test_add_reader_level_triggered_and_replace(loop: asyncio.AbstractEventLoop) -> None:
    a, b = socket.socketpair()
    a.send(b"x")
    count = [0, 0]

    def first() -> None:
        count[0] += 1

    def second() -> None:
        count[1] += 1
        if count[1] == 3:
            loop.stop()

    loop.add_reader(b, first)
    loop.add_reader(b, second)  # replaces first
    loop.run_forever()
    assert count == [0, 3]  # still readable: called each iteration
    key = loop._selector.get_key(b)  # type: ignore[attr-defined]
    assert key.fd == b.fileno() and key.events == 1
    assert b.fileno() in loop._selector.get_map()  # type: ignore[attr-defined]
    assert loop.remove_reader(b)
    with pytest.raises(KeyError):
        loop._selector.get_key(b)  # type: ignore[attr-defined]
    a.close()
    b.close()


def test_add_reader_bad_fd(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises((ValueError, OSError)):
        loop.add_reader(-1, print)
    with pytest.raises((TypeError, ValueError)):
        loop.add_reader("nope", print)  # type: ignore[arg-type]


def test_remove_reader_after_fd_closed(any_loop: asyncio.AbstractEventLoop) -> None:
    a, b = socket.socketpair()
    any_loop.add_reader(b.fileno(), print)
    fd = b.fileno()
    b.close()  # closed before remove_reader: epoll already dropped it
    assert any_loop.remove_reader(fd) is True
    assert any_loop.remove_reader(fd) is False
    a.close()


def test_gc_collects_closed_loop() -> None:
    import weakref

    lp = bra.new_event_loop()
    lp.call_soon(print)
    lp.call_later(5, print)
    r = weakref.ref(lp)
    lp.close()
    del lp
    gc.collect()
    assert r() is None


def test_removed_reader_handle_is_cancelled(any_loop: asyncio.AbstractEventLoop) -> None:
    a, b = socket.socketpair()
    handle = any_loop._add_reader(b.fileno(), print, "x")  # type: ignore[attr-defined]
    assert isinstance(handle, asyncio.Handle) and not handle.cancelled()
    assert any_loop._remove_reader(b.fileno()) is True  # type: ignore[attr-defined]
    assert handle.cancelled()
    assert handle._callback is None and handle._args is None  # type: ignore[attr-defined]
    any_loop.set_debug(True)
    h2 = any_loop._add_writer(a.fileno(), print)  # type: ignore[attr-defined]
    replaced = any_loop._add_writer(a.fileno(), print)  # type: ignore[attr-defined]
    assert h2.cancelled() and not replaced.cancelled()
    assert any_loop._remove_writer(a.fileno()) is True  # type: ignore[attr-defined]
    assert replaced.cancelled()
    a.close()
    b.close()


def test_create_task_variants() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="d")

    def scenario(lp: asyncio.AbstractEventLoop) -> list[Any]:
        out: list[Any] = []

        async def job(x: int) -> int:
            out.append(var.get())
            return x * 2

        t = lp.create_task(job(1), name="first")
        out.append((type(t) is asyncio.Task, t.get_name(), t.get_loop() is lp))
        ctx = contextvars.copy_context()
        ctx.run(var.set, "ctx")
        t2 = lp.create_task(job(2), context=ctx)
        out.append(lp.run_until_complete(asyncio.gather(t, t2)))

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Future[Any]:
            out.append(("factory", sorted(kw)))
            return asyncio.Task(coro, loop=loop, **kw)

        lp.set_task_factory(factory)
        t3 = lp.create_task(job(3), name="named")
        out.append((t3.get_name(), lp.run_until_complete(t3)))
        lp.set_task_factory(None)
        lp.set_debug(True)
        t4 = lp.create_task(job(4))
        tb = t4._source_traceback  # type: ignore[attr-defined]
        out.append(tb[-1].name)
        out.append(lp.run_until_complete(t4))
        c5 = job(5)
        with pytest.raises(TypeError):
            lp.create_task(c5, bogus=1)  # type: ignore[call-arg]
        c5.close()
        lp.close()
        coro = job(6)
        with pytest.raises(RuntimeError):
            lp.create_task(coro)
        coro.close()
        return out

    res = both(scenario)
    assert res[0] == (True, "first", True) and res[-1] == 8 and res[-3] == "scenario"


def test_sigint_while_blocked_in_poll(any_loop: asyncio.AbstractEventLoop) -> None:
    import os
    import signal

    def later() -> None:
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    th = threading.Thread(target=later)
    any_loop.call_later(5, any_loop.stop)  # the loop sleeps in the poller meanwhile
    th.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            any_loop.run_forever()
    finally:
        th.join()
    assert not any_loop.is_running()
