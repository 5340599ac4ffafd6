"""Instrument hooks: order, failure policy, adding and removing them."""

from __future__ import annotations

import logging
import math
import os
import threading

import pytest

import broomio
from broomio import lowlevel


def short(task: broomio.Task) -> str:
    return task.name.rsplit(".", 1)[-1]


class Recorder(broomio.Instrument):
    """Records every hook as (hook, task name) / (hook,), keeping io-wait timeouts aside."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.timeouts: list[tuple[str, float]] = []

    def before_run(self) -> None:
        self.events.append(("before_run",))

    def after_run(self) -> None:
        self.events.append(("after_run",))

    def task_spawned(self, task: broomio.Task) -> None:
        self.events.append(("task_spawned", short(task)))

    def task_scheduled(self, task: broomio.Task) -> None:
        self.events.append(("task_scheduled", short(task)))

    def before_task_step(self, task: broomio.Task) -> None:
        self.events.append(("before_task_step", short(task)))

    def after_task_step(self, task: broomio.Task) -> None:
        self.events.append(("after_task_step", short(task)))

    def task_exited(self, task: broomio.Task) -> None:
        assert task.done()
        self.events.append(("task_exited", short(task)))

    def before_io_wait(self, timeout: float) -> None:
        self.events.append(("before_io_wait",))
        self.timeouts.append(("before", timeout))

    def after_io_wait(self, timeout: float) -> None:
        self.events.append(("after_io_wait",))
        self.timeouts.append(("after", timeout))


def collapse_io_waits(events):
    """An I/O wait may be repeated (a wake-up with nothing to do): keep one pair per run."""
    out = []
    for event in events:
        if event[0] in ("before_io_wait", "after_io_wait") and out[-2:] == [
            ("before_io_wait",),
            ("after_io_wait",),
        ]:
            if event[0] == "after_io_wait":
                continue
            out.pop()
            out.pop()
        out.append(event)
    return out


async def child():
    await broomio.sleep(0.001)


async def main():
    async with broomio.open_nursery() as nursery:
        nursery.start_soon(child)


EXPECTED = [
    # run_until_complete() spawns the main task before the loop starts running
    ("task_spawned", "main"),
    ("task_scheduled", "main"),
    ("before_run",),
    ("before_task_step", "main"),
    ("task_spawned", "child"),
    ("task_scheduled", "child"),
    ("after_task_step", "main"),  # main now waits for its nursery's children
    ("before_task_step", "child"),
    ("after_task_step", "child"),  # child sleeps: nothing is runnable
    ("before_io_wait",),
    ("after_io_wait",),
    ("task_scheduled", "child"),  # its timer fired
    ("before_task_step", "child"),
    ("task_scheduled", "main"),  # the nursery's last child is done
    ("task_exited", "child"),  # after the wake-ups it causes, as in trio
    ("after_task_step", "child"),
    ("before_task_step", "main"),
    ("task_exited", "main"),
    ("after_task_step", "main"),
    ("after_run",),
]


def test_every_hook_fires_in_order():
    recorder = Recorder()
    broomio.run(main, instruments=[recorder])
    assert collapse_io_waits(recorder.events) == EXPECTED
    # the I/O wait blocked until the child's deadline: a positive, finite timeout,
    # reported identically to both hooks
    befores = [t for kind, t in recorder.timeouts if kind == "before"]
    afters = [t for kind, t in recorder.timeouts if kind == "after"]
    assert befores == afters
    assert all(0 < t < 1 for t in befores)


def test_io_wait_timeout_is_inf_when_waiting_for_io_only():
    recorder = Recorder()

    async def reader():
        a, b = broomio.socket.socketpair()
        with a, b:
            # Nothing runnable and no timer: the loop waits for I/O without a timeout.
            timer = threading.Timer(0.01, os.write, (b.fileno(), b"x"))
            timer.start()
            try:
                assert await a.recv(1) == b"x"
            finally:
                timer.join()

    broomio.run(reader, instruments=[recorder])
    assert ("before", math.inf) in recorder.timeouts
    assert ("after", math.inf) in recorder.timeouts


def test_hook_order_matches_trio():
    """The same program under trio: the same sequence for the user's tasks, except that
    broomio's run_until_complete() spawns the main task before the loop starts."""
    import trio
    import trio.abc

    class TrioRecorder(trio.abc.Instrument):
        def __init__(self) -> None:
            self.events: list[tuple[str, ...]] = []

        def _add(self, hook: str, task: trio.lowlevel.Task | None = None) -> None:
            name = task.name.rsplit(".", 1)[-1].removeprefix("trio_") if task else ""
            if task is None:
                self.events.append((hook,))
            elif name in ("main", "child"):  # not trio's own system tasks
                self.events.append((hook, name))

        def before_run(self) -> None:
            self._add("before_run")

        def after_run(self) -> None:
            self._add("after_run")

        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            self._add("task_spawned", task)

        def task_scheduled(self, task: trio.lowlevel.Task) -> None:
            self._add("task_scheduled", task)

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self._add("before_task_step", task)

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            self._add("after_task_step", task)

        def task_exited(self, task: trio.lowlevel.Task) -> None:
            self._add("task_exited", task)

    async def trio_child() -> None:
        await trio.sleep(0.001)

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_child, name="child")

    trio_recorder = TrioRecorder()
    trio.run(trio_main, instruments=[trio_recorder])
    trio_events = trio_recorder.events
    ours = [e for e in EXPECTED if e[0] not in ("before_io_wait", "after_io_wait")]
    # move our before_run to where trio has it (before the main task exists)
    ours.remove(("before_run",))
    ours.insert(0, ("before_run",))
    assert ours == trio_events


