"""Synchronization benchmarks: queues, locks and events in broomio, asyncio, uvloop, trio.

Three cases, each measuring one primitive under the load it is built for:

* ``pingpong`` -- two tasks bounce a counter through two queues of size 1 (asyncio
  ``Queue(1)``, broomio ``Queue(1)``, trio memory channels of size 1): round trips/s.
* ``lock`` -- 100 tasks each take one Lock ``iterations`` times and yield (``sleep(0)``)
  while holding it, so every acquisition is contended: acquisitions/s.
* ``event`` -- 10k tasks wait on one Event; the time from ``set()`` until all of them have
  woken and finished (their group is joined): milliseconds.

The coroutine bodies are the same for every framework; only the primitives and the task
group come from the framework (see :class:`SyncDriver`).  Like ``benchmarks.micro``, this
module is the child-process entry point::

    python -m benchmarks.sync --case pingpong --framework trio --n 100000

prints one JSON line (``{"value": ...}`` or ``{"error": ...}``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from .micro import FRAMEWORKS, CaseSpec, Driver, Params, _si, make_driver

__all__ = ["CASES", "FRAMEWORKS", "SyncCaseSpec", "child_command", "run_case"]


@dataclass(frozen=True)
class SyncCaseSpec(CaseSpec):
    """A :class:`benchmarks.micro.CaseSpec` that knows how to describe the sync cases."""

    def describe(self, params: Params) -> str:
        if self.name == "pingpong":
            return f"{_si(params.n)} round trips between 2 tasks"
        if self.name == "lock":
            return f"{_si(params.n)} tasks x {_si(params.iterations)} acquisitions"
        if self.name == "event":
            return f"set() waking {_si(params.n)} waiting tasks"
        return self.title


CASES: dict[str, CaseSpec] = {
    spec.name: spec
    for spec in (
        SyncCaseSpec(
            name="pingpong",
            title="queue ping-pong",
            unit="round trips/s",
            kind="rate",
            higher_is_better=True,
            full=Params(n=200_000),
            quick=Params(n=10_000),
            target="broomio >= 10x asyncio",
            target_rule=("ratio>=", 10.0),
        ),
        SyncCaseSpec(
            name="lock",
            title="lock contention",
            unit="acquisitions/s",
            kind="rate",
            higher_is_better=True,
            full=Params(n=100, iterations=2_000),
            quick=Params(n=100, iterations=100),
            target="broomio >= 10x asyncio",
            target_rule=("ratio>=", 10.0),
        ),
        SyncCaseSpec(
            name="event",
            title="event fan-out",
            unit="ms to wake all",
            kind="ms",
            higher_is_better=False,
            full=Params(n=10_000),
            quick=Params(n=1_000),
            target="no target (reported)",
            target_rule=("none", 0.0),
        ),
    )
}


# --------------------------------------------------------------------------
# Coroutine bodies: identical for every framework.
# --------------------------------------------------------------------------

PutFn = Callable[[Any], Awaitable[Any]]
GetFn = Callable[[], Awaitable[Any]]


async def pinger(put: PutFn, get: GetFn, rounds: int) -> None:
    """Send a counter, wait for it to come back incremented."""
    value = 0
    for _ in range(rounds):
        await put(value)
        value = await get()
    if value != rounds:
        raise AssertionError(f"ping-pong lost messages: {value} != {rounds}")


async def ponger(get: GetFn, put: PutFn, rounds: int) -> None:
    """Send every counter back, incremented."""
    for _ in range(rounds):
        await put(await get() + 1)


async def locker(lock: Any, sleep: Callable[[float], Awaitable[Any]], iterations: int,
                 counter: list[int]) -> None:
    """Take the lock `iterations` times, yielding while holding it (so others queue up)."""
    for _ in range(iterations):
        async with lock:
            counter[0] += 1
            await sleep(0)


async def event_waiter(event: Any, started: list[int]) -> None:
    """Note that this task is about to wait, then wait (in the same step)."""
    started[0] += 1
    await event.wait()


# --------------------------------------------------------------------------
# What each framework supplies on top of benchmarks.micro's drivers.
# --------------------------------------------------------------------------


class SyncDriver:
    """A micro driver (loop, task group, sleep) plus the framework's primitives."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.base: Driver = make_driver(framework)
        self.sleep = self.base.sleep
        if framework in ("asyncio", "uvloop"):
            import asyncio

            self._asyncio = asyncio
        elif framework == "trio":
            import trio  # type: ignore[import-untyped, unused-ignore]

            self._trio: Any = trio
        else:
            import broomio  # type: ignore[import-not-found, unused-ignore]

            self._broomio: Any = broomio

    def run(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return self.base.run(main)

    def queue_pair(self) -> tuple[PutFn, GetFn]:
        """A one-slot channel: (put, get)."""
        if self.framework == "trio":
            send, recv = self._trio.open_memory_channel(1)
            return send.send, recv.receive
        q = (self._asyncio.Queue(1) if self.framework in ("asyncio", "uvloop")
             else self._broomio.Queue(1))
        return q.put, q.get

    def lock(self) -> Any:
        if self.framework == "trio":
            return self._trio.Lock()
        if self.framework in ("asyncio", "uvloop"):
            return self._asyncio.Lock()
        return self._broomio.Lock()

    def event(self) -> Any:
        if self.framework == "trio":
            return self._trio.Event()
        if self.framework in ("asyncio", "uvloop"):
            return self._asyncio.Event()
        return self._broomio.Event()

    async def group(self, spawn: Callable[[Callable[..., Any]], None],
                    body: Callable[[], Awaitable[Any]]) -> None:
        """Open the framework's task group, ``spawn(start)``, await ``body()``, join."""
        if self.framework in ("asyncio", "uvloop"):
            async with self._asyncio.TaskGroup() as tg:
                spawn(lambda fn, *args: tg.create_task(fn(*args)))
                await body()
        else:
            lib = self._trio if self.framework == "trio" else self._broomio
            async with lib.open_nursery() as nursery:
                spawn(nursery.start_soon)
                await body()


# --------------------------------------------------------------------------
# Cases.  Each returns (seconds, value, extra).
# --------------------------------------------------------------------------

CaseResult = tuple[float, float, dict[str, Any]]


def _case_pingpong(d: SyncDriver, p: Params) -> CaseResult:
    async def main() -> float:
        put_a, get_a = d.queue_pair()
        put_b, get_b = d.queue_pair()
        gc.collect()
        t0 = time.perf_counter()
        await d.group(lambda start: start(ponger, get_a, put_b, p.n),
                      lambda: pinger(put_a, get_b, p.n))
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    return seconds, p.n / seconds, {"round_trips": p.n}


def _case_lock(d: SyncDriver, p: Params) -> CaseResult:
    counter = [0]

    async def main() -> float:
        lock = d.lock()

        def spawn(start: Callable[..., Any]) -> None:
            for _ in range(p.n):
                start(locker, lock, d.sleep, p.iterations, counter)

        async def nothing() -> None:
            pass

        gc.collect()
        t0 = time.perf_counter()
        await d.group(spawn, nothing)
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    total = p.n * p.iterations
    if counter[0] != total:
        raise AssertionError(f"{counter[0]} acquisitions instead of {total}")
    return seconds, total / seconds, {"acquisitions": total}


def _case_event(d: SyncDriver, p: Params) -> CaseResult:
    started = [0]
    times: dict[str, float] = {}

    async def main() -> None:
        event = d.event()

        def spawn(start: Callable[..., Any]) -> None:
            for _ in range(p.n):
                start(event_waiter, event, started)

        async def wait_then_set() -> None:
            while started[0] < p.n:  # every waiter parks in the step that counts it
                await d.sleep(0)
            gc.collect()
            times["t0"] = time.perf_counter()
            event.set()

        await d.group(spawn, wait_then_set)
        times["t1"] = time.perf_counter()

    d.run(main)
    seconds = times["t1"] - times["t0"]
    return seconds, seconds * 1000.0, {"waiters": p.n}


_CASE_FUNCS: dict[str, Callable[[SyncDriver, Params], CaseResult]] = {
    "pingpong": _case_pingpong,
    "lock": _case_lock,
    "event": _case_event,
}


def run_case(case: str, framework: str, params: Params) -> dict[str, Any]:
    """Run one case once in this process and return the JSON-able record."""
    spec = CASES[case]
    seconds, value, extra = _CASE_FUNCS[case](SyncDriver(framework), params)
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
        sys.executable, "-X", "faulthandler", "-m", "benchmarks.sync",
        "--case", case, "--framework", framework,
        "--n", str(params.n), "--iterations", str(params.iterations),
    ]


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run one case, print one JSON line, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sync",
        description="Run one synchronization benchmark case once and print a JSON line.",
    )
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--n", type=int, help="round trips / tasks / waiters")
    parser.add_argument("--iterations", type=int, help="acquisitions per task (lock)")
    parser.add_argument("--quick", action="store_true", help="use the --quick default sizes")
    args = parser.parse_args(argv)

    spec = CASES[args.case]
    defaults = spec.quick if args.quick else spec.full
    params = Params(
        n=args.n if args.n is not None else defaults.n,
        iterations=args.iterations if args.iterations is not None else defaults.iterations,
    )
    try:
        record = run_case(args.case, args.framework, params)
    except BaseException as exc:  # report anything, including BaseExceptions
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        print(json.dumps({"case": args.case, "framework": args.framework, "error": error}))
        sys.stdout.flush()
        return 1
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
