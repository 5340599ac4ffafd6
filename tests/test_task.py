"""broomio.Task: join / result / exception / done / cancelled / cancel."""

import time

import pytest

import broomio
from broomio import (
    CancelScope,
    Cancelled,
    Task,
    TaskCancelled,
    move_on_after,
    open_nursery,
    sleep,
    sleep_forever,
)
from conftest import GUARD, Log, assert_at_least, run


def test_taskcancelled_is_exception():
    assert issubclass(TaskCancelled, Exception)


def test_join_returns_result_and_waits():
    log = Log()

    async def child():
        await sleep(0.05)
        log("child done")
        return 42

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(child)
            t0 = time.monotonic()
            value = await t.join()
            log("joined", value)
            return time.monotonic() - t0

    elapsed = run(main)
    assert log == ["child done", ("joined", 42)]
    assert_at_least(elapsed, 0.05)


def test_join_finished_task_returns_immediately():
    async def child():
        return "x"

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(child)
        assert t.done()
        return await t.join(), await t.join()

    assert run(main) == ("x", "x")


def test_done_result_exception_lifecycle():
    seen = Log()

    async def child():
        await sleep(0.02)
        return "value"

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(child)
            seen("done", t.done())
            seen("cancelled", t.cancelled())
            with pytest.raises(RuntimeError):
                t.result()
            with pytest.raises(RuntimeError):
                t.exception()
        seen("done", t.done())
        seen("cancelled", t.cancelled())
        seen("result", t.result())
        seen("exception", t.exception())

    run(main)
    assert seen == [("done", False), ("cancelled", False), ("done", True),
                    ("cancelled", False), ("result", "value"), ("exception", None)]


def test_result_none():
    async def child():
        pass

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(child)
        return t.result(), t.exception()

    assert run(main) == (None, None)


def test_many_joiners_get_the_result():
    results = []

    async def target():
        await sleep(0.03)
        return "shared"

    async def joiner(t):
        results.append(await t.join())

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(target)
            for _ in range(5):
                n.start_soon(joiner, t)

    run(main)
    assert results == ["shared"] * 5


def test_join_task_from_another_nursery():
    async def target():
        await sleep(0.02)
        return 7

    async def joiner(t):
        return await t.join() + 1

    async def main():
        async with open_nursery() as a:
            t = a.start_soon(target)
            async with open_nursery() as b:
                j = b.start_soon(joiner, t)
        return j.result()

    assert run(main) == 8


def test_join_root_task():
    loop = broomio.Loop()

    async def target():
        await sleep(0.02)
        return "root"

    async def main():
        t = loop.start_soon(target)
        return await t.join()

    assert loop.run_until_complete(main) == "root"
    loop.close()


def test_joining_failed_task_raises_and_nursery_still_reports():
    log = Log()

    async def failer():
        await sleep(0.02)
        raise ValueError("task failed")

    async def main():
        try:
            async with open_nursery() as n:
                t = n.start_soon(failer)
                # Shielded so that the nursery's cancellation cannot win the race.
                with CancelScope(shield=True):
                    try:
                        await t.join()
                    except ValueError as e:
                        log("join raised", str(e))
                        joined_exc = e
        except* ValueError as eg:
            log("nursery raised", [str(e) for e in eg.exceptions])
            assert eg.exceptions[0] is joined_exc
        with pytest.raises(ValueError, match="task failed"):
            await t.join()
        with pytest.raises(ValueError, match="task failed"):
            t.result()
        log("exception", type(t.exception()), t.exception() is joined_exc)
        log("done/cancelled", t.done(), t.cancelled())

    run(main)
    assert log == [("join raised", "task failed"), ("nursery raised", ["task failed"]),
                   ("exception", ValueError, True), ("done/cancelled", True, False)]


def test_join_after_nursery_reported_failure():
    async def failer():
        raise KeyError("k")

    async def main():
        try:
            async with open_nursery() as n:
                t = n.start_soon(failer)
        except* KeyError:
            pass
        with pytest.raises(KeyError):
            await t.join()
        return type(t.exception())

    assert run(main) is KeyError


def test_failed_root_task_error_reaches_run_even_if_joined():
    loop = broomio.Loop()
    log = Log()

    async def failer():
        await sleep(0.01)
        raise ValueError("root failed")

    async def joiner(t):
        with CancelScope(shield=True):
            try:
                await t.join()
            except ValueError:
                log("joined")

    t = loop.start_soon(failer)
    loop.start_soon(joiner, t)
    with pytest.raises(ExceptionGroup) as ei:
        loop.run()
    loop.close()
    assert log == ["joined"]
    assert [str(e) for e in ei.value.exceptions] == ["root failed"]


