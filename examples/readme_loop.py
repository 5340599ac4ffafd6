"""The original Broomio README example, unchanged: three tasks sleep 2 s concurrently.

Run: python examples/readme_loop.py   (takes about 2 s, not 6)

The code below is kept exactly as the original README printed it, without type hints, so
mypy --strict is told to accept this file's untyped function (the line below).
"""
# mypy: allow-untyped-defs, allow-untyped-calls
from broomio import Loop
from broomio import sleep
from time import time

async def test(index):
    print(f'{index} started at {time()}')
    await sleep(2)
    print(f'{index} stopped at {time()}')


loop = Loop()
loop.start_soon(test(1))
loop.start_soon(test(2))
loop.start_soon(test(3))
loop.run()
