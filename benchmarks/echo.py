"""Echo benchmark: TCP echo servers under a closed-loop C load generator.

For each (server, message size, repetition) the harness

1. compiles the C programs if needed (:mod:`benchmarks._build`),
2. starts a fresh server pinned to one CPU (``--port 0``; it prints its port),
3. runs ``loadgen`` pinned to the other CPU: N connections, one message in
   flight per connection, warm-up then a measured window; loadgen samples the
   server's CPU time (``/proc/PID/stat``) at the window's edges and verifies
   every echoed byte,
4. stops the server (its whole process group) whatever happened.

A run's value is **server CPU microseconds per message**: the server's
user+system CPU time during the window divided by the round trips completed
in it.  On a 2-core machine, where client and server compete for cores,
throughput says as much about the client as about the server; CPU per
message only charges the server for what it did.

The servers live in ``benchmarks/servers/``; :data:`SERVERS` says how to run
each.  Everything here is driven by ``python -m benchmarks echo``.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._build import BuildError, build_c_program
from ._process import (
    ServerError,
    ServerProcess,
    child_setup,
    children_cpu_seconds,
    per_cpu_times,
)
from ._runner import REPO_ROOT, Aggregate, ChildOutcome, run_child

__all__ = [
    "BASELINE",
    "DEFAULT_SIZES",
    "LOADGEN_SOURCE",
    "QUICK_SERVERS",
    "RIVAL",
    "SERVERS",
    "FOREIGN_LOAD_NOTE_PCT",
    "EchoConfig",
    "ServerSpec",
    "parse_size",
    "pick_cpus",
    "run_case",
    "run_suite",
    "size_label",
]

BENCH_DIR = Path(__file__).resolve().parent
SERVERS_DIR = BENCH_DIR / "servers"
LOADGEN_SOURCE = BENCH_DIR / "loadgen" / "loadgen.c"

#: Message sizes in bytes (``--sizes``).
DEFAULT_SIZES: tuple[int, ...] = (64, 1024, 16 * 1024)

#: Other processes' share of a pinned CPU (%) from which the report flags a run.
FOREIGN_LOAD_NOTE_PCT = 10.0

#: Extra seconds a loadgen run may take beyond warm-up + duration before it is killed
#: (its connect phase alone may take up to 10 s).
LOADGEN_GRACE_S = 40.0


@dataclass(frozen=True)
class ServerSpec:
    """How to run one echo server.

    Either ``c_source`` (a file in ``benchmarks/servers/``, compiled on first
    use) or ``module`` (``benchmarks.servers.MODULE``, run with this Python)
    plus ``args``.  ``dist`` names the framework whose version the report shows.
    """

    name: str
    title: str
    dist: str | None
    c_source: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()

    def command(self) -> list[str]:
        """The argv that starts this server on a free port (may compile it: BuildError)."""
        if self.c_source is not None:
            return [str(build_c_program(SERVERS_DIR / self.c_source)), "--port", "0"]
        assert self.module is not None
        return [sys.executable, "-X", "faulthandler", "-m", f"benchmarks.servers.{self.module}",
                "--port", "0", *self.args]


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("raw-c", "C, edge-triggered epoll: the physical limit", None,
                   c_source="raw_epoll.c"),
        ServerSpec("asyncio-streams", "asyncio StreamReader/StreamWriter, task per connection",
                   "asyncio", module="asyncio_echo", args=("--api", "streams")),
        ServerSpec("asyncio-protocol", "asyncio Protocol: data_received -> transport.write",
                   "asyncio", module="asyncio_echo", args=("--api", "protocol")),
        ServerSpec("uvloop-streams", "asyncio streams on uvloop", "uvloop",
                   module="asyncio_echo", args=("--api", "streams", "--loop", "uvloop")),
        ServerSpec("uvloop-protocol", "asyncio Protocol on uvloop", "uvloop",
                   module="asyncio_echo", args=("--api", "protocol", "--loop", "uvloop")),
        ServerSpec("trio", "trio.serve_tcp, receive_some/send_all", "trio", module="trio_echo"),
        ServerSpec("broomio", "broomio.socket accept/recv/send_all, else serve_tcp",
                   "broomio", module="broomio_echo", args=("--api", "auto")),
        ServerSpec("broomio-streams", "broomio.serve_tcp, SocketStream receive_some/send_all",
                   "broomio", module="broomio_echo", args=("--api", "streams")),
    )
}

#: CPU/msg ratios in the table are to this server's, at the same size.
BASELINE = "raw-c"
#: The server broomio must beat (targets under the table).
RIVAL = "uvloop-protocol"
#: Servers of a ``--quick`` run unless ``--servers`` is given.
QUICK_SERVERS: tuple[str, ...] = ("raw-c", "asyncio-streams", "uvloop-protocol", "broomio",
                                  "broomio-streams")


@dataclass(frozen=True)
class EchoConfig:
    """Everything a suite run needs (resolved from the command line)."""

    servers: tuple[str, ...]
    sizes: tuple[int, ...]
    repeat: int
    duration: float
    warmup: float
    connections: int
    server_cpu: int | None
    client_cpu: int | None
    quick: bool


def size_label(size: int) -> str:
    """``64`` -> ``"64 B"``, ``1024`` -> ``"1 KiB"``, ``1048576`` -> ``"1 MiB"``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"64"`` -> 64, ``"1k"``/``"1KiB"`` -> 1024, ``"1m"`` -> 1048576 (ValueError if bad)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 64, 1k, 16KiB)")
    scale = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
             "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}[(m.group(2) or "").lower()]
    return int(m.group(1)) * scale


