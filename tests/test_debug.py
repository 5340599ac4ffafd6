"""Debug mode (slow steps, creation tracebacks, never-awaited awaitables, unclosed sockets),
statistics() and the task-tree dump."""

from __future__ import annotations

import gc
import logging
import re
import socket as stdlib_socket
import sys
import time
import warnings

import pytest

import broomio
from broomio import lowlevel
from conftest import leaves


def here() -> int:
    """The caller's line number."""
    return sys._getframe(1).f_lineno


def run_debug(fn, *args):
    """broomio.run in debug mode, with a slow-step threshold that no loaded test machine
    reaches: for the tests about debug mode's other reports."""
    with broomio.Loop(debug=True) as loop:
        loop.slow_callback_duration = 60.0
        return loop.run_until_complete(fn, *args)


# ---------------------------------------------------------------------------
# slow steps


def test_slow_step_warning_names_task_and_blocking_line(caplog):
    lines = {}

    async def blocker():
        lines["sleep"] = here() + 1
        time.sleep(0.1)
        await broomio.sleep(0)

    async def main():
        async with broomio.open_nursery() as nursery:
            nursery.start_soon(blocker, name="the-blocker")

    with caplog.at_level(logging.WARNING, logger="broomio"):
        with pytest.warns(broomio.SlowStepWarning) as record:
            broomio.run(main, debug=True)
    # (only the blocker's step is slow, unless the machine stalls the others too)
    [w] = [w for w in record if "'the-blocker'" in str(w.message)]
    message = str(w.message)
    assert f"{__file__}:{lines['sleep']}" in message
    # The warning itself is attributed to the blocking line.
    assert w.filename == __file__
    assert w.lineno == lines["sleep"]
    logged = [r for r in caplog.records if "'the-blocker'" in r.getMessage()]
    assert len(logged) == 1 and logged[0].name == "broomio"
    assert logged[0].levelno == logging.WARNING
    assert f"{__file__}:{lines['sleep']}" in logged[0].getMessage()


def test_slow_step_threshold_is_the_loops_slow_callback_duration():
    async def quick():
        time.sleep(0.03)

    loop = broomio.Loop(debug=True)
    try:
        assert loop.slow_callback_duration == 0.1
        loop.slow_callback_duration = 5.0
        loop.start_soon(quick)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            loop.run()
        assert not [w for w in record if issubclass(w.category, broomio.SlowStepWarning)]
        loop.slow_callback_duration = 0.02
        loop.start_soon(quick)
        with pytest.warns(broomio.SlowStepWarning, match="'test_slow_step_threshold"):
            loop.run()
    finally:
        loop.close()


