"""The asyncio primer's snippets, unchanged in spirit, on broomio's asyncio event loop.

Every scenario of the asyncio talk and primer broomio started from runs here on
``broomio.asyncio.new_event_loop()``: ``run_until_complete``, ``call_soon`` and
``call_later`` with ``run_forever``/``stop``, ``ensure_future`` chaining, an
``asyncio.Queue`` filled by ``ensure_future(q.put(...))``, debug mode catching a
callback that blocks the loop, and ``run_in_executor`` with a thread pool (blocking
calls) and a process pool (CPU work).  The only change from stock asyncio is where
the loop comes from.

Run: ``python examples/asyncio_seed.py`` (about one second).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import broomio.asyncio


async def hello_world() -> None:
    print("Hello world!")


async def world() -> str:
    await asyncio.sleep(0.2)
    return "world!"


async def hello() -> None:
    w = asyncio.ensure_future(world())
    # world() starts running while we sleep
    await asyncio.sleep(0.1)
    print("Hello ", end="", flush=True)
    print(await w)


async def queue_demo() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    asyncio.ensure_future(q.put(1))
    asyncio.ensure_future(q.put(2))
    asyncio.ensure_future(q.put(3))
    # The puts run at their next chance, i.e. while we wait on get().
    got = [await q.get() for _ in range(3)]
    print("queue gave", got)


def blocking_io(name: str) -> str:
    """Stands for a database driver call: it blocks, so it goes to a thread."""
    time.sleep(0.05)
    return f"{name} done"


def is_prime(n: int) -> bool:
    if n % 2 == 0:
        return False
    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True


async def executors(loop: asyncio.AbstractEventLoop) -> None:
    with ThreadPoolExecutor(max_workers=4) as threads:
        results = await asyncio.gather(
            *(loop.run_in_executor(threads, blocking_io, f"query {i}") for i in range(4)))
        print("thread pool:", results)
    with ProcessPoolExecutor(max_workers=2) as processes:
        n = 112272535095293
        prime = await loop.run_in_executor(processes, is_prime, n)
        print(f"process pool: {n} is prime: {prime}")


def main() -> None:
    loop = broomio.asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    print("broomio loop:", isinstance(loop, broomio.asyncio.EventLoop))

    # run_until_complete
    loop.run_until_complete(hello_world())

    # call_soon / call_later, run_forever until stop()
    order: list[str] = []
    loop.call_later(0.02, order.append, "later")
    loop.call_soon(order.append, "soon")
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    print("callbacks ran in order:", order)

    # ensure_future chaining
    loop.run_until_complete(hello())

    # asyncio.Queue
    loop.run_until_complete(queue_demo())

    # debug mode: "you never block the event loop"
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    catcher = Catch(logging.WARNING)
    logging.getLogger("asyncio").addHandler(catcher)

    async def sleeper() -> None:
        time.sleep(0.05)  # we block here

    loop.run_until_complete(sleeper())
    logging.getLogger("asyncio").removeHandler(catcher)
    loop.set_debug(False)
    print("debug mode reported the blocking call:", any("took" in m for m in caught))

    # thread pool and process pool
    loop.run_until_complete(executors(loop))

    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    asyncio.set_event_loop(None)
    loop.close()


if __name__ == "__main__":
    main()
