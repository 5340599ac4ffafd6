"""broomio.testing.MockClock: an hour of sleeps and timeouts in a few milliseconds.

With autojump_threshold=0 the clock jumps to the next deadline as soon as every task is
blocked, so timing logic can be tested without waiting for it.
"""

import time

import broomio
from broomio.testing import MockClock


async def heartbeat(log: list[str]) -> None:
    for _ in range(4):
        await broomio.sleep(900)  # every 15 minutes
        log.append(f"beat at t={broomio.current_time():.0f}s")


async def main() -> None:
    log: list[str] = []
    async with broomio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, log)
        with broomio.move_on_after(3600) as scope:  # give up after an hour
            await broomio.sleep_forever()
    for line in log:
        print(line)
    print(f"timeout hit: {scope.cancelled_caught}, clock: {broomio.current_time():.0f}s")


start = time.monotonic()
broomio.run(main, clock=MockClock(autojump_threshold=0))
print(f"real time: {time.monotonic() - start:.3f}s")
