"""Structured concurrency: a nursery, a failing child, timeouts and start().

Run: python examples/structured.py
"""

import broomio


async def worker(name: str, delay: float, results: list[str]) -> None:
    await broomio.sleep(delay)
    results.append(name)


async def flaky() -> None:
    await broomio.sleep(0.05)
    raise ValueError("flaky failed")


async def server(task_status: broomio.TaskStatus[int]) -> None:
    # Pretend to bind a port, report it to whoever started us, then keep serving.
    task_status.started(8080)
    await broomio.sleep_forever()


async def main() -> None:
    results: list[str] = []
    async with broomio.open_nursery() as nursery:
        for i, delay in enumerate([0.03, 0.01, 0.02]):
            nursery.start_soon(worker, f"worker-{i}", delay, results)
    print("finished in order:", results)

    # A failing child cancels its siblings; the nursery raises an ExceptionGroup.
    try:
        async with broomio.open_nursery() as nursery:
            nursery.start_soon(worker, "slow", 10.0, results)
            nursery.start_soon(flaky)
    except* ValueError as group:
        print("caught:", [str(e) for e in group.exceptions])

    # Timeouts are cancel scopes.
    with broomio.move_on_after(0.05) as scope:
        await broomio.sleep(10)
    print("moved on after timeout:", scope.cancelled_caught)
    try:
        with broomio.fail_after(0.05):
            await broomio.sleep(10)
    except TimeoutError:
        print("fail_after raised TimeoutError")

    # start() waits until the child says it is ready.
    async with broomio.open_nursery() as nursery:
        port = await nursery.start(server)
        print("server started on port", port)
        nursery.cancel()


if __name__ == "__main__":
    broomio.run(main)
