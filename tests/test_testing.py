"""broomio.testing: custom clocks, MockClock, wait_all_tasks_blocked, the pytest plugin.

trio (with trio.testing.MockClock) is the oracle where the semantics are the same.
"""

from __future__ import annotations

import math
import time

import pytest
import trio
import trio.testing

import broomio
from broomio.testing import MockClock, wait_all_tasks_blocked
from conftest import EPS, Log

PLUGIN = "broomio.testing._pytest_plugin"


def run_mock(fn, *args, **clock_kwargs):
    clock = MockClock(**clock_kwargs)
    return broomio.run(fn, *args, clock=clock), clock


# ---------------------------------------------------------------------------
# MockClock on its own


def test_mock_clock_starts_at_zero_and_stands_still():
    clock = MockClock()
    assert clock.current_time() == 0.0
    time.sleep(0.01)
    assert clock.current_time() == 0.0
    assert clock.rate == 0.0
    assert clock.autojump_threshold == math.inf
    assert isinstance(clock, broomio.Clock)


def test_mock_clock_jump():
    clock = MockClock()
    clock.jump(5)
    clock.jump(0.5)
    assert clock.current_time() == 5.5
    clock.jump(0)
    assert clock.current_time() == 5.5


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (math.nan, ValueError),
                                      (math.inf, ValueError), ("1", TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_mock_clock_jump_bad(bad, exc):
    clock = MockClock()
    with pytest.raises(exc):
        clock.jump(bad)
    assert clock.current_time() == 0.0


def test_mock_clock_rate_runs_with_real_time():
    clock = MockClock(rate=2.0)
    start = time.monotonic()
    time.sleep(0.02)
    elapsed = time.monotonic() - start
    assert clock.current_time() >= 2 * elapsed - EPS
    # Changing the rate keeps the time reached so far.
    clock.rate = 0
    frozen = clock.current_time()
    time.sleep(0.01)
    assert clock.current_time() == frozen >= 0.04 - EPS


def test_mock_clock_deadline_to_sleep_time():
    clock = MockClock()
    assert clock.deadline_to_sleep_time(-1.0) == 0
    assert clock.deadline_to_sleep_time(10.0) >= 86400  # only a jump gets there
    clock.rate = 2.0
    now = clock.current_time()
    assert clock.deadline_to_sleep_time(now + 10) <= 5.0
    assert clock.deadline_to_sleep_time(now + 10) > 0


@pytest.mark.parametrize("kwargs, exc", [
    ({"rate": -1}, ValueError), ({"rate": math.nan}, ValueError), ({"rate": math.inf}, ValueError),
    ({"rate": "fast"}, TypeError), ({"autojump_threshold": -0.1}, ValueError),
    ({"autojump_threshold": math.nan}, ValueError), ({"autojump_threshold": None}, TypeError),
])
def test_mock_clock_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        MockClock(**kwargs)


def test_mock_clock_bad_attribute_values():
    clock = MockClock()
    with pytest.raises(ValueError):
        clock.rate = -2
    with pytest.raises(ValueError):
        clock.autojump_threshold = -1
    assert clock.rate == 0 and clock.autojump_threshold == math.inf


# ---------------------------------------------------------------------------
# a loop on a MockClock


def test_one_hour_sleep_is_instant_with_autojump():
    async def main():
        start = broomio.current_time()
        await broomio.sleep(3600)
        return start, broomio.current_time()

    real = time.monotonic()
    (start, end), clock = run_mock(main, autojump_threshold=0)
    assert (start, end) == (0.0, 3600.0)
    assert clock.current_time() == 3600.0
    assert time.monotonic() - real < 60  # hang guard: an hour did not really pass


def test_every_time_reader_sees_the_clock():
    clock = MockClock()
    clock.jump(100)
    loop = broomio.Loop(clock=clock)
    try:
        assert loop.clock is clock
        assert loop.time() == 100.0  # before running, too

        async def main():
            seen = [broomio.current_time(), broomio.current_loop().time()]
            with broomio.move_on_after(7) as scope:
                seen.append(broomio.current_effective_deadline())
            seen.append(scope.deadline)
            return seen

        assert loop.run_until_complete(main) == [100.0, 100.0, 107.0, 107.0]
    finally:
        loop.close()
    assert broomio.Loop().clock is None


def test_autojump_orders_sleepers_like_trio():
    async def scenario(lib, log):
        async def sleeper(name, seconds):
            await lib.sleep(seconds)
            log((name, lib.current_time()))
            await lib.sleep(seconds)
            log((name, lib.current_time()))

        async with lib.open_nursery() as n:
            n.start_soon(sleeper, "a", 30)
            n.start_soon(sleeper, "b", 7)
            n.start_soon(sleeper, "c", 3600)
        await lib.sleep_until(10000)
        log(("end", lib.current_time()))

    trio_log, broomio_log = Log(), Log()
    trio.run(scenario, trio, trio_log, clock=trio.testing.MockClock(autojump_threshold=0))
    broomio.run(scenario, broomio, broomio_log, clock=MockClock(autojump_threshold=0))
    assert broomio_log == trio_log
    assert broomio_log[-1] == ("end", 10000.0)


def test_cancel_scope_deadlines_follow_the_mock_clock():
    async def main():
        log = []
        with broomio.move_on_after(3600) as scope:
            await broomio.sleep_forever()
        log.append((scope.cancelled_caught, broomio.current_time()))
        with pytest.raises(TimeoutError):
            with broomio.fail_after(5):
                await broomio.sleep(10)
        log.append(broomio.current_time())
        with broomio.fail_at(4000):
            await broomio.sleep(1)  # finishes in time
        log.append(broomio.current_time())
        with broomio.CancelScope(deadline=5000) as scope:
            await broomio.sleep_until(6000)
        log.append((scope.cancelled_caught, broomio.current_time()))
        return log

    log, _ = run_mock(main, autojump_threshold=0)
    assert log == [(True, 3600.0), 3605.0, 3606.0, (True, 5000.0)]


def test_start_later_uses_the_clock():
    log = Log()
    clock = MockClock(autojump_threshold=0)
    with broomio.Loop(clock=clock) as loop:
        async def job(name):
            log((name, broomio.current_time()))

        loop.start_later(50, job, "later")
        loop.start_soon(job, "soon")
        loop.run()
    assert log == [("soon", 0.0), ("later", 50.0)]


def test_manual_jump_without_autojump():
    clock = MockClock()

    async def main():
        log = Log()

        async def sleeper():
            await broomio.sleep(10)
            log(("woke", broomio.current_time()))

        async with broomio.open_nursery() as n:
            n.start_soon(sleeper)
            await wait_all_tasks_blocked()
            clock.jump(9)
            await wait_all_tasks_blocked()
            log(("after 9", broomio.current_time()))
            clock.jump(1)
        return log

    log = broomio.run(main, clock=clock)
    assert log == [("after 9", 9.0), ("woke", 10.0)]


def test_rate_runs_the_loop_faster_than_real_time():
    async def main():
        start = time.monotonic()
        await broomio.sleep(5)  # 0.05 s of real time at rate 100
        return broomio.current_time(), time.monotonic() - start

    (clock_time, real), _ = run_mock(main, rate=100)
    assert clock_time >= 5.0
    assert real >= 0.05 - 0.002  # millisecond rounding of the poll timeout aside
    assert real < 30  # hang guard


def test_autojump_threshold_changed_while_running():
    async def main():
        loop = broomio.current_loop()
        assert loop._autojump_threshold == math.inf
        clock.autojump_threshold = 0
        assert loop._autojump_threshold == 0
        await broomio.sleep(1000)
        clock.autojump_threshold = math.inf
        return broomio.current_time()

    clock = MockClock()
    assert broomio.run(main, clock=clock) == 1000.0


def test_autojump_threshold_is_synced_when_the_loop_starts():
    clock = MockClock()
    loop = broomio.Loop(clock=clock)
    clock.autojump_threshold = 0  # not running: the loop picks it up in start_clock()
    try:
        assert loop.run_until_complete(broomio.sleep, 99) is None
        assert clock.current_time() == 99
    finally:
        loop.close()


def test_autojump_waits_for_real_threshold():
    async def main():
        start = time.monotonic()
        await broomio.sleep(60)
        return time.monotonic() - start

    real, clock = run_mock(main, autojump_threshold=0.05)
    assert real >= 0.05 - 0.002
    assert clock.current_time() == 60.0


def test_no_autojump_while_someone_waits_for_idle():
    async def main():
        log = Log()

        async def sleeper():
            await broomio.sleep(10)
            log(("slept", broomio.current_time()))

        async with broomio.open_nursery() as n:
            n.start_soon(sleeper)
            await wait_all_tasks_blocked()
            log(("idle", broomio.current_time()))
        return log

    log, _ = run_mock(main, autojump_threshold=0)
    assert log == [("idle", 0.0), ("slept", 10.0)]


def test_autojump_with_io_in_flight():
    # One task waits for data that another sends after a (jumped) sleep: time jumps only
    # while every task is blocked, and the reader is not woken early.
    async def main():
        a, b = broomio.socket.socketpair()
        log = Log()

        async def reader():
            log((await a.recv(10), broomio.current_time()))

        async def writer():
            await broomio.sleep(300)
            await b.send(b"hi")

        with a, b:
            async with broomio.open_nursery() as n:
                n.start_soon(reader)
                n.start_soon(writer)
        return log

    log, _ = run_mock(main, autojump_threshold=0)
    assert log == [(b"hi", 300.0)]


def test_clock_cannot_change_while_timers_are_pending():
    loop = broomio.Loop()
    try:
        loop.start_later(10, broomio.sleep, 0)
        with pytest.raises(RuntimeError):
            loop._set_clock(MockClock())
        assert loop.clock is None
    finally:
        loop.close()


def test_autojump_needs_a_clock():
    with broomio.Loop() as loop:
        with pytest.raises(RuntimeError):
            loop._autojump_threshold = 0
        loop._autojump_threshold = math.inf


# ---------------------------------------------------------------------------
# custom clocks


class OffsetClock(broomio.Clock):
    """Real time plus an offset; counts its calls."""

    def __init__(self, offset):
        self.offset = offset
        self.starts = 0
        self.sleep_queries = []

    def start_clock(self):
        self.starts += 1

    def current_time(self):
        return time.monotonic() + self.offset

    def deadline_to_sleep_time(self, deadline):
        self.sleep_queries.append(deadline)
        return deadline - self.current_time()


def test_custom_clock_protocol():
    clock = OffsetClock(1e6)

    async def main():
        t0 = broomio.current_time()
        await broomio.sleep(0.02)
        return t0, broomio.current_time()

    loop = broomio.Loop(clock=clock)
    try:
        t0, t1 = loop.run_until_complete(main)
        assert t0 >= 1e6
        assert t1 - t0 >= 0.02 - EPS
        assert clock.starts == 1
        assert clock.sleep_queries and all(d >= 1e6 for d in clock.sleep_queries)
        loop.run_until_complete(broomio.sleep, 0)
        assert clock.starts == 2  # once per run
    finally:
        loop.close()


def test_duck_typed_clock_is_accepted():
    class Duck:
        def start_clock(self):
            pass

        def current_time(self):
            return 42.0

        def deadline_to_sleep_time(self, deadline):
            return 0.0

    async def main():
        return broomio.current_time()

    assert broomio.run(main, clock=Duck()) == 42.0


def test_abstract_clock_cannot_be_instantiated():
    with pytest.raises(TypeError):
        broomio.Clock()


class BrokenClock(OffsetClock):
    def __init__(self, result):
        super().__init__(0)
        self.result = result
        self.armed = False

    def current_time(self):
        if self.armed:
            if isinstance(self.result, BaseException):
                raise self.result
            return self.result
        return super().current_time()


@pytest.mark.parametrize("result, exc", [(ZeroDivisionError("clock broke"), ZeroDivisionError),
                                         ("now", TypeError), (math.nan, ValueError)])
def test_clock_errors_reach_the_reader(result, exc):
    clock = BrokenClock(result)

    async def main():
        clock.armed = True
        try:
            with pytest.raises(exc):
                await broomio.sleep(1)
            with pytest.raises(exc):
                broomio.current_time()
            with pytest.raises(exc):
                broomio.move_on_after(1)
        finally:
            clock.armed = False

    broomio.run(main, clock=clock)


def test_clock_error_in_the_loop_is_raised_by_run():
    class Raising(OffsetClock):
        def deadline_to_sleep_time(self, deadline):
            raise OSError("no sleep for you")

    async def main():
        await broomio.sleep(1)

    loop = broomio.Loop(clock=Raising(0))
    try:
        with pytest.raises(OSError, match="no sleep"):
            loop.run_until_complete(main)
    finally:
        loop.close()


@pytest.mark.parametrize("clock", [MockClock, 3, "x"])
def test_loop_rejects_non_clocks(clock):
    with pytest.raises(TypeError, match="clock"):
        broomio.Loop(clock=clock)


# ---------------------------------------------------------------------------
# wait_all_tasks_blocked


def wait_idle(lib):
    return wait_all_tasks_blocked if lib is broomio else trio.testing.wait_all_tasks_blocked


async def idle_scenario(lib, log):
    wait = wait_idle(lib)

    async def child(name, steps, event):
        for _ in range(steps):
            await lib.checkpoint() if lib is broomio else await trio.lowlevel.checkpoint()
        log(("blocked", name))
        await event.wait()
        log(("released", name))

    event = lib.Event()
    async with lib.open_nursery() as n:
        for name, steps in (("a", 1), ("b", 20), ("c", 5)):
            n.start_soon(child, name, steps, event)
        await wait()
        log("all blocked")
        event.set()
        await wait()
        log("all done")


def test_wait_all_tasks_blocked_like_trio():
    trio_log, broomio_log = Log(), Log()
    trio.run(idle_scenario, trio, trio_log)
    broomio.run(idle_scenario, broomio, broomio_log)

    def shape(log):  # the order within each phase is scheduling order: compare as sets
        out, phase = [], set()
        for entry in log:
            if isinstance(entry, str):
                out.append(frozenset(phase))
                out.append(entry)
                phase = set()
            else:
                phase.add(entry)
        return out

    assert shape(broomio_log) == shape(trio_log)
    assert broomio_log[3] == "all blocked" and broomio_log[-1] == "all done"


async def cushion_scenario(lib, log):
    wait = wait_idle(lib)

    async def waiter(name, cushion):
        await wait(cushion)
        log(name)

    async with lib.open_nursery() as n:
        n.start_soon(waiter, "slow", 0.02)
        n.start_soon(waiter, "fast", 0)
        n.start_soon(waiter, "fast too", 0)
        n.start_soon(waiter, "middle", 0.01)


def test_smaller_cushions_wake_first_like_trio():
    trio_log, broomio_log = Log(), Log()
    trio.run(cushion_scenario, trio, trio_log)
    broomio.run(cushion_scenario, broomio, broomio_log)
    assert set(broomio_log[:2]) == set(trio_log[:2]) == {"fast", "fast too"}
    assert broomio_log[2:] == trio_log[2:] == ["middle", "slow"]


def test_cushion_is_real_time_all_blocked():
    async def main():
        start = time.monotonic()
        await wait_all_tasks_blocked(0.05)
        return time.monotonic() - start

    assert broomio.run(main) >= 0.05 - 0.002


def test_busy_task_delays_the_waiter():
    async def main():
        log = Log()

        async def busy():
            for i in range(200):
                await broomio.sleep(0)
            log("busy done")

        async with broomio.open_nursery() as n:
            n.start_soon(busy)
            await wait_all_tasks_blocked()
            log("idle")
        return log

    assert broomio.run(main) == ["busy done", "idle"]


def test_task_waiting_for_io_counts_as_blocked():
    async def main():
        a, b = broomio.socket.socketpair()
        log = Log()

        async def reader():
            log(("got", await a.recv(10)))

        with a, b:
            async with broomio.open_nursery() as n:
                n.start_soon(reader)
                await wait_all_tasks_blocked()
                log("idle")
                await b.send(b"x")
        return log

    assert broomio.run(main) == ["idle", ("got", b"x")]


def test_cancelled_waiter_leaves_cleanly():
    async def main():
        log = Log()

        async def waiter():
            with broomio.CancelScope() as scope:
                scopes.append(scope)
                await wait_all_tasks_blocked(math.inf)  # would never wake
            log(("cancelled", scope.cancelled_caught))

        scopes = []
        async with broomio.open_nursery() as n:
            n.start_soon(waiter)
            await wait_all_tasks_blocked()
            scopes[0].cancel()
        await wait_all_tasks_blocked()  # the cancelled waiter is gone, this one still works
        log("done")
        return log

    assert broomio.run(main) == [("cancelled", True), "done"]


def test_wait_all_tasks_blocked_is_a_cancel_point():
    async def main():
        with broomio.CancelScope() as scope:
            scope.cancel()
            await wait_all_tasks_blocked()
        return scope.cancelled_caught

    assert broomio.run(main) is True


def test_loop_closed_with_an_idle_waiter():
    loop = broomio.Loop()

    async def waiter():
        await wait_all_tasks_blocked(math.inf)

    loop.start_soon(waiter)

    async def stop():
        await wait_all_tasks_blocked()
        raise KeyboardInterrupt

    loop.start_soon(stop)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    loop.close()


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (math.nan, ValueError),
                                      ("0", TypeError), (None, TypeError)])
