"""Randomized tests of the synchronization primitives (Hypothesis).

Hypothesis generates programs that interleave puts, gets, acquires, releases, closes and
cancellations at random points.  Each program runs

* on an executable model (plain Python below: FIFO queues of waiters, hand-off), and
* on broomio, and, where the semantics match, on trio (memory channels, trio.Semaphore,
  trio.Lock, trio.CapacityLimiter),

and everything observable must agree after every point where the tasks have settled.
Independently of the model, each run checks conservation: every item put comes out exactly
once, and every permit taken is given back exactly once.

How a program runs: a controller task performs the actions.  "spawn" starts an actor task
that performs one blocking operation (put, get, acquire...) inside its own CancelScope;
"cancel k" cancels actor k's scope, whatever the actor is doing (not started yet, waiting,
already served but not yet running, holding a permit, finished); "*_nowait", "close",
"release_extra", "set_total" act directly; "settle" lets every runnable task run until all
are blocked again.  Actions between two settles happen "at the same time", which is how
cancellations land between a hand-off and the moment the served task runs.

broomio runs ready tasks in FIFO order, so the model can follow its order exactly.  trio
runs the tasks of one scheduling batch in random order, so under trio every action is
followed by a settle (trio.testing.wait_all_tasks_blocked).
"""

from __future__ import annotations

import itertools
import math
from collections import deque

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import broomio

from _sync_support import settle as broomio_settle

