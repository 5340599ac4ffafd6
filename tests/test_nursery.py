"""Nurseries: waiting, failure propagation, ExceptionGroups, start(), contextvars."""

import contextvars
import time

import pytest

import broomio
from broomio import Cancelled, Nursery, open_nursery, sleep, sleep_forever
from conftest import GUARD, Log, assert_at_least, exc_shape, leaves, oracle, run


# ---------------------------------------------------------------------------
# basics


def test_children_run_concurrently_and_nursery_waits():
    log = Log()

    async def child(i, d):
        log("start", i)
        await sleep(d)
        log("end", i)

    async def main():
        t0 = time.monotonic()
        async with open_nursery() as n:
            n.start_soon(child, 0, 0.1)
            n.start_soon(child, 1, 0.05)
            log("body done")
        log("exit", time.monotonic() - t0)

    run(main)
    assert log[:5] == ["body done", ("start", 0), ("start", 1), ("end", 1), ("end", 0)]
    assert log[5][0] == "exit"
    assert_at_least(log[5][1], 0.1)


def test_nursery_class_alias():
    log = Log()

    async def child():
        await sleep(0.01)
        log("child")

    async def main():
        async with Nursery() as n:
            assert isinstance(n, Nursery)
            n.start_soon(child)
        log("exit")

    run(main)
    assert log == ["child", "exit"]


def test_open_nursery_yields_nursery():
    async def main():
        async with open_nursery() as n:
            return type(n)

    assert run(main) is Nursery


def test_start_soon_returns_task_with_result():
    async def child(x):
        await sleep(0)
        return x * 2

    async def main():
        async with open_nursery() as n:
            t1 = n.start_soon(child, 1)
            t2 = n.start_soon(child(5), name="five")
        return t1.result(), t2.result(), t2.name

    assert run(main) == (2, 10, "five")


def test_child_tasks_tuple():
    seen = []

    async def child(d):
        await sleep(d)

    async def main():
        async with open_nursery() as n:
            assert n.child_tasks == ()
            t1 = n.start_soon(child, 0.02)
            t2 = n.start_soon(child, 0.2)
            seen.append(n.child_tasks)
            await sleep(0.1)
            seen.append(n.child_tasks)
        seen.append(n.child_tasks)
        return t1, t2

    t1, t2 = run(main)
    assert isinstance(seen[0], tuple)
    assert set(seen[0]) == {t1, t2}
    assert seen[1] == (t2,)
    assert seen[2] == ()


def test_nested_nurseries():
    log = Log()

    async def leaf(name, d):
        await sleep(d)
        log(name)

    async def branch(name):
        async with open_nursery() as inner:
            inner.start_soon(leaf, name + ".a", 0.02)
            inner.start_soon(leaf, name + ".b", 0.06)
        log(name + " done")

    async def main():
        async with open_nursery() as outer:
            outer.start_soon(branch, "x")
            async with open_nursery() as inner2:
                inner2.start_soon(leaf, "y", 0.12)
            log("inner2 done")
        log("outer done")

    run(main)
    assert log == ["x.a", "x.b", "x done", "y", "inner2 done", "outer done"]


def test_start_soon_into_nursery_from_another_task():
    log = Log()

    async def grandchild():
        await sleep(0.02)
        log("grandchild")

    async def child(n):
        n.start_soon(grandchild)
        log("child")

    async def main():
        async with open_nursery() as n:
            n.start_soon(child, n)
        log("exit")

    run(main)
    assert log == ["child", "grandchild", "exit"]


def test_start_soon_after_exit_raises_runtimeerror():
    async def child():
        pass

    async def main():
        async with open_nursery() as n:
            pass
        with pytest.raises(RuntimeError):
            n.start_soon(child)
        with pytest.raises(RuntimeError):
            n.start_later(0, child)

    run(main)


# ---------------------------------------------------------------------------
# failures


def test_failing_child_cancels_siblings_and_body():
    log = Log()

    async def sibling():
        try:
            await sleep_forever()
        except BaseException as e:
            log("sibling saw", type(e))
            raise
        finally:
            log("sibling finally")

    async def failer():
        await sleep(0.02)
        raise ValueError("child failed")

    async def main():
        try:
            async with open_nursery() as n:
                n.start_soon(sibling)
                n.start_soon(failer)
                try:
                    await sleep_forever()
                except Cancelled:
                    log("body cancelled")
                    raise
        except* ValueError as eg:
            log("caught", [str(e) for e in eg.exceptions])

    run(main)
    assert set(log[:3]) == {("sibling saw", Cancelled), "sibling finally", "body cancelled"}
    assert log.index(("sibling saw", Cancelled)) < log.index("sibling finally")
    assert log[3] == ("caught", ["child failed"])