def test_same_sequence_with_loop_instruments_and_add_instrument():
    recorder = Recorder()
    with broomio.Loop(instruments=[recorder]) as loop:
        assert loop.instruments == (recorder,)
        loop.run_until_complete(main)
    assert collapse_io_waits(recorder.events) == EXPECTED

    late = Recorder()
    with broomio.Loop() as loop:
        loop.add_instrument(late)
        loop.run_until_complete(main)
    assert collapse_io_waits(late.events) == EXPECTED


def test_only_overridden_hooks_are_called():
    spawned: list[str] = []

    class SpawnOnly(broomio.Instrument):
        def task_spawned(self, task: broomio.Task) -> None:
            spawned.append(short(task))

    broomio.run(main, instruments=[SpawnOnly()])
    assert spawned == ["main", "child"]


def test_a_raising_instrument_is_removed_and_logged(caplog):
    class Broken(broomio.Instrument):
        calls = 0

        def before_task_step(self, task: broomio.Task) -> None:
            Broken.calls += 1
            raise RuntimeError("instrument bug")

    broken = Broken()
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, logger="broomio"):
        with broomio.Loop(instruments=[broken, recorder]) as loop:
            assert loop.run_until_complete(main) is None
            assert loop.instruments == (recorder,)
    assert Broken.calls == 1
    # the other instrument saw everything, including the step the broken one failed in
    assert collapse_io_waits(recorder.events) == EXPECTED
    [record] = [r for r in caplog.records if r.name == "broomio"]
    assert record.levelno == logging.ERROR
    assert "before_task_step" in record.getMessage() and "removed" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "instrument bug"


def test_an_instrument_raising_inside_a_wake_up_does_not_disturb_the_tasks(caplog):
    class Broken(broomio.Instrument):
        def task_scheduled(self, task: broomio.Task) -> None:
            raise ValueError("nope")

    async def worker():
        event = broomio.Event()

        async def setter():
            await broomio.sleep(0)
            event.set()

        async with broomio.open_nursery() as nursery:
            nursery.start_soon(setter)
            await event.wait()
        return "done"

    with caplog.at_level(logging.ERROR, logger="broomio"):
        assert broomio.run(worker, instruments=[Broken()]) == "done"
    assert len([r for r in caplog.records if r.name == "broomio"]) == 1


