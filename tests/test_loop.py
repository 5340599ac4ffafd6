"""broomio.Loop, broomio.run and the current_* accessors."""

import threading
import time

import pytest

import broomio
from broomio import Loop, sleep
from conftest import Log, assert_at_least, run


# ---------------------------------------------------------------------------
# the original README example


def test_readme_example_runs_tasks_concurrently():
    log = Log()

    async def test(i):
        log("started", i)
        await sleep(0.2)
        log("stopped", i)

    loop = Loop()
    loop.start_soon(test(1))
    loop.start_soon(test(2))
    loop.start_soon(test(3))
    t0 = time.monotonic()
    loop.run()
    elapsed = time.monotonic() - t0
    loop.close()

    assert log == [("started", 1), ("started", 2), ("started", 3),
                   ("stopped", 1), ("stopped", 2), ("stopped", 3)]
    assert_at_least(elapsed, 0.2)
    # Three 0.2 s sleeps run concurrently: about 0.2 s, not 0.6 s.
    assert elapsed < 0.55, f"tasks did not run concurrently: {elapsed:.3f}s"


def test_loop_without_tasks_returns_at_once():
    loop = Loop()
    t0 = time.monotonic()
    assert loop.run() is None
    elapsed = time.monotonic() - t0
    loop.close()
    assert elapsed < 0.5, f"an empty loop took {elapsed:.3f}s"


def test_start_soon_accepts_function_and_args(loop):
    log = Log()

    async def task(a, b):
        log(a + b)

    t = loop.start_soon(task, 1, 2)
    assert isinstance(t, broomio.Task)
    loop.run()
    assert log == [3]
    assert t.done()


def test_root_tasks_start_in_start_soon_order(loop):
    log = Log()

    async def task(i):
        log(i)

    for i in range(10):
        loop.start_soon(task, i)
    loop.run()
    assert log == list(range(10))


def test_run_returns_only_after_every_task_finished(loop):
    log = Log()

    async def short():
        await sleep(0.01)
        log("short")

    async def long():
        await sleep(0.1)
        log("long")

    loop.start_soon(long)
    loop.start_soon(short)
    t0 = time.monotonic()
    loop.run()
    assert_at_least(time.monotonic() - t0, 0.1)
    assert log == ["short", "long"]


def test_loop_can_run_again(loop):
    log = Log()

    async def task(i):
        await sleep(0)
        log(i)

    loop.start_soon(task, 1)
    loop.run()
    assert log == [1]
    loop.start_soon(task, 2)
    loop.start_soon(task, 3)
    loop.run()
    assert log == [1, 2, 3]
    loop.run()  # nothing to do any more
    assert log == [1, 2, 3]


def test_start_soon_from_inside_a_task(loop):
    log = Log()

    async def child(i):
        await sleep(0.01)
        log("child", i)

    async def parent():
        loop.start_soon(child, 1)
        broomio.current_loop().start_soon(child, 2)
        log("parent done")

    loop.start_soon(parent)
    loop.run()
    # run() waited for the root tasks added while it was running.
    assert log[0] == "parent done"
    assert sorted(log[1:]) == [("child", 1), ("child", 2)]


def test_start_later_delays_task_body(loop):
    log = Log()
    t0 = time.monotonic()

    async def task(name):
        log(name, time.monotonic() - t0)

    loop.start_later(0.1, task, "later")
    loop.start_soon(task, "soon")
    loop.run()
    assert [name for name, _ in log] == ["soon", "later"]
    assert_at_least(log[1][1], 0.1, "start_later delay")


def test_start_later_with_coroutine_and_zero_delay(loop):
    log = Log()

    async def task(i):
        log(i)

    t = loop.start_later(0, task(7))
    loop.run()
    assert log == [7]
    assert t.result() is None


def test_task_default_and_explicit_name(loop):
    async def worker():
        pass

    t1 = loop.start_soon(worker)
    t2 = loop.start_soon(worker, name="custom")
    loop.run()
    assert t1.name == worker.__qualname__
    assert t2.name == "custom"


# ---------------------------------------------------------------------------
# errors from root tasks


def test_failing_root_task_cancels_others_and_run_raises_group(loop):
    log = Log()

    async def bad():
        await sleep(0.01)
        raise ValueError("boom")

    async def good():
        try:
            await sleep(10)
        except BaseException as e:
            log("good saw", type(e).__name__)
            raise
        finally:
            log("good finally")

    loop.start_soon(good)
    loop.start_soon(bad)
    with pytest.raises(ExceptionGroup) as ei:
        loop.run()
    assert log == [("good saw", "Cancelled"), "good finally"]
    assert [type(e) for e in ei.value.exceptions] == [ValueError]
    assert str(ei.value.exceptions[0]) == "boom"


