"""asyncio compatibility, the corners a reimplemented loop core gets wrong first: ordering of
due timers against ready callbacks, cancellation inside an iteration, signals while the loop
sleeps, cross-thread submission, destructors and leaks.  Each test runs on stock asyncio (the
oracle) and on broomio.asyncio (see tests/_aio_support.py)."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import socket
import threading
import time

import pytest

from _aio_support import (  # noqa: F401
    aio_loop,
    broomio_xfail,
    loop_factory,
    loop_name,
    nonblocking_pair,
    run,
)


def test_due_timer_runs_after_already_ready_callbacks(aio_loop):
    log = []
    aio_loop.call_later(0, log.append, "timer0")
    aio_loop.call_soon(log.append, "soon")
    aio_loop.call_later(-5, log.append, "timer-past")
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    # First iteration: the ready queue [soon, stop] runs; the due timers are appended after it.
    assert log == ["soon", "timer-past", "timer0"]
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["soon", "timer-past", "timer0"]


def test_handle_cancelled_by_earlier_callback_of_same_iteration(aio_loop):
    log = []
    handles = {}
    aio_loop.call_soon(lambda: handles["b"].cancel())
    handles["b"] = aio_loop.call_soon(log.append, "b")
    aio_loop.call_soon(log.append, "c")
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["c"]


def test_due_timer_cancelled_by_sibling_timer(aio_loop):
    log = []
    now = aio_loop.time()
    handles = {}
    aio_loop.call_at(now + 0.01, lambda: (log.append("first"), handles["second"].cancel()))
    handles["second"] = aio_loop.call_at(now + 0.01, log.append, "second")
    aio_loop.call_at(now + 0.03, aio_loop.stop)
    aio_loop.run_forever()
    assert log == ["first"]


def test_many_cancelled_timers_never_fire(aio_loop):
    log = []
    handles = [aio_loop.call_later(0.001 * (i % 50), log.append, i) for i in range(2000)]
    keep = handles[::100]
    for h in handles:
        if h not in keep:
            h.cancel()
    aio_loop.call_later(0.1, aio_loop.stop)
    aio_loop.run_forever()
    assert sorted(log) == list(range(0, 2000, 100))


def test_timer_scheduled_from_timer_callback(aio_loop):
    log = []

    def first():
        log.append("first")
        aio_loop.call_later(0.01, second)

    def second():
        log.append("second")
        aio_loop.stop()

    aio_loop.call_later(0.01, first)
    aio_loop.run_forever()
    assert log == ["first", "second"]


def test_stop_then_callbacks_scheduled_by_stop_caller_run_next_time(aio_loop):
    log = []

    def stopper():
        aio_loop.stop()
        aio_loop.call_soon(log.append, "after stop")

    aio_loop.call_soon(stopper)
    aio_loop.run_forever()
    assert log == []
    aio_loop.run_until_complete(asyncio.sleep(0))
    assert log == ["after stop"]


def test_system_exit_in_callback_propagates(aio_loop):
    def leave():
        raise SystemExit(3)

    aio_loop.call_soon(leave)
    with pytest.raises(SystemExit):
        aio_loop.run_forever()
    assert not aio_loop.is_running()


def test_partial_callback_and_run_in_executor(aio_loop):
    log = []
    aio_loop.call_soon(functools.partial(log.append, "partial"))
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()

    async def main():
        return await aio_loop.run_in_executor(None, functools.partial(int, "7f", 16))

    assert run(aio_loop, main()) == 127
    assert log == ["partial"]


def test_run_coroutine_threadsafe(aio_loop):
    async def add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    results = []

    def from_thread():
        fut = asyncio.run_coroutine_threadsafe(add(2, 3), aio_loop)
        results.append(fut.result(timeout=5))
        bad = asyncio.run_coroutine_threadsafe(asyncio.sleep(10), aio_loop)
        bad.cancel()
        results.append(bad.cancelled())

    async def main():
        t = threading.Thread(target=from_thread)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.005)
        t.join()

    run(aio_loop, main())
    assert results == [5, True]


def test_loop_in_another_thread(loop_factory):
    """A loop runs in a worker thread; the main thread feeds it with call_soon_threadsafe."""
    loop = loop_factory()
    started = threading.Event()
    t = threading.Thread(target=lambda: (loop.call_soon(started.set), loop.run_forever()))
    t.start()
    try:
        assert started.wait(5)
        fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, "from worker loop"), loop)
        assert fut.result(timeout=5) == "from worker loop"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()
    assert not t.is_alive()


def test_sigint_cancels_runner_main_while_loop_sleeps(loop_factory):
    """asyncio.Runner's SIGINT handling: the signal arrives while the loop is blocked in its
    poller; the main task is cancelled and run() raises KeyboardInterrupt."""
    seen = []

    async def main():
        threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGINT)).start()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    assert seen == ["cancelled"]
    assert time.monotonic() - t0 < 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_python_signal_handler_runs_while_loop_sleeps(aio_loop):
    """A plain signal.signal() handler (not add_signal_handler) runs promptly even while the
    loop waits on a long timer, and the loop keeps working afterwards."""
    hits = []
    old = signal.signal(signal.SIGUSR1, lambda *a: hits.append(time.monotonic()))
    try:
        async def main():
            threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGUSR1)).start()
            for _ in range(50):  # each sleep blocks the loop in its poller for 0.2 s
                await asyncio.sleep(0.2)
                if hits:
                    break
            return len(hits)

        assert run(aio_loop, main()) == 1
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_unclosed_loop_warns_resource_warning(loop_factory):
    loop = loop_factory()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del loop
        gc.collect()


def test_pending_task_destroyed_is_reported(loop_factory):
    loop = loop_factory()
    ctxs = []
    loop.set_exception_handler(lambda lp, ctx: ctxs.append(ctx))

    async def never():
        await asyncio.sleep(10)

    task = loop.create_task(never())
    loop.run_until_complete(asyncio.sleep(0))  # the task starts and parks
    loop.close()
    del task
    gc.collect()
    assert any(c.get("message") == "Task was destroyed but it is pending!" for c in ctxs)


def test_unclosed_transport_warns(loop_factory):
    loop = loop_factory()
    a, b = nonblocking_pair()

    async def main():
        tr, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        return tr

    tr = loop.run_until_complete(main())
    loop.close()  # the loop lets go of the transport's callbacks
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        del tr
        gc.collect()
    b.close()


def test_create_connection_local_addr_and_happy_eyeballs(aio_loop):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)

    async def main():
        tr, _ = await aio_loop.create_connection(
            asyncio.Protocol, "127.0.0.1", lsock.getsockname()[1],
            local_addr=("127.0.0.1", 0), happy_eyeballs_delay=0.1, interleave=1)
        conn, peer = await aio_loop.sock_accept(lsock)
        conn.close()
        ok = peer == tr.get_extra_info("sockname")
        tr.close()
        await asyncio.sleep(0)
        return ok

    try:
        assert run(aio_loop, main())
    finally:
        lsock.close()


def test_debug_mode_via_env_var(loop_factory, monkeypatch):
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    # asyncio reads the variable when a loop is created (sys.flags.dev_mode or the env var).
    loop = loop_factory()
    try:
        assert loop.get_debug() is True
    finally:
        loop.close()


def test_slow_coroutine_step_logged_in_debug(aio_loop, caplog):
    """The talk's example: a coroutine that blocks is reported with its task in debug mode."""
    import logging

    aio_loop.set_debug(True)
    aio_loop.slow_callback_duration = 0.01

    async def sleeper():
        time.sleep(0.05)  # we block here

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        aio_loop.run_until_complete(sleeper())
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Executing" in m and "sleeper" in m and "took" in m for m in msgs), msgs