def test_no_slow_step_warning_without_debug(caplog):
    async def blocker():
        time.sleep(0.12)

    with caplog.at_level(logging.WARNING, logger="broomio"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            broomio.run(blocker, debug=False)
    assert record == []
    assert [r for r in caplog.records if r.name == "broomio"] == []


def test_debug_flag_env_and_setter(monkeypatch):
    monkeypatch.setenv("BROOMIO_DEBUG", "1")
    with broomio.Loop() as loop:
        assert loop.debug is True
        loop.debug = False
        assert loop.debug is False
        with pytest.raises(TypeError):
            loop.debug = 1  # type: ignore[assignment]
    monkeypatch.setenv("BROOMIO_DEBUG", "0")
    with broomio.Loop() as loop:
        assert loop.debug is False
    with broomio.Loop(debug=True) as loop:
        assert loop.debug is True
        assert loop.statistics().debug is True
    with pytest.raises(TypeError):
        broomio.Loop(debug="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# creation tracebacks


def _failing_tree():
    lines = {}

    async def failing():
        raise ValueError("boom")

    async def main():
        async with broomio.open_nursery() as nursery:
            lines["spawn"] = here() + 1
            nursery.start_soon(failing, name="failer")

    return main, lines


def test_creation_traceback_is_attached_to_task_errors_in_debug_mode():
    main, lines = _failing_tree()
    with pytest.raises(BaseExceptionGroup) as info:
        run_debug(main)
    [exc] = leaves(info.value)
    assert isinstance(exc, ValueError)
    notes = getattr(exc, "__notes__", [])
    assert len(notes) == 1
    assert "task 'failer' was started at" in notes[0]
    assert f'File "{__file__}", line {lines["spawn"]}, in main' in notes[0]
    assert "nursery.start_soon(failing" in notes[0]


def test_creation_traceback_of_the_main_task_points_at_run():
    async def main():
        raise KeyError("x")

    with pytest.raises(KeyError) as info:
        with broomio.Loop(debug=True) as loop:
            loop.slow_callback_duration = 60.0
            line = here() + 1
            loop.run_until_complete(main)
    [note] = info.value.__notes__
    assert f'File "{__file__}", line {line}' in note


def test_no_creation_traceback_without_debug():
    main, _ = _failing_tree()
    with pytest.raises(BaseExceptionGroup) as info:
        broomio.run(main, debug=False)
    [exc] = leaves(info.value)
    assert not hasattr(exc, "__notes__")


def test_cancelled_tasks_get_no_creation_note():
    seen = []

    async def sleeper():
        try:
            await broomio.sleep_forever()
        except broomio.Cancelled as exc:
            seen.append(exc)
            raise

    async def main():
        async with broomio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await broomio.sleep(0)
            nursery.cancel_scope.cancel()

    run_debug(main)
    assert len(seen) == 1 and not hasattr(seen[0], "__notes__")


# ---------------------------------------------------------------------------
# never-awaited awaitables


def _never_awaited_cases():
    """(name, factory(ctx) -> awaitable, substring of the warning).  Every factory creates
    the awaitable on its own first line, so the expected origin is co_firstlineno."""
    return [
        ("sleep", lambda c: broomio.sleep(1), "sleep"),
        ("sleep0", lambda c: broomio.sleep(0), "checkpoint"),
        ("checkpoint", lambda c: broomio.checkpoint(), "checkpoint"),
        ("sleep_until", lambda c: broomio.sleep_until(1e9), "sleep"),
        ("sleep_forever", lambda c: broomio.sleep_forever(), "sleep"),
        ("wait_readable", lambda c: lowlevel.wait_readable(c["a"].fileno()), "fd wait"),
        ("wait_writable", lambda c: lowlevel.wait_writable(c["a"].fileno()), "fd wait"),
        ("park", lambda c: lowlevel.ParkingLot().park(), "park"),
        ("suspend", lambda c: lowlevel.suspend(), "suspend"),
        ("join", lambda c: c["task"].join(), "join"),
        ("event", lambda c: broomio.Event().wait(), "wait"),
        ("lock", lambda c: broomio.Lock().acquire(), "acquire"),
        ("semaphore", lambda c: broomio.Semaphore(1).acquire(), "acquire"),
        ("limiter", lambda c: broomio.CapacityLimiter(1).acquire(), "acquire"),
        ("queue_get", lambda c: broomio.Queue(1).get(), "get"),
        ("queue_put", lambda c: broomio.Queue(1).put(1), "put"),
        ("recv", lambda c: c["a"].recv(10), "socket recv"),
        ("recv_into", lambda c: c["a"].recv_into(bytearray(4)), "socket recv_into"),
        ("send", lambda c: c["a"].send(b"x"), "socket send"),
        ("send_all", lambda c: c["a"].send_all(b"x"), "socket send_all"),
        ("sendto", lambda c: c["a"].sendmsg([b"x"]), "socket call"),
    ]


CASES = _never_awaited_cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_never_awaited_warning_for_each_kind_of_awaitable(case):
    name, factory, what = case
    line = factory.__code__.co_firstlineno

    async def other():
        await broomio.sleep(0)

    async def main():
        a, b = broomio.socket.socketpair()
        try:
            async with broomio.open_nursery() as nursery:
                task = nursery.start_soon(other)
                ctx = {"a": a, "task": task}
                with pytest.warns(RuntimeWarning) as record:
                    factory(ctx)  # created and dropped (refcount): never awaited
        finally:
            a.close()
            b.close()
        return record

    record = run_debug(main)
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert messages[0].startswith("broomio ") and what in messages[0].split(" awaitable")[0]
    assert f"created at {__file__}:{line}" in messages[0]
    assert "never awaited" in messages[0]
    [w] = record
    assert (w.filename, w.lineno) == (__file__, line)


def test_debug_mode_switched_on_and_off_while_running():
    async def main():
        loop = broomio.current_loop()
        await broomio.sleep(0)  # fills the awaitable cache
        loop.slow_callback_duration = 60.0
        loop.debug = True
        with pytest.warns(RuntimeWarning, match="broomio sleep awaitable created at"):
            broomio.sleep(1)
        await broomio.sleep(0)
        loop.debug = False
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            broomio.sleep(1)
            await broomio.sleep(0)
        assert record == []

    broomio.run(main, debug=False)


def test_no_never_awaited_warning_without_debug():
    async def main():
        a, b = broomio.socket.socketpair()
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                broomio.sleep(1)
                broomio.Event().wait()
                a.recv(10)
                gc.collect()
        finally:
            a.close()
            b.close()
        return record

    assert broomio.run(main, debug=False) == []


def test_awaited_awaitables_do_not_warn_in_debug_mode():
    async def main():
        a, b = broomio.socket.socketpair()
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                await broomio.sleep(0)
                await broomio.sleep(0.001)
                event = broomio.Event()
                event.set()
                await event.wait()
                async with broomio.Lock():
                    pass
                queue: broomio.Queue[int] = broomio.Queue(1)
                await queue.put(1)
                assert await queue.get() == 1
                await a.send_all(b"hi")
                assert await b.recv(10) == b"hi"
                with broomio.move_on_after(0.001):
                    await b.recv(10)  # cancelled while waiting: awaited, not forgotten
                await a.shutdown(stdlib_socket.SHUT_WR)
                b.shutdown(stdlib_socket.SHUT_WR)  # optional await: fine either way
        finally:
            a.close()
            b.close()
        return record

    assert [str(w.message) for w in run_debug(main)] == []


def test_awaitables_that_failed_are_not_reported_as_never_awaited():
    async def main():
        a, b = broomio.socket.socketpair()
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                # rejected by its argument checks: no awaitable escapes
                with pytest.raises(ValueError):
                    a.recv_into(bytearray(2), 5)
                # awaited, but failed at once (another task already waits on the fd)
                async with broomio.open_nursery() as nursery:
                    nursery.start_soon(lowlevel.wait_readable, a.fileno())
                    await broomio.sleep(0)
                    with pytest.raises(broomio.BusyResourceError):
                        await lowlevel.wait_readable(a.fileno())
                    nursery.cancel_scope.cancel()
        finally:
            a.close()
            b.close()
        return record

    assert [str(w.message) for w in run_debug(main)] == []


# ---------------------------------------------------------------------------
# unclosed sockets


def test_resource_warning_for_sockets_open_when_the_loop_closes():
    kept = []

    async def main():
        a, b = broomio.socket.socketpair()
        kept.extend([a, b])
        b.close()
        listener = broomio.socket.socket()
        listener.close()

    try:
        with pytest.warns(ResourceWarning) as record:
            run_debug(main)
        messages = [str(w.message) for w in record if issubclass(w.category, ResourceWarning)]
        assert len(messages) == 1
        assert "unclosed socket" in messages[0]
        assert f"fd={kept[0].fileno()}" in messages[0]
    finally:
        for s in kept:
            s.close()


def test_no_resource_warning_without_debug_or_when_closed():
    kept = []

    async def leaky():
        kept.extend(broomio.socket.socketpair())

    async def tidy():
        a, b = broomio.socket.socketpair()
        with a, b:
            await a.send_all(b"x")

    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            broomio.run(leaky, debug=False)
            run_debug(tidy)
        assert [w for w in record if issubclass(w.category, ResourceWarning)] == []
    finally:
        for s in kept:
            s.close()


# ---------------------------------------------------------------------------
# statistics


def test_statistics_follow_the_loop_state():
    snapshots = {}

    async def sleeper():
        await broomio.sleep(100)

    async def receiver(sock):
        await sock.recv(10)

    async def main():
        loop = broomio.current_loop()
        snapshots["start"] = broomio.statistics()
        await broomio.sleep(0.001)  # nothing else to run: the loop polls for I/O
        snapshots["slept"] = broomio.statistics()
        a, b = broomio.socket.socketpair()
        try:
            async with broomio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(sleeper)
                snapshots["spawned"] = broomio.statistics()
                await broomio.sleep(0)
                nursery.start_soon(receiver, a)
                await broomio.sleep(0)
                await broomio.sleep(0)
                snapshots["waiting"] = broomio.statistics()
                loop.call_soon_threadsafe(lambda: None)
                snapshots["inbox"] = broomio.statistics()
                nursery.cancel_scope.cancel()
            snapshots["after"] = broomio.statistics()
        finally:
            a.close()
            b.close()

    broomio.run(main, debug=False)
    start, spawned = snapshots["start"], snapshots["spawned"]
    waiting, inbox, after = snapshots["waiting"], snapshots["inbox"], snapshots["after"]
    assert isinstance(start, broomio.LoopStatistics)
    assert (start.tasks_living, start.tasks_runnable, start.timers_pending) == (1, 0, 0)
    assert start.seconds_to_next_deadline == float("inf")
    assert start.debug is False and start.instruments == 0
    assert (spawned.tasks_living, spawned.tasks_runnable) == (4, 3)
    assert waiting.tasks_living == 5 and waiting.tasks_runnable == 0
    assert waiting.timers_pending == 3
    assert 99 < waiting.seconds_to_next_deadline <= 100
    assert (waiting.io_fds_registered, waiting.io_tasks_waiting) == (1, 1)
    assert waiting.threadsafe_queue_size == 0 and inbox.threadsafe_queue_size == 1
    assert start.io_waits == 0 and snapshots["slept"].io_waits >= 1
    assert snapshots["slept"].io_waits <= after.io_waits
    assert (after.tasks_living, after.timers_pending, after.io_tasks_waiting) == (1, 0, 0)
    with pytest.raises(Exception):
        start.tasks_living = 3  # type: ignore[misc]  # frozen


def test_statistics_outside_a_task():
    with pytest.raises(RuntimeError):
        broomio.statistics()
    loop = broomio.Loop()
    loop.start_soon(broomio.sleep, 0)
    stats = loop.statistics()
    assert (stats.tasks_living, stats.tasks_runnable) == (1, 1)
    loop.run()
    assert loop.statistics().tasks_living == 0
    loop.close()
    with pytest.raises(RuntimeError):
        loop.statistics()


# ---------------------------------------------------------------------------
# task tree


def test_dump_task_tree_names_nested_nurseries_and_tasks():
    out = {}
    lines = {}

    async def leaf():
        lines["leaf"] = here() + 1
        await broomio.sleep(100)

    async def outer():
        async with broomio.open_nursery() as inner:
            inner.start_soon(leaf, name="leaf-1")
            inner.start_soon(leaf, name="leaf-2")
            await broomio.sleep(100)

    async def main():
        async with broomio.open_nursery() as nursery:
            nursery.start_soon(outer, name="outer")
            await broomio.sleep(0.01)
            out["tree"] = lowlevel.dump_task_tree()
            nursery.cancel_scope.cancel()

    broomio.run(main)
    tree = out["tree"].splitlines()
    assert "4 unfinished task(s)" in tree[0]

    def row(name):
        [found] = [i for i, text in enumerate(tree) if re.search(rf"task '([^' ]*\.)?{name}'", text)]
        return found, len(tree[found]) - len(tree[found].lstrip("│ ├└─"))

    main_row, main_depth = row("main")
    outer_row, outer_depth = row("outer")
    leaf1_row, leaf1_depth = row("leaf-1")
    leaf2_row, leaf2_depth = row("leaf-2")
    assert "root nursery" in tree[1]
    assert main_depth < outer_depth < leaf1_depth == leaf2_depth
    assert main_row < outer_row < leaf1_row < leaf2_row
    assert "(running: the caller)" in tree[main_row]
    assert f"{__file__}:{lines['leaf']} in " in tree[leaf1_row]
    assert "awaiting <broomio sleep awaitable>" in tree[leaf2_row]
    # outer's own nursery sits between outer and its leaves
    assert any("nursery (2 task(s))" in text for text in tree[outer_row:leaf1_row])


def test_dump_task_tree_of_a_loop_that_is_not_running():
    async def nap():
        await broomio.sleep(1)

    loop = broomio.Loop()
    loop.start_soon(nap, name="napper")
    text = lowlevel.dump_task_tree(loop)
    assert "task 'napper' [ready]" in text
    loop.close()
    with pytest.raises(RuntimeError):
        lowlevel.dump_task_tree(loop)
    with pytest.raises(RuntimeError):
        lowlevel.dump_task_tree()


# ---------------------------------------------------------------------------
# the example


def test_debug_blocking_example():
    """examples/debug_blocking.py: debug mode names the time.sleep line; exits 0."""
    import os
    import subprocess

    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    path = os.path.join(examples, "debug_blocking.py")
    with open(path, encoding="utf-8") as f:
        [line] = [i for i, text in enumerate(f, 1) if "time.sleep(0.15)" in text]
    proc = subprocess.run(
        [sys.executable, path], capture_output=True, text=True, timeout=60, cwd=examples,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"caught SlowStepWarning at line {line}: " in out
    assert f"task 'blocking_work' blocked the event loop" in out
    assert f"debug_blocking.py:{line} in blocking_work" in out
    assert "slow steps reported: " in out
    assert "task 'ticker' [waiting]" in out  # the tree dump
    assert "WARNING broomio:" in proc.stderr  # the logging side of the report