def test_wait_all_tasks_blocked_bad_cushion(bad, exc):
    async def main():
        with pytest.raises(exc):
            await wait_all_tasks_blocked(bad)

    broomio.run(main)


def test_wait_all_tasks_blocked_outside_a_loop():
    coro = wait_all_tasks_blocked()
    with pytest.raises(RuntimeError):
        coro.send(None)


# ---------------------------------------------------------------------------
# the pytest plugin, used directly (tests/conftest.py loads it)


@pytest.mark.broomio
async def test_plugin_marked_test_runs_on_a_loop(broomio_loop):
    assert broomio.current_loop() is broomio_loop
    assert broomio_loop.running
    await broomio.sleep(0)


@pytest.mark.broomio
async def test_plugin_mock_clock_fixture(mock_clock, broomio_loop):
    assert broomio_loop.clock is mock_clock
    await broomio.sleep(3600)
    assert broomio.current_time() == 3600.0


@pytest.mark.broomio(debug=True)
async def test_plugin_marker_options(broomio_loop):
    assert broomio_loop.debug is True


@pytest.fixture
async def async_resource():
    async with broomio.open_nursery() as n:
        event = broomio.Event()
        n.start_soon(event.wait)
        yield event
        event.set()


@pytest.mark.broomio
async def test_plugin_async_fixture_with_background_task(async_resource):
    assert isinstance(async_resource, broomio.Event)
    await wait_all_tasks_blocked()
    assert not async_resource.is_set()