def test_exception_context_in_callback(aio_loop):
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))

    def bad():
        raise LookupError("ctx")

    h = aio_loop.call_soon(bad)
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    (ctx,) = ctxs
    assert ctx["message"].startswith("Exception in callback")
    assert ctx["handle"] is h
    assert isinstance(ctx["exception"], LookupError)
    assert "source_traceback" not in ctx


def test_debug_exception_context_has_source_traceback(aio_loop):
    aio_loop.set_debug(True)
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))

    def bad():
        raise LookupError("ctx")

    aio_loop.call_soon(bad)
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    (ctx,) = ctxs
    frames = ctx["source_traceback"]
    # The traceback of where call_soon was called: this test function is in it.
    assert any(f.name == "test_debug_exception_context_has_source_traceback" for f in frames)


def test_reader_callback_is_level_triggered(aio_loop):
    a, b = nonblocking_pair()
    calls = []
    try:
        async def main():
            aio_loop.add_reader(a, lambda: calls.append(1))  # never reads: stays readable
            b.send(b"x")
            for _ in range(50):
                await asyncio.sleep(0)
                if len(calls) >= 3:
                    break
            aio_loop.remove_reader(a)
            return len(calls) >= 3

        assert run(aio_loop, main())
    finally:
        a.close()
        b.close()


def test_reader_removed_by_other_reader_in_same_iteration(aio_loop):
    """Two fds ready at once; whichever callback runs first removes the other's reader: the
    other callback must not run (its queued handle is cancelled)."""
    (a1, b1), (a2, b2) = nonblocking_pair(), nonblocking_pair()
    ran = []
    try:
        def on1():
            ran.append(1)
            aio_loop.remove_reader(a2)
            aio_loop.remove_reader(a1)

        def on2():
            ran.append(2)
            aio_loop.remove_reader(a1)
            aio_loop.remove_reader(a2)

        async def main():
            b1.send(b"x")
            b2.send(b"y")
            await asyncio.sleep(0.02)  # both readable before the readers exist
            aio_loop.add_reader(a1, on1)
            aio_loop.add_reader(a2, on2)
            for _ in range(10):
                await asyncio.sleep(0)
            return len(ran)

        assert run(aio_loop, main()) == 1
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_reader_callback_exception_keeps_reader(aio_loop):
    a, b = nonblocking_pair()
    ctxs = []
    aio_loop.set_exception_handler(lambda loop, ctx: ctxs.append(ctx))
    got = []
    try:
        def on_read():
            got.append(a.recv(1))
            if len(got) == 1:
                raise RuntimeError("first read fails")

        async def main():
            aio_loop.add_reader(a, on_read)
            b.send(b"12")
            for _ in range(50):
                await asyncio.sleep(0.001)
                if len(got) == 2:
                    break
            aio_loop.remove_reader(a)
            return got

        assert run(aio_loop, main()) == [b"1", b"2"]
        assert len(ctxs) == 1 and isinstance(ctxs[0]["exception"], RuntimeError)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("delay", [1e10, float("inf")])
