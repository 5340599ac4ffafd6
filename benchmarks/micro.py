"""Micro-benchmark cases for broomio, asyncio, uvloop and trio.

Each case measures one property of the scheduler (spawn cost, switch cost,
timer overhead, memory per parked task).  Every framework runs the *same*
coroutine bodies (``noop``, ``switcher``, ``sleeper``, ``parked``); only the
way tasks are grouped and the loop is started differs, and that lives in one
small :class:`Driver` per framework.

This module is also the child-process entry point used by the harness: every
(case, framework, repetition) runs in a fresh interpreter::

    python -m benchmarks.micro --case spawn --framework trio --n 100000

prints exactly one JSON line on stdout, e.g.::

    {"case": "spawn", "framework": "trio", "params": {...}, "seconds": 0.91,
     "value": 109890.1, "unit": "tasks/s", "extra": {}}

On failure it prints ``{"case": ..., "framework": ..., "error": "Type: msg"}``
instead (traceback on stderr) and exits with status 1.

Timing starts inside the running loop, right before the first task is
spawned, so interpreter start-up, imports and loop creation are excluded.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

__all__ = [
    "CASES",
    "FRAMEWORKS",
    "CaseSpec",
    "Driver",
    "Params",
    "make_driver",
    "run_case",
]

#: Frameworks in the order they appear in the table.  ``asyncio`` is the baseline.
FRAMEWORKS: tuple[str, ...] = ("asyncio", "uvloop", "trio", "broomio")

#: How long a task in the memory case sleeps; it is cancelled long before.
PARK_SECONDS = 1000.0

#: How long the parent waits before it starts checking that every task parked.
SETTLE_SECONDS = 0.05

SleepFn = Callable[[float], Awaitable[Any]]
AsyncFn = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class Params:
    """Size parameters of one case run.

    ``n`` is always the number of tasks.  ``iterations`` is the number of
    ``sleep(0)`` calls per task (switches case only); ``delay`` the sleep
    length in seconds (sleep-overhead case only).
    """

    n: int
    iterations: int = 1
    delay: float = 0.0


@dataclass(frozen=True)
class CaseSpec:
    """Static description of a benchmark case (shared by parent and child).

    ``kind`` tells the table how to format the value: ``"rate"`` (per second,
    higher is better), ``"ms"`` (milliseconds, lower is better) or
    ``"bytes"`` (lower is better).  ``target`` is the goal from the issue,
    shown under the table, never asserted.
    """

    name: str
    title: str
    unit: str
    kind: str
    higher_is_better: bool
    full: Params
    quick: Params
    target: str
    #: ``("ratio>=", 10.0)``: broomio >= 10x asyncio; ``("<", 20.0)``: value < 20;
    #: ``("<=", 600.0)``: value <= 600.
    target_rule: tuple[str, float]

    def describe(self, params: Params) -> str:
        """A short human description of the workload for ``params``."""
        n = _si(params.n)
        if self.name == "spawn":
            return f"{n} no-op tasks"
        if self.name == "switches":
            return f"{n} tasks x {_si(params.iterations)} sleep(0)"
        if self.name == "sleep":
            return f"{n} tasks sleeping {params.delay * 1000:g} ms"
        if self.name == "memory":
            return f"{n} sleeping tasks"
        return self.title


def _si(n: int) -> str:
    """``100000`` -> ``"100k"``, ``1000000`` -> ``"1M"``, ``1500`` -> ``"1500"``."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


CASES: dict[str, CaseSpec] = {
    spec.name: spec
    for spec in (
        CaseSpec(
            name="spawn",
            title="spawn+join",
            unit="tasks/s",
            kind="rate",
            higher_is_better=True,
            full=Params(n=100_000),
            quick=Params(n=10_000),
            target="broomio >= 10x asyncio",
            target_rule=("ratio>=", 10.0),
        ),
        CaseSpec(
            name="switches",
            title="switches",
            unit="switches/s",
            kind="rate",
            higher_is_better=True,
            full=Params(n=1_000, iterations=1_000),
            quick=Params(n=100, iterations=200),
            target="broomio >= 10x asyncio",
            target_rule=("ratio>=", 10.0),
        ),
        CaseSpec(
            name="sleep",
            title="sleep overhead",
            unit="ms over the sleep",
            kind="ms",
            higher_is_better=False,
            full=Params(n=10_000, delay=0.010),
            quick=Params(n=1_000, delay=0.010),
            target="broomio < 20 ms",
            target_rule=("<", 20.0),
        ),
        CaseSpec(
            name="memory",
            title="memory per sleeping task",
            unit="bytes/task",
            kind="bytes",
            higher_is_better=False,
            full=Params(n=100_000),
            quick=Params(n=10_000),
            target="broomio <= 600 bytes/task",
            target_rule=("<=", 600.0),
        ),
    )
}