def test_plugin_sync_test_gets_an_idle_loop(broomio_loop):
    assert isinstance(broomio_loop, broomio.Loop) and not broomio_loop.running
    assert broomio_loop.run_until_complete(broomio.sleep, 0) is None


# ---------------------------------------------------------------------------
# the pytest plugin, through pytester


def run_inner(pytester, source, *args):
    pytester.makepyfile(test_inner=source)
    # Warnings are errors, except the one an in-process run gives when the outer session
    # imported the plugin without assertion rewriting (an editable or egg-info install).
    return pytester.runpytest("-p", PLUGIN, "--strict-markers", "-W", "error",
                              "-W", "ignore::pytest.PytestAssertRewriteWarning", *args)


def test_pytester_pass_fail_and_leak(pytester):
    result = run_inner(pytester, """
        import pytest, broomio

        @pytest.mark.broomio
        async def test_passes():
            await broomio.sleep(0)

        @pytest.mark.broomio
        async def test_fails():
            await broomio.sleep(0)
            assert 1 + 1 == 3

        @pytest.mark.broomio
        async def test_leaks():
            broomio.current_loop().start_soon(broomio.sleep_forever, name="leaky one")

        @pytest.mark.broomio
        async def test_raises():
            raise KeyError("boom")
    """)
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*assert (1 + 1) == 3*",
                                 "*the test left 1 task(s) running: 'leaky one'*",
                                 "*KeyError: 'boom'*"])