SETTINGS = settings(
    max_examples=250,
    deadline=None,  # no timing bounds
    suppress_health_check=[HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------
# the two libraries behind one face


class _TrioQueue:
    """A trio memory channel pair with the Queue methods the programs use."""

    def __init__(self, maxsize: int) -> None:
        self.send, self.recv = trio.open_memory_channel(maxsize if maxsize else math.inf)

    async def put(self, item):
        await self.send.send(item)

    async def get(self):
        return await self.recv.receive()

    def put_nowait(self, item):
        self.send.send_nowait(item)

    def get_nowait(self):
        return self.recv.receive_nowait()

    def qsize(self) -> int:
        return self.send.statistics().current_buffer_used

    def close(self) -> None:  # pragma: no cover - programs run on trio never close
        raise AssertionError("trio memory channels close differently; not compared")


class Lib:
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "broomio":
            self.run = broomio.run
            self.open_nursery = broomio.open_nursery
            self.CancelScope = broomio.CancelScope
            self.Event = broomio.Event
            self.WouldBlock = broomio.WouldBlock
            self.Closed = broomio.ClosedResourceError
            self.settle = broomio_settle
            self.queue = broomio.Queue
            self.semaphore = broomio.Semaphore
            self.lock = broomio.Lock
            self.limiter = broomio.CapacityLimiter
        else:
            self.run = lambda fn: trio.run(fn, strict_exception_groups=True)
            self.open_nursery = trio.open_nursery
            self.CancelScope = trio.CancelScope
            self.Event = trio.Event
            self.WouldBlock = trio.WouldBlock
            self.Closed = trio.ClosedResourceError
            self.settle = trio.testing.wait_all_tasks_blocked
            self.queue = _TrioQueue
            self.semaphore = trio.Semaphore
            self.lock = trio.Lock
            self.limiter = trio.CapacityLimiter


BROOMIO = Lib("broomio")
TRIO = Lib("trio")


def nowait_outcome(lib: Lib | None, fn):
    """("ok", result), ("WouldBlock",) or ("Closed",)."""
    try:
        return ("ok", fn())
    except BaseException as exc:
        if lib is None:
            raise
        if isinstance(exc, lib.WouldBlock):
            return ("WouldBlock",)
        if isinstance(exc, lib.Closed):
            return ("Closed",)
        raise


# ---------------------------------------------------------------------------
# Queue: model


class _Would(Exception):
    pass


class _Closed(Exception):
    pass


class QueueModel:
    """FIFO buffer, FIFO getters (only while empty), FIFO putters (only while full)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.buf: deque = deque()
        self.getters: deque = deque()
        self.putters: deque = deque()  # (actor, item)
        self.closed = False
        self.results: dict = {}
        self.ready: deque = deque()  # actors spawned but not yet run: (actor, kind, item)
        self.cancelled: set = set()

    def full(self) -> bool:
        return self.maxsize > 0 and len(self.buf) >= self.maxsize

    def try_put(self, item) -> bool:
        if self.closed:
            raise _Closed
        if self.getters:
            self.results[self.getters.popleft()] = ("got", item)
            return True
        if not self.full():
            self.buf.append(item)
            return True
        return False

    def try_get(self):
        if self.buf:
            item = self.buf.popleft()
            if self.putters:
                putter, pitem = self.putters.popleft()
                self.buf.append(pitem)
                self.results[putter] = ("put",)
            return True, item
        if self.closed:
            raise _Closed
        return False, None

    # actions
    def spawn(self, actor, kind, item) -> None:
        self.ready.append((actor, kind, item))

    def cancel(self, actor) -> None:
        self.cancelled.add(actor)
        if actor in self.getters:
            self.getters.remove(actor)
            self.results[actor] = ("cancelled",)
        for entry in list(self.putters):
            if entry[0] == actor:
                self.putters.remove(entry)
                self.results[actor] = ("cancelled",)

    def settle(self) -> None:
        while self.ready:
            actor, kind, item = self.ready.popleft()
            if actor in self.cancelled:
                self.results[actor] = ("cancelled",)
                continue
            try:
                if kind == "put":
                    if self.try_put(item):
                        self.results[actor] = ("put",)
                    else:
                        self.putters.append((actor, item))
                else:
                    ok, got = self.try_get()
                    if ok:
                        self.results[actor] = ("got", got)
                    else:
                        self.getters.append(actor)
            except _Closed:
                self.results[actor] = ("closed",)

    def close(self) -> None:
        self.closed = True
        for actor, _ in self.putters:
            self.results[actor] = ("closed",)
        for actor in self.getters:
            self.results[actor] = ("closed",)
        self.putters.clear()
        self.getters.clear()

    def put_nowait(self, item):
        try:
            return ("ok", None) if self.try_put(item) else ("WouldBlock",)
        except _Closed:
            return ("Closed",)

    def get_nowait(self):
        try:
            ok, item = self.try_get()
        except _Closed:
            return ("Closed",)
        return ("ok", item) if ok else ("WouldBlock",)

    def observe(self):
        return ("settled", tuple(sorted(self.results.items())), len(self.buf))


def queue_epilogue(close: bool) -> list:
    """Cancel every actor, settle, (close,) then drain with get_nowait."""
    return [("cancel_all",), ("settle",)] + ([("close",)] if close else []) + [("drain",)]


def run_queue_model(maxsize: int, actions: list, auto_settle: bool) -> list:
    m = QueueModel(maxsize)
    obs: list = []
    items = itertools.count()
    actors = 0
    for action in actions:
        kind = action[0]
        if kind in ("spawn_put", "spawn_get"):
            m.spawn(actors, kind[6:], next(items) if kind == "spawn_put" else None)
            actors += 1
        elif kind == "put_nowait":
            item = next(items)
            obs.append(("put_nowait", item, m.put_nowait(item)))
        elif kind == "get_nowait":
            obs.append(("get_nowait", m.get_nowait()))
        elif kind == "cancel":
            if actors:
                m.cancel(action[1] % actors)
        elif kind == "cancel_all":
            for a in range(actors):
                m.cancel(a)
        elif kind == "close":
            m.close()
        elif kind == "drain":
            drained = []
            while True:
                out = m.get_nowait()
                if out[0] != "ok":
                    break
                drained.append(out[1])
            obs.append(("drained", tuple(drained), out))
        if kind == "settle" or (auto_settle and kind not in ("drain",)):
            m.settle()
            obs.append(m.observe())
    return obs


# ---------------------------------------------------------------------------
# Queue: real runs


def run_queue_real(lib: Lib, maxsize: int, actions: list, auto_settle: bool):
    """Run the program on lib; return (observations, items put, items got)."""
    results: dict = {}
    scopes: list = []
    obs: list = []
    put_ok: list = []
    got: list = []

    async def putter(q, actor, item):
        try:
            with scopes[actor]:
                await q.put(item)
                results[actor] = ("put",)
        except lib.Closed:
            results[actor] = ("closed",)
        results.setdefault(actor, ("cancelled",))

    async def getter(q, actor):
        try:
            with scopes[actor]:
                results[actor] = ("got", await q.get())
        except lib.Closed:
            results[actor] = ("closed",)
        results.setdefault(actor, ("cancelled",))

    async def main():
        q = lib.queue(maxsize)
        items = itertools.count()
        item_of: dict = {}
        async with lib.open_nursery() as n:
            for action in actions:
                kind = action[0]
                if kind == "spawn_put":
                    actor, item = len(scopes), next(items)
                    scopes.append(lib.CancelScope())
                    item_of[actor] = item
                    n.start_soon(putter, q, actor, item)
                elif kind == "spawn_get":
                    scopes.append(lib.CancelScope())
                    n.start_soon(getter, q, len(scopes) - 1)
                elif kind == "put_nowait":
                    item = next(items)
                    out = nowait_outcome(lib, lambda: q.put_nowait(item))
                    obs.append(("put_nowait", item, out))
                    if out[0] == "ok":
                        put_ok.append(item)
                elif kind == "get_nowait":
                    out = nowait_outcome(lib, q.get_nowait)
                    obs.append(("get_nowait", out))
                    if out[0] == "ok":
                        got.append(out[1])
                elif kind == "cancel":
                    if scopes:
                        scopes[action[1] % len(scopes)].cancel()
                elif kind == "cancel_all":
                    for scope in scopes:
                        scope.cancel()
                elif kind == "close":
                    q.close()
                elif kind == "drain":
                    drained = []
                    while True:
                        out = nowait_outcome(lib, q.get_nowait)
                        if out[0] != "ok":
                            break
                        drained.append(out[1])
                    got.extend(drained)
                    obs.append(("drained", tuple(drained), out))
                if kind == "settle" or (auto_settle and kind != "drain"):
                    await lib.settle()
                    obs.append(("settled", tuple(sorted(results.items())), q.qsize()))
            # Everything was cancelled by the epilogue; this only guarantees the nursery
            # can exit even if the engine misbehaved (the assertions then report it).
            n.cancel_scope.cancel()
        for actor, result in results.items():
            if result == ("put",):
                put_ok.append(item_of[actor])
            elif result[0] == "got":
                got.append(result[1])

    lib.run(main)
    return obs, put_ok, got


def check_conservation(put_ok: list, got: list) -> None:
    """Every item that was put came out exactly once; nothing else came out."""
    assert len(got) == len(set(got)), f"an item came out twice: {sorted(got)}"
    assert sorted(got) == sorted(put_ok), f"put {sorted(put_ok)} but got {sorted(got)}"


queue_action = st.one_of(
    st.tuples(st.just("spawn_put")),
    st.tuples(st.just("spawn_get")),
    st.tuples(st.just("put_nowait")),
    st.tuples(st.just("get_nowait")),
    st.tuples(st.just("cancel"), st.integers(0, 63)),
    st.tuples(st.just("settle")),
)
queue_action_with_close = st.one_of(queue_action, st.tuples(st.just("close")))


@SETTINGS
@given(
    maxsize=st.integers(0, 3),
    actions=st.lists(queue_action_with_close, min_size=8, max_size=60),
    close_at_end=st.booleans(),
)
def test_queue_matches_model(maxsize, actions, close_at_end):
    program = actions + queue_epilogue(close_at_end)
    expected = run_queue_model(maxsize, program, auto_settle=False)
    observed, put_ok, got = run_queue_real(BROOMIO, maxsize, program, auto_settle=False)
    check_conservation(put_ok, got)
    assert observed == expected


@SETTINGS
@given(maxsize=st.integers(0, 3), actions=st.lists(queue_action, min_size=8, max_size=40))
def test_queue_matches_trio_memory_channels(maxsize, actions):
    program = actions + queue_epilogue(False)
    expected = run_queue_model(maxsize, program, auto_settle=True)
    observed, put_ok, got = run_queue_real(BROOMIO, maxsize, program, auto_settle=True)
    trio_observed, trio_put, trio_got = run_queue_real(TRIO, maxsize, program, auto_settle=True)
    check_conservation(put_ok, got)
    check_conservation(trio_put, trio_got)
    assert trio_observed == expected, "the model disagrees with trio"
    assert observed == trio_observed


# ---------------------------------------------------------------------------
# Lock, Semaphore, CapacityLimiter: model


class PermitModel:
    """Permits handed over FIFO.  Actor states: pending (spawned, not run yet), waiting,
    granted (handed a permit, not run yet), holding, releasing (signalled or cancelled
    while holding, not run yet), released, cancelled."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind = kind
        self.value = n if kind != "limiter" else 0  # free permits (semaphore, lock)
        self.total = n  # limiter only
        self.borrowed = 0  # limiter only
        self.waiters: deque = deque()
        self.state: dict = {}
        self.cancelled: set = set()
        self.ready: deque = deque()  # actors that will run at the next settle, in order

    def _grant(self, actor) -> None:
        self.state[actor] = "granted"
        self.ready.append(actor)

    def _can_take(self) -> bool:
        if self.waiters:
            return False
        return self.borrowed < self.total if self.kind == "limiter" else self.value > 0

    def _take(self) -> None:
        if self.kind == "limiter":
            self.borrowed += 1
        else:
            self.value -= 1

    def _serve(self) -> None:
        while self.waiters and self.borrowed < self.total:
            self.borrowed += 1
            self._grant(self.waiters.popleft())

    def _give_back(self) -> None:
        if self.kind == "limiter":
            self.borrowed -= 1
            self._serve()
        elif self.waiters:
            self._grant(self.waiters.popleft())  # hand-off: the value stays 0
        else:
            self.value += 1

    # actions
    def spawn(self, actor) -> None:
        self.state[actor] = "pending"
        self.ready.append(actor)

    def signal(self, actor) -> bool:
        if self.state.get(actor) != "holding":
            return False
        self.state[actor] = "releasing"
        self.ready.append(actor)
        return True

    def cancel(self, actor) -> None:
        self.cancelled.add(actor)
        state = self.state[actor]
        if state == "waiting":
            self.waiters.remove(actor)
            self.state[actor] = "cancelled"
        elif state == "holding":
            self.state[actor] = "releasing"
            self.ready.append(actor)

    def release_extra(self) -> None:
        self._give_back()

    def acquire_nowait(self):
        if self._can_take():
            self._take()
            return ("ok", None)
        return ("WouldBlock",)

    def set_total(self, total: int) -> None:
        self.total = total
        self._serve()

    def settle(self) -> None:
        while self.ready:
            actor = self.ready.popleft()
            state = self.state[actor]
            if state == "pending":
                if actor in self.cancelled:
                    self.state[actor] = "cancelled"
                elif self._can_take():
                    self._take()
                    self.state[actor] = "holding"
                else:
                    self.waiters.append(actor)
                    self.state[actor] = "waiting"
            elif state == "granted":
                self.state[actor] = "holding"
                if actor in self.cancelled:  # its next checkpoint raises: it releases
                    self.state[actor] = "released"
                    self._give_back()
            elif state == "releasing":
                self.state[actor] = "released"
                self._give_back()

    def observe(self):
        states = tuple(
            (a, "waiting" if s in ("pending", "waiting") else s)
            for a, s in sorted(self.state.items())
        )
        measure = self.borrowed if self.kind == "limiter" else self.value
        return ("settled", states, measure)


def run_permit_model(kind: str, n: int, actions: list, auto_settle: bool):
    """Returns (observations, the actions that had an effect)."""
    m = PermitModel(kind, n)
    obs: list = []
    effective: list = []
    actors = 0
    for action in actions:
        op = action[0]
        keep = True
        if op == "spawn":
            m.spawn(actors)
            actors += 1
        elif op == "signal":
            # Only a holder can be told to release (signalling a task that is still
            # waiting would make it release the moment it acquires: not what we test).
            keep = actors > 0 and m.signal(action[1] % actors)
        elif op == "cancel":
            keep = actors > 0
            if keep:
                m.cancel(action[1] % actors)
        elif op == "cancel_all":
            for a in range(actors):
                m.cancel(a)
        elif op == "release_extra":
            m.release_extra()
        elif op == "acquire_nowait":
            obs.append(("acquire_nowait", m.acquire_nowait()))
        elif op == "set_total":
            m.set_total(action[1])
        if not keep:
            continue
        effective.append(action)
        if op == "settle" or auto_settle:
            m.settle()
            obs.append(m.observe())
    return obs, effective


# ---------------------------------------------------------------------------
# Lock, Semaphore, CapacityLimiter: real runs


def run_permit_real(lib: Lib, kind: str, n: int, actions: list, auto_settle: bool):
    """Runs an already filtered program; returns (observations, extra permit bookkeeping)."""
    states: dict = {}
    scopes: list = []
    signals: list = []
    obs: list = []
    book = {"released_extra": 0, "nowait_ok": 0, "spawned": 0}

    def measure(prim):
        if kind == "limiter":
            return prim.borrowed_tokens
        if kind == "lock":
            return 0 if prim.locked() else 1
        return prim.value

    async def actor(prim, a):
        acquired = False
        with scopes[a]:
            await prim.acquire()
            acquired = True
            states[a] = "holding"
            try:
                await signals[a].wait()
            finally:
                prim.release()
        states[a] = "released" if acquired else "cancelled"

    def observe(prim):
        all_states = tuple((a, states.get(a, "waiting")) for a in range(len(scopes)))
        return ("settled", all_states, measure(prim))

    def check_invariant(prim) -> None:
        holders = sum(1 for s in states.values() if s == "holding")
        if kind == "lock":
            assert holders + measure(prim) == 1, f"lock: {holders} holders, {prim!r}"
        elif kind == "semaphore":
            expected = n + book["released_extra"] - book["nowait_ok"]
            assert holders + measure(prim) == expected, f"permits lost or duplicated: {prim!r}"
        else:
            assert holders == measure(prim), f"tokens lost or duplicated: {prim!r}"

    async def main():
        if kind == "lock":
            prim = lib.lock()
        elif kind == "semaphore":
            prim = lib.semaphore(n)
        else:
            prim = lib.limiter(n)
        async with lib.open_nursery() as nursery:
            for action in actions:
                op = action[0]
                if op == "spawn":
                    scopes.append(lib.CancelScope())
                    signals.append(lib.Event())
                    nursery.start_soon(actor, prim, len(scopes) - 1)
                elif op == "signal":
                    signals[action[1] % len(scopes)].set()
                elif op == "cancel":
                    scopes[action[1] % len(scopes)].cancel()
                elif op == "cancel_all":
                    for scope in scopes:
                        scope.cancel()
                elif op == "release_extra":
                    prim.release()
                    book["released_extra"] += 1
                elif op == "acquire_nowait":
                    out = nowait_outcome(lib, prim.acquire_nowait)
                    book["nowait_ok"] += out[0] == "ok"
                    obs.append(("acquire_nowait", out))
                elif op == "set_total":
                    prim.total_tokens = action[1]
                if op == "settle" or auto_settle:
                    await lib.settle()
                    obs.append(observe(prim))
                    check_invariant(prim)
            nursery.cancel_scope.cancel()  # see run_queue_real
        # After the epilogue every permit is back.
        if kind == "lock":
            assert not prim.locked()
        elif kind == "semaphore":
            assert prim.value == n + book["released_extra"] - book["nowait_ok"]
        else:
            assert prim.borrowed_tokens == 0

    lib.run(main)
    return obs


def permit_actions(kind: str):
    base = [
        st.tuples(st.just("spawn")),
        st.tuples(st.just("signal"), st.integers(0, 63)),
        st.tuples(st.just("cancel"), st.integers(0, 63)),
        st.tuples(st.just("settle")),
    ]
    if kind == "semaphore":
        base += [st.tuples(st.just("release_extra")), st.tuples(st.just("acquire_nowait"))]
    if kind == "limiter":
        base += [st.tuples(st.just("set_total"), st.integers(1, 4))]
    # Programs of a few dozen actions: long enough for waiters to pile up before they are
    # served, cancelled or handed more tokens.
    return st.lists(st.one_of(*base), min_size=8, max_size=60)


PERMIT_EPILOGUE = [("cancel_all",), ("settle",)]


@SETTINGS
@given(data=st.data())
def test_lock_matches_model(data):
    _check_permits(data, "lock", 1)


@SETTINGS
@given(data=st.data(), n=st.integers(0, 3))
def test_semaphore_matches_model(data, n):
    _check_permits(data, "semaphore", n)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 3))
