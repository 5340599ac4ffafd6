"""sleep, sleep_until, sleep_forever and the timer queue."""

import math
import random
import time

import pytest

import broomio
from broomio import current_time, move_on_after, open_nursery, sleep, sleep_forever, sleep_until
from conftest import BROOMIO, GUARD, TRIO, Log, assert_at_least, run, run_python


def test_sleep_waits_at_least_requested_time():
    async def main():
        for d in (0.001, 0.01, 0.05, 0.1):
            t0 = time.monotonic()
            l0 = current_time()
            await sleep(d)
            assert_at_least(time.monotonic() - t0, d, "monotonic elapsed")
            assert_at_least(current_time() - l0, d, "loop.time() elapsed")

    run(main)


def test_sleep_never_returns_early_random_durations():
    rng = random.Random(1234)
    durations = [rng.uniform(0, 0.08) for _ in range(200)]
    # Include values that stress millisecond rounding in the poller.
    durations += [0.0005, 0.0009, 0.0011, 0.0015, 0.0019999, 0.001, 0.002, 1e-6, 1e-9]
    early = []

    async def sleeper(d):
        t0 = time.monotonic()
        await sleep(d)
        elapsed = time.monotonic() - t0
        if elapsed < d - 1e-9:
            early.append((d, elapsed))

    async def main():
        async with open_nursery() as n:
            for d in durations:
                n.start_soon(sleeper, d)

    run(main)
    assert early == []


def test_sleep_never_returns_early_sequential():
    rng = random.Random(99)
    early = []

    async def main():
        for _ in range(40):
            d = rng.choice([0.0001, 0.0004, 0.0009, 0.001, 0.0016, 0.003]) * rng.uniform(0.5, 1.5)
            t0 = time.monotonic()
            await sleep(d)
            elapsed = time.monotonic() - t0
            if elapsed < d - 1e-9:
                early.append((d, elapsed))

    run(main)
    assert early == []


def test_sleep_until_never_returns_early():
    async def main():
        for delta in (0.0003, 0.0017, 0.02, 0.05):
            deadline = current_time() + delta
            await sleep_until(deadline)
            now = current_time()
            assert now >= deadline, (now, deadline)

    run(main)


def test_sleep_accepts_int_and_float_zero():
    log = Log()

    async def other():
        log("other")

    async def main():
        async with open_nursery() as n:
            n.start_soon(other)
            await sleep(0)  # int zero: a checkpoint, lets `other` run
            log("after int 0")
            await sleep(0.0)
            log("after float 0")

    run(main)
    assert log == ["other", "after int 0", "after float 0"]


def test_sleep_int_seconds():
    async def main():
        t0 = time.monotonic()
        with move_on_after(GUARD):
            await sleep(1)
        return time.monotonic() - t0

    assert_at_least(run(main), 1.0)


def test_equal_deadlines_wake_in_fifo_order():
    log = Log()
    n_tasks = 50

    async def sleeper(i, deadline):
        await sleep_until(deadline)
        log(i)

    async def main():
        deadline = current_time() + 0.05
        async with open_nursery() as n:
            for i in range(n_tasks):
                n.start_soon(sleeper, i, deadline)

    run(main)
    assert log == list(range(n_tasks))


def test_mixed_deadlines_wake_sorted_and_stable():
    """Wake order = start order stably sorted by deadline."""
    rng = random.Random(7)
    offsets = [rng.choice([0.02, 0.04, 0.06, 0.08]) for _ in range(200)]
    log = Log()

    async def sleeper(i, deadline):
        await sleep_until(deadline)
        log(i)

    async def main():
        base = current_time()
        async with open_nursery() as n:
            for i, off in enumerate(offsets):
                n.start_soon(sleeper, i, base + off)

    run(main)
    expected = sorted(range(len(offsets)), key=lambda i: offsets[i])
    assert log == expected


def test_timers_fire_in_deadline_order_with_random_deadlines():
    rng = random.Random(42)
    offsets = [rng.uniform(0.0, 0.1) for _ in range(500)]
    woke = []

    async def sleeper(deadline):
        await sleep_until(deadline)
        woke.append(deadline)

    async def main():
        base = current_time() + 0.01
        async with open_nursery() as n:
            for off in offsets:
                n.start_soon(sleeper, base + off)

    run(main)
    assert len(woke) == len(offsets)
    assert woke == sorted(woke)