# --------------------------------------------------------------------------
# Coroutine bodies: identical for every framework.  The framework's ``sleep``
# is passed in as an argument, so the code that runs in each task is the same.
# --------------------------------------------------------------------------


async def noop() -> None:
    """The spawn+join task body: does nothing."""


async def switcher(sleep: SleepFn, iterations: int) -> None:
    """The switches task body: yield to the scheduler ``iterations`` times."""
    for _ in range(iterations):
        await sleep(0)


async def sleeper(sleep: SleepFn, delay: float) -> None:
    """The sleep-overhead task body: one timer of ``delay`` seconds."""
    await sleep(delay)


class _Parked:
    """Counts tasks that reached their sleep in the memory case.

    A class attribute, not a per-task object, so it adds no per-task memory.
    """

    count: ClassVar[int] = 0


async def parked(sleep: SleepFn) -> None:
    """The memory task body: note that it started, then sleep (until cancelled)."""
    _Parked.count += 1
    await sleep(PARK_SECONDS)


# --------------------------------------------------------------------------
# Drivers: how each framework runs a loop and a group of tasks.
# --------------------------------------------------------------------------


class Driver:
    """What a framework must provide for the cases.

    The hot spawn loop lives in each subclass (with the bound ``start``
    method hoisted into a local) so every framework pays the same Python
    overhead per spawn: one call of its own task-starting API.
    """

    name: str = ""
    sleep: SleepFn

    def run(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Create a fresh loop, run ``main()`` to completion, return its result."""
        raise NotImplementedError

    async def spawn_and_join(self, fn: AsyncFn, args: tuple[Any, ...], count: int) -> None:
        """Start ``count`` tasks running ``fn(*args)`` in one group; wait for all."""
        raise NotImplementedError

    async def spawn_and_park(
        self, fn: AsyncFn, args: tuple[Any, ...], count: int, on_parked: Callable[[], None]
    ) -> None:
        """Start ``count`` tasks in one group, wait until every one is parked,
        call ``on_parked()``, then cancel the whole group and wait for it."""
        raise NotImplementedError

    async def wait_until_parked(self, count: int) -> None:
        """Sleep :data:`SETTLE_SECONDS`, then until ``count`` tasks have started."""
        await self.sleep(SETTLE_SECONDS)
        while _Parked.count < count:
            await self.sleep(0.01)


class _StopGroup(Exception):
    """Raised inside an asyncio TaskGroup body to make it cancel its children."""


class AsyncioDriver(Driver):
    """asyncio with ``asyncio.TaskGroup`` (Python 3.11+); default event loop."""

    name = "asyncio"

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self.sleep = asyncio.sleep

    def loop_factory(self) -> Callable[[], Any] | None:
        """The event loop factory for ``asyncio.Runner`` (``None`` = default)."""
        return None

    def run(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with self._asyncio.Runner(loop_factory=self.loop_factory()) as runner:
            return runner.run(main())

    async def spawn_and_join(self, fn: AsyncFn, args: tuple[Any, ...], count: int) -> None:
        async with self._asyncio.TaskGroup() as tg:
            start = tg.create_task
            for _ in range(count):
                start(fn(*args))

    async def spawn_and_park(
        self, fn: AsyncFn, args: tuple[Any, ...], count: int, on_parked: Callable[[], None]
    ) -> None:
        # TaskGroup has no cancel(): raising from the body cancels the children.
        try:
            async with self._asyncio.TaskGroup() as tg:
                start = tg.create_task
                for _ in range(count):
                    start(fn(*args))
                await self.wait_until_parked(count)
                on_parked()
                raise _StopGroup
        except* _StopGroup:
            pass


class UvloopDriver(AsyncioDriver):
    """The asyncio code above, on a uvloop event loop."""

    name = "uvloop"

    def __init__(self) -> None:
        super().__init__()
        import uvloop

        self._uvloop = uvloop

    def loop_factory(self) -> Callable[[], Any] | None:
        return self._uvloop.new_event_loop


class NurseryDriver(Driver):
    """A trio-style library: ``lib.run(main)``, ``lib.open_nursery()``, ``lib.sleep``."""

    def __init__(self, lib: Any) -> None:
        self._lib: Any = lib
        self.sleep = lib.sleep

    def run(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return self._lib.run(main)

    async def spawn_and_join(self, fn: AsyncFn, args: tuple[Any, ...], count: int) -> None:
        async with self._lib.open_nursery() as nursery:
            start = nursery.start_soon
            for _ in range(count):
                start(fn, *args)

    async def spawn_and_park(
        self, fn: AsyncFn, args: tuple[Any, ...], count: int, on_parked: Callable[[], None]
    ) -> None:
        async with self._lib.open_nursery() as nursery:
            start = nursery.start_soon
            for _ in range(count):
                start(fn, *args)
            await self.wait_until_parked(count)
            on_parked()
            nursery.cancel_scope.cancel()


class TrioDriver(NurseryDriver):
    """trio with a nursery."""

    name = "trio"

    def __init__(self) -> None:
        import trio  # type: ignore[import-untyped, unused-ignore]

        super().__init__(trio)


class BroomioDriver(NurseryDriver):
    """broomio with a nursery, run by ``broomio.run``."""

    name = "broomio"

    def __init__(self) -> None:
        import broomio  # type: ignore[import-not-found, unused-ignore]

        super().__init__(broomio)


_DRIVERS: dict[str, Callable[[], Driver]] = {
    "asyncio": AsyncioDriver,
    "uvloop": UvloopDriver,
    "trio": TrioDriver,
    "broomio": BroomioDriver,
}


def make_driver(framework: str) -> Driver:
    """Import ``framework`` and return its driver (import errors propagate)."""
    try:
        factory = _DRIVERS[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}") from None
    return factory()


# --------------------------------------------------------------------------
# Cases.  Each returns (seconds, value, extra).
# --------------------------------------------------------------------------


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes.

    Reads ``/proc/self/statm``; falls back to the peak RSS from
    ``getrusage`` (good enough for a delta that only grows) elsewhere.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


CaseResult = tuple[float, float, dict[str, Any]]


def _case_spawn(d: Driver, p: Params) -> CaseResult:
    async def main() -> float:
        gc.collect()
        t0 = time.perf_counter()
        await d.spawn_and_join(noop, (), p.n)
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    return seconds, p.n / seconds, {}


def _case_switches(d: Driver, p: Params) -> CaseResult:
    async def main() -> float:
        gc.collect()
        t0 = time.perf_counter()
        await d.spawn_and_join(switcher, (d.sleep, p.iterations), p.n)
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    total = p.n * p.iterations
    return seconds, total / seconds, {"switches": total}


def _case_sleep(d: Driver, p: Params) -> CaseResult:
    async def main() -> float:
        gc.collect()
        t0 = time.perf_counter()
        await d.spawn_and_join(sleeper, (d.sleep, p.delay), p.n)
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    return seconds, (seconds - p.delay) * 1000.0, {"delay_s": p.delay}


def _case_memory(d: Driver, p: Params) -> CaseResult:
    samples: dict[str, int] = {}

    def on_parked() -> None:
        samples["after"] = rss_bytes()
        samples["parked"] = _Parked.count

    async def main() -> float:
        _Parked.count = 0
        gc.collect()
        samples["before"] = rss_bytes()
        t0 = time.perf_counter()
        await d.spawn_and_park(parked, (d.sleep,), p.n, on_parked)
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    delta = samples["after"] - samples["before"]
    extra = {
        "rss_before": samples["before"],
        "rss_parked": samples["after"],
        "tasks_parked": samples["parked"],
    }
    return seconds, delta / p.n, extra


_CASE_FUNCS: dict[str, Callable[[Driver, Params], CaseResult]] = {
    "spawn": _case_spawn,
    "switches": _case_switches,
    "sleep": _case_sleep,
    "memory": _case_memory,
}


def run_case(case: str, framework: str, params: Params) -> dict[str, Any]:
    """Run one case once in this process and return the JSON-able record."""
    spec = CASES[case]
    driver = make_driver(framework)
    seconds, value, extra = _CASE_FUNCS[case](driver, params)
    return {
        "case": case,
        "framework": framework,
        "params": asdict(params),
        "seconds": seconds,
        "value": value,
        "unit": spec.unit,
        "extra": extra,
    }


def child_command(case: str, framework: str, params: Params) -> list[str]:
    """The argv that runs one case in a fresh interpreter (see :func:`main`)."""
    return [
        sys.executable,
        "-X",
        "faulthandler",  # a crash in a C extension prints the Python stack
        "-m",
        "benchmarks.micro",
        "--case",
        case,
        "--framework",
        framework,
        "--n",
        str(params.n),
        "--iterations",
        str(params.iterations),
        "--delay",
        repr(params.delay),
    ]


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run one case, print one JSON line, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.micro",
        description="Run one micro-benchmark case once and print a JSON line.",
    )
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--n", type=int, help="number of tasks (default: the full size)")
    parser.add_argument("--iterations", type=int, help="sleep(0) calls per task (switches)")
    parser.add_argument("--delay", type=float, help="sleep length in seconds (sleep)")
    parser.add_argument("--quick", action="store_true", help="use the --quick default sizes")
    args = parser.parse_args(argv)

    spec = CASES[args.case]
    defaults = spec.quick if args.quick else spec.full
    params = Params(
        n=args.n if args.n is not None else defaults.n,
        iterations=args.iterations if args.iterations is not None else defaults.iterations,
        delay=args.delay if args.delay is not None else defaults.delay,
    )
    try:
        record = run_case(args.case, args.framework, params)
    except BaseException as exc:  # report anything, including Cancelled-like BaseExceptions
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        print(json.dumps({"case": args.case, "framework": args.framework, "error": error}))
        sys.stdout.flush()
        return 1
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