def test_capacity_limiter_matches_model(data, n):
    _check_permits(data, "limiter", n)


def _check_permits(data, kind: str, n: int) -> None:
    actions = data.draw(permit_actions(kind), label="actions")
    expected, program = run_permit_model(kind, n, actions + PERMIT_EPILOGUE, auto_settle=False)
    observed = run_permit_real(BROOMIO, kind, n, program, auto_settle=False)
    assert observed == expected


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["lock", "semaphore", "limiter"]), n=st.integers(1, 3))
def test_permits_match_trio(data, kind, n):
    n = 1 if kind == "lock" else n
    actions = data.draw(permit_actions(kind), label="actions")
    expected, program = run_permit_model(kind, n, actions + PERMIT_EPILOGUE, auto_settle=True)
    trio_observed = run_permit_real(TRIO, kind, n, program, auto_settle=True)
    observed = run_permit_real(BROOMIO, kind, n, program, auto_settle=True)
    assert trio_observed == expected, "the model disagrees with trio"
    assert observed == trio_observed


# ---------------------------------------------------------------------------
# Condition: notify / notify_all / cancellation of waiters, against a model and trio.
# Every action is followed by a settle (the controller must take the lock to notify, and
# the lock is free once every woken waiter has run).


def run_condition_model(actions: list) -> list:
    waiting: deque = deque()
    state: dict = {}
    obs: list = []
    actors = 0
    for action in actions:
        op = action[0]
        if op == "spawn":
            state[actors] = "waiting"
            waiting.append(actors)
            actors += 1
        elif op == "notify":
            for _ in range(min(action[1], len(waiting))):
                state[waiting.popleft()] = "woken"
        elif op == "notify_all":
            while waiting:
                state[waiting.popleft()] = "woken"
        elif op in ("cancel", "cancel_all"):
            targets = range(actors) if op == "cancel_all" else [action[1] % actors] if actors else []
            for a in targets:
                if state[a] == "waiting":
                    waiting.remove(a)
                    state[a] = "cancelled"
        obs.append(("settled", tuple(sorted(state.items())), False))
    return obs


