"""Cancel scopes, timeouts and level-triggered cancellation (trio semantics)."""

import math
import time

import pytest

from broomio import (
    CancelScope,
    Cancelled,
    current_effective_deadline,
    current_time,
    fail_after,
    fail_at,
    move_on_after,
    move_on_at,
    open_nursery,
    sleep,
    sleep_forever,
)
from broomio.lowlevel import checkpoint
from conftest import GUARD, Log, assert_at_least, oracle, run


def test_cancelled_is_baseexception_not_exception():
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, Exception)


def test_except_exception_does_not_catch_cancelled():
    log = Log()

    async def main():
        with CancelScope() as scope:
            scope.cancel()
            try:
                await sleep(0)
            except Exception:  # must not catch Cancelled
                log("wrongly caught")
            log("unreachable")
        log("after", scope.cancelled_caught)

    run(main)
    assert log == [("after", True)]


def test_scope_cancel_and_flags():
    log = Log()

    async def main():
        with CancelScope() as scope:
            log("called", scope.cancel_called)
            scope.cancel()
            log("called", scope.cancel_called)
            log("caught", scope.cancelled_caught)
            await sleep(1)
            log("unreachable")
        log("caught", scope.cancelled_caught)

    run(main)
    assert log == [("called", False), ("called", True), ("caught", False), ("caught", True)]


def test_cancel_without_checkpoint_is_not_caught():
    async def main():
        with CancelScope() as scope:
            scope.cancel()
            x = 1 + 1  # no checkpoint
        return scope.cancel_called, scope.cancelled_caught, x

    assert run(main) == (True, False, 2)


def test_cancel_before_enter():
    async def main():
        with move_on_after(GUARD) as guard:
            scope = CancelScope()
            scope.cancel()
            assert scope.cancel_called
            with scope:
                await sleep_forever()
        return scope.cancelled_caught, guard.cancelled_caught

    assert run(main) == (True, False)


def test_deadline_cancels_body():
    async def main():
        t0 = time.monotonic()
        with CancelScope(deadline=current_time() + 0.1) as scope:
            await sleep(10)
        return scope.cancelled_caught, scope.cancel_called, time.monotonic() - t0

    caught, called, elapsed = run(main)
    assert caught is True
    assert called is True
    assert_at_least(elapsed, 0.1)


def test_deadline_in_past_cancels_at_first_checkpoint():
    log = Log()

    async def main():
        with CancelScope(deadline=current_time() - 1) as scope:
            log("entered")
            await checkpoint()
            log("unreachable")
        log("caught", scope.cancelled_caught)

    run(main)
    assert log == ["entered", ("caught", True)]


@pytest.mark.parametrize("how", ["constructor", "move_on_at", "setter"])
@pytest.mark.parametrize("deadline", [-math.inf, -1e300])
def test_deadline_minus_inf_cancels_at_once(how, deadline):
    """-inf is the earliest possible deadline (trio: cancelled at once), not 'no deadline'."""
    async def main():
        with move_on_after(GUARD) as guard:
            if how == "constructor":
                scope = CancelScope(deadline=deadline)
            elif how == "move_on_at":
                scope = move_on_at(deadline)
            else:
                scope = CancelScope()
            with scope:
                if how == "setter":
                    scope.deadline = deadline
                await sleep(1)
        return scope.deadline, scope.cancelled_caught, guard.cancelled_caught

    assert run(main) == (deadline, True, False)


def test_deadline_property_readwrite():
    async def main():
        scope = CancelScope()
        assert scope.deadline == math.inf
        d = current_time() + 100
        scope.deadline = d
        assert scope.deadline == d
        scope2 = CancelScope(deadline=d)
        assert scope2.deadline == d
        assert scope2.shield is False
        scope3 = CancelScope(shield=True)
        assert scope3.shield is True

    run(main)


def test_deadline_moved_earlier_while_inside():
    async def main():
        t0 = time.monotonic()
        with CancelScope() as scope:
            scope.deadline = current_time() + 0.1
            await sleep(10)
        return scope.cancelled_caught, time.monotonic() - t0

    caught, elapsed = run(main)
    assert caught is True
    assert_at_least(elapsed, 0.1)