def test_nursery_raises_exceptiongroup_with_child_error():
    async def failer():
        raise ValueError("v")

    async def main():
        async with open_nursery() as n:
            n.start_soon(failer)

    with pytest.raises(ExceptionGroup) as ei:
        run(main)
    group = ei.value
    # broomio.run propagates the main task's exception (the nursery's group) as itself.
    assert isinstance(group, ExceptionGroup)
    assert len(group.exceptions) == 1
    assert type(group.exceptions[0]) is ValueError
    assert str(group.exceptions[0]) == "v"


def test_multiple_failing_children_all_in_group():
    async def fail_now(exc):
        raise exc

    async def fail_in_cleanup():
        try:
            await sleep_forever()
        finally:
            raise KeyError("cleanup")

    async def main():
        async with open_nursery() as n:
            n.start_soon(fail_in_cleanup)
            n.start_soon(fail_now, ValueError("a"))
            n.start_soon(fail_now, TypeError("b"))

    with pytest.raises(ExceptionGroup) as ei:
        run(main)
    names = sorted(type(e).__name__ for e in ei.value.exceptions)
    assert names == ["KeyError", "TypeError", "ValueError"]


def test_except_star_splits_group():
    log = Log()

    async def fail_now(exc):
        raise exc

    async def main():
        try:
            async with open_nursery() as n:
                n.start_soon(fail_now, ValueError("a"))
                n.start_soon(fail_now, TypeError("b"))
                n.start_soon(fail_now, ValueError("c"))
        except* ValueError as eg:
            log("values", sorted(str(e) for e in eg.exceptions))
        except* TypeError as eg:
            log("types", [str(e) for e in eg.exceptions])

    run(main)
    assert log == [("values", ["a", "c"]), ("types", ["b"])]


def test_body_error_is_in_group_and_cancels_children():
    log = Log()

    async def child():
        try:
            await sleep_forever()
        finally:
            log("child finally")

    async def main():
        async with open_nursery() as n:
            n.start_soon(child)
            await sleep(0.01)
            raise RuntimeError("body")

    with pytest.raises(ExceptionGroup) as ei:
        run(main)
    assert log == ["child finally"]
    assert [(type(e), str(e)) for e in ei.value.exceptions] == [(RuntimeError, "body")]


def test_body_and_child_errors_both_in_group():
    async def child():
        raise ValueError("child")

    async def main():
        async with open_nursery() as n:
            n.start_soon(child)
            try:
                await sleep_forever()
            except Cancelled:
                raise KeyError("body")

    with pytest.raises(ExceptionGroup) as ei:
        run(main)
    assert sorted(type(e).__name__ for e in ei.value.exceptions) == ["KeyError", "ValueError"]


def test_nested_nursery_failure_produces_nested_groups():
    async def failer():
        await sleep(0.01)
        raise ValueError("deep")

    async def branch():
        async with open_nursery() as inner:
            inner.start_soon(failer)

    async def main():
        async with open_nursery() as outer:
            outer.start_soon(branch)
            await sleep_forever()

    with pytest.raises(ExceptionGroup) as ei:
        run(main)
    outer = ei.value
    assert len(outer.exceptions) == 1
    inner = outer.exceptions[0]
    assert isinstance(inner, ExceptionGroup)
    assert [type(e) for e in inner.exceptions] == [ValueError]
    assert [str(e) for e in leaves(outer)] == ["deep"]


def test_cancelled_children_are_not_in_group():
    async def child():
        await sleep_forever()

    async def main():
        async with open_nursery() as n:
            n.start_soon(child)
            n.start_soon(child)
            await sleep(0.01)
            n.cancel()
        return n.cancel_scope.cancelled_caught

    # Cancellation alone: the nursery exits cleanly, no group.
    assert run(main) is True