def run_condition_real(lib: Lib, actions: list) -> list:
    state: dict = {}
    scopes: list = []
    obs: list = []

    async def waiter(cond, a):
        async with cond:
            with scopes[a]:
                await cond.wait()
                state[a] = "woken"
            assert cond.locked()  # held again, however wait() ended
        state.setdefault(a, "cancelled")

    async def main():
        cond = broomio.Condition() if lib is BROOMIO else trio.Condition()
        async with lib.open_nursery() as n:
            for action in actions:
                op = action[0]
                if op == "spawn":
                    scopes.append(lib.CancelScope())
                    n.start_soon(waiter, cond, len(scopes) - 1)
                elif op in ("notify", "notify_all"):
                    async with cond:
                        if op == "notify":
                            cond.notify(action[1])
                        else:
                            cond.notify_all()
                elif op == "cancel":
                    if scopes:
                        scopes[action[1] % len(scopes)].cancel()
                elif op == "cancel_all":
                    for scope in scopes:
                        scope.cancel()
                if lib is BROOMIO:
                    # Notified waiters take the lock one after the other: one more round
                    # per waiter.
                    await broomio_settle(4 + 2 * len(scopes))
                else:
                    await lib.settle()
                observed = tuple((a, state.get(a, "waiting")) for a in range(len(scopes)))
                obs.append(("settled", observed, cond.locked()))
            n.cancel_scope.cancel()

    lib.run(main)
    return obs


condition_actions = st.lists(
    st.one_of(
        st.tuples(st.just("spawn")),
        st.tuples(st.just("notify"), st.integers(0, 3)),
        st.tuples(st.just("notify_all")),
        st.tuples(st.just("cancel"), st.integers(0, 63)),
    ),
    min_size=5,
    max_size=30,
)


@SETTINGS
@given(actions=condition_actions)
def test_condition_matches_model_and_trio(actions):
    program = actions + [("cancel_all",)]
    expected = run_condition_model(program)
    trio_observed = run_condition_real(TRIO, program)
    observed = run_condition_real(BROOMIO, program)
    assert trio_observed == expected, "the model disagrees with trio"
    assert observed == trio_observed