def pick_cpus(requested: Sequence[int] | None) -> tuple[int, int]:
    """(server CPU, load generator CPU): ``requested`` or the first two usable CPUs.

    With a single usable CPU both get it (the report says so).
    """
    allowed = sorted(os.sched_getaffinity(0))
    if requested is not None:
        server, client = requested
        bad = [c for c in (server, client) if c not in allowed]
        if bad:
            raise ValueError(f"CPU {bad[0]} is not usable here (usable: "
                             f"{', '.join(map(str, allowed))})")
        return server, client
    return allowed[0], allowed[1] if len(allowed) > 1 else allowed[0]


# --------------------------------------------------------------------------
# One run.
# --------------------------------------------------------------------------


def loadgen_command(loadgen: Path, port: int, size: int, server_pid: int,
                    cfg: EchoConfig) -> list[str]:
    """The argv of one loadgen run against ``port``."""
    return [str(loadgen), "--port", str(port), "--connections", str(cfg.connections),
            "--size", str(size), "--duration", repr(cfg.duration), "--warmup", repr(cfg.warmup),
            "--server-pid", str(server_pid)]


def make_record(server: str, size: int, cfg: EchoConfig, lg: dict[str, Any],
                server_cpu_total: float) -> dict[str, Any]:
    """The JSON-able record of a successful run (``value`` = server CPU us/msg)."""
    msgs = int(lg["msgs"])
    window = float(lg["duration_s"])
    server_cpu = float(lg["server_cpu_s"])
    if msgs <= 0 or window <= 0:
        raise ValueError("no round trip completed in the measured window")
    per_msg = server_cpu * 1e6 / msgs
    return {
        "server": server,
        "size": size,
        "connections": cfg.connections,
        "msgs": msgs,
        "msgs_per_s": float(lg["msgs_per_s"]),
        "p50_us": lg.get("p50_us"),
        "p99_us": lg.get("p99_us"),
        "window_s": window,
        "server_cpu_s": server_cpu,
        # Measured by the harness around the whole loadgen run (connect, warm-up,
        # window, close): a cross-check; it should exceed server_cpu_s.
        "server_cpu_total_s": server_cpu_total,
        "server_cpu_pct": 100.0 * server_cpu / window,
        "client_cpu_pct": 100.0 * float(lg["client_cpu_s"]) / window,
        "cpu_us_per_msg": per_msg,
        "value": per_msg,
        "unit": "server CPU us/msg",
        "loadgen": lg,
    }


def run_case(server: str, size: int, cfg: EchoConfig, loadgen: Path,
             spec: ServerSpec | None = None) -> tuple[ChildOutcome, bool]:
    """One run: fresh server, one loadgen run, server stopped.

    ``spec`` overrides the :data:`SERVERS` entry called ``server`` (other suites,
    e.g. ``benchmarks.aio``, run their own servers through this).  Returns the
    outcome and whether the server failed to *start* (then the other sizes of
    this server need not be tried).
    """
    if spec is None:
        spec = SERVERS[server]
    t0 = time.perf_counter()
    try:
        cmd = spec.command()
    except BuildError as exc:
        return ChildOutcome(None, str(exc), time.perf_counter() - t0, exc.output), True
    server_proc = ServerProcess(cmd, cpu=cfg.server_cpu, cwd=REPO_ROOT)
    started = False
    try:
        server_proc.start()
        started = True
        pinned = {c for c in (cfg.server_cpu, cfg.client_cpu) if c is not None}
        cpus_before = per_cpu_times(pinned)
        loadgen_before = children_cpu_seconds()
        cpu_before = server_proc.cpu_seconds()
        outcome = run_child(
            loadgen_command(loadgen, server_proc.port, size, server_proc.pid, cfg),
            cfg.warmup + cfg.duration + LOADGEN_GRACE_S,
            result_key="msgs",
            preexec_fn=child_setup(cfg.client_cpu),
        )
        server_proc.check_alive()  # a dead server explains a failed loadgen best
        cpu_total = server_proc.cpu_seconds() - cpu_before
        loadgen_cpu = children_cpu_seconds() - loadgen_before  # loadgen was reaped
        cpus_after = per_cpu_times(pinned)
        server_tail = server_proc.stderr_tail()
    except ServerError as exc:
        wall = time.perf_counter() - t0
        return ChildOutcome(None, str(exc), wall, exc.stderr), not started
    finally:
        server_proc.stop()  # also on Ctrl-C and SystemExit
    wall = time.perf_counter() - t0
    if outcome.record is None:
        tail = outcome.stderr_tail + ("\n--- server stderr ---\n" + server_tail
                                      if server_tail else "")
        error = (outcome.error or "failed").replace(": loadgen: ", ": ", 1)
        return ChildOutcome(None, f"loadgen {error}", wall, tail), False
    try:
        record = make_record(server, size, cfg, outcome.record, cpu_total)
    except (KeyError, TypeError, ValueError) as exc:
        return ChildOutcome(None, f"bad loadgen result: {exc}", wall, server_tail), False
    record["foreign_load_pct"] = foreign_load(cfg, cpus_before, cpus_after, cpu_total,
                                              loadgen_cpu)
    return ChildOutcome(record, None, wall), False


