"""run_in_thread, current_default_thread_limiter and from_thread."""

import contextvars
import inspect
import json
import os
import signal
import threading
import time
import traceback

import pytest
import trio

import broomio
from broomio import (
    CancelScope,
    CapacityLimiter,
    Loop,
    from_thread,
    move_on_after,
    open_nursery,
    run_in_thread,
    sleep,
)
from broomio.lowlevel import checkpoint

from conftest import GUARD, Log, assert_at_least, oracle, run, run_python

VAR = contextvars.ContextVar("VAR", default="unset")


def _raise_value_error_deep():
    def innermost():
        raise ValueError("from the thread")

    innermost()


async def _wait_for(predicate, what):
    deadline = time.monotonic() + GUARD
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await sleep(0.005)


# --------------------------------------------------------------------------------------------
# run_in_thread basics


def test_returns_result_from_another_thread():
    async def main():
        loop_thread = threading.get_ident()
        ident, name, value = await run_in_thread(
            lambda a, b: (threading.get_ident(), threading.current_thread().name, a + b), 2, 3
        )
        return loop_thread, ident, name, value

    loop_thread, ident, name, value = run(main)
    assert value == 5
    assert ident != loop_thread
    assert name == "broomio-worker"


def test_error_keeps_type_and_traceback():
    async def main():
        try:
            await run_in_thread(_raise_value_error_deep)
        except ValueError as exc:
            return exc
        return None

    exc = run(main)
    assert isinstance(exc, ValueError) and str(exc) == "from the thread"
    names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    # The task's frame first, then the worker's frames down to where it was raised.
    assert names.index("main") < names.index("_raise_value_error_deep") < names.index("innermost")


def test_base_exceptions_from_the_thread_are_delivered_too():
    def exit_():
        raise SystemExit(3)

    async def main():
        with pytest.raises(SystemExit) as info:
            await run_in_thread(exit_)
        return info.value.code

    assert run(main) == 3


def test_loop_keeps_running_while_the_thread_blocks():
    ticks = Log()

    async def ticker(stop):
        while not stop.is_set():
            ticks("tick")
            await sleep(0.01)

    async def main():
        stop = broomio.Event()
        async with open_nursery() as n:
            n.start_soon(ticker, stop)
            await run_in_thread(time.sleep, 0.2)
            stop.set()

    run(main)
    assert len(ticks) >= 5  # the loop ran ~20 ticks while the thread slept 0.2 s


def test_contextvars_are_copied_into_the_thread():
    async def main():
        VAR.set("task value")

        def in_thread():
            seen = VAR.get()
            VAR.set("changed in thread")  # a copy: the task does not see it
            return seen

        seen = await run_in_thread(in_thread)
        return seen, VAR.get()

    assert run(main) == ("task value", "task value")


def test_threads_are_reused():
    async def main():
        return {await run_in_thread(threading.get_ident) for _ in range(200)}

    idents = run(main)
    assert len(idents) <= 2, idents  # sequential calls find an idle worker


def test_many_concurrent_calls():
    async def main():
        results = {}

        async def one(i):
            results[i] = await run_in_thread(lambda: i * i)

        async with open_nursery() as n:
            for i in range(300):
                n.start_soon(one, i)
        return results

    assert run(main) == {i: i * i for i in range(300)}


def test_bad_arguments():
    async def main():
        with pytest.raises(TypeError, match="'fn' must be callable"):
            await run_in_thread(42)
        with pytest.raises(TypeError, match="'limiter' must be a CapacityLimiter"):
            await run_in_thread(print, limiter=3)

    run(main)


def test_async_function_is_refused():
    async def coro_fn():
        return 1

    def worker():
        try:
            from_thread.run_sync(coro_fn)
        except TypeError as exc:
            return str(exc)

    async def main():
        with pytest.raises(TypeError, match="returned a coroutine"):
            await run_in_thread(coro_fn)
        return await run_in_thread(worker)

    assert "use from_thread.run()" in run(main)


def test_outside_a_loop_is_refused():
    coro = run_in_thread(print)
    with pytest.raises(RuntimeError):
        coro.send(None)
    coro.close()


# --------------------------------------------------------------------------------------------
# limiter


def test_default_limiter_has_40_tokens_and_is_per_loop():
    async def main():
        lim = broomio.current_default_thread_limiter()
        assert lim is broomio.current_default_thread_limiter()
        return lim

    a, b = run(main), run(main)
    assert isinstance(a, CapacityLimiter) and a.total_tokens == 40
    assert a is not b