def test_equal_sleep_durations_started_in_same_batch_wake_in_fifo_order():
    log = Log()

    async def sleeper(i):
        await sleep(0.03)
        log(i)

    async def main():
        async with open_nursery() as n:
            for i in range(20):
                n.start_soon(sleeper, i)

    run(main)
    assert log == list(range(20))


def test_sleep_zero_round_robin():
    log = Log()

    async def worker(i):
        for k in range(5):
            log(i, k)
            await sleep(0)

    async def main():
        async with open_nursery() as n:
            for i in range(3):
                n.start_soon(worker, i)

    run(main)
    assert log == [(i, k) for k in range(5) for i in range(3)]


def test_sleep_zero_round_robin_root_tasks():
    log = Log()

    async def worker(i):
        for k in range(4):
            log(i, k)
            await sleep(0)

    loop = broomio.Loop()
    for i in range(4):
        loop.start_soon(worker, i)
    loop.run()
    loop.close()
    assert log == [(i, k) for k in range(4) for i in range(4)]


def test_sleep_zero_lets_a_newly_spawned_task_run():
    log = Log()

    async def child():
        log("child")

    async def main():
        async with open_nursery() as n:
            n.start_soon(child)
            log("before")
            await sleep(0)
            log("after")

    run(main)
    assert log == ["before", "child", "after"]


def test_sleep_zero_does_not_starve_timers():
    """A task spinning on sleep(0) must not prevent an expired timer from firing."""
    log = Log()

    async def timer():
        await sleep(0.05)
        log("timer")

    async def spinner():
        t0 = time.monotonic()
        while not log:
            await sleep(0)
            if time.monotonic() - t0 > GUARD:
                log("starved")
                return

    async def main():
        async with open_nursery() as n:
            n.start_soon(timer)
            n.start_soon(spinner)

    run(main)
    assert log == ["timer"]


def test_sleep_until_past_deadline_returns():
    async def main():
        with move_on_after(GUARD) as guard:
            now = current_time()
            await sleep_until(now - 10)
            await sleep_until(now)
        return guard.cancelled_caught

    assert run(main) is False


def test_sleep_until_minus_inf_returns():
    # Own process: a broken engine may wedge the loop (timers never fire again).
    proc = run_python("""
        import math, broomio

        async def main():
            with broomio.move_on_after(2) as guard:
                await broomio.sleep_until(-math.inf)
            await broomio.sleep(0.01)  # timers still work afterwards
            return guard.cancelled_caught

        print(broomio.run(main))
    """, timeout=15)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_sleep_inf_sleeps_until_cancelled():
    async def main():
        t0 = time.monotonic()
        with move_on_after(0.1) as scope:
            await sleep(math.inf)
        return scope.cancelled_caught, time.monotonic() - t0

    caught, elapsed = run(main)
    assert caught is True
    assert_at_least(elapsed, 0.1)


def test_sleep_until_inf_sleeps_until_cancelled():
    async def main():
        with move_on_after(0.05) as scope:
            await sleep_until(math.inf)
        return scope.cancelled_caught

    assert run(main) is True


def test_sleep_forever_until_cancelled():
    log = Log()

    async def main():
        t0 = time.monotonic()
        with move_on_after(0.1) as scope:
            try:
                await sleep_forever()
            finally:
                log("woken", time.monotonic() - t0)
        log("caught", scope.cancelled_caught)

    run(main)
    assert log[0][0] == "woken"
    assert_at_least(log[0][1], 0.1)
    assert log[1] == ("caught", True)


def test_current_time_is_loop_time():
    loop = broomio.Loop()
    seen = []

    async def main():
        seen.append((loop.time(), current_time(), loop.time()))

    loop.run_until_complete(main)
    loop.close()
    before, cur, after = seen[0]
    assert before <= cur <= after


@pytest.mark.parametrize("lib", [TRIO, BROOMIO], ids=lambda lib: lib.name)
def test_staggered_sleeps_order_matches_trio(lib):
    """Durations far apart: the wake order is causally fixed, compare with trio."""
    log = Log()

    async def sleeper(i, d):
        await lib.sleep(d)
        log(i)

    async def main():
        async with lib.open_nursery() as n:
            for i, d in enumerate([0.12, 0.02, 0.08, 0.05]):
                n.start_soon(sleeper, i, d)

    lib.run(main)
    assert log == [1, 3, 2, 0]