def test_deadline_changed_by_another_task_while_sleeping():
    """Another task moves the deadline earlier, then later again: the timer must re-arm."""
    log = Log()
    holder = {}

    async def sleeper():
        t0 = time.monotonic()
        with CancelScope(deadline=current_time() + 10) as scope:
            holder["scope"] = scope
            await sleep_forever()
        log("woke", time.monotonic() - t0, scope.cancelled_caught)

    async def mover():
        await sleep(0.05)
        holder["scope"].deadline = current_time() + 0.1  # ~0.15 s after start
        await sleep(0.02)
        holder["scope"].deadline = current_time() + 0.2  # ~0.27 s after start

    async def main():
        with move_on_after(GUARD):
            async with open_nursery() as n:
                n.start_soon(sleeper)
                n.start_soon(mover)

    run(main)
    assert len(log) == 1
    _, elapsed, caught = log[0]
    assert caught is True
    assert_at_least(elapsed, 0.27, "extended deadline")


def test_deadline_removed_while_inside():
    async def main():
        t0 = time.monotonic()
        with CancelScope(deadline=current_time() + 0.05) as scope:
            scope.deadline = math.inf
            await sleep(0.15)
        return scope.cancelled_caught, time.monotonic() - t0

    caught, elapsed = run(main)
    assert caught is False
    assert_at_least(elapsed, 0.15)


def test_level_triggered_reraise():
    log = Log()

    async def main():
        with CancelScope() as scope:
            scope.cancel()
            for i in range(3):
                try:
                    await sleep(0)
                except Cancelled:
                    log("cancelled", i)
            try:
                await sleep(10)
            except Cancelled:
                log("sleep cancelled")
            try:
                await checkpoint()
            except Cancelled:
                log("checkpoint cancelled")
            await sleep_forever()
            log("unreachable")
        log("caught", scope.cancelled_caught)

    run(main)
    assert log == [("cancelled", 0), ("cancelled", 1), ("cancelled", 2), "sleep cancelled",
                   "checkpoint cancelled", ("caught", True)]


def test_level_triggered_in_other_task_after_catching():
    """A task cancelled by its nursery keeps getting Cancelled at every checkpoint."""
    log = Log()

    async def stubborn():
        for i in range(3):
            try:
                await sleep_forever()
            except Cancelled:
                log("stubborn", i)
        await sleep(0)
        log("unreachable")

    async def main():
        async with open_nursery() as n:
            n.start_soon(stubborn)
            await sleep(0.01)
            n.cancel()

    run(main)
    assert log == [("stubborn", 0), ("stubborn", 1), ("stubborn", 2)]


def test_swallowed_cancelled_is_not_cancelled_caught():
    async def main():
        with CancelScope() as scope:
            scope.cancel()
            try:
                await sleep(0)
            except Cancelled:
                pass
        return scope.cancel_called, scope.cancelled_caught

    assert run(main) == (True, False)


def test_shield_protects_from_outer_cancellation():
    log = Log()

    async def main():
        with CancelScope() as outer:
            outer.cancel()
            with CancelScope(shield=True) as inner:
                t0 = time.monotonic()
                await sleep(0.05)
                log("shielded sleep done", time.monotonic() - t0 >= 0.05 - 1e-9)
                await checkpoint()
                log("shielded checkpoint done")
            log("left shield")
            try:
                await checkpoint()
            except Cancelled:
                log("cancelled after shield")
                raise
        log("outer caught", outer.cancelled_caught, inner.cancelled_caught)

    run(main)
    assert log == [("shielded sleep done", True), "shielded checkpoint done", "left shield",
                   "cancelled after shield", ("outer caught", True, False)]


def test_shield_does_not_protect_from_own_cancel():
    async def main():
        with CancelScope(shield=True) as scope:
            scope.cancel()
            await sleep(10)
        return scope.cancelled_caught

    assert run(main) is True


def test_shield_does_not_protect_from_own_deadline():
    async def main():
        with CancelScope() as outer:
            outer.cancel()
            t0 = time.monotonic()
            with CancelScope(shield=True, deadline=current_time() + 0.05) as inner:
                await sleep(10)
            elapsed = time.monotonic() - t0
        return inner.cancelled_caught, outer.cancelled_caught, elapsed

    inner_caught, outer_caught, elapsed = run(main)
    assert inner_caught is True
    assert outer_caught is False  # no checkpoint in outer after the inner scope
    assert_at_least(elapsed, 0.05)


