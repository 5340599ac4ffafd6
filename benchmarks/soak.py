"""Soak test: many concurrent TCP connections exchanging checksummed messages.

``python -m benchmarks soak [--connections 10000] [--duration 60]`` starts two
processes, both on broomio:

* a **server** (``python -m benchmarks.soak server``) that accepts every
  connection and, for each frame it receives, checks the frame's CRC-32 and
  sends the frame back unchanged;
* a **client** (``python -m benchmarks.soak client``) that opens
  ``--connections`` TCP connections to it on 127.0.0.1 and, on every
  connection, sends one frame at a time (random size, random content taken from
  a random-bytes pool, log-uniform between 1 byte and ``--max-size``), reads the
  echo back and checks it byte for byte and against the CRC; when the duration
  is over it half-closes (``send_eof``) and waits for the server to close.

A frame is an 8-byte header (payload length, CRC-32 of the payload; network
order) followed by the payload.

The parent (this module's :func:`run_soak`) raises ``RLIMIT_NOFILE`` to the hard
limit (both children inherit it; each needs one descriptor per connection),
prints a progress line every ``--interval`` seconds (messages, bytes, errors,
open connections, the RSS of both processes read from ``/proc/PID/status``)
and, at the end, the totals.  It exits non-zero when

* any error happened on either side (a failed connect, a reset, a short read,
  a CRC or byte mismatch, a frame the server saw torn by EOF), or
* the byte counts do not add up (every byte the client sent must have come back
  and every byte must have been seen by the server: "lost" bytes), or
* a process's RSS grew, between the *baseline* (the first sample once every
  connection is open and a warm-up of 10 % of the duration has passed) and the
  end, by more than ``--rss-bound`` percent plus ``--rss-slack`` MiB (default
  25 % + 16 MiB: a leak of even 100 bytes per message blows through that
  within seconds at these message rates, while allocator noise from random
  message sizes stays inside it), or
* a child crashed, hung past its deadline or exited non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import resource
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["SoakConfig", "SoakResult", "fd_limit_for", "raise_fd_limit", "run_soak", "rss_bytes"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Frame header: payload length, CRC-32 of the payload (network byte order).
HEADER = struct.Struct("!II")

#: Random bytes that message payloads are sliced from (a fresh pool per process).
POOL_SIZE = 1 << 20

#: Descriptors a process needs besides one per connection (stdio, epoll, the
#: listener, the interpreter's own files, ...).
FD_OVERHEAD = 64

#: Concurrent connect() calls in the client: keeps the listen backlog (capped by
#: net.core.somaxconn) from overflowing, which would turn into SYN retransmits.
CONNECT_CONCURRENCY = 256

#: Seconds the client and the server may take, beyond the duration, to connect and
#: to shut down cleanly before the parent declares a hang.
GRACE_S = 120.0


@dataclass
class SoakConfig:
    connections: int = 10_000
    duration: float = 60.0
    max_size: int = 16 * 1024
    interval: float = 5.0
    rss_bound_pct: float = 25.0
    rss_slack_mib: float = 16.0
    seed: int = 0


@dataclass
class SoakResult:
    ok: bool
    failures: list[str] = field(default_factory=list)
    client: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# helpers shared by the parent and the children


def fd_limit_for(connections: int) -> int:
    """Descriptors one side of the soak needs for ``connections`` connections."""
    return connections + FD_OVERHEAD


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) afterwards.

    Raises RuntimeError, saying so plainly, if the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(
            f"RLIMIT_NOFILE hard limit is {hard}, but {needed} descriptors are needed per "
            f"process; raise it (e.g. `ulimit -Hn {needed}` as root, or LimitNOFILE= / "
            f"limits.conf) or use fewer --connections"
        )
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target, hard


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _new_stats() -> dict[str, Any]:
    return {"messages": 0, "bytes": 0, "errors": 0, "open": 0, "done": 0, "error_samples": []}


def _error(stats: dict[str, Any], what: str) -> None:
    stats["errors"] += 1
    if len(stats["error_samples"]) < 10:
        stats["error_samples"].append(what)


# ---------------------------------------------------------------------------
# the server process


def server_main(connections: int) -> int:
    import broomio

    raise_fd_limit(fd_limit_for(connections))
    stats = _new_stats()

    async def handler(stream: broomio.SocketStream) -> None:
        stats["open"] += 1
        try:
            while True:
                try:
                    header = await stream.read_exactly(HEADER.size)
                except broomio.IncompleteReadError as exc:
                    if exc.partial:
                        _error(stats, f"EOF inside a header ({len(exc.partial)} bytes)")
                    break  # a clean EOF between frames: the client is done
                size, crc = HEADER.unpack(header)
                payload = await stream.read_exactly(size)
                if zlib.crc32(payload) != crc:
                    _error(stats, f"CRC mismatch on a {size}-byte frame")
                    break
                await stream.send_all(header + payload)
                stats["messages"] += 1
                stats["bytes"] += HEADER.size + size
            stats["done"] += 1
        except Exception as exc:  # one connection's failure must not stop the others
            _error(stats, f"{type(exc).__name__}: {exc}")
        finally:
            stats["open"] -= 1

    async def report(interval: float) -> None:
        while True:
            await broomio.sleep(interval)
            _emit({"kind": "progress", **stats})

    async def main() -> None:
        async with broomio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: broomio.serve_tcp(
                    handler, 0, host="127.0.0.1", task_status=task_status))
            _emit({"kind": "listening", "port": listeners[0].socket.getsockname()[1]})
            nursery.start_soon(report, 0.5)
            # The parent closes our stdin to say "stop": then the final totals.
            stdin = broomio.FdStream(os.dup(0))
            while await stdin.receive_some():
                pass
            await stdin.aclose()
            nursery.cancel()
        _emit({"kind": "final", "rss": rss_bytes(os.getpid()), **stats})

    broomio.run(main)
    return 0


# ---------------------------------------------------------------------------
# the client process


def client_main(port: int, connections: int, duration: float, max_size: int, seed: int) -> int:
    import broomio

    raise_fd_limit(fd_limit_for(connections))
    rng = random.Random(seed)
    pool = rng.randbytes(POOL_SIZE)
    log_max = math.log2(max_size + 1)
    stats = _new_stats()
    stats.update(connected=0, bytes_sent=0, bytes_verified=0)
    all_connected = broomio.Event()
    shared: dict[str, float] = {"deadline": math.inf}
    connect_limit = broomio.Semaphore(CONNECT_CONCURRENCY)

    async def connection(index: int) -> None:
        try:
            async with connect_limit:
                stream = await broomio.open_tcp_stream("127.0.0.1", port)
        except OSError as exc:
            _error(stats, f"connect #{index}: {exc!r}")
            stream = None
        stats["connected"] += 1
        if stats["connected"] == connections:
            shared["deadline"] = broomio.current_time() + duration
            all_connected.set()
        if stream is None:
            return
        stats["open"] += 1
        try:
            async with stream:
                await all_connected.wait()
                while broomio.current_time() < shared["deadline"]:
                    size = min(int(2 ** rng.uniform(0, log_max)), max_size)
                    offset = rng.randrange(POOL_SIZE - size + 1)
                    payload = pool[offset:offset + size]
                    header = HEADER.pack(size, zlib.crc32(payload))
                    await stream.send_all(header + payload)
                    stats["bytes_sent"] += HEADER.size + size
                    echoed_header = await stream.read_exactly(HEADER.size)
                    echoed = await stream.read_exactly(size)
                    if echoed_header != header or echoed != payload:
                        _error(stats, f"connection #{index}: echo differs from the "
                                      f"{size}-byte frame sent")
                        return
                    got_size, got_crc = HEADER.unpack(echoed_header)
                    if zlib.crc32(echoed) != got_crc:
                        _error(stats, f"connection #{index}: CRC mismatch")
                        return
                    stats["messages"] += 1
                    stats["bytes_verified"] += HEADER.size + size
                    stats["bytes"] += HEADER.size + size
                # Half-close, then the server must close without sending anything more.
                await stream.send_eof()
                rest = await stream.receive_some()
                if rest:
                    _error(stats, f"connection #{index}: {len(rest)} unexpected bytes at EOF")
                    return
            stats["done"] += 1
        except Exception as exc:
            _error(stats, f"connection #{index}: {type(exc).__name__}: {exc}")
        finally:
            stats["open"] -= 1

    async def report(interval: float) -> None:
        while True:
            await broomio.sleep(interval)
            _emit({"kind": "progress", **stats})

    async def main() -> None:
        async with broomio.open_nursery() as outer:
            outer.start_soon(report, 0.5)
            async with broomio.open_nursery() as nursery:
                for index in range(connections):
                    nursery.start_soon(connection, index)
                await all_connected.wait()
                _emit({"kind": "connected", **stats})
            # Every connection has ended, none is closed by the runtime's teardown yet.
            outer.cancel()
        _emit({"kind": "final", "rss": rss_bytes(os.getpid()), **stats})

    broomio.run(main)
    return 0


# ---------------------------------------------------------------------------
# the parent


class _Child:
    """A child process whose stdout JSON lines are collected by a reader thread."""

    def __init__(self, name: str, argv: list[str], stdin: int | IO[Any] | None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak", *argv], cwd=REPO_ROOT,
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.latest: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        self.stderr = b""
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                record = {"kind": "garbage", "line": raw.decode("utf-8", "replace")}
            self.lines.put(record)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def poll_records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            try:
                record = self.lines.get_nowait()
            except queue.Empty:
                return out
            out.append(record)
            if record.get("kind") in ("progress", "connected", "final"):
                self.latest = record
            if record.get("kind") == "final":
                self.final = record

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    return None
                continue
            if record.get("kind") in ("progress", "connected", "final"):
                self.latest = record
            if record.get("kind") == "final":
                self.final = record
            if record.get("kind") == kind:
                return record
        return None

    def kill(self) -> None:
        """Kill the child if it still runs, reap it, close our ends of its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.join_readers()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def join_readers(self) -> None:
        for t in self._threads:
            t.join(timeout=5)

    def stderr_tail(self) -> str:
        return self.stderr.decode("utf-8", "replace")[-2000:]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} "


