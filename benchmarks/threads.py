"""Worker-thread benchmarks: ``run_in_thread`` round trips against asyncio, uvloop and trio.

Two cases, each a loop task handing a trivial function (``int``, which returns at once) to a
worker thread and waiting for the result, so what is measured is the round trip itself:
handing the call to a thread, waking the loop with the result, resuming the task.

* ``roundtrip`` -- one task, calls one after the other: round trips/s (latency bound).
* ``parallel`` -- 20 tasks calling concurrently (each waits for its own result): calls/s
  (throughput, with the thread pool and the loop's wake-up batching at work).

The calls: ``asyncio.to_thread`` (asyncio, uvloop), ``trio.to_thread.run_sync`` (trio),
``broomio.run_in_thread`` (broomio).  Each framework's default thread limit applies (40 in
trio and broomio; asyncio's default executor has ``min(32, cpus + 4)`` threads).  Like
``benchmarks.micro``, this module is the child-process entry point::

    python -m benchmarks.threads --case roundtrip --framework trio --n 20000

prints one JSON line (``{"value": ...}`` or ``{"error": ...}``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from .micro import FRAMEWORKS, CaseSpec, Params, _si
from .sync import SyncDriver

__all__ = ["CASES", "FRAMEWORKS", "child_command", "run_case"]

#: Concurrent callers in the ``parallel`` case.
PARALLEL_TASKS = 20


@dataclass(frozen=True)
class ThreadCaseSpec(CaseSpec):
    """A :class:`benchmarks.micro.CaseSpec` that knows how to describe the thread cases."""

    def describe(self, params: Params) -> str:
        if self.name == "roundtrip":
            return f"{_si(params.n)} sequential calls"
        if self.name == "parallel":
            return f"{_si(params.n)} calls from {PARALLEL_TASKS} tasks"
        return self.title


CASES: dict[str, CaseSpec] = {
    spec.name: spec
    for spec in (
        ThreadCaseSpec(
            name="roundtrip",
            title="thread round trip",
            unit="round trips/s",
            kind="rate",
            higher_is_better=True,
            full=Params(n=20_000),
            quick=Params(n=2_000),
            target="no target (reported)",
            target_rule=("none", 0.0),
        ),
        ThreadCaseSpec(
            name="parallel",
            title="thread calls, 20 callers",
            unit="calls/s",
            kind="rate",
            higher_is_better=True,
            full=Params(n=40_000),
            quick=Params(n=4_000),
            target="no target (reported)",
            target_rule=("none", 0.0),
        ),
    )
}

CallFn = Callable[[Callable[[], Any]], Awaitable[Any]]


def _thread_call(framework: str) -> CallFn:
    """The framework's "run this sync function in a worker thread" call."""
    if framework in ("asyncio", "uvloop"):
        import asyncio

        return asyncio.to_thread
    if framework == "trio":
        import trio  # type: ignore[import-untyped, unused-ignore]

        run_sync: CallFn = trio.to_thread.run_sync
        return run_sync
    import broomio  # type: ignore[import-not-found, unused-ignore]

    run_in_thread: CallFn = broomio.run_in_thread
    return run_in_thread


async def caller(call: CallFn, rounds: int, done: list[int]) -> None:
    """``rounds`` calls of ``int()`` in a worker thread, one after the other."""
    for _ in range(rounds):
        if await call(int) != 0:
            raise AssertionError("the thread call returned a wrong result")
    done[0] += rounds


CaseResult = tuple[float, float, dict[str, Any]]


def _run_callers(d: SyncDriver, call: CallFn, tasks: int, n: int) -> CaseResult:
    done = [0]
    per_task = n // tasks

    async def main() -> float:
        await call(int)  # warm-up: the first worker thread exists before timing starts
        gc.collect()
        t0 = time.perf_counter()

        def spawn(start: Callable[..., Any]) -> None:
            for _ in range(tasks - 1):
                start(caller, call, per_task, done)

        await d.group(spawn, lambda: caller(call, per_task, done))
        return time.perf_counter() - t0

    seconds: float = d.run(main)
    if done[0] != per_task * tasks:
        raise AssertionError(f"{done[0]} calls instead of {per_task * tasks}")
    return seconds, done[0] / seconds, {"calls": done[0], "tasks": tasks}


def run_case(case: str, framework: str, params: Params) -> dict[str, Any]:
    """Run one case once in this process and return the JSON-able record."""
    spec = CASES[case]
    driver = SyncDriver(framework)
    call = _thread_call(framework)
    tasks = 1 if case == "roundtrip" else PARALLEL_TASKS
    seconds, value, extra = _run_callers(driver, call, tasks, params.n)
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
        sys.executable, "-X", "faulthandler", "-m", "benchmarks.threads",
        "--case", case, "--framework", framework, "--n", str(params.n),
    ]


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run one case, print one JSON line, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.threads",
        description="Run one worker-thread benchmark case once and print a JSON line.",
    )
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--n", type=int, help="number of calls")
    parser.add_argument("--quick", action="store_true", help="use the --quick default sizes")
    args = parser.parse_args(argv)

    spec = CASES[args.case]
    defaults = spec.quick if args.quick else spec.full
    params = Params(n=args.n if args.n is not None else defaults.n)
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