def test_shield_toggled_while_inside():
    log = Log()

    async def main():
        with CancelScope() as outer:
            outer.cancel()
            with CancelScope(shield=True) as inner:
                await checkpoint()
                log("shielded ok")
                inner.shield = False
                log("shield", inner.shield)
                try:
                    await checkpoint()
                except Cancelled:
                    log("cancelled after unshield")
                inner.shield = True
                await checkpoint()
                log("shielded again")
        log(outer.cancelled_caught)

    run(main)
    assert log == ["shielded ok", ("shield", False), "cancelled after unshield",
                   "shielded again", False]


def test_shield_wakes_when_unshielded_by_other_task():
    """Removing a shield from another task must wake a sleeper in a cancelled scope."""
    log = Log()
    holder = {}

    async def sleeper(task_status):
        with CancelScope() as outer:
            with CancelScope(shield=True) as inner:
                holder["outer"], holder["inner"] = outer, inner
                task_status.started()
                await sleep_forever()
        log("woke", outer.cancelled_caught)

    async def main():
        with move_on_after(GUARD) as guard:
            async with open_nursery() as n:
                await n.start(sleeper)
                holder["outer"].cancel()
                await sleep(0.05)
                log("still sleeping")
                holder["inner"].shield = False
        log("guard", guard.cancelled_caught)

    run(main)
    assert log == ["still sleeping", ("woke", True), ("guard", False)]


def test_nested_scopes_inner_cancel_only():
    log = Log()

    async def main():
        with CancelScope() as outer:
            with CancelScope() as inner:
                inner.cancel()
                await sleep(10)
            log("after inner", inner.cancelled_caught)
            await sleep(0)
            log("outer still running")
        log("outer", outer.cancelled_caught)

    run(main)
    assert log == [("after inner", True), "outer still running", ("outer", False)]


def test_nested_scopes_outer_cancel_passes_through_inner():
    log = Log()

    async def main():
        with CancelScope() as outer:
            with CancelScope() as inner:
                outer.cancel()
                try:
                    await sleep(10)
                finally:
                    log("inner finally")
            log("unreachable")
        log("flags", inner.cancelled_caught, outer.cancelled_caught)

    run(main)
    assert log == ["inner finally", ("flags", False, True)]


def test_both_scopes_cancelled_outermost_catches():
    """As in trio: a Cancelled passes through an inner cancelled scope when an
    enclosing scope is cancelled too; code between the scopes never runs."""
    log = Log()

    async def main():
        with CancelScope() as outer:
            with CancelScope() as inner:
                inner.cancel()
                outer.cancel()
                await sleep(0)
            log("between scopes")
        log("flags", outer.cancelled_caught, inner.cancelled_caught)

    run(main)
    assert log == [("flags", True, False)]


def test_nested_deadlines_earliest_wins():
    async def main():
        t0 = time.monotonic()
        with move_on_after(0.3) as outer:
            with move_on_after(0.05) as inner:
                await sleep(10)
            mid = time.monotonic() - t0
            await sleep(10)
        return inner.cancelled_caught, outer.cancelled_caught, mid, time.monotonic() - t0

    inner_c, outer_c, mid, total = run(main)
    assert (inner_c, outer_c) == (True, True)
    assert_at_least(mid, 0.05)
    assert_at_least(total, 0.3)


def test_cancel_scope_cancels_nursery_children():
    log = Log()

    async def child(i):
        try:
            await sleep_forever()
        except Cancelled:
            log("child cancelled", i)
            raise

    async def main():
        with move_on_after(0.05) as scope:
            async with open_nursery() as n:
                for i in range(3):
                    n.start_soon(child, i)
        log("caught", scope.cancelled_caught)

    run(main)
    assert sorted(log[:3]) == [("child cancelled", 0), ("child cancelled", 1),
                               ("child cancelled", 2)]
    assert log[3] == ("caught", True)


