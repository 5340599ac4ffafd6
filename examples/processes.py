"""CPU-bound work in worker processes: checking big numbers for primality.

``broomio.run_in_process`` sends a picklable function and its arguments to a pool of
worker processes (one per CPU), so pure-Python number crunching runs in parallel and never
blocks the loop.  The workers are started with the *spawn* method: they import this file
again, which is why the program starts under ``if __name__ == "__main__":``.

Run: python examples/processes.py
"""

import time

import broomio

CANDIDATES = [
    1_000_000_007,
    1_000_000_011,
    2_147_483_647,  # 2**31 - 1, a Mersenne prime
    2_147_483_649,  # 2**31 + 1 = 3 * 715827883
    999_999_999_989,
    999_999_999_991,
]


def is_prime(n: int) -> bool:
    """Trial division: deliberately CPU-bound."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


async def check(n: int, results: dict[int, bool]) -> None:
    results[n] = await broomio.run_in_process(is_prime, n)


async def main() -> None:
    results: dict[int, bool] = {}
    started = time.monotonic()
    async with broomio.open_nursery() as nursery:
        for n in CANDIDATES:
            nursery.start_soon(check, n, results)
    for n in CANDIDATES:
        print(f"{n} is {'prime' if results[n] else 'composite'}")
    print(f"checked {len(CANDIDATES)} numbers in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    broomio.run(main)
