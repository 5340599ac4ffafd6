"""broomio.asyncio: entry points and the loop core (call_soon, timers, run/stop/close)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import broomio.asyncio as bra


def test_run_returns_result() -> None:
    async def main() -> int:
        await asyncio.sleep(0.001)
        return 42

    assert bra.run(main()) == 42


def test_run_uses_broomio_loop() -> None:
    async def main() -> object:
        return asyncio.get_running_loop()

    assert isinstance(bra.run(main()), bra.EventLoop)


def test_run_debug_flag() -> None:
    async def main() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert bra.run(main(), debug=True) is True
    assert bra.run(main(), debug=False) is False


def test_runner_loop_factory() -> None:
    async def main() -> str:
        await asyncio.sleep(0)
        return "ok"

    with asyncio.Runner(loop_factory=bra.new_event_loop) as runner:
        assert runner.run(main()) == "ok"
        assert isinstance(runner.get_loop(), bra.EventLoop)


def test_new_event_loop_is_abstract_event_loop() -> None:
    loop = bra.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert not loop.is_running()
        assert not loop.is_closed()
    finally:
        loop.close()
    assert loop.is_closed()


def test_policy() -> None:
    policy = bra.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, bra.EventLoop)
    finally:
        loop.close()