def test_cancel_task():
    log = Log()

    async def victim():
        try:
            await sleep_forever()
        except BaseException as e:
            log("victim saw", type(e))
            raise
        finally:
            log("victim finally")

    async def bystander():
        await sleep(0.05)
        log("bystander done")

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(victim)
            n.start_soon(bystander)
            await sleep(0.01)
            t.cancel()
            with pytest.raises(TaskCancelled):
                await t.join()
            log("join raised TaskCancelled")
        log("nursery exited")
        log("flags", t.done(), t.cancelled())
        with pytest.raises(TaskCancelled):
            t.result()
        with pytest.raises(TaskCancelled):
            t.exception()

    run(main)
    assert log == [("victim saw", Cancelled), "victim finally", "join raised TaskCancelled",
                   "bystander done", "nursery exited", ("flags", True, True)]


def test_cancelled_task_is_level_triggered():
    log = Log()

    async def stubborn():
        for i in range(3):
            try:
                await sleep(10)
            except Cancelled:
                log("cancelled", i)
        await sleep(0)
        log("unreachable")

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(stubborn)
            await sleep(0.01)
            t.cancel()
        return t.cancelled()

    assert run(main) is True
    assert log == [("cancelled", 0), ("cancelled", 1), ("cancelled", 2)]


def test_cancel_task_cancels_its_nursery_children():
    log = Log()

    async def grandchild(i):
        try:
            await sleep_forever()
        finally:
            log("grandchild", i)

    async def parent():
        async with open_nursery() as n:
            n.start_soon(grandchild, 1)
            n.start_soon(grandchild, 2)
            await sleep_forever()

    async def main():
        with move_on_after(GUARD) as guard:
            async with open_nursery() as n:
                t = n.start_soon(parent)
                await sleep(0.02)
                t.cancel()
        return t.cancelled(), guard.cancelled_caught

    assert run(main) == (True, False)
    assert sorted(log) == [("grandchild", 1), ("grandchild", 2)]


def test_cancel_finished_task_is_noop():
    async def child():
        return 5

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(child)
        t.cancel()
        return t.done(), t.cancelled(), t.result()

    assert run(main) == (True, False, 5)


def test_cancel_twice_and_shielded_cleanup():
    log = Log()

    async def victim():
        try:
            await sleep_forever()
        finally:
            with CancelScope(shield=True):
                await sleep(0.02)
                log("shielded cleanup")

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(victim)
            await sleep(0.01)
            t.cancel()
            t.cancel()
        return t.cancelled()

    assert run(main) is True
    assert log == ["shielded cleanup"]


def test_join_is_cancellable_and_does_not_cancel_target():
    async def target():
        await sleep(0.1)
        return "finished"

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(target)
            with move_on_after(0.02) as scope:
                await t.join()
            state = (scope.cancelled_caught, t.done())
        return state, t.result(), t.cancelled()

    assert run(main) == ((True, False), "finished", False)


def test_task_name_and_identity():
    seen = {}

    async def worker():
        seen["self"] = broomio.current_task()

    async def main():
        async with open_nursery() as n:
            t1 = n.start_soon(worker)
            t2 = n.start_soon(worker, name="named")
        return t1, t2

    t1, t2 = run(main)
    assert isinstance(t1, Task)
    assert t1.name == worker.__qualname__
    assert t2.name == "named"
    assert seen["self"] in (t1, t2)


def test_task_name_from_coroutine_object():
    async def worker():
        pass

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(worker())
        return t.name

    assert run(main) == worker.__qualname__


def test_main_task_of_run_is_current_task():
    async def main():
        t = broomio.current_task()
        return isinstance(t, Task), t.done()

    assert run(main) == (True, False)


def test_task_exception_returns_exception_object():
    exc = ValueError("same object")

    async def failer():
        raise exc

    async def main():
        try:
            async with open_nursery() as n:
                t = n.start_soon(failer)
        except* ValueError:
            pass
        return t

    t = run(main)
    assert t.exception() is exc
    with pytest.raises(ValueError) as ei:
        t.result()
    assert ei.value is exc


def test_cancel_task_waiting_in_guard():
    """task.cancel() wakes a sleeping task promptly (it does not wait for its timer)."""
    async def sleeper():
        await sleep(GUARD * 2)

    async def main():
        async with open_nursery() as n:
            t = n.start_soon(sleeper)
            await sleep(0.01)
            t.cancel()
            with move_on_after(GUARD) as guard:
                with pytest.raises(TaskCancelled):
                    await t.join()
        return guard.cancelled_caught, t.cancelled()

    assert run(main) == (False, True)