def _max_concurrency(n_calls, limiter_factory):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()
    release = threading.Event()

    def work():
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        release.wait(GUARD)
        with lock:
            state["now"] -= 1

    async def main():
        limiter = limiter_factory()
        lim = limiter or broomio.current_default_thread_limiter()
        async with open_nursery() as n:
            for _ in range(n_calls):
                n.start_soon(lambda: run_in_thread(work, limiter=limiter))
            await _wait_for(lambda: lim.borrowed_tokens == min(n_calls, lim.total_tokens),
                            "the limiter to fill")
            await sleep(0.05)  # give any excess thread the chance to start (it must not)
            borrowed = lim.borrowed_tokens
            release.set()
        return borrowed, lim.borrowed_tokens

    borrowed, after = run(main)
    return state["max"], borrowed, after


def test_limiter_bounds_concurrent_threads():
    most, borrowed, after = _max_concurrency(7, lambda: CapacityLimiter(3))
    assert (most, borrowed, after) == (3, 3, 0)


def test_default_limiter_bounds_at_40():
    most, borrowed, after = _max_concurrency(50, lambda: None)
    assert (most, borrowed, after) == (40, 40, 0)


# --------------------------------------------------------------------------------------------
# cancellation


def test_not_cancellable_by_default_waits_for_the_thread():
    log = Log()

    def slow():
        time.sleep(0.2)
        log("thread done")
        return "value"

    async def main():
        t0 = time.monotonic()
        with move_on_after(0.02) as scope:
            result = await run_in_thread(slow)
            log(("returned", result))
            await checkpoint()
            log("not reached")
        log("scope exited")
        assert_at_least(time.monotonic() - t0, 0.2)
        return scope.cancelled_caught

    assert run(main) is True
    assert log == ["thread done", ("returned", "value"), "scope exited"]


def test_cancellable_abandons_the_thread_but_holds_the_token():
    started = threading.Event()
    release = threading.Event()
    log = Log()

    def blocked():
        started.set()
        release.wait(GUARD)
        log("thread done")
        raise ValueError("dropped")  # the abandoned call's outcome is discarded

    async def main():
        limiter = CapacityLimiter(1)
        scope = CancelScope()

        async def cancel_once_started():
            # Cancel only once the thread runs: a call cancelled before a worker picks it
            # up never starts and returns its token at once (the next test).
            await _wait_for(started.is_set, "the thread to start")
            scope.cancel()

        async with open_nursery() as nursery:
            nursery.start_soon(cancel_once_started)
            with scope:
                await run_in_thread(blocked, cancellable=True, limiter=limiter)
        log("scope exited")
        assert scope.cancelled_caught
        assert limiter.borrowed_tokens == 1  # the thread still runs
        release.set()
        await _wait_for(lambda: limiter.borrowed_tokens == 0, "the token to come back")
        log("token back")

    run(main)
    assert log == ["scope exited", "thread done", "token back"]


def test_cancelled_before_starting_never_runs():
    ran = []

    async def main():
        with move_on_after(0) as scope:
            scope.cancel()
            await run_in_thread(ran.append, 1)
        return scope.cancelled_caught

    assert run(main) is True
    assert ran == []


def test_cancellation_matches_trio():
    """The same scenario under trio.to_thread.run_sync and broomio.run_in_thread."""

    def scenario(lib, log):
        if lib.name == "trio":
            # trio >= 0.23 renamed cancellable= to abandon_on_cancel=.
            params = inspect.signature(trio.to_thread.run_sync).parameters
            keyword = "abandon_on_cancel" if "abandon_on_cancel" in params else "cancellable"

            def in_thread(fn, *args, cancellable=False):
                return trio.to_thread.run_sync(fn, *args, **{keyword: cancellable})
        else:
            in_thread = run_in_thread

        async def body():
            def slow(tag):
                time.sleep(0.1)
                log(f"{tag} thread done")
                return tag

            with lib.move_on_after(0.02) as scope:
                log(await in_thread(slow, "shielded"))
            log(("shielded caught", scope.cancelled_caught))
            with lib.move_on_after(0.02) as scope:
                log(await in_thread(slow, "abandoned", cancellable=True))
            log(("abandoned caught", scope.cancelled_caught))
            await lib.sleep(0.2)  # let the abandoned thread finish before the run ends

        return body()

    trio_obs, broomio_obs = oracle(lambda lib, log: scenario(lib, log))
    assert trio_obs == broomio_obs
    assert broomio_obs[0] == [
        # No checkpoint after the shielded call returned: nothing raised, nothing caught.
        "shielded thread done", "shielded", ("shielded caught", False),
        ("abandoned caught", True), "abandoned thread done",
    ]


# --------------------------------------------------------------------------------------------
# from_thread


