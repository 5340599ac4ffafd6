"""read_exactly / read_until / read_line / receive_some over random chunkings (Hypothesis).

Hypothesis picks a byte string (from a small alphabet, so delimiters are frequent and
overlap), a way to cut it into chunks, an EOF at its end, and a program of reads with
random sizes, delimiters and ``max_size`` limits.  A feeder task writes the chunks into
one end of a socketpair (or a pipe) with checkpoints in between, so they reach the reader
in pieces; the reader runs the program on a SocketStream (or FdStream).

What every read returns or raises must not depend on the chunking: the reference below is
a few lines of pure Python over the whole string and a read position.  ``receive_some``
may return any non-empty prefix of what is left (the only chunking-dependent read); the
reference checks just that and advances by what it got.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import broomio
import broomio.socket as bsocket

DELIMS = [b"\n", b"ab", b"\r\n", b"aba", b"b"]


class Reference:
    """The stream contract on a byte string with EOF at its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def rest(self) -> bytes:
        return self.data[self.pos:]

    def read_exactly(self, n: int) -> Any:
        rest = self.rest
        if len(rest) >= n:
            self.pos += n
            return ("ok", rest[:n])
        self.pos = len(self.data)
        return ("incomplete", rest, n)

    def read_until(self, delim: bytes, max_size: int) -> Any:
        rest = self.rest
        i = rest.find(delim)
        if i >= 0 and i + len(delim) <= max_size:
            self.pos += i + len(delim)
            return ("ok", rest[:i + len(delim)])
        if i >= 0 or len(rest) >= max_size:
            return ("ValueError",)  # the data stays buffered
        self.pos = len(self.data)
        return ("incomplete", rest, None)

    def read_line(self, max_size: int) -> Any:
        rest = self.rest
        i = rest.find(b"\n")
        if i >= 0 and i + 1 <= max_size:
            self.pos += i + 1
            return ("ok", rest[:i + 1])
        if i >= 0 or len(rest) >= max_size:
            return ("ValueError",)
        self.pos = len(self.data)
        return ("ok", rest)  # at EOF: the rest without a newline, then b""


async def run_program(data: bytes, chunks: list[int], ops: list[Any], kind: str,
                      yields: list[int]) -> list[Any]:
    if kind == "socket":
        a, b = bsocket.socketpair()
        reader: Any = broomio.SocketStream(a)
        writer: Any = broomio.SocketStream(b)
    else:
        r, w = os.pipe()
        reader, writer = broomio.FdStream(r), broomio.FdStream(w)
    results: list[Any] = []

    async def feed() -> None:
        pos = 0
        for i, size in enumerate(chunks):
            if pos >= len(data):
                break
            await writer.send_all(data[pos:pos + size])
            pos += size
            for _ in range(yields[i % len(yields)]):
                await broomio.sleep(0)
        if pos < len(data):
            await writer.send_all(data[pos:])
        await writer.send_eof()
        if kind == "socket":
            await writer.aclose()

    async def read() -> None:
        for op in ops:
            try:
                if op[0] == "exactly":
                    results.append(("ok", await reader.read_exactly(op[1])))
                elif op[0] == "until":
                    results.append(("ok", await reader.read_until(op[1], max_size=op[2])))
                elif op[0] == "line":
                    results.append(("ok", await reader.read_line(max_size=op[1])))
                else:
                    results.append(("some", await reader.receive_some(op[1])))
            except broomio.IncompleteReadError as exc:
                results.append(("incomplete", exc.partial, exc.expected))
            except ValueError as exc:
                assert "not found within max_size" in str(exc), exc
                results.append(("ValueError",))

    async with reader:
        with broomio.fail_after(10):
            async with broomio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(read)
    return results


ops_strategy = st.lists(st.one_of(
    st.tuples(st.just("exactly"), st.integers(0, 40)),
    st.tuples(st.just("until"), st.sampled_from(DELIMS), st.integers(1, 40)),
    st.tuples(st.just("line"), st.integers(1, 40)),
    st.tuples(st.just("some"), st.integers(1, 40)),
), max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=300).map(lambda b: bytes(b"ab\r\n"[x % 4] for x in b))
    | st.binary(max_size=300),
    chunks=st.lists(st.integers(1, 50), min_size=1, max_size=30),
    yields=st.lists(st.integers(0, 3), min_size=1, max_size=5),
    ops=ops_strategy,
    kind=st.sampled_from(["socket", "pipe"]),
)
def test_reads_match_the_reference(data: bytes, chunks: list[int], yields: list[int],
                                   ops: list[Any], kind: str) -> None:
    got = broomio.run(run_program, data, chunks, ops, kind, yields)
    ref = Reference(data)
    assert len(got) == len(ops)
    for op, result in zip(ops, got):
        if op[0] == "exactly":
            expected = ref.read_exactly(op[1])
        elif op[0] == "until":
            expected = ref.read_until(op[1], op[2])
        elif op[0] == "line":
            expected = ref.read_line(op[1])
        else:
            chunk = result[1]
            if not ref.rest:
                assert chunk == b"", (op, result)
            else:
                assert 1 <= len(chunk) <= op[1] and ref.rest.startswith(chunk), (op, chunk)
                ref.pos += len(chunk)
            continue
        assert result == expected, (op, result, expected, ref.pos)


def test_reference_catches_a_wrong_answer() -> None:
    # The comparison can fail: a known program, its known answers.
    data = b"abc\nde"
    got = broomio.run(run_program, data, [1, 2, 3], [("line", 10), ("line", 10), ("line", 10),
                                                     ("exactly", 1)], "socket", [1])
    assert got == [("ok", b"abc\n"), ("ok", b"de"), ("ok", b""), ("incomplete", b"", 1)]
    ref = Reference(data)
    assert ref.read_line(10) == ("ok", b"abc\n")
    assert ref.read_until(b"x", 1) == ("ValueError",)
    assert ref.read_until(b"x", 10) == ("incomplete", b"de", None)