def test_pytester_one_hour_with_mock_clock(pytester):
    result = run_inner(pytester, """
        import pytest, broomio, time

        @pytest.mark.broomio
        async def test_hour(mock_clock, broomio_loop):
            assert broomio_loop.clock is mock_clock
            real = time.monotonic()
            await broomio.sleep(3600)
            assert broomio.current_time() == 3600
            assert time.monotonic() - real < 60

        @pytest.mark.broomio(clock=broomio.testing.MockClock(autojump_threshold=0))
        async def test_marker_clock():
            with broomio.move_on_after(100):
                await broomio.sleep_forever()
            assert broomio.current_time() == 100
    """)
    result.assert_outcomes(passed=2)


def test_pytester_async_fixtures(pytester):
    result = run_inner(pytester, """
        import contextvars, pytest, broomio

        order = []
        var = contextvars.ContextVar("var")

        @pytest.fixture
        async def base():
            order.append("base up")
            await broomio.sleep(0)
            yield 1
            order.append("base down")

        @pytest.fixture
        async def derived(base):
            var.set("set by fixture")
            return base + 1

        @pytest.fixture
        def plain():
            return "plain"

        @pytest.mark.broomio
        async def test_uses(derived, base, plain):
            assert (derived, base, plain) == (2, 1, "plain")
            assert var.get() == "set by fixture"
            order.append("test")

        def test_order_afterwards():
            assert order == ["base up", "test", "base down"]
    """)
    result.assert_outcomes(passed=2)


