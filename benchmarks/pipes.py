"""Pipe stream benchmark: ``python -m benchmarks.pipes [--rounds N]``.

Compares, in one run, three byte streams over ``os.pipe()`` fds:

* ``broomio`` -- ``broomio.FdStream`` (C read/write operations, sock.c's raw fd mode);
* ``python`` -- the alternative that was measured against it: a Python stream calling
  ``os.read``/``os.write`` and ``broomio.lowlevel.wait_readable``/``wait_writable`` on EAGAIN;
* ``trio`` -- ``trio.lowlevel.FdStream``, for reference.

Cases: a 10-byte ping-pong over two pipes (µs per round trip), and 10 MB pushed through a
``cat`` child in 64 KiB chunks while it is read back (MB/s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import trio  # type: ignore[import-untyped, unused-ignore]

import broomio
from broomio.lowlevel import notify_closing, wait_readable, wait_writable

TOTAL = 10 * 1024 * 1024
CHUNK = b"x" * 65536


class PythonFdStream:
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                return os.read(self.fd, max_bytes)
            except BlockingIOError:
                await wait_readable(self.fd)

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await wait_writable(self.fd)

    async def aclose(self) -> None:
        notify_closing(self.fd)
        os.close(self.fd)


async def pingpong(lib: Any, make: Any, n: int) -> float:
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    ar, aw, br, bw = make(a_r), make(a_w), make(b_r), make(b_w)

    async def echo() -> None:
        for _ in range(n):
            await bw.send_all(await ar.receive_some(10))

    t0 = time.perf_counter()
    async with lib.open_nursery() as nursery:
        nursery.start_soon(echo)
        for _ in range(n):
            await aw.send_all(b"0123456789")
            await br.receive_some(10)
    elapsed = time.perf_counter() - t0
    for stream in (ar, aw, br, bw):
        await stream.aclose()
    return elapsed / n * 1e6


async def through_cat(lib: Any, make: Any) -> float:
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    writer, reader = make(os.dup(proc.stdin.fileno())), make(os.dup(proc.stdout.fileno()))
    proc.stdin.close()
    proc.stdout.close()

    async def write() -> None:
        for _ in range(TOTAL // len(CHUNK)):
            await writer.send_all(CHUNK)
        await writer.aclose()

    got = 0
    t0 = time.perf_counter()
    async with lib.open_nursery() as nursery:
        nursery.start_soon(write)
        while chunk := await reader.receive_some(65536):
            got += len(chunk)
    elapsed = time.perf_counter() - t0
    await reader.aclose()
    proc.wait()
    assert got == TOTAL
    return TOTAL / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20000, help="ping-pong round trips")
    args = parser.parse_args()
    # (run function, library module, stream factory); typed loosely: the three differ.
    runners: dict[str, tuple[Callable[..., Any], Any, Any]] = {
        "broomio": (broomio.run, broomio, broomio.FdStream),
        "python": (broomio.run, broomio, PythonFdStream),
        "trio": (trio.run, trio, trio.lowlevel.FdStream),
    }
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, (run, lib, make) in runners.items():
            us = run(pingpong, lib, make, args.n)
            mbs = run(through_cat, lib, make)
            key_p, key_t = (name, "pingpong"), (name, "cat")
            best[key_p] = min(best.get(key_p, us), us)
            best[key_t] = max(best.get(key_t, mbs), mbs)
    print("| stream | 10-byte ping-pong (µs/round trip) | 10 MB through cat (MB/s) |")
    print("|---|---|---|")
    for name in runners:
        print(f"| {name} | {best[(name, 'pingpong')]:.2f} | {best[(name, 'cat')]:.0f} |")


if __name__ == "__main__":
    main()