def test_scope_in_one_task_does_not_affect_sibling():
    log = Log()

    async def victim():
        with CancelScope() as scope:
            scope.cancel()
            await sleep(1)
        log("victim", scope.cancelled_caught)

    async def bystander():
        await sleep(0.05)
        log("bystander done")

    async def main():
        async with open_nursery() as n:
            n.start_soon(bystander)
            n.start_soon(victim)

    run(main)
    assert log == [("victim", True), "bystander done"]


def test_scope_entered_once_only():
    async def main():
        scope = CancelScope()
        with scope:
            pass
        with pytest.raises(RuntimeError):
            with scope:
                pass

    run(main)


def test_scope_cannot_be_entered_while_entered():
    async def main():
        scope = CancelScope()
        with scope:
            with pytest.raises(RuntimeError):
                with scope:
                    pass

    run(main)


# ---------------------------------------------------------------------------
# move_on_* and fail_*


def test_move_on_after():
    async def main():
        t0 = time.monotonic()
        with move_on_after(0.1) as scope:
            await sleep(10)
        return isinstance(scope, CancelScope), scope.cancelled_caught, time.monotonic() - t0

    is_scope, caught, elapsed = run(main)
    assert is_scope
    assert caught is True
    assert_at_least(elapsed, 0.1)


def test_move_on_after_body_finishes_in_time():
    async def main():
        with move_on_after(1) as scope:
            await sleep(0.01)
            result = "done"
        return result, scope.cancelled_caught, scope.cancel_called

    assert run(main) == ("done", False, False)


def test_move_on_at():
    async def main():
        deadline = current_time() + 0.1
        with move_on_at(deadline) as scope:
            assert scope.deadline == deadline
            await sleep(10)
        return scope.cancelled_caught, current_time() >= deadline

    assert run(main) == (True, True)


def test_move_on_after_deadline_attribute():
    async def main():
        before = current_time()
        with move_on_after(5) as scope:
            after = current_time()
        return before + 5 <= scope.deadline <= after + 5

    assert run(main) is True


def test_fail_after_raises_timeouterror():
    async def main():
        t0 = time.monotonic()
        try:
            with fail_after(0.1):
                await sleep(10)
        except TimeoutError as e:
            return type(e), time.monotonic() - t0
        return None, None

    exc_type, elapsed = run(main)
    assert exc_type is TimeoutError
    assert_at_least(elapsed, 0.1)


def test_fail_at_raises_timeouterror():
    async def main():
        deadline = current_time() + 0.05
        with pytest.raises(TimeoutError):
            with fail_at(deadline):
                await sleep_forever()
        return current_time() >= deadline

    assert run(main) is True


def test_fail_after_no_timeout():
    async def main():
        with fail_after(1):
            await sleep(0.01)
        return "ok"

    assert run(main) == "ok"


def test_fail_after_cancelled_by_outer_scope_is_not_timeout():
    log = Log()

    async def main():
        with CancelScope() as outer:
            outer.cancel()
            try:
                with fail_after(10):
                    await sleep(1)
            except TimeoutError:
                log("wrong: timeout")
            except Cancelled:
                log("cancelled")
                raise
        log(outer.cancelled_caught)

    run(main)
    assert log == ["cancelled", True]


def test_fail_after_inside_move_on_after():
    async def main():
        with move_on_after(10) as outer:
            with pytest.raises(TimeoutError):
                with fail_after(0.02):
                    await sleep(1)
        return outer.cancelled_caught

    assert run(main) is False


# ---------------------------------------------------------------------------
# current_effective_deadline


def test_current_effective_deadline():
    seen = Log()

    async def main():
        seen("none", current_effective_deadline())
        now = current_time()
        with CancelScope(deadline=now + 10):
            seen("one", current_effective_deadline() - now)
            with CancelScope(deadline=now + 5):
                seen("two", current_effective_deadline() - now)
                with CancelScope(deadline=now + 20):
                    seen("looser inner", current_effective_deadline() - now)
                with CancelScope(shield=True):
                    seen("shield", current_effective_deadline())
                    with CancelScope(deadline=now + 30):
                        seen("inside shield", current_effective_deadline() - now)
            seen("back", current_effective_deadline() - now)
            with CancelScope() as cancelled:
                cancelled.cancel()
                seen("cancelled", current_effective_deadline())

    run(main)
    assert seen == [("none", math.inf), ("one", pytest.approx(10)), ("two", pytest.approx(5)),
                    ("looser inner", pytest.approx(5)), ("shield", math.inf),
                    ("inside shield", pytest.approx(30)), ("back", pytest.approx(10)),
                    ("cancelled", -math.inf)]