def test_pytester_sync_fixture_cannot_use_async_fixture(pytester):
    result = run_inner(pytester, """
        import pytest

        @pytest.fixture
        async def a():
            return 1

        @pytest.fixture
        def b(a):
            return a

        @pytest.mark.broomio
        async def test_it(b):
            pass
    """)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*sync fixture 'b' depends on async fixture 'a'*"])


def test_pytester_bad_marker_use(pytester):
    result = run_inner(pytester, """
        import pytest, broomio

        @pytest.mark.broomio("positional")
        async def test_positional():
            pass

        @pytest.mark.broomio(speed=3)
        async def test_unknown():
            pass

        @pytest.mark.broomio(clock=broomio.testing.MockClock())
        async def test_two_clocks(mock_clock):
            pass

        @pytest.fixture(scope="module")
        async def wide():
            return 1

        @pytest.mark.broomio
        async def test_wide(wide):
            pass
    """)
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random([
        "*keyword arguments only*", "*unknown option(s) speed*", "*choose one*",
        "*must be function-scoped*",
    ])


def test_pytester_unmarked_async_test_is_not_ours(pytester):
    result = run_inner(pytester, """
        async def test_unmarked():
            pass
    """)
    # Left to pytest (and any other async plugin): pytest fails it as unsupported.
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*async def functions are not natively supported*"])


