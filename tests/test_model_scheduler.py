"""Random structured-concurrency programs, run on broomio and on trio (the oracle).

Hypothesis generates programs of up to four top-level tasks in one nursery.  Each task
runs a list of operations:

* ``sleep n`` -- sleep n (virtual) seconds;
* ``put q`` / ``get q`` -- on a bounded queue (broomio.Queue / a trio memory channel; each
  queue has one producer task and one consumer task, so who gets what is determined);
* ``scope k [ops]`` -- ``move_on_after(k + 0.05)`` around nested operations;
* ``nursery [[ops], [ops]]`` -- a nested nursery with child tasks;
* ``cancel j`` -- cancel top-level task j's cancel scope;
* ``raise`` -- raise ValueError (cancels the siblings; ends up in an exception group).

Both libraries run the program on a mock clock that jumps to the next deadline as soon as
every task is blocked, so a program takes milliseconds.  Every task logs what it observed
with the virtual time (woke up, got item 3, scope exited with cancelled_caught=True, was
cancelled, ...); the per-task logs and the final outcome (exception group shape) must be
identical.

trio runs the tasks woken at the same instant in random order; broomio in FIFO order.  So
that this order never matters, each task owns a *time slot*: after every operation it
sleeps until its next slot (``floor(now) + 1 + slot``), and every slot (top-level tasks
0.1, 0.2, ...; their children 0.003 apart), scope deadline (+0.05) and child slot differs
modulo 1 s.  Two tasks are therefore never woken by timers at the same
instant, and what they observe does not depend on the scheduling order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import broomio
from broomio.testing import MockClock

from conftest import exc_shape

LIMIT = 200.5  # virtual seconds: a deadlocked program is cancelled at this deadline

# ---------------------------------------------------------------------------
# programs

Op = tuple[Any, ...]


@dataclass
class Program:
    queue_sizes: list[int]
    tasks: list[list[Op]]
    producers: dict[int, int] = field(default_factory=dict)
    consumers: dict[int, int] = field(default_factory=dict)


def leaf_ops(draw: Any, depth: int) -> list[Op]:
    """Operations for nested bodies (no queues, no cross-task cancels)."""
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(
            ["sleep", "sleep", "raise", "checkpoint"] + (["scope", "nursery"] if depth < 2 else [])))
        if kind == "sleep":
            ops.append(("sleep", draw(st.integers(0, 3))))
        elif kind == "raise":
            ops.append(("raise",))
        elif kind == "checkpoint":
            ops.append(("checkpoint",))
        elif kind == "scope":
            ops.append(("scope", draw(st.integers(0, 3)), leaf_ops(draw, depth + 1)))
        else:
            n = draw(st.integers(1, 2))
            ops.append(("nursery", [leaf_ops(draw, depth + 1) for _ in range(n)]))
    return ops


@st.composite
def programs(draw: Any) -> Program:
    n_tasks = draw(st.integers(1, 4))
    n_queues = draw(st.integers(0, 2))
    prog = Program(queue_sizes=[draw(st.integers(1, 2)) for _ in range(n_queues)], tasks=[])
    for q in range(n_queues):
        prog.producers[q] = draw(st.integers(0, n_tasks - 1))
        prog.consumers[q] = draw(st.integers(0, n_tasks - 1))
    for t in range(n_tasks):
        ops: list[Op] = []
        puts = [q for q in range(n_queues) if prog.producers[q] == t]
        gets = [q for q in range(n_queues) if prog.consumers[q] == t]
        kinds = ["sleep", "scope", "nursery", "cancel", "raise", "checkpoint"]
        kinds += ["put"] * 3 * bool(puts) + ["get"] * 3 * bool(gets)
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from(kinds))
            if kind == "sleep":
                ops.append(("sleep", draw(st.integers(0, 3))))
            elif kind == "put":
                ops.append(("put", draw(st.sampled_from(puts))))
            elif kind == "get":
                ops.append(("get", draw(st.sampled_from(gets))))
            elif kind == "scope":
                ops.append(("scope", draw(st.integers(0, 3)), leaf_ops(draw, 1)))
            elif kind == "nursery":
                n = draw(st.integers(1, 2))
                ops.append(("nursery", [leaf_ops(draw, 1) for _ in range(n)]))
            elif kind == "cancel":
                ops.append(("cancel", draw(st.integers(0, n_tasks - 1))))
            else:
                ops.append((kind,))
        prog.tasks.append(ops)
    return prog


# ---------------------------------------------------------------------------
# the interpreter, once per library


def shape(exc: BaseException) -> Any:
    """``exc_shape`` without ``Cancelled``: a documented difference (docs/api.md, nurseries):
    broomio never puts ``Cancelled`` in an exception group, trio 0.22 does (and its cancel
    scopes then catch groups made only of their ``Cancelled``).  A group of nothing but
    ``Cancelled`` is ``"Cancelled"``; otherwise they are dropped from the shape."""

    def strip(e: BaseException) -> Any:
        if isinstance(e, BaseExceptionGroup):
            kids = [k for k in (strip(x) for x in e.exceptions) if k is not None]
            return ("group", tuple(sorted(kids, key=repr))) if kids else None
        if isinstance(e, (broomio.Cancelled, trio.Cancelled)):
            return None
        return exc_shape(e)

    stripped = strip(exc)
    return "Cancelled" if stripped is None else stripped



class Api:
    """What the interpreter needs from a library."""

    sleep: Any
    sleep_until: Any
    current_time: Any
    checkpoint: Any
    move_on_after: Any
    CancelScope: Any
    open_nursery: Any
    Cancelled: type[BaseException]

    def make_queue(self, size: int) -> Any:
        raise NotImplementedError

    async def put(self, q: Any, value: int) -> None:
        raise NotImplementedError

    async def get(self, q: Any) -> int:
        raise NotImplementedError


class BroomioApi(Api):
    sleep = staticmethod(broomio.sleep)
    sleep_until = staticmethod(broomio.sleep_until)
    current_time = staticmethod(broomio.current_time)
    checkpoint = staticmethod(broomio.checkpoint)
    move_on_after = staticmethod(broomio.move_on_after)
    CancelScope = broomio.CancelScope
    open_nursery = staticmethod(broomio.open_nursery)
    Cancelled = broomio.Cancelled

    def make_queue(self, size: int) -> Any:
        return broomio.Queue(size)

    async def put(self, q: Any, value: int) -> None:
        await q.put(value)

    async def get(self, q: Any) -> int:
        value: int = await q.get()
        return value


class TrioApi(Api):
    sleep = staticmethod(trio.sleep)
    sleep_until = staticmethod(trio.sleep_until)
    current_time = staticmethod(trio.current_time)
    checkpoint = staticmethod(trio.lowlevel.checkpoint)
    move_on_after = staticmethod(trio.move_on_after)
    CancelScope = trio.CancelScope
    open_nursery = staticmethod(trio.open_nursery)
    Cancelled = trio.Cancelled

    def make_queue(self, size: int) -> Any:
        return trio.open_memory_channel(size)

    async def put(self, q: Any, value: int) -> None:
        await q[0].send(value)

    async def get(self, q: Any) -> int:
        value: int = await q[1].receive()
        return value


async def interpret(api: Api, prog: Program) -> dict[str, Any]:
    start = api.current_time()
    logs: dict[str, list[Any]] = {}
    queues = [api.make_queue(size) for size in prog.queue_sizes]
    counters = [0] * len(queues)
    scopes: list[Any] = [api.CancelScope() for _ in prog.tasks]

    def now() -> float:
        return round(api.current_time() - start, 6)

    async def resync(slot: float) -> None:
        t = api.current_time() - start
        await api.sleep_until(start + math.floor(t) + 1 + slot)

    spawned: dict[str, int] = {}

    def child_slot(name: str) -> float:
        # A fresh slot for every child of top-level task i: 0.1 * (i + 1) + 0.003 * k.  The
        # +0.05 of scope deadlines is no multiple of 0.003, so no two ever coincide.
        top = name.split("/")[0]
        spawned[top] = spawned.get(top, 0) + 1
        return 0.1 * (int(top[4:]) + 1) + 0.003 * spawned[top]

    async def body(name: str, ops: list[Op], slot: float) -> None:
        log = logs.setdefault(name, [])
        try:
            await resync(slot)
            for op in ops:
                kind = op[0]
                if kind == "sleep":
                    await api.sleep(op[1])
                    log.append((now(), "slept", op[1]))
                elif kind == "checkpoint":
                    await api.checkpoint()
                    log.append((now(), "checkpoint"))
                elif kind == "put":
                    counters[op[1]] += 1
                    value = 100 * op[1] + counters[op[1]]
                    await api.put(queues[op[1]], value)
                    log.append((now(), "put", value))
                elif kind == "get":
                    log.append((now(), "got", await api.get(queues[op[1]])))
                elif kind == "scope":
                    with api.move_on_after(op[1] + 0.05) as scope:
                        await body(f"{name}/scope@{now()}", op[2], slot)
                    log.append((now(), "scope exit", scope.cancelled_caught))
                elif kind == "nursery":
                    async with api.open_nursery() as nursery:
                        for i, child in enumerate(op[1]):
                            nursery.start_soon(body, f"{name}/{now()}.{i}", child,
                                               child_slot(name))
                    log.append((now(), "nursery exit"))
                elif kind == "cancel":
                    scopes[op[1]].cancel()
                    log.append((now(), "cancelled task", op[1]))
                elif kind == "raise":
                    log.append((now(), "raise"))
                    raise ValueError(name)
                await resync(slot)
            log.append((now(), "done"))
        except BaseException as exc:
            # trio 0.22's groups are MultiError subclasses: compare the shape, not the class.
            log.append((now(), "error", shape(exc)))
            raise

    async def top(i: int) -> None:
        with scopes[i]:
            await body(f"task{i}", prog.tasks[i], 0.1 * (i + 1))
        logs.setdefault(f"task{i}", []).append((now(), "scope", scopes[i].cancelled_caught))

    outcome: Any = "ok"
    try:
        with api.move_on_after(LIMIT) as limit:
            async with api.open_nursery() as nursery:
                for i in range(len(prog.tasks)):
                    nursery.start_soon(top, i)
        if limit.cancelled_caught:
            outcome = "deadlock"
    except BaseException as exc:  # noqa: BLE001 -- compared, not swallowed
        outcome = shape(exc)
    return {"outcome": outcome, "logs": logs, "end": now()}


def run_broomio(prog: Program) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await interpret(BroomioApi(), prog)

    result: dict[str, Any] = broomio.run(main, clock=MockClock(autojump_threshold=0))
    return result


def run_trio(prog: Program) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await interpret(TrioApi(), prog)

    result: dict[str, Any] = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0),
                                      strict_exception_groups=True)
    return result


# ---------------------------------------------------------------------------
# tests


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_match_trio(prog: Program) -> None:
    expected = run_trio(prog)
    got = run_broomio(prog)
    assert got["logs"] == expected["logs"], (prog, got, expected)
    assert got["outcome"] == expected["outcome"], (prog, got["outcome"], expected["outcome"])
    assert got["end"] == expected["end"]


def test_interpreter_sees_cancellation_and_errors() -> None:
    # The harness itself can fail: a known program, known observations.
    prog = Program(queue_sizes=[1], tasks=[
        [("put", 0), ("put", 0), ("sleep", 2), ("raise",)],
        [("sleep", 1), ("get", 0), ("scope", 0, [("sleep", 3)]), ("cancel", 0)],
    ], producers={0: 0}, consumers={0: 1})
    for result in (run_broomio(prog), run_trio(prog)):
        t0, t1 = result["logs"]["task0"], result["logs"]["task1"]
        assert [e[1:] for e in t1[:2]] == [("slept", 1), ("got", 1)]
        assert ("scope exit", True) in [e[1:] for e in t1]
        assert t0[0][1:] == ("put", 1)
        assert result["outcome"] in ("ok", ("group", (("ValueError", "task0"),)))
    assert run_broomio(prog) == run_trio(prog)