def foreign_load(cfg: EchoConfig, before: dict[int, tuple[float, float]],
                 after: dict[int, tuple[float, float]], server_cpu: float,
                 loadgen_cpu: float) -> dict[str, float]:
    """How busy the pinned CPUs were with *other* work during a loadgen run, in %.

    ``{"server_cpu": %, "client_cpu": %}``: a CPU's busy time (``/proc/stat``)
    minus what the server and loadgen used on it, over its elapsed time.
    Anything above a few percent means another process (or the hypervisor)
    competed with the benchmark: Python servers then look costlier per message.
    """
    ours = {c: 0.0 for c in after}
    if cfg.server_cpu is not None:
        ours[cfg.server_cpu] += server_cpu
    if cfg.client_cpu is not None:
        ours[cfg.client_cpu] += loadgen_cpu
    load: dict[str, float] = {}
    for role, cpu in (("server_cpu", cfg.server_cpu), ("client_cpu", cfg.client_cpu)):
        if cpu is None or cpu not in before or cpu not in after:
            continue
        busy = after[cpu][0] - before[cpu][0]
        total = after[cpu][1] - before[cpu][1]
        if total > 0:
            load[role] = max(0.0, 100.0 * (busy - ours[cpu]) / total)
    return load


# --------------------------------------------------------------------------
# The suite.
# --------------------------------------------------------------------------

Progress = Callable[..., None]


def run_suite(cfg: EchoConfig, loadgen: Path, progress: Progress
              ) -> tuple[dict[tuple[str, int], Aggregate], bool]:
    """Run every (server, size) ``cfg.repeat`` times; return the aggregates and
    whether the run was interrupted (Ctrl-C: the results so far are kept)."""
    results = {(srv, size): Aggregate(higher_is_better=False)
               for size in cfg.sizes for srv in cfg.servers}
    broken: dict[str, ChildOutcome] = {}  # servers that failed to start
    total = cfg.repeat * len(results)
    width = len(str(total))
    step = 0
    # Interleaved like the micro suite: round 1 of everything, then round 2, ...
    try:
        for rep in range(1, cfg.repeat + 1):
            for size in cfg.sizes:
                for srv in cfg.servers:
                    step += 1
                    agg = results[(srv, size)]
                    tag = (f"[{step:>{width}}/{total}] {size_label(size)} {srv} "
                           f"run {rep}/{cfg.repeat}")
                    if srv in broken:
                        if not agg.errors:
                            agg.add(broken[srv])
                        progress(f"{tag}: skipped (server failed to start)")
                        continue
                    if agg.errors:
                        progress(f"{tag}: skipped (failed before)")
                        continue
                    progress(f"{tag} ... ", end="")
                    outcome, start_failed = run_case(srv, size, cfg, loadgen)
                    agg.add(outcome)
                    if start_failed:
                        broken[srv] = outcome
                    rec = outcome.record
                    if rec is not None:
                        others = rec["foreign_load_pct"]
                        busy = (f", others used {others.get('server_cpu', 0):.0f}%/"
                                f"{others.get('client_cpu', 0):.0f}% of the CPUs"
                                if max(others.values(), default=0) >= FOREIGN_LOAD_NOTE_PCT
                                else "")
                        progress(f"{rec['msgs_per_s'] / 1e3:.1f} k msgs/s, "
                                 f"{rec['cpu_us_per_msg']:.2f} us server CPU/msg, "
                                 f"server CPU {rec['server_cpu_pct']:.0f}%{busy} "
                                 f"({outcome.wall:.1f} s wall)")
                    else:
                        progress(f"ERROR: {outcome.error}")
    except KeyboardInterrupt:
        progress("\ninterrupted: reporting the runs done so far")
        return results, True
    return results, False