def test_current_effective_deadline_follows_deadline_changes():
    async def main():
        now = current_time()
        with CancelScope() as scope:
            a = current_effective_deadline()
            scope.deadline = now + 3
            b = current_effective_deadline()
        return a, b - now

    a, b = run(main)
    assert a == math.inf
    assert b == pytest.approx(3)


def test_current_effective_deadline_shielded_scope_own_deadline():
    async def main():
        now = current_time()
        with CancelScope(deadline=now + 1):
            with CancelScope(shield=True, deadline=now + 7):
                return current_effective_deadline() - now

    assert run(main) == pytest.approx(7)


def test_current_effective_deadline_cancelled_outer_shielded_inner():
    async def main():
        with CancelScope() as outer:
            outer.cancel()
            with CancelScope(shield=True):
                a = current_effective_deadline()
            b = current_effective_deadline()
        return a, b

    assert run(main) == (math.inf, -math.inf)


# ---------------------------------------------------------------------------
# comparison with trio


def _cancel_scenario(lib, log):
    async def main():
        with lib.CancelScope() as a:
            with lib.CancelScope() as b:
                b.cancel()
                try:
                    await lib.checkpoint()
                except lib.Cancelled:
                    log("b-cancel-1")
                try:
                    await lib.sleep(0.01)
                except lib.Cancelled:
                    log("b-cancel-2")
                with lib.CancelScope(shield=True) as c:
                    await lib.sleep(0.01)
                    log("shielded-ok")
                    c.cancel()
                    try:
                        await lib.checkpoint()
                    except lib.Cancelled:
                        log("c-own-cancel")
                log("c", c.cancel_called, c.cancelled_caught)
                a.cancel()
                await lib.checkpoint()
            log("unreachable")
        log("flags", a.cancelled_caught, b.cancelled_caught)
        with lib.move_on_after(0.01) as m:
            await lib.sleep(1)
        log("move_on", m.cancelled_caught)
        try:
            with lib.fail_after(0.01):
                await lib.sleep(1)
        except lib.Timeout:
            log("timeout")
        with lib.CancelScope() as d:
            d.cancel()
            log("ced", lib.current_effective_deadline())
        log("d", d.cancelled_caught)
        return "end"

    return main()


def test_cancellation_semantics_match_trio():
    async def scenario(lib, log):
        return await _cancel_scenario(lib, log)

    trio_obs, broomio_obs = oracle(scenario)
    assert trio_obs[1] == ("returned", "end")
    assert broomio_obs == trio_obs


def test_nursery_cancel_semantics_match_trio():
    async def scenario(lib, log):
        async def child(name):
            try:
                await lib.sleep_forever()
            except lib.Cancelled:
                log(name, "cancelled")
                try:
                    await lib.checkpoint()
                except lib.Cancelled:
                    log(name, "cancelled again")
                with lib.CancelScope(shield=True):
                    await lib.sleep(0.01)
                    log(name, "shielded cleanup done")
                raise

        async with lib.open_nursery() as n:
            n.start_soon(child, "c1")
            await lib.sleep(0.01)
            n.cancel_scope.cancel()
            try:
                await lib.checkpoint()
            except lib.Cancelled:
                log("body cancelled")
                raise
        log("nursery", n.cancel_scope.cancelled_caught)
        return "end"

    trio_obs, broomio_obs = oracle(scenario)
    # The body and the child wake in the same scheduler batch (trio runs such
    # batches in random order): compare the child's own sequence and the rest
    # as a multiset.
    def child_part(obs):
        return [e for e in obs[0] if isinstance(e, tuple) and e[0] == "c1"]

    assert trio_obs[1] == ("returned", "end")
    assert child_part(broomio_obs) == child_part(trio_obs)
    assert sorted(map(repr, broomio_obs[0])) == sorted(map(repr, trio_obs[0]))
    assert broomio_obs[0][-1] == trio_obs[0][-1] == ("nursery", True)
    assert broomio_obs[1] == trio_obs[1]
