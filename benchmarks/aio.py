"""The asyncio face: broomio.asyncio against stock asyncio and uvloop, in one table.

``python -m benchmarks aio`` measures, for each of the three event loops (every run a
fresh process):

* **echo** -- the echo servers of ``benchmarks/servers/asyncio_echo.py`` (asyncio
  streams, and an asyncio ``Protocol``) under the C load generator of
  ``python -m benchmarks echo`` (same machinery: server and load generator pinned to
  different CPUs, N connections, one message in flight each): msgs/s and the server's
  CPU microseconds per message;
* **call_soon** -- callbacks/s: 100 chains of callbacks, each re-scheduling itself with
  ``loop.call_soon`` (ready-queue push + dispatch, nothing else);
* **sleep(0)** -- ``await asyncio.sleep(0)`` per second in one task (a full task
  step through the loop);
* **aiohttp** -- an aiohttp hello-world server (``benchmarks/servers/aiohttp_hello.py``)
  under ``wrk`` (pinned to the other CPU): requests/s and server CPU per request.

Ratios are to uvloop and read as speed: > 1 means faster (more per second, or less CPU
per message) than uvloop.  The machine is noisy: compare ratios within one run only.

This module is also the child-process entry point of the in-process cases::

    python -m benchmarks.aio --child callsoon --loop broomio --n 1000000

prints one JSON line (``{"value": ...}`` or ``{"error": ...}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import echo
from ._build import BuildError, build_c_program
from ._process import ServerError, ServerProcess, child_setup, signals_raise
from ._runner import REPO_ROOT, Aggregate, ChildOutcome, machine_info, run_child
from ._table import format_ratio, format_value, markdown_table

__all__ = ["LOOPS", "AioConfig", "add_parser", "main_child", "render_report", "run_suite"]

#: The event loops compared, in table order; ``BASELINE`` is the one ratios are to.
LOOPS: tuple[str, ...] = ("broomio", "asyncio", "uvloop")
BASELINE = "uvloop"
LOOP_TITLES = {"broomio": "broomio.asyncio", "asyncio": "asyncio", "uvloop": "uvloop"}
LOOP_DISTS = {"broomio": "broomio", "asyncio": "asyncio", "uvloop": "uvloop"}

#: Chains of self-rescheduling callbacks in the call_soon case.
CALLSOON_CHAINS = 100

_WRK_RPS = re.compile(r"Requests/sec:\s*([0-9.]+)")
_WRK_TOTAL = re.compile(r"([0-9]+) requests in ([0-9.]+)(us|ms|s|m)")


# --------------------------------------------------------------------------
# In-process cases (run in a child: python -m benchmarks.aio --child ...).
# --------------------------------------------------------------------------


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "broomio":
        import broomio.asyncio

        loop: asyncio.AbstractEventLoop = broomio.asyncio.new_event_loop()
        return loop
    return asyncio.SelectorEventLoop()


def _case_callsoon(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Callbacks per second: CALLSOON_CHAINS chains re-scheduling themselves n times in all."""
    count = 0
    done = loop.create_future()
    call_soon = loop.call_soon

    def step() -> None:
        nonlocal count
        count += 1
        if count < n:
            call_soon(step)
        elif count == n:
            done.set_result(None)

    for _ in range(CALLSOON_CHAINS):
        call_soon(step)
    t0 = time.perf_counter()
    loop.run_until_complete(done)
    return n / (time.perf_counter() - t0)


def _case_sleep0(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """``await asyncio.sleep(0)`` per second in one task."""

    async def spin() -> float:
        sleep = asyncio.sleep
        t0 = time.perf_counter()
        for _ in range(n):
            await sleep(0)
        return n / (time.perf_counter() - t0)

    return loop.run_until_complete(spin())


_CHILD_CASES: dict[str, Callable[[asyncio.AbstractEventLoop, int], float]] = {
    "callsoon": _case_callsoon,
    "sleep0": _case_sleep0,
}


def main_child(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.aio --child CASE --loop LOOP --n N``: print one JSON line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.aio")
    p.add_argument("--child", choices=tuple(_CHILD_CASES), required=True)
    p.add_argument("--loop", choices=LOOPS, required=True)
    p.add_argument("--n", type=int, required=True)
    args = p.parse_args(argv)
    try:
        loop = _new_loop(args.loop)
        try:
            value = _CHILD_CASES[args.child](loop, args.n)
        finally:
            loop.close()
    except Exception as exc:  # reported in the table, never a traceback on the console
        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"value": value, "case": args.child, "loop": args.loop, "n": args.n}),
          flush=True)
    return 0