def run_soak(cfg: SoakConfig, out: Callable[[str], None] = print) -> SoakResult:
    """Run one soak (both children), print progress with ``out``; return the verdict."""
    result = SoakResult(ok=False)
    fail = result.failures.append
    needed = fd_limit_for(cfg.connections)
    try:
        soft, hard = raise_fd_limit(needed)
    except RuntimeError as exc:
        fail(str(exc))
        out(f"FAIL: {exc}")
        return result
    out(f"soak: {cfg.connections} connections x {cfg.duration:g} s, messages 1..{cfg.max_size} "
        f"bytes (+{HEADER.size}-byte header, CRC-32), RLIMIT_NOFILE {soft}/{hard} "
        f"(needs {needed} per process); RSS bound +{cfg.rss_bound_pct:g}% + "
        f"{cfg.rss_slack_mib:g} MiB over the baseline")

    server = _Child("server", ["server", "--connections", str(cfg.connections)],
                    stdin=subprocess.PIPE)
    client: _Child | None = None
    try:
        listening = server.wait_for("listening", 30)
        if listening is None:
            fail(f"the server never started listening:\n{server.stderr_tail()}")
            return result
        port = int(listening["port"])
        idle = {"server": rss_bytes(server.proc.pid)}
        client = _Child("client", [
            "client", "--port", str(port), "--connections", str(cfg.connections),
            "--duration", str(cfg.duration), "--max-size", str(cfg.max_size),
            "--seed", str(cfg.seed)], stdin=subprocess.DEVNULL)
        time.sleep(0.2)
        idle["client"] = rss_bytes(client.proc.pid)
        out(f"start: server pid {server.proc.pid} on 127.0.0.1:{port}, client pid "
            f"{client.proc.pid}; RSS idle: server {_mib(idle['server'])}, client "
            f"{_mib(idle['client'])}")
        result.rss["idle"] = idle

        started = time.monotonic()
        connected = client.wait_for("connected", GRACE_S)
        if connected is None:
            fail(f"the client did not connect all {cfg.connections} connections within "
                 f"{GRACE_S:g} s:\n{client.stderr_tail()}")
            return result
        t0 = time.monotonic()
        after_connect = {"server": rss_bytes(server.proc.pid),
                         "client": rss_bytes(client.proc.pid)}
        result.rss["connected"] = after_connect
        out(f"[{0:6.1f}s] all {cfg.connections} connected in {t0 - started:.1f} s "
            f"({connected['errors']} connect errors); RSS server "
            f"{_mib(after_connect['server'])}, client {_mib(after_connect['client'])}")

        warmup = cfg.duration * 0.1
        baseline: dict[str, int] | None = None
        next_report = t0 + min(cfg.interval, cfg.duration)
        peak = dict(after_connect)
        last = dict(after_connect)
        last_msgs, last_t = 0, t0
        hard_deadline = t0 + cfg.duration + GRACE_S
        while client.proc.poll() is None and time.monotonic() < hard_deadline:
            time.sleep(0.1)
            client.poll_records()
            server.poll_records()
            now = time.monotonic()
            sample = {"server": rss_bytes(server.proc.pid), "client": rss_bytes(client.proc.pid)}
            for k in sample:
                peak[k] = max(peak[k], sample[k])
                # "End" is the last sample inside the traffic window: once it is over the
                # children close their connections and free memory, which would hide growth.
                if sample[k] and now - t0 <= cfg.duration:
                    last[k] = sample[k]
            if baseline is None and now - t0 >= warmup:
                baseline = sample
                result.rss["baseline"] = baseline
                out(f"[{now - t0:6.1f}s] RSS baseline (after {warmup:g} s warm-up): server "
                    f"{_mib(baseline['server'])}, client {_mib(baseline['client'])}")
            if now >= next_report:
                next_report += cfg.interval
                c, s = client.latest, server.latest
                msgs = int(c.get("messages", 0))
                rate = (msgs - last_msgs) / max(now - last_t, 1e-9)
                last_msgs, last_t = msgs, now
                out(f"[{now - t0:6.1f}s] messages {msgs:,} ({rate:,.0f}/s)  bytes "
                    f"{_si(float(c.get('bytes', 0)))}B  errors client {c.get('errors', 0)} "
                    f"server {s.get('errors', 0)}  open {c.get('open', 0)}/"
                    f"{s.get('open', 0)}  RSS server {_mib(sample['server'])} client "
                    f"{_mib(sample['client'])}")
        if client.proc.poll() is None:
            fail(f"the client did not finish within {cfg.duration + GRACE_S:g} s of connecting")
            client.kill()
        client.join_readers()
        client.poll_records()
        # The client is done: closing the server's stdin asks it for its totals.
        assert server.proc.stdin is not None
        server.proc.stdin.close()
        if server.wait_for("final", 30) is None:
            fail(f"the server did not report its totals:\n{server.stderr_tail()}")
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fail("the server did not exit after its stdin was closed")
        server.join_readers()
        end_rss = dict(last)
        result.rss["end"] = end_rss
        result.rss["peak"] = peak
        result.client = client.final or client.latest
        result.server = server.final or server.latest
        _verdict(cfg, result, client, server, baseline or after_connect, end_rss, out,
                 time.monotonic() - t0)
        return result
    finally:
        if client is not None:
            client.kill()
        server.kill()


