"""Debug mode catches a task that blocks the event loop.

`time.sleep()` inside a coroutine stops every other task (the ticker below falls silent).
With debug=True (or BROOMIO_DEBUG=1) broomio reports any task step that runs longer than
loop.slow_callback_duration (0.1 s by default), naming the task and the line that blocked.
The fix is `await broomio.sleep(...)`, or `await broomio.run_in_thread(...)` for blocking
work.  The same program also shows an Instrument counting steps, and the task-tree dump.
"""

import logging
import time
import warnings

import broomio


class StepCounter(broomio.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def after_task_step(self, task: broomio.Task) -> None:
        self.steps += 1


async def ticker() -> None:
    for _ in range(5):
        await broomio.sleep(0.02)


async def blocking_work() -> None:
    await broomio.sleep(0.01)
    time.sleep(0.15)  # the mistake: this blocks the whole loop


async def main() -> None:
    async with broomio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        nursery.start_soon(blocking_work)
        await broomio.sleep(0)
        print(broomio.lowlevel.dump_task_tree())


def run() -> None:
    # The report also goes to the "broomio" logger; route it to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    counter = StepCounter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        broomio.run(main, debug=True, instruments=[counter])
    slow = [w for w in caught if issubclass(w.category, broomio.SlowStepWarning)]
    for w in slow:
        print(f"caught {w.category.__name__} at line {w.lineno}: {w.message}")
    print(f"slow steps reported: {len(slow)}; task steps run: {counter.steps}")


if __name__ == "__main__":
    run()