# --------------------------------------------------------------------------
# The suite.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AioConfig:
    """Everything a suite run needs (resolved from the command line)."""

    loops: tuple[str, ...]
    sizes: tuple[int, ...]
    repeat: int
    duration: float
    warmup: float
    connections: int
    server_cpu: int | None
    client_cpu: int | None
    callsoon_n: int
    sleep0_n: int
    wrk_connections: int
    quick: bool

    def echo_config(self, servers: tuple[str, ...]) -> echo.EchoConfig:
        return echo.EchoConfig(servers=servers, sizes=self.sizes, repeat=self.repeat,
                               duration=self.duration, warmup=self.warmup,
                               connections=self.connections, server_cpu=self.server_cpu,
                               client_cpu=self.client_cpu, quick=self.quick)


@dataclass(frozen=True)
class Row:
    """One row of the table: a measurement and how to read it."""

    key: str
    label: str
    unit: str
    kind: str  # format_value kind: "rate" or "us"
    higher_is_better: bool
    field: str  # which field of the best record is shown


def _echo_spec(loop: str, api: str) -> echo.ServerSpec:
    return echo.ServerSpec(f"{loop}-{api}", f"asyncio {api} on {LOOP_TITLES[loop]}",
                           LOOP_DISTS[loop], module="asyncio_echo",
                           args=("--api", api, "--loop", loop))


def _echo_key(api: str, size: int) -> str:
    return f"echo-{api}-{size}"


def rows_for(cfg: AioConfig) -> list[Row]:
    rows: list[Row] = []
    for api, title in (("streams", "echo, asyncio streams"), ("protocol", "echo, asyncio Protocol")):
        for size in cfg.sizes:
            key = _echo_key(api, size)
            where = f"{title}, {echo.size_label(size)}, {cfg.connections} conns"
            rows.append(Row(key, where, "msgs/s", "rate", True, "msgs_per_s"))
            rows.append(Row(key, where, "server CPU us/msg", "us", False, "value"))
    rows.append(Row("callsoon", f"call_soon: {cfg.callsoon_n:,} callbacks, "
                    f"{CALLSOON_CHAINS} chains", "callbacks/s", "rate", True, "value"))
    rows.append(Row("sleep0", f"asyncio.sleep(0): {cfg.sleep0_n:,} in one task",
                    "sleeps/s", "rate", True, "value"))
    rows.append(Row("aiohttp", f"aiohttp hello world under wrk, {cfg.wrk_connections} conns",
                    "requests/s", "rate", True, "value"))
    rows.append(Row("aiohttp", f"aiohttp hello world under wrk, {cfg.wrk_connections} conns",
                    "server CPU us/req", "us", False, "cpu_us_per_req"))
    return rows


Progress = Callable[..., None]