def test_huge_timer_does_not_break_the_wait(aio_loop, delay):
    log = []
    far = aio_loop.call_later(delay, log.append, "far")
    aio_loop.call_later(0.02, aio_loop.stop)
    t0 = time.monotonic()
    aio_loop.run_forever()
    assert time.monotonic() - t0 < 5
    # Only the far timer left: a thread's call_soon_threadsafe must still wake the loop.
    threading.Timer(0.02, aio_loop.call_soon_threadsafe, args=(aio_loop.stop,)).start()
    t0 = time.monotonic()
    aio_loop.run_forever()
    assert time.monotonic() - t0 < 5
    far.cancel()
    assert log == []


def test_close_discards_pending_callbacks(loop_factory):
    loop = loop_factory()
    log = []
    loop.call_soon(log.append, "never")
    loop.call_later(0.01, log.append, "never either")
    loop.close()
    assert log == []
    assert loop.is_closed()


def test_sleep_zero_yields_to_ready_callbacks(aio_loop):
    log = []

    async def main():
        aio_loop.call_soon(log.append, "cb")
        log.append("before")
        await asyncio.sleep(0)
        log.append("after")

    run(aio_loop, main())
    assert log == ["before", "cb", "after"]


def test_task_step_order_round_robin(aio_loop):
    log = []

    async def worker(name):
        for i in range(3):
            log.append((name, i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(worker("a"), worker("b"), worker("c"))

    run(aio_loop, main())
    assert log == [(n, i) for i in range(3) for n in "abc"]


def test_reader_on_high_numbered_fd(aio_loop):
    """File descriptors far above the first few hundred (fd tables must grow)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 4100:
        pytest.skip(f"RLIMIT_NOFILE is {soft}")
    a, b = nonblocking_pair()
    high = os.dup2(a.fileno(), 4090)
    try:
        async def main():
            fut = aio_loop.create_future()
            aio_loop.add_reader(high, lambda: fut.done() or fut.set_result(os.read(high, 10)))
            b.send(b"high fd")
            data = await fut
            aio_loop.remove_reader(high)
            return data

        assert run(aio_loop, main()) == b"high fd"
    finally:
        os.close(high)
        a.close()
        b.close()


def test_many_connections_at_once(aio_loop):
    """300 concurrent stream connections through one server (fd tables, accept backlog)."""
    async def handle(reader, writer):
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.append(1)

    done = []

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]

        async def client(i):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"%04d" % i)
            data = await r.read()
            w.close()
            await w.wait_closed()
            return data

        got = await asyncio.gather(*(client(i) for i in range(300)))
        while len(done) < 300:
            await asyncio.sleep(0.001)
        server.close()
        await server.wait_closed()
        return got

    assert run(aio_loop, main(), timeout=25) == [b"%04d" % i for i in range(300)]


class _Token:
    """A weak-referenceable argument: tells whether the loop still holds it."""


@pytest.mark.parametrize("how", ["soon", "later", "threadsafe", "cancelled", "cancelled_timer"])
def test_loop_releases_callback_and_args_after_use(aio_loop, how):
    import weakref

    token = _Token()
    ref = weakref.ref(token)
    sink = []
    if how == "soon":
        aio_loop.call_soon(sink.append, token)
    elif how == "later":
        aio_loop.call_later(0.001, sink.append, token)
    elif how == "threadsafe":
        aio_loop.call_soon_threadsafe(sink.append, token)
    elif how == "cancelled":
        aio_loop.call_soon(sink.append, token).cancel()
    else:
        aio_loop.call_later(0.001, sink.append, token).cancel()
    del token
    aio_loop.call_later(0.01, aio_loop.stop)
    aio_loop.run_forever()
    sink.clear()
    aio_loop.call_soon(aio_loop.stop)  # one more iteration, as asyncio drops handles lazily
    aio_loop.run_forever()
    gc.collect()
    assert ref() is None


def test_cancelled_handle_state_survives_running(aio_loop):
    log = []
    handles = [aio_loop.call_soon(log.append, i) for i in range(5)]
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    # Handles the caller still holds keep their identity and state after they ran...
    assert [h.cancelled() for h in handles] == [False] * 5
    for h in handles:
        h.cancel()
    assert [h.cancelled() for h in handles] == [True] * 5
    # ...and new handles are never the old objects while those are alive.
    new = [aio_loop.call_soon(log.append, i) for i in range(5)]
    assert not {id(h) for h in new} & {id(h) for h in handles}
    assert [h.cancelled() for h in new] == [False] * 5
    aio_loop.call_soon(aio_loop.stop)
    aio_loop.run_forever()
    assert log == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