def test_add_and_remove_at_runtime():
    recorder = Recorder()

    async def body():
        lowlevel.add_instrument(recorder)
        lowlevel.add_instrument(recorder)  # already there: no-op
        assert lowlevel.current_instruments() == (recorder,)
        await broomio.sleep(0)
        lowlevel.remove_instrument(recorder)
        assert lowlevel.current_instruments() == ()
        with pytest.raises(KeyError):
            lowlevel.remove_instrument(recorder)
        await broomio.sleep(0)

    broomio.run(body, debug=False)  # (debug mode's own step hooks would change the timing)
    # Added in the middle of a step: hooks start with the next event (the step that was
    # already running reports no after_task_step); removed mid-step: they stop at once.
    assert recorder.events == [
        ("task_scheduled", "body"),  # the sleep(0) reschedules the task
        ("before_task_step", "body"),
    ]


def test_bad_instruments_are_rejected():
    with pytest.raises(TypeError, match="Instrument"):
        broomio.Loop(instruments=[object()])  # type: ignore[list-item]
    with broomio.Loop() as loop:
        with pytest.raises(TypeError, match="Instrument"):
            loop.add_instrument("nope")  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            loop.remove_instrument(broomio.Instrument())
    with pytest.raises(RuntimeError):
        lowlevel.add_instrument(broomio.Instrument())


def test_debug_monitor_is_not_listed_and_coexists_with_instruments():
    recorder = Recorder()
    with broomio.Loop(debug=True, instruments=[recorder]) as loop:
        assert loop.instruments == (recorder,)
        loop.run_until_complete(main)
        assert loop.statistics().instruments == 1
    assert collapse_io_waits(recorder.events) == EXPECTED


def test_no_hook_fires_without_instruments():
    class Never(broomio.Instrument):
        def task_spawned(self, task: broomio.Task) -> None:  # pragma: no cover
            raise AssertionError("removed instruments must not be called")

    never = Never()
    with broomio.Loop(instruments=[never]) as loop:
        loop.remove_instrument(never)
        loop.run_until_complete(main)


def test_timeout_values_are_floats():
    recorder = Recorder()

    async def napper():
        await broomio.sleep(0.002)

    broomio.run(napper, instruments=[recorder])
    assert recorder.timeouts and all(isinstance(t, float) for _, t in recorder.timeouts)
    assert all(not math.isnan(t) for _, t in recorder.timeouts)


def test_a_loop_collected_without_close_runs_no_hooks():
    import gc

    calls: list[str] = []

    class Exits(broomio.Instrument):
        def task_exited(self, task: broomio.Task) -> None:
            calls.append(short(task))

    loop = broomio.Loop(debug=True, instruments=[Exits()])
    loop.start_soon(broomio.sleep, 1)
    del loop
    gc.collect()
    assert calls == []

    # an explicit close() is an orderly shutdown: the abandoned task reports its exit
    with broomio.Loop(instruments=[Exits()]) as loop:
        loop.start_soon(broomio.sleep, 1, name="sleeper")
    assert calls == ["sleeper"]


_PLUGIN_RECORDER = Recorder()


@pytest.mark.broomio(instruments=[_PLUGIN_RECORDER])
async def test_pytest_marker_installs_instruments():
    await broomio.sleep(0)
    assert broomio.current_loop().instruments == (_PLUGIN_RECORDER,)
    events = _PLUGIN_RECORDER.events
    assert ("before_run",) in events
    # the test runs as a task: its sleep(0) rescheduled it
    me = short(broomio.current_task())
    assert events[-3:] == [("task_scheduled", me), ("after_task_step", me), ("before_task_step", me)]