def _wrk(wrk: str, port: int, seconds: int, cfg: AioConfig
         ) -> subprocess.CompletedProcess[str]:
    """Run ``wrk`` (one thread, pinned to the client CPU) against ``GET /`` for ``seconds``."""
    return subprocess.run(
        [wrk, "-t1", f"-c{cfg.wrk_connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, stdin=subprocess.DEVNULL,
        preexec_fn=child_setup(cfg.client_cpu))


def _run_wrk(loop: str, cfg: AioConfig, wrk: str) -> ChildOutcome:
    """One aiohttp run: fresh server, a warm-up ``wrk``, a measured ``wrk``, server stopped."""
    cmd = [sys.executable, "-X", "faulthandler", "-m", "benchmarks.servers.aiohttp_hello",
           "--port", "0", "--loop", loop]
    t0 = time.perf_counter()
    server = ServerProcess(cmd, cpu=cfg.server_cpu, cwd=REPO_ROOT)
    try:
        server.start()
        _wrk(wrk, server.port, 1, cfg)  # warm-up: connections, caches, the JIT-less paths
        cpu_before = server.cpu_seconds()
        proc = _wrk(wrk, server.port, max(1, round(cfg.duration)), cfg)
        cpu = server.cpu_seconds() - cpu_before
        server.check_alive()
    except ServerError as exc:
        return ChildOutcome(None, str(exc), time.perf_counter() - t0, exc.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ChildOutcome(None, f"wrk: {exc}", time.perf_counter() - t0)
    finally:
        server.stop()
    wall = time.perf_counter() - t0
    rps = _WRK_RPS.search(proc.stdout)
    total = _WRK_TOTAL.search(proc.stdout)
    if proc.returncode != 0 or rps is None or total is None:
        return ChildOutcome(None, f"wrk failed (status {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[-200:]}", wall)
    if "Non-2xx" in proc.stdout or "Socket errors" in proc.stdout:
        return ChildOutcome(None, "wrk saw errors: " + proc.stdout.strip()[-200:], wall)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    requests = int(total.group(1))
    seconds = float(total.group(2)) * scale
    record = {"value": float(rps.group(1)), "requests": requests, "seconds": seconds,
              "cpu_us_per_req": cpu * 1e6 / requests if requests else math.nan,
              "server_cpu_pct": 100.0 * cpu / seconds if seconds else math.nan}
    return ChildOutcome(record, None, wall)


def run_suite(cfg: AioConfig, progress: Progress) -> tuple[dict[tuple[str, str], Aggregate], bool]:
    """Every case for every loop, ``cfg.repeat`` rounds interleaved; returns the aggregates
    keyed by (row key, loop) and whether the run was interrupted (Ctrl-C)."""
    keys = list(dict.fromkeys(r.key for r in rows_for(cfg)))
    results = {(key, loop): Aggregate(higher_is_better=not key.startswith("echo"))
               for key in keys for loop in cfg.loops}
    loadgen: Path | None = None
    try:
        loadgen = build_c_program(echo.LOADGEN_SOURCE)
    except BuildError as exc:
        for loop in cfg.loops:
            for key in keys:
                if key.startswith("echo"):
                    results[(key, loop)].add(ChildOutcome(None, f"no load generator: {exc}", 0.0))
    wrk = shutil.which("wrk")
    if wrk is None:
        for loop in cfg.loops:
            results[("aiohttp", loop)].add(
                ChildOutcome(None, "wrk is not installed (apt-get install wrk)", 0.0))
    steps = cfg.repeat * len(results)
    step = 0
    try:
        for rep in range(1, cfg.repeat + 1):
            for key in keys:
                for loop in cfg.loops:
                    step += 1
                    agg = results[(key, loop)]
                    tag = f"[{step:>{len(str(steps))}}/{steps}] {key} on {loop} run {rep}/{cfg.repeat}"
                    if agg.errors:
                        progress(f"{tag}: skipped ({agg.errors[-1][:80]})")
                        continue
                    progress(f"{tag} ... ", end="")
                    outcome = _run_one(key, loop, cfg, loadgen, wrk)
                    agg.add(outcome)
                    if outcome.record is None:
                        progress(f"ERROR: {outcome.error}")
                    elif key.startswith("echo"):
                        progress(f"{outcome.record['msgs_per_s'] / 1e3:.1f} k msgs/s, "
                                 f"{outcome.record['value']:.2f} us CPU/msg")
                    else:
                        progress(f"{float(outcome.record['value']) / 1e3:.1f} k/s "
                                 f"({outcome.wall:.1f} s wall)")
    except KeyboardInterrupt:
        progress("\ninterrupted: reporting the runs done so far")
        return results, True
    return results, False


def _run_one(key: str, loop: str, cfg: AioConfig, loadgen: Path | None,
             wrk: str | None) -> ChildOutcome:
    if key.startswith("echo"):
        assert loadgen is not None
        _, api, size = key.split("-")
        spec = _echo_spec(loop, api)
        outcome, _ = echo.run_case(spec.name, int(size), cfg.echo_config((spec.name,)), loadgen,
                                   spec=spec)
        return outcome
    if key == "aiohttp":
        assert wrk is not None
        return _run_wrk(loop, cfg, wrk)
    n = cfg.callsoon_n if key == "callsoon" else cfg.sleep0_n
    return run_child([sys.executable, "-m", "benchmarks.aio", "--child", key, "--loop", loop,
                      "--n", str(n)], timeout=120, preexec_fn=child_setup(cfg.server_cpu))


# --------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------


def _speed_ratio(row: Row, value: float | None, base: float | None) -> float:
    """How many times faster than the baseline (> 1: better), whatever the unit."""
    if value is None or base is None or value <= 0 or base <= 0:
        return math.nan
    return value / base if row.higher_is_better else base / value


def _value(results: dict[tuple[str, str], dict[str, Any]], row: Row, loop: str) -> float | None:
    best = results.get((row.key, loop), {}).get("best")
    if not best or row.field not in best:
        return None
    v = float(best[row.field])
    return v if math.isfinite(v) else None


def _fmt(row: Row, value: float) -> str:
    if row.kind == "us":
        return f"{value:.2f} us" if value < 10 else f"{value:.1f} us"
    return format_value(row.kind, value)


def render_report(results: dict[tuple[str, str], dict[str, Any]], cfg: AioConfig,
                  meta: dict[str, Any], *, interrupted: bool = False) -> str:
    """The Markdown report: one table, a row per measurement, a column per loop, and
    each loop's speed relative to uvloop."""
    others = [lp for lp in cfg.loops if lp != BASELINE]
    headers = ["benchmark", "metric", *(LOOP_TITLES[lp] for lp in cfg.loops),
               *(f"{LOOP_TITLES[lp]} vs {BASELINE}" for lp in others)]
    table: list[list[str]] = []
    for row in rows_for(cfg):
        base = _value(results, row, BASELINE) if BASELINE in cfg.loops else None
        better = "higher is better" if row.higher_is_better else "lower is better"
        cells = [row.label, f"{row.unit} ({better})"]
        for lp in cfg.loops:
            v = _value(results, row, lp)
            if v is None:
                errors = results.get((row.key, lp), {}).get("errors") or []
                cells.append("error: " + " ".join(str(errors[-1]).split())[:60] if errors
                             else "not run")
            else:
                cells.append(_fmt(row, v))
        for lp in others:
            cells.append(format_ratio(_speed_ratio(row, _value(results, row, lp), base)))
        table.append(cells)
    versions = meta.get("versions", {})
    out = ["## The asyncio face: broomio.asyncio vs asyncio and uvloop", ""]
    out.append(
        f"Python {meta.get('python', '?')} on {meta.get('platform', '?')}, "
        f"{meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', 'unknown CPU')}). "
        + ", ".join(f"{LOOP_DISTS[lp]} {versions.get(LOOP_DISTS[lp], '?')}" for lp in cfg.loops)
        + ".")
    out.append(
        f"Servers pinned to CPU {cfg.server_cpu}, load generators (the C echo loadgen, wrk) "
        f"to CPU {cfg.client_cpu}; echo: {cfg.warmup:g} s warm-up + {cfg.duration:g} s "
        f"measured per run. Best of {cfg.repeat} run{'s' if cfg.repeat != 1 else ''}, each "
        "in a fresh process (echo: by server CPU/msg, both echo numbers come from that run; "
        f"aiohttp: by requests/s). \"vs {BASELINE}\" is a speed ratio: > 1 means better than "
        f"{BASELINE} (more per second, or less server CPU per message/request)."
        + (" **--quick**: short runs." if cfg.quick else ""))
    if interrupted:
        out.append("**Interrupted**: some runs are missing.")
    out.append("")
    out.append(markdown_table(headers, table, ["l", "l"] + ["r"] * (len(headers) - 2)))
    return "\n".join(out)


# --------------------------------------------------------------------------
# Command line (registered by benchmarks/__main__.py).
# --------------------------------------------------------------------------


def add_parser(sub: Any, run: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(
        "aio",
        help="broomio.asyncio vs asyncio and uvloop: echo, call_soon, sleep(0), aiohttp+wrk",
        description=(
            "broomio.asyncio vs stock asyncio and uvloop, every run in a fresh process: echo "
            "servers (asyncio streams and an asyncio Protocol) under the C load generator "
            "(msgs/s, server CPU per message), call_soon callbacks/s, asyncio.sleep(0)/s, and "
            "an aiohttp hello world under wrk (requests/s, server CPU per request). Prints one "
            "Markdown table with speed ratios to uvloop (> 1: better than uvloop)."),
    )
    p.add_argument("--loops", metavar="LIST",
                   help="comma-separated subset of " + ",".join(LOOPS) + " (default: all)")
    p.add_argument("--sizes", metavar="LIST", help="echo message sizes (default: 64,16k)")
    p.add_argument("--repeat", type=int, metavar="N",
                   help="repetitions, best one reported (default: 2; --quick: 1)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="measured seconds per echo/wrk run (default: 3; --quick: 1)")
    p.add_argument("--connections", type=int, default=100, metavar="N",
                   help="echo connections (default: 100)")
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write every raw result to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run, parser=p)


def config_from_args(args: argparse.Namespace) -> AioConfig:
    parser: argparse.ArgumentParser = args.parser
    loops = list(LOOPS)
    if args.loops:
        wanted = [s.strip() for s in args.loops.split(",") if s.strip()]
        bad = [w for w in wanted if w not in LOOPS]
        if bad or not wanted:
            parser.error(f"--loops: choose from {', '.join(LOOPS)}")
        loops = [lp for lp in LOOPS if lp in wanted]
    sizes: list[int] = [64, 16 * 1024]
    if args.sizes:
        try:
            sizes = [echo.parse_size(t) for t in args.sizes.split(",") if t.strip()]
        except ValueError as exc:
            parser.error(f"--sizes: {exc}")
        if not sizes or any(not 1 <= s <= 16 << 20 for s in sizes):
            parser.error("--sizes: each size must be between 1 byte and 16 MiB")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 2)
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    if repeat < 1:
        parser.error("--repeat must be >= 1")
    if not 0 < duration <= 600:
        parser.error("--duration must be > 0 and <= 600 seconds")
    if not 1 <= args.connections <= 10_000:
        parser.error("--connections must be between 1 and 10000")
    server_cpu, client_cpu = echo.pick_cpus(None)
    return AioConfig(loops=tuple(loops), sizes=tuple(dict.fromkeys(sizes)), repeat=repeat,
                     duration=duration, warmup=0.2 if args.quick else 0.5,
                     connections=args.connections, server_cpu=server_cpu,
                     client_cpu=client_cpu,
                     callsoon_n=200_000 if args.quick else 2_000_000,
                     sleep0_n=50_000 if args.quick else 500_000,
                     wrk_connections=50, quick=args.quick)


def run_command(args: argparse.Namespace) -> int:
    """``python -m benchmarks aio``: run, print the table, optionally write JSON."""
    cfg = config_from_args(args)

    def progress(msg: str, end: str = "\n") -> None:
        if not args.quiet:
            print(msg, end=end, file=sys.stderr, flush=True)

    started = time.perf_counter()
    with signals_raise():
        aggregates, interrupted = run_suite(cfg, progress)
    progress(f"done in {time.perf_counter() - started:.1f} s")
    meta = machine_info([LOOP_DISTS[lp] for lp in cfg.loops])
    as_json = {key: agg.to_json() for key, agg in aggregates.items()}
    print(render_report(as_json, cfg, meta, interrupted=interrupted))
    if args.json is not None:
        payload = {"suite": "aio", "meta": meta, "config": vars(cfg),
                   "results": [{"case": key, "loop": loop, **as_json[(key, loop)]}
                               for key, loop in aggregates]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main_child())