def test_base_exception_group_for_base_exceptions():
    class MyBase(BaseException):
        pass

    async def child():
        raise MyBase("b")

    async def main():
        async with open_nursery() as n:
            n.start_soon(child)

    with pytest.raises(BaseExceptionGroup) as ei:
        run(main)
    assert not isinstance(ei.value, ExceptionGroup)
    assert [type(e) for e in ei.value.exceptions] == [MyBase]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboardinterrupt_from_child_propagates_as_itself(exc_type):
    log = Log()

    async def sibling():
        try:
            await sleep_forever()
        finally:
            log("sibling finally")

    async def bad():
        await sleep(0.01)
        raise exc_type("ki")

    async def main():
        try:
            async with open_nursery() as n:
                n.start_soon(sibling)
                n.start_soon(bad)
        except exc_type as e:
            log("caught", type(e))
            raise

    with pytest.raises(exc_type) as ei:
        run(main)
    assert type(ei.value) is exc_type
    assert log == ["sibling finally", ("caught", exc_type)]


def test_keyboardinterrupt_from_body_propagates_as_itself():
    log = Log()

    async def child():
        try:
            await sleep_forever()
        finally:
            log("child finally")

    async def main():
        async with open_nursery() as n:
            n.start_soon(child)
            await sleep(0.01)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(main)
    assert log == ["child finally"]


def test_failure_in_grandchild_cancels_everything():
    log = Log()

    async def sleeper(name):
        try:
            await sleep_forever()
        except Cancelled:
            log(name)
            raise

    async def failer():
        await sleep(0.02)
        raise ValueError

    async def middle():
        async with open_nursery() as n:
            n.start_soon(sleeper, "mid-sibling")
            n.start_soon(failer)

    async def main():
        async with open_nursery() as n:
            n.start_soon(sleeper, "top-sibling")
            n.start_soon(middle)

    with pytest.raises(ExceptionGroup):
        run(main)
    assert sorted(log) == ["mid-sibling", "top-sibling"]
    # The inner nursery's sibling is cancelled before the outer one hears of the failure.
    assert log == ["mid-sibling", "top-sibling"]


# ---------------------------------------------------------------------------
# comparison with trio


def _scenario_failures(lib, log):
    async def sibling(name):
        try:
            await lib.sleep_forever()
        except lib.Cancelled:
            log(name, "cancelled")
            raise

    async def fail(exc):
        raise exc  # no checkpoint: both failers fail even after the first one

    async def branch():
        async with lib.open_nursery() as n:
            n.start_soon(sibling, "inner-sibling")
            n.start_soon(fail, ValueError("inner"))
            n.start_soon(fail, KeyError("inner2"))

    async def main():
        async with lib.open_nursery() as n:
            n.start_soon(sibling, "outer-sibling")
            n.start_soon(branch)
            await lib.sleep_forever()

    return main()


def test_failure_structure_matches_trio():
    async def scenario(lib, log):
        await _scenario_failures(lib, log)

    trio_obs, broomio_obs = oracle(scenario)
    assert trio_obs[1][0] == "raised"
    assert sorted(broomio_obs[0]) == sorted(trio_obs[0])
    assert broomio_obs[1] == trio_obs[1]


def test_body_error_structure_matches_trio():
    async def scenario(lib, log):
        async def child():
            try:
                await lib.sleep_forever()
            finally:
                log("child finally")

        try:
            async with lib.open_nursery() as n:
                n.start_soon(child)
                await lib.sleep(0.01)
                raise ValueError("body")
        except* ValueError as eg:
            log("caught", exc_shape(eg))
        return "done"

    trio_obs, broomio_obs = oracle(scenario)
    assert broomio_obs == trio_obs


# ---------------------------------------------------------------------------
# nursery.start()


def test_start_returns_started_value_and_task_keeps_running():
    log = Log()

    async def server(port, *, task_status):
        log("server setup")
        await sleep(0.02)
        task_status.started(port + 1)
        log("server started")
        await sleep(0.02)
        log("server done")

    async def main():
        async with open_nursery() as n:
            value = await n.start(server, 8000)
            log("start returned", value)
        log("exit")

    run(main)
    # started() does not yield: the server keeps running until its next checkpoint.
    assert log == ["server setup", "server started", ("start returned", 8001),
                   "server done", "exit"]


def test_start_waits_for_started():
    async def slow_start(*, task_status):
        await sleep(0.1)
        task_status.started()
        await sleep(0)

    async def main():
        async with open_nursery() as n:
            t0 = time.monotonic()
            value = await n.start(slow_start)
            return value, time.monotonic() - t0

    value, elapsed = run(main)
    assert value is None
    assert_at_least(elapsed, 0.1)