def test_pytester_marker_on_a_sync_test_and_module_mark(pytester):
    result = run_inner(pytester, """
        import pytest, broomio

        pytestmark = pytest.mark.broomio(debug=True)

        def test_sync(broomio_loop):
            assert broomio_loop.debug and not broomio_loop.running

        async def test_async():
            assert broomio.current_loop().debug
    """)
    result.assert_outcomes(passed=2)


def test_pytester_class_fixtures(pytester):
    result = run_inner(pytester, """
        import pytest, broomio

        class TestThing:
            @pytest.fixture
            async def me(self):
                return self

            @pytest.mark.broomio
            async def test_bound(self, me):
                assert me is self
    """)
    result.assert_outcomes(passed=1)


def test_pytester_entry_point_and_explicit_load_register_once(pytester):
    # Simulate an installed broomio: a distribution on sys.path whose pytest11 entry point
    # is the plugin.  Loading it with -p as well must not register it twice.
    dist = pytester.mkdir("site") / "broomio_fake-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broomio-fake\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[pytest11]\n{PLUGIN} = {PLUGIN}\n")
    pytester.syspathinsert(pytester.path / "site")
    pytester.makepyfile(test_inner="""
        import pytest, broomio

        def test_once(request):
            pm = request.config.pluginmanager
            mod = pm.get_plugin("broomio.testing._pytest_plugin")
            assert mod is not None
            assert [p for p in pm.get_plugins() if p is mod] == [mod]

        @pytest.mark.broomio
        async def test_runs():
            await broomio.sleep(0)
    """)
    for args in ((), ("-p", PLUGIN)):
        result = pytester.runpytest("--strict-markers", *args)
        result.assert_outcomes(passed=2)
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    result = pytester.runpytest("--strict-markers", "-p", PLUGIN)
    result.assert_outcomes(passed=2)