def test_all_root_task_errors_are_in_the_group(loop):
    async def bad(exc):
        raise exc

    loop.start_soon(bad, ValueError("a"))
    loop.start_soon(bad, KeyError("b"))
    with pytest.raises(ExceptionGroup) as ei:
        loop.run()
    assert sorted(type(e).__name__ for e in ei.value.exceptions) == ["KeyError", "ValueError"]


def test_except_star_on_run(loop):
    async def bad():
        raise ValueError("x")

    loop.start_soon(bad)
    caught = []
    try:
        loop.run()
    except* ValueError as eg:
        caught.extend(eg.exceptions)
    assert [str(e) for e in caught] == ["x"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboardinterrupt_and_systemexit_from_root_task_propagate_as_themselves(loop, exc_type):
    log = Log()

    async def bad():
        await sleep(0.01)
        raise exc_type("stop")

    async def other():
        try:
            await sleep(10)
        finally:
            log("other finally")

    loop.start_soon(other)
    loop.start_soon(bad)
    with pytest.raises(exc_type) as ei:
        loop.run()
    assert type(ei.value) is exc_type
    assert log == ["other finally"]


def test_loop_usable_after_run_raised(loop):
    async def bad():
        raise ValueError

    async def good():
        return 5

    loop.start_soon(bad)
    with pytest.raises(ExceptionGroup):
        loop.run()
    t = loop.start_soon(good)
    loop.run()
    assert t.result() == 5


# ---------------------------------------------------------------------------
# run_until_complete / broomio.run


def test_run_until_complete_returns_main_result(loop):
    async def main(a, b):
        await sleep(0)
        return a * b

    assert loop.run_until_complete(main, 6, 7) == 42
    assert loop.run_until_complete(main(2, 3)) == 6


def test_run_until_complete_waits_for_other_root_tasks(loop):
    log = Log()

    async def other():
        await sleep(0.05)
        log("other")

    async def main():
        loop.start_soon(other)
        log("main")
        return "m"

    assert loop.run_until_complete(main) == "m"
    assert log == ["main", "other"]


def test_run_until_complete_main_failure_propagates_as_itself(loop):
    async def main():
        await sleep(0)
        raise ValueError("main failed")

    with pytest.raises(ValueError, match="main failed"):
        loop.run_until_complete(main)


def test_run_until_complete_group_when_other_root_tasks_fail_too(loop):
    async def other():
        raise KeyError("other")

    async def main():
        loop.start_soon(other)
        raise ValueError("main")  # before `other` runs; it then fails without a checkpoint

    with pytest.raises(ExceptionGroup) as ei:
        loop.run_until_complete(main)
    assert sorted(type(e).__name__ for e in ei.value.exceptions) == ["KeyError", "ValueError"]


def test_broomio_run_fn_args_and_coroutine():
    async def main(x, y=10):
        await sleep(0)
        return x + y

    assert run(main, 1) == 11
    assert run(main(1, 2)) == 3


def test_broomio_run_propagates_exception_as_itself():
    async def main():
        raise ZeroDivisionError("z")

    with pytest.raises(ZeroDivisionError, match="z"):
        run(main)


def test_broomio_run_accepts_backend_epoll():
    async def main():
        await sleep(0.01)
        return "ok"

    assert broomio.run(main, backend="epoll") == "ok"
    assert broomio.run(main, backend=None, clock=None, debug=False) == "ok"


# ---------------------------------------------------------------------------
# clock, properties, current_*


def test_loop_time_advances_with_sleep(loop):
    seen = []

    async def main():
        t0 = loop.time()
        assert broomio.current_time() == pytest.approx(t0, abs=0.05)
        await sleep(0.1)
        seen.append(loop.time() - t0)

    loop.run_until_complete(main)
    assert isinstance(seen[0], float)
    assert_at_least(seen[0], 0.1, "loop.time() delta")
    a = loop.time()
    b = loop.time()
    assert isinstance(a, float) and b >= a


def test_current_accessors_inside_task(loop):
    seen = {}

    async def main():
        seen["loop"] = broomio.current_loop()
        seen["task"] = broomio.current_task()
        seen["time"] = broomio.current_time()
        seen["running"] = loop.running

    task = loop.start_soon(main)
    loop.run()
    assert seen["loop"] is loop
    assert seen["task"] is task
    assert isinstance(seen["time"], float)
    assert seen["running"] is True


def test_current_task_differs_per_task(loop):
    seen = {}

    async def worker(i):
        await sleep(0)
        seen[i] = broomio.current_task()

    tasks = [loop.start_soon(worker, i) for i in range(3)]
    loop.run()
    assert [seen[i] for i in range(3)] == tasks


@pytest.mark.parametrize("fn", [broomio.current_time, broomio.current_task, broomio.current_loop])
def test_current_accessors_outside_loop_raise(fn):
    with pytest.raises(RuntimeError):
        fn()


def test_current_accessors_outside_loop_from_other_thread_while_loop_runs(loop):
    errors = []

    def in_thread():
        for fn in (broomio.current_time, broomio.current_task, broomio.current_loop):
            try:
                fn()
            except RuntimeError:
                errors.append(fn.__name__)

    async def main():
        th = threading.Thread(target=in_thread)
        th.start()
        while th.is_alive():
            await sleep(0.005)
        th.join()

    loop.run_until_complete(main)
    assert len(errors) == 3


def test_running_and_closed_properties():
    loop = Loop()
    assert loop.running is False
    assert loop.closed is False
    loop.run()
    assert loop.running is False
    loop.close()
    assert loop.closed is True
    loop.close()  # idempotent
    assert loop.closed is True
    with pytest.raises(AttributeError):
        loop.running = True
    with pytest.raises(AttributeError):
        loop.closed = False


def test_debug_flag_and_slow_callback_duration(monkeypatch):
    monkeypatch.delenv("BROOMIO_DEBUG", raising=False)
    lp = Loop()
    assert lp.debug is False
    assert lp.slow_callback_duration == pytest.approx(0.1)
    lp.slow_callback_duration = 0.5
    assert lp.slow_callback_duration == pytest.approx(0.5)
    lp.close()

    lp = Loop(debug=True)
    assert lp.debug is True
    lp.close()

    monkeypatch.setenv("BROOMIO_DEBUG", "1")
    lp = Loop()
    assert lp.debug is True
    lp.close()
    lp = Loop(debug=False)
    assert lp.debug is False
    lp.close()


def test_backend_epoll_explicit():
    lp = Loop(backend="epoll")
    seen = []

    async def main():
        await sleep(0.01)
        seen.append(1)

    lp.run_until_complete(main)
    lp.close()
    assert seen == [1]


def test_two_loops_sequentially_in_one_thread():
    results = []
    for i in range(3):
        lp = Loop()

        async def main(i=i):
            await sleep(0)
            return i

        results.append(lp.run_until_complete(main))
        lp.close()
    assert results == [0, 1, 2]


def test_loops_in_two_threads_concurrently():
    results = {}

    def worker(i):
        async def main():
            await sleep(0.1)
            return broomio.current_loop()

        lp = Loop()
        results[i] = (lp, lp.run_until_complete(main))
        lp.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert_at_least(time.monotonic() - t0, 0.1)
    assert sorted(results) == [0, 1]
    for lp, seen in results.values():
        assert seen is lp


# ---------------------------------------------------------------------------
# CPU use


def test_idle_loop_uses_no_cpu():
    async def main():
        await sleep(1)

    loop = Loop()
    loop.start_soon(main)
    c0 = time.process_time()
    t0 = time.monotonic()
    loop.run()
    cpu = time.process_time() - c0
    wall = time.monotonic() - t0
    loop.close()
    assert_at_least(wall, 1.0)
    assert cpu < 0.05, f"sleeping 1 s burned {cpu:.3f}s of CPU"


def test_idle_loop_parked_forever_uses_no_cpu():
    """A loop with no timers at all (only a parked task) must block, not spin."""
    from broomio.lowlevel import ParkingLot

    lot = ParkingLot()
    loop = Loop()

    def waker():
        time.sleep(0.5)
        loop.call_soon_threadsafe(lot.unpark)

    async def main():
        await lot.park()

    loop.start_soon(main)
    th = threading.Thread(target=waker)
    c0 = time.process_time()
    th.start()
    loop.run()
    cpu = time.process_time() - c0
    th.join()
    loop.close()
    assert cpu < 0.05, f"parked loop burned {cpu:.3f}s of CPU in 0.5 s"
