"""Async files: write a file with broomio.Path, then read it back line by line.

File operations run in worker threads (a regular file is always "ready" for epoll, so a
slow disk would otherwise block the loop).  ``async for line in f`` reads one line per
iteration.

Run: python examples/files.py
"""

import tempfile
from collections.abc import AsyncIterable, AsyncIterator

import broomio

POEM = """\
The loop is quick, the threads are few,
the files are read the whole way through;
each line arrives, the tasks run on,
and no one waits till all is done.
"""


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = broomio.Path(tmp) / "poem.txt"
        await path.write_text(POEM)
        print(f"wrote {(await path.stat()).st_size} bytes to {path.name}")

        words = 0
        async with await broomio.open_file(path) as f:
            async for number, line in aenumerate(f):
                words += len(line.split())
                print(f"{number}: {line.rstrip()}")
        print(f"{words} words")

        async with await path.open("a") as f:
            await f.write("(the end)\n")
        lines = (await path.read_text()).splitlines()
        print(f"last line now: {lines[-1]}")


async def aenumerate(
    iterable: AsyncIterable[str], start: int = 1
) -> AsyncIterator[tuple[int, str]]:
    number = start
    async for item in iterable:
        yield number, item
        number += 1


if __name__ == "__main__":
    broomio.run(main)