def test_from_thread_run_sync_runs_in_the_loop_thread():
    async def main():
        loop_thread = threading.get_ident()
        VAR.set("from the task")

        def worker():
            return from_thread.run_sync(lambda x: (threading.get_ident(), VAR.get(), x), 7)

        ident, var, x = await run_in_thread(worker)
        return ident == loop_thread, var, x

    assert run(main) == (True, "from the task", 7)


def test_from_thread_run_runs_a_task():
    async def double_later(x):
        await sleep(0.01)
        return broomio.current_task().name, x * 2

    async def main():
        return await run_in_thread(lambda: from_thread.run(double_later, 21))

    name, value = run(main)
    assert value == 42
    assert "double_later" in name


def test_from_thread_errors_travel_back():
    async def failing():
        await sleep(0)
        raise KeyError("async side")

    def sync_failing():
        raise IndexError("sync side")

    def worker():
        out = []
        for call in (lambda: from_thread.run(failing), lambda: from_thread.run_sync(sync_failing)):
            try:
                call()
            except Exception as exc:
                out.append((type(exc).__name__, exc.__traceback__ is not None))
        return out

    async def main():
        return await run_in_thread(worker)

    assert run(main) == [("KeyError", True), ("IndexError", True)]


def test_from_thread_in_the_loop_thread_is_refused():
    async def afn():
        return 1

    async def main():
        with pytest.raises(RuntimeError, match="loop's own thread"):
            from_thread.run_sync(print)
        with pytest.raises(RuntimeError, match="loop's own thread"):
            from_thread.run(afn)

    run(main)


def test_from_thread_in_an_unrelated_thread_needs_the_loop():
    errors = []

    def plain_thread():
        try:
            from_thread.run_sync(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=plain_thread)
    t.start()
    t.join(GUARD)
    assert len(errors) == 1 and "run_in_thread" in errors[0]


def test_from_thread_with_explicit_loop_from_a_plain_thread():
    results = []

    async def afn(x):
        await sleep(0)
        return x + 1

    async def main():
        loop = broomio.current_loop()
        done = broomio.Event()

        def plain_thread():
            results.append(from_thread.run(afn, 1, loop=loop))
            results.append(from_thread.run_sync(lambda: "sync", loop=loop))
            from_thread.run_sync(done.set, loop=loop)

        threading.Thread(target=plain_thread).start()
        await done.wait()

    run(main)
    assert results == [2, "sync"]
    with pytest.raises(TypeError, match="'loop' must be a broomio Loop"):
        from_thread.run_sync(print, loop="nope")


def test_from_thread_bad_arguments():
    with pytest.raises(TypeError, match="'fn' must be callable"):
        from_thread.run_sync(3)
    with pytest.raises(TypeError, match="'afn' must be an async function"):
        from_thread.run(3)


def test_from_thread_after_the_loop_closed_is_a_runtime_error():
    outcome = []
    go = threading.Event()

    def worker():
        go.wait(GUARD)
        try:
            from_thread.run_sync(lambda: "never")
        except RuntimeError as exc:
            outcome.append(str(exc))

    loop = Loop()

    async def main():
        with move_on_after(0.01):
            await run_in_thread(worker, cancellable=True)

    loop.run_until_complete(main)
    go.set()
    time.sleep(0.1)  # the request reaches the (stopped) loop's inbox, or the loop is closed
    loop.close()
    deadline = time.monotonic() + GUARD
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(outcome) == 1 and "closed" in outcome[0]


def test_from_thread_run_sync_inside_nested_run_in_thread():
    """A worker started from a from_thread.run task knows its loop too."""

    async def inner():
        return await run_in_thread(lambda: from_thread.run_sync(lambda: "deep"))

    async def main():
        return await run_in_thread(lambda: from_thread.run(inner))

    assert run(main) == "deep"


# --------------------------------------------------------------------------------------------
# the resolver goes through run_in_thread


def test_getaddrinfo_uses_the_thread_limiter():
    import broomio.socket as bsocket

    async def main():
        limiter = broomio.current_default_thread_limiter()
        limiter.total_tokens = 1
        blocker = threading.Event()
        async with open_nursery() as n:
            n.start_soon(lambda: run_in_thread(blocker.wait, GUARD))
            await _wait_for(lambda: limiter.borrowed_tokens == 1, "the blocker to start")
            with move_on_after(0.05) as scope:
                await bsocket.getaddrinfo("localhost", 80)  # waits for a token: cancellable
            blocker.set()
        assert scope.cancelled_caught
        infos = await bsocket.getaddrinfo("localhost", 80)
        return bool(infos)

    assert run(main) is True


# --------------------------------------------------------------------------------------------
# no leaks: 10k calls in a fresh interpreter