def _verdict(cfg: SoakConfig, result: SoakResult, client: _Child, server: _Child,
             baseline: dict[str, int], end_rss: dict[str, int],
             out: Callable[[str], None], elapsed: float) -> None:
    fail = result.failures.append
    c, s = result.client, result.server
    for child in (client, server):
        if child.proc.returncode != 0:
            fail(f"the {child.name} exited with status {child.proc.returncode}:\n"
                 f"{child.stderr_tail()}")
    if client.final is None:
        fail("the client never reported its totals")
    msgs = int(c.get("messages", 0))
    sent = int(c.get("bytes_sent", 0))
    verified = int(c.get("bytes_verified", 0))
    lost = sent - verified
    out(f"end:   {elapsed:.1f} s; messages {msgs:,} ({msgs / max(cfg.duration, 1e-9):,.0f}/s), "
        f"bytes sent {sent:,}, echoed and verified {verified:,}, lost {lost:,}; server saw "
        f"{int(s.get('messages', 0)):,} messages, {int(s.get('bytes', 0)):,} bytes")
    out(f"       errors: client {c.get('errors', '?')}, server {s.get('errors', '?')}; "
        f"connections closed cleanly: client {c.get('done', '?')}/{cfg.connections}, "
        f"server {s.get('done', '?')}/{cfg.connections}")
    for side, rec in (("client", c), ("server", s)):
        for sample in rec.get("error_samples", []):
            out(f"       {side} error: {sample}")
    if c.get("errors") != 0:
        fail(f"client errors: {c.get('errors')}")
    if s.get("errors") != 0:
        fail(f"server errors: {s.get('errors')}")
    if lost != 0:
        fail(f"{lost} bytes sent by the client never came back verified")
    if int(s.get("bytes", -1)) != sent or int(s.get("messages", -1)) != msgs:
        fail(f"server counts ({s.get('messages')} messages, {s.get('bytes')} bytes) differ "
             f"from the client's ({msgs} messages, {sent} bytes)")
    if c.get("done") != cfg.connections or s.get("done") != cfg.connections:
        fail(f"not every connection ended cleanly (client {c.get('done')}, server "
             f"{s.get('done')} of {cfg.connections})")
    if msgs < cfg.connections:
        fail(f"only {msgs} messages for {cfg.connections} connections")
    for side in ("server", "client"):
        start, end = baseline[side], end_rss[side]
        bound = start * (1 + cfg.rss_bound_pct / 100) + cfg.rss_slack_mib * (1 << 20)
        growth = end - start
        out(f"       RSS {side}: baseline {_mib(start)} -> end {_mib(end)} "
            f"(growth {growth / (1 << 20):+.1f} MiB, {100 * growth / max(start, 1):+.1f}%; "
            f"bound {_mib(int(bound))}; peak {_mib(result.rss['peak'][side])})")
        if end > bound:
            fail(f"{side} RSS grew from {_mib(start)} to {_mib(end)}, over the bound "
                 f"{_mib(int(bound))}")
    result.ok = not result.failures
    if result.ok:
        out("PASS: 0 errors, 0 bytes lost, RSS within bound")
    else:
        out("FAIL:")
        for f in result.failures:
            out(f"  - {f}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``soak`` options (shared by ``python -m benchmarks soak``)."""
    p.add_argument("--connections", type=int, default=10_000, metavar="N",
                   help="concurrent TCP connections (default: 10000)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="seconds of traffic once every connection is open (default: 60)")
    p.add_argument("--max-size", type=int, default=16 * 1024, metavar="BYTES",
                   help="largest message payload; sizes are log-uniform from 1 (default: 16384)")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="seconds between progress lines (default: 5)")
    p.add_argument("--rss-bound", type=float, default=25.0, metavar="PCT",
                   help="allowed RSS growth over the baseline, percent (default: 25)")
    p.add_argument("--rss-slack", type=float, default=16.0, metavar="MIB",
                   help="allowed RSS growth on top of --rss-bound, MiB (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SoakConfig:
    if not 1 <= args.connections <= 1_000_000:
        parser.error("--connections must be between 1 and 1000000")
    if not 0 < args.duration <= 24 * 3600:
        parser.error("--duration must be > 0 and <= 86400 seconds")
    if not 1 <= args.max_size <= POOL_SIZE:
        parser.error(f"--max-size must be between 1 and {POOL_SIZE}")
    if not args.interval > 0:
        parser.error("--interval must be > 0")
    if args.rss_bound < 0 or args.rss_slack < 0:
        parser.error("--rss-bound and --rss-slack must be >= 0")
    return SoakConfig(connections=args.connections, duration=args.duration,
                      max_size=args.max_size, interval=args.interval,
                      rss_bound_pct=args.rss_bound, rss_slack_mib=args.rss_slack,
                      seed=args.seed)


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    sub = p.add_subparsers(dest="role", required=True)
    ps = sub.add_parser("server")
    ps.add_argument("--connections", type=int, required=True)
    pc = sub.add_parser("client")
    pc.add_argument("--port", type=int, required=True)
    pc.add_argument("--connections", type=int, required=True)
    pc.add_argument("--duration", type=float, required=True)
    pc.add_argument("--max-size", type=int, required=True)
    pc.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.role == "server":
        return server_main(args.connections)
    return client_main(args.port, args.connections, args.duration, args.max_size, args.seed)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
