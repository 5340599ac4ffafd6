"""Subprocesses with async pipes: a two-stage pipeline, then a one-shot run.

The pipeline is ``producer | consumer`` with broomio in the middle: one task copies the
producer's stdout into the consumer's stdin (and could inspect or transform it on the way),
while the main task reads the consumer's output.  Everything runs concurrently, so neither
child ever blocks on a full pipe.

Run it with ``python subprocess_pipeline.py``; it exits 0 and prints what the children did.
"""

import subprocess
import sys

import broomio

PRODUCER = "for i in range(1, 1001): print(f'line {i}')"
# Upper-cases its input and reports how many lines it saw, on stderr.
CONSUMER = """
import sys
n = 0
for line in sys.stdin:
    n += 1
    sys.stdout.write(line.upper())
sys.stderr.write(f"consumer saw {n} lines")
"""


async def copy(source: broomio.FdStream, sink: broomio.FdStream) -> int:
    """Copy source to sink until EOF, then close sink (the consumer sees EOF)."""
    total = 0
    async with sink:
        async for chunk in source:
            await sink.send_all(chunk)
            total += len(chunk)
    return total


async def read_all(source: broomio.FdStream) -> bytes:
    return b"".join([chunk async for chunk in source])


async def main() -> None:
    producer = await broomio.open_process(
        [sys.executable, "-c", PRODUCER], stdout=subprocess.PIPE
    )
    consumer = await broomio.open_process(
        [sys.executable, "-c", CONSUMER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with producer, consumer:
        assert producer.stdout and consumer.stdin and consumer.stdout and consumer.stderr
        async with broomio.open_nursery() as nursery:
            copied = nursery.start_soon(copy, producer.stdout, consumer.stdin)
            report = nursery.start_soon(read_all, consumer.stderr)
            lines = []
            while line := await consumer.stdout.read_line():
                lines.append(line)
    print(f"copied {copied.result()} bytes from producer to consumer")
    print(f"first: {lines[0].decode().strip()}, last: {lines[-1].decode().strip()}")
    print(report.result().decode())
    print(f"exit codes: producer {producer.returncode}, consumer {consumer.returncode}")

    # One shot: feed input, capture output; check=True raises CalledProcessError on failure.
    result = await broomio.run_process(
        [sys.executable, "-c", "import sys; print(sum(map(int, sys.stdin.read().split())))"],
        input=b"1 2 3 4 5 6 7 8 9 10",
        capture_stdout=True,
    )
    print(f"sum computed by a child: {result.stdout.decode().strip()}")


if __name__ == "__main__":
    broomio.run(main)
