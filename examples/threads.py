"""Blocking calls in worker threads: the loop keeps ticking while a thread works.

A blocking call (here: hashing a lot of data, then a blocking ``time.sleep``) would freeze
every task if it ran in the loop's thread.  ``broomio.run_in_thread`` runs it in a worker
thread instead; meanwhile a ticker task keeps running.  The worker thread also calls back
into the loop with ``broomio.from_thread.run_sync``.

Run: python examples/threads.py
"""

import hashlib
import time

import broomio
from broomio import from_thread


def hash_and_nap(data: bytes, rounds: int) -> str:
    digest = hashlib.sha256()
    for _ in range(rounds):
        digest.update(data)
    time.sleep(0.3)  # an ordinary blocking call: fine in a worker thread
    # Back into the loop's thread, e.g. to touch state that belongs to the loop.
    from_thread.run_sync(print, "worker: hashing done, reported from the loop thread")
    return digest.hexdigest()


async def ticker(stop: broomio.Event, ticks: list[float]) -> None:
    while not stop.is_set():
        ticks.append(broomio.current_time())
        await broomio.sleep(0.02)


async def main() -> None:
    ticks: list[float] = []
    stop = broomio.Event()
    async with broomio.open_nursery() as nursery:
        nursery.start_soon(ticker, stop, ticks)
        started = time.monotonic()
        digest = await broomio.run_in_thread(hash_and_nap, b"broomio" * 1000, 2000)
        elapsed = time.monotonic() - started
        stop.set()
    expected = hashlib.sha256(b"broomio" * 1000 * 2000).hexdigest()
    print(f"sha256: {digest}")
    print(f"digest correct: {digest == expected}")
    print(f"the thread worked for {elapsed:.2f} s; the ticker ticked {len(ticks)} times meanwhile")
    print(f"loop stayed responsive: {len(ticks) >= 5}")


if __name__ == "__main__":
    broomio.run(main)