def test_pytester_async_fixture_teardown_and_background_crash(pytester):
    result = run_inner(pytester, """
        import pytest, broomio

        log = []

        @pytest.fixture
        async def nursery():
            async with broomio.open_nursery() as n:
                yield n
                log.append("teardown")
                n.cancel()

        @pytest.mark.broomio
        async def test_fails_plainly(nursery):
            nursery.start_soon(broomio.sleep_forever)
            assert "teardown" == "not yet"

        async def crash():
            await broomio.sleep(1)
            raise ValueError("background crashed")

        @pytest.mark.broomio
        async def test_background_crash_cancels_the_test(nursery, mock_clock):
            nursery.start_soon(crash)
            await broomio.sleep(3600)
            log.append("not reached")

        @pytest.fixture
        async def twice():
            yield 1
            yield 2

        @pytest.mark.broomio
        async def test_twice(twice):
            pass

        def test_log():
            assert log == ["teardown"]
    """)
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines_random([
        "*AssertionError: assert 'teardown' == 'not yet'*",
        "*ValueError: background crashed*",
        "async fixture 'twice' yielded more than once",
    ])
    assert "ExceptionGroup: errors in nursery (1 sub-exception)" in result.stdout.str()
    assert "not reached" not in result.stdout.str()


def test_pytester_skip_xfail_parametrize(pytester):
    result = run_inner(pytester, """
        import pytest, broomio

        @pytest.mark.broomio
        @pytest.mark.parametrize("n", [1, 2])
        async def test_param(n):
            await broomio.sleep(0)
            assert n in (1, 2)

        @pytest.mark.broomio
        async def test_skip():
            await broomio.sleep(0)
            pytest.skip("not today")

        @pytest.mark.broomio
        @pytest.mark.xfail(strict=True)
        async def test_xfail():
            assert False
    """)
    result.assert_outcomes(passed=2, skipped=1, xfailed=1)


def test_import_broomio_does_not_load_testing():
    from conftest import run_python

    proc = run_python("""
        import sys, broomio
        print("broomio.testing" in sys.modules, "pytest" in sys.modules)
        import broomio.testing
        print(broomio.testing.MockClock.__name__)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "MockClock"]


def test_changing_the_clock_resets_the_autojump():
    loop = broomio.Loop(clock=MockClock(autojump_threshold=0))
    try:
        loop.run_until_complete(broomio.sleep, 5)  # start_clock() armed the autojump
        assert loop._autojump_threshold == 0
        custom = OffsetClock(0)
        loop._set_clock(custom)
        assert loop.clock is custom and loop._autojump_threshold == math.inf
        loop._set_clock(None)
        assert loop.clock is None
        assert abs(loop.time() - time.monotonic()) < 60  # the monotonic clock again
    finally:
        loop.close()
