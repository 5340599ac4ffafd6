"""asyncio compatibility, model-based: random callback programs (call_soon, already-due
call_later/call_at, cancel, nested scheduling, stop) run on stock asyncio and on
broomio.asyncio, and the two execution logs must be identical.

Only timers that are already due are used (negative delays, distinct deadlines), so the
outcome does not depend on how fast the machine is: asyncio's rules alone fix the order
(ready callbacks of an iteration first, then due timers by deadline; stop() ends the loop
after the current iteration; cancelled handles never run).
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _aio_support import factory_for

# An action a callback performs when it runs:
#   ("soon", k)      schedule callback k with call_soon
#   ("timer", k, d)  schedule callback k with call_later(-d) (already due; d distinct-ish)
#   ("cancel", j)    cancel the j-th handle created so far (if any)
#   ("stop",)        loop.stop()
ACTION = st.one_of(
    st.tuples(st.just("soon"), st.integers(0, 15)),
    st.tuples(st.just("timer"), st.integers(0, 15), st.integers(1, 1000)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("stop")),
)
PROGRAM = st.fixed_dictionaries({
    # What each of the 16 callbacks does when it runs (each runs its list in order).
    "bodies": st.lists(st.lists(ACTION, max_size=3), min_size=16, max_size=16),
    # The initial schedule, before the loop starts.
    "start": st.lists(ACTION.filter(lambda a: a[0] != "stop"), min_size=1, max_size=8),
})

MAX_EVENTS = 300  # programs that re-schedule themselves forever are cut here


def execute(factory, program):
    loop = factory()
    log = []
    handles = []
    budget = [MAX_EVENTS]

    def perform(action, base):
        kind = action[0]
        if kind == "soon":
            handles.append(loop.call_soon(callback, action[1]))
        elif kind == "timer":
            # Distinct deadlines: the delay's magnitude plus a per-call tie breaker.
            handles.append(loop.call_at(base - action[2] * 1e-3 - len(handles) * 1e-9,
                                        callback, action[1]))
        elif kind == "cancel":
            if action[1] < len(handles):
                handles[action[1]].cancel()
                log.append(("cancel", action[1]))
        elif kind == "stop":
            loop.stop()
            log.append("stop")

    base = [0.0]

    def callback(k):
        log.append(k)
        budget[0] -= 1
        if budget[0] <= 0:
            loop.stop()
            return
        for action in program["bodies"][k]:
            perform(action, base[0])

    try:
        base[0] = loop.time()
        for action in program["start"]:
            perform(action, base[0])
        loop.call_soon(loop.stop) if not any(a[0] == "stop" for a in program["start"]) else None
        rounds = []
        for _ in range(6):  # several run_forever() rounds: stop() ends one round each
            loop.run_forever()
            rounds.append(len(log))
            if budget[0] <= 0:
                break
            loop.call_soon(loop.stop)
        return log, rounds
    finally:
        loop.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PROGRAM)
def test_random_callback_programs_match_asyncio(program):
    expected = execute(factory_for("asyncio"), program)
    got = execute(factory_for("broomio"), program)
    assert got == expected


# Steps a task performs, in order:
#   ("sleep0",)        await asyncio.sleep(0)
#   ("wait", j)        await future j (skipped if already done)
#   ("set", j)         set future j's result (if not done)
#   ("cancel", t)      cancel task t (if it exists)
#   ("spawn", t)       create task t (if not created yet)
STEP = st.one_of(
    st.tuples(st.just("sleep0")),
    st.tuples(st.just("wait"), st.integers(0, 5)),
    st.tuples(st.just("set"), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("spawn"), st.integers(0, 7)),
)
TASK_PROGRAM = st.lists(st.lists(STEP, max_size=6), min_size=8, max_size=8)


def execute_tasks(factory, bodies):
    loop = factory()
    log = []
    futures = [loop.create_future() for _ in range(6)]
    tasks = {}

    async def body(t):
        try:
            for i, step in enumerate(bodies[t]):
                kind = step[0]
                if kind == "sleep0":
                    await asyncio.sleep(0)
                elif kind == "wait":
                    if not futures[step[1]].done():
                        await futures[step[1]]
                elif kind == "set":
                    if not futures[step[1]].done():
                        futures[step[1]].set_result(t)
                elif kind == "cancel":
                    if step[1] in tasks:
                        log.append((t, "cancel", step[1], tasks[step[1]].cancel()))
                elif kind == "spawn":
                    if step[1] not in tasks:
                        tasks[step[1]] = asyncio.ensure_future(body(step[1]))
                log.append((t, i))
        except asyncio.CancelledError:
            log.append((t, "cancelled"))
            raise

    async def main():
        tasks[0] = asyncio.ensure_future(body(0))
        for _ in range(200):  # bounded: waits on never-set futures end here
            await asyncio.sleep(0)
            if all(tk.done() for tk in tasks.values()):
                break
        for tk in tasks.values():
            tk.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return sorted((t, tk.cancelled()) for t, tk in tasks.items())

    try:
        outcome = loop.run_until_complete(main())
        return log, outcome
    finally:
        loop.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TASK_PROGRAM)
def test_random_task_programs_match_asyncio(bodies):
    expected = execute_tasks(factory_for("asyncio"), bodies)
    got = execute_tasks(factory_for("broomio"), bodies)
    assert got == expected