LEAK_CODE = """
import gc, json, os, sys, threading
import broomio

def sample():
    gc.collect(); gc.collect()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"objects": len(gc.get_objects()), "blocks": sys.getallocatedblocks(), "rss": rss,
            "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count()}

def fail():
    raise ValueError("x")

SAMPLES = []
async def main():
    for rnd in range(100):
        for i in range(80):
            assert await broomio.run_in_thread(abs, -i) == i
        for i in range(10):
            try:
                await broomio.run_in_thread(fail)
            except ValueError:
                pass
        async with broomio.open_nursery() as n:
            for i in range(10):
                n.start_soon(broomio.run_in_thread, abs, i)
        if rnd + 1 in (20, 60, 100):
            SAMPLES.append(sample())

broomio.run(main)
print(json.dumps(SAMPLES))
"""


def test_10k_calls_leak_no_threads_or_memory():
    from test_leaks import _check

    proc = run_python(LEAK_CODE, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = json.loads(proc.stdout.strip().splitlines()[-1])
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        # AddressSanitizer keeps freed memory in quarantine: RSS says nothing there.
        for s in samples:
            s["rss"] = samples[0]["rss"]
    _check("run_in_thread", samples)
    threads = [s["threads"] for s in samples]
    assert threads[0] == threads[1] == threads[2] <= 1 + 40, threads


# --------------------------------------------------------------------------------------------
# Ctrl-C while a thread call is pending (a real SIGINT to a child interpreter)

SIGINT_CODE = """
import threading, time
import broomio
from broomio import Cancelled, sleep

def blocking():
    print("ready", flush=True)
    {body}

async def main():
    try:
        result = await broomio.run_in_thread(blocking, cancellable={cancellable})
        print("returned", result, flush=True)
        await sleep(30)
    except Cancelled:
        print("saw Cancelled", flush=True)
        raise
    finally:
        print("cleanup", flush=True)

try:
    broomio.run(main)
except KeyboardInterrupt:
    print("KI", flush=True)
    raise
"""


def test_ctrl_c_waits_for_a_non_cancellable_thread(python_child):
    # The thread finishes only once Ctrl-C has cancelled the loop's tasks (a helper task
    # releases it from its cancellation handler), so the order below is deterministic.
    child = python_child("""
import threading
import broomio
from broomio import Cancelled, sleep, sleep_forever

interrupted = threading.Event()

def blocking():
    print("ready", flush=True)
    interrupted.wait(20)
    print("thread done", flush=True)
    return 42

async def helper():
    try:
        await sleep_forever()
    finally:
        print("helper cancelled", flush=True)
        interrupted.set()

async def caller():
    try:
        result = await broomio.run_in_thread(blocking)
        print("returned", result, flush=True)
        await sleep(30)
    except Cancelled:
        print("saw Cancelled", flush=True)
        raise
    finally:
        print("cleanup", flush=True)

async def main():
    async with broomio.open_nursery() as n:
        n.start_soon(helper)
        n.start_soon(caller)

try:
    broomio.run(main)
except KeyboardInterrupt:
    print("KI", flush=True)
    raise
""")
    child.wait_for_line("ready", settle=0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=15)
    assert out.splitlines() == ["ready", "helper cancelled", "thread done", "returned 42",
                                "saw Cancelled", "cleanup", "KI"], (out, err)
    assert child.proc.returncode != 0 and "KeyboardInterrupt" in err


def test_ctrl_c_abandons_a_cancellable_thread_and_exits(python_child):
    body = "threading.Event().wait()  # never returns"
    child = python_child(SIGINT_CODE.format(body=body, cancellable=True))
    child.wait_for_line("ready", settle=0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.finish(timeout=15)  # the blocked daemon thread does not hold the exit
    assert out.splitlines() == ["ready", "saw Cancelled", "cleanup", "KI"], (out, err)
    assert child.proc.returncode != 0 and "KeyboardInterrupt" in err


def test_thread_start_failure_is_raised_and_leaves_nothing_behind(monkeypatch):
    from broomio import _threads

    class Refusing(threading.Thread):
        def start(self):
            raise RuntimeError("can't start new thread")

    async def main():
        limiter = CapacityLimiter(5)
        # A fresh cache has no idle worker, so the call needs a new thread.
        monkeypatch.setattr(_threads, "_cache", _threads._ThreadCache())
        monkeypatch.setattr(_threads.threading, "Thread", Refusing)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await run_in_thread(print, "never", limiter=limiter)
        monkeypatch.undo()
        assert limiter.borrowed_tokens == 0
        return await run_in_thread(lambda: "works again", limiter=limiter)

    assert run(main) == "works again"
