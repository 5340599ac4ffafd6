"""open_signal_receiver: real signals (os.kill) delivered to an async iterator."""

import os
import signal
import threading

import pytest

import broomio
from broomio import BusyResourceError, move_on_after, open_nursery, open_signal_receiver
from conftest import run, run_python

USR1, USR2 = signal.SIGUSR1, signal.SIGUSR2


def kill_self(sig):
    os.kill(os.getpid(), sig)


def test_receives_a_signal_and_restores_the_handler():
    before = signal.getsignal(USR1)

    async def main():
        with open_signal_receiver(USR1) as receiver:
            assert signal.getsignal(USR1) is not before
            kill_self(USR1)
            async for signum in receiver:
                return signum

    assert run(main) == USR1
    assert signal.getsignal(USR1) is before


def test_repeats_coalesce_and_order_is_kept():
    async def main():
        with open_signal_receiver(USR1, USR2) as receiver:
            kill_self(USR2)
            kill_self(USR1)
            kill_self(USR2)
            kill_self(USR1)
            await broomio.sleep(0)  # the Python handlers have run by now
            count = receiver.pending_signal_count()
            got = [await receiver.__anext__(), await receiver.__anext__()]
            return count, got, receiver.pending_signal_count()

    assert run(main) == (2, [USR2, USR1], 0)


def test_a_waiting_task_wakes_up_for_a_signal_from_another_thread():
    """The loop is idle in its poller; the signal arrives from elsewhere."""
    async def main():
        with open_signal_receiver(USR1) as receiver:
            timer = threading.Timer(0.1, kill_self, (USR1,))
            timer.start()
            try:
                with broomio.fail_after(10):
                    async for signum in receiver:
                        return signum
            finally:
                timer.join()

    assert run(main) == USR1


def test_a_waiting_task_wakes_up_for_a_signal_from_a_task():
    got = []

    async def main():
        with open_signal_receiver(USR2) as receiver:
            async def listen():
                async for signum in receiver:
                    got.append(signum)
                    if len(got) == 2:
                        return

            async with open_nursery() as n:
                n.start_soon(listen)
                for _ in range(2):
                    await broomio.sleep(0.02)
                    kill_self(USR2)

    run(main)
    assert got == [USR2, USR2]


def test_sigint_is_received_instead_of_keyboard_interrupt():
    async def main():
        with open_signal_receiver(signal.SIGINT) as receiver:
            kill_self(signal.SIGINT)
            async for signum in receiver:
                break
        await broomio.sleep(0.01)  # no KeyboardInterrupt arrives later either
        return signum

    assert run(main) == signal.SIGINT


def test_unread_signals_are_redelivered_on_exit():
    hits = []
    old = signal.signal(USR1, lambda signum, frame: hits.append(signum))
    try:
        async def main():
            with open_signal_receiver(USR1):
                kill_self(USR1)
                kill_self(USR1)
                await broomio.sleep(0)
                assert hits == []
            return list(hits)

        assert run(main) == [USR1]  # coalesced, then raised again for the old handler
    finally:
        signal.signal(USR1, old)


def test_handlers_restored_when_the_block_raises():
    before = signal.getsignal(USR2)

    async def main():
        with open_signal_receiver(USR2):
            raise KeyError("x")

    with pytest.raises(KeyError):
        run(main)
    assert signal.getsignal(USR2) is before


def test_cancelled_while_waiting():
    async def main():
        with open_signal_receiver(USR1) as receiver:
            with move_on_after(0.05) as scope:
                async for _ in receiver:
                    pass
            return scope.cancelled_caught

    assert run(main) is True


def test_two_iterating_tasks_is_an_error():
    async def main():
        with open_signal_receiver(USR1) as receiver:
            async with open_nursery() as n:
                n.start_soon(receiver.__anext__)
                await broomio.sleep(0.01)
                with pytest.raises(BusyResourceError):
                    await receiver.__anext__()
                kill_self(USR1)

    run(main)


def test_bad_arguments():
    async def main():
        with pytest.raises(TypeError):
            with open_signal_receiver():
                pass
        with pytest.raises(TypeError):
            with open_signal_receiver("SIGUSR1"):
                pass
        with pytest.raises(ValueError):
            with open_signal_receiver(0):
                pass
        with pytest.raises(ValueError):
            with open_signal_receiver(100000):
                pass
        with pytest.raises(ValueError, match="SIGKILL"):
            with open_signal_receiver(signal.SIGKILL):
                pass

    run(main)


def test_outside_a_loop_and_outside_the_main_thread():
    with pytest.raises(RuntimeError):
        with open_signal_receiver(USR1):
            pass
    errors = []

    def in_thread():
        async def main():
            with open_signal_receiver(USR1):
                pass

        try:
            broomio.run(main)
        except RuntimeError as exc:
            errors.append(str(exc))

    th = threading.Thread(target=in_thread)
    th.start()
    th.join()
    assert len(errors) == 1 and "main thread" in errors[0]


def test_ctrl_c_unchanged_outside_and_after_a_receiver():
    """In a child process: SIGINT is received while a SIGINT receiver is open, and is a
    KeyboardInterrupt again (cancelling everything) after it was closed.  A receiver for
    other signals leaves Ctrl-C alone."""
    proc = run_python("""
        import os, signal
        import broomio
        from broomio import open_signal_receiver, sleep

        async def main():
            with open_signal_receiver(signal.SIGINT) as receiver:
                os.kill(os.getpid(), signal.SIGINT)
                async for signum in receiver:
                    print("received", signum, flush=True)
                    break
            with open_signal_receiver(signal.SIGUSR1):
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    await sleep(10)
                finally:
                    print("cleanup", flush=True)

        try:
            broomio.run(main)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"received {int(signal.SIGINT)}", "cleanup",
                                        "KeyboardInterrupt"]