def test_start_error_before_started_raised_from_start():
    log = Log()

    async def broken(*, task_status):
        await sleep(0.01)
        raise ValueError("setup failed")

    async def sibling():
        await sleep(0.05)
        log("sibling ran to completion")

    async def main():
        async with open_nursery() as n:
            n.start_soon(sibling)
            with pytest.raises(ValueError, match="setup failed"):
                await n.start(broken)
            log("after start")
        log("nursery exited cleanly")

    run(main)
    # The error was not reported to the nursery: nothing was cancelled.
    assert log == ["after start", "sibling ran to completion", "nursery exited cleanly"]


def test_start_error_immediately():
    async def broken(*, task_status):
        raise KeyError("now")

    async def main():
        async with open_nursery() as n:
            with pytest.raises(KeyError):
                await n.start(broken)
        return "ok"

    assert run(main) == "ok"


def test_start_without_started_raises_runtimeerror():
    async def lazy(*, task_status):
        await sleep(0)

    async def main():
        async with open_nursery() as n:
            with pytest.raises(RuntimeError):
                await n.start(lazy)
        return "ok"

    assert run(main) == "ok"


def test_start_error_after_started_goes_to_nursery():
    async def svc(*, task_status):
        task_status.started("up")
        await sleep(0.01)
        raise ValueError("later")

    async def main():
        async with open_nursery() as n:
            assert await n.start(svc) == "up"
            await sleep_forever()

    with pytest.raises(ExceptionGroup) as ei:
        run(main)
    assert [str(e) for e in ei.value.exceptions] == ["later"]


def test_start_passes_args_and_name():
    async def svc(a, b, *, task_status):
        task_status.started((a, b, broomio.current_task().name))

    async def main():
        async with open_nursery() as n:
            return await n.start(svc, 1, 2, name="svc-name")

    assert run(main) == (1, 2, "svc-name")


def test_start_is_cancellable_from_outside():
    log = Log()

    async def never_starts(*, task_status):
        try:
            await sleep_forever()
        finally:
            log("child finally")

    async def main():
        with broomio.move_on_after(GUARD) as guard:
            async with open_nursery() as n:
                with broomio.move_on_after(0.05) as scope:
                    await n.start(never_starts)
        log("caught", scope.cancelled_caught, guard.cancelled_caught)

    run(main)
    # Until started(), the new task runs under the caller's cancel scopes (as in trio).
    assert log == ["child finally", ("caught", True, False)]


# ---------------------------------------------------------------------------
# start_later


def test_nursery_start_later():
    log = Log()

    async def child(name):
        log(name, time.monotonic())

    async def main():
        t0 = time.monotonic()
        async with open_nursery() as n:
            n.start_later(0.1, child, "later")
            n.start_soon(child, "soon")
        log("exit", time.monotonic())
        return t0

    t0 = run(main)
    assert [e[0] for e in log] == ["soon", "later", "exit"]
    assert_at_least(log[1][1] - t0, 0.1, "start_later")


# ---------------------------------------------------------------------------
# contextvars


def test_contextvars_isolation_between_tasks():
    var = contextvars.ContextVar("var", default="unset")
    seen = Log()

    async def child(name, new_value):
        seen(name, "start", var.get())
        var.set(new_value)
        await sleep(0.01)
        seen(name, "end", var.get())

    async def main():
        var.set("parent-1")
        async with open_nursery() as n:
            n.start_soon(child, "a", "a-value")
            var.set("parent-2")  # after spawning a, before spawning b
            n.start_soon(child, "b", "b-value")
            await sleep(0.005)
            seen("parent", "mid", var.get())
        seen("parent", "end", var.get())

    run(main)
    assert sorted(seen) == sorted([
        ("a", "start", "parent-1"),
        ("b", "start", "parent-2"),
        ("parent", "mid", "parent-2"),
        ("a", "end", "a-value"),
        ("b", "end", "b-value"),
        ("parent", "end", "parent-2"),
    ])
    assert var.get() == "unset"


def test_contextvars_root_tasks_isolated():
    var = contextvars.ContextVar("var2", default=0)
    seen = []

    async def task(i):
        assert var.get() == 0
        var.set(i)
        await sleep(0)
        seen.append(var.get())

    loop = broomio.Loop()
    for i in range(1, 4):
        loop.start_soon(task, i)
    loop.run()
    loop.close()
    assert seen == [1, 2, 3]
    assert var.get() == 0


def test_contextvar_set_inside_run_does_not_leak_to_caller():
    var = contextvars.ContextVar("var3", default="outer")

    async def main():
        var.set("inner")
        await sleep(0)
        return var.get()

    assert run(main) == "inner"
    assert var.get() == "outer"

