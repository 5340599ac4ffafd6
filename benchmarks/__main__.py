"""Command line: ``python -m benchmarks SUBCOMMAND [options]``.

Subcommands:

* ``micro`` -- scheduler micro-benchmarks (spawn+join, switches, sleep
  overhead, memory per sleeping task) for broomio, asyncio, uvloop and trio,
  all measured in the same run; prints a Markdown table.
* ``echo`` -- TCP echo servers (raw C epoll, asyncio, uvloop, trio, broomio)
  under a C load generator; reports msgs/s and server CPU per message.
* ``sync`` -- synchronization benchmarks (queue ping-pong, lock contention,
  event fan-out), same frameworks, same machinery.
* ``threads`` -- worker-thread round trips (``run_in_thread`` vs ``asyncio.to_thread``
  and ``trio.to_thread.run_sync``), same machinery.
* ``soak`` -- reliability soak: a broomio echo server and a broomio client (two
  processes), N concurrent connections (default 10,000) exchanging CRC-checked
  random-size messages for a duration; exits non-zero on any error, lost byte
  or RSS growth beyond the bound (see ``benchmarks/soak.py``).
* ``aio`` -- the asyncio face: ``broomio.asyncio`` vs stock asyncio and uvloop (echo
  with asyncio streams and a Protocol under the C load generator, call_soon throughput,
  ``asyncio.sleep(0)`` rate, an aiohttp hello world under ``wrk``); one table, ratios
  to uvloop.
* ``report`` (the default: plain ``python -m benchmarks``) -- ``micro`` and
  ``sync`` in one run, written to ``benchmarks/results/`` (or ``--out DIR``) as
  a Markdown table (``benchmarks.md``), a PNG bar chart of the speed-ups over
  asyncio (``benchmarks.png``, needs matplotlib) and the raw ``benchmarks.json``.

More suites (e.g. ``sync``) plug in by adding a function that registers a
sub-parser in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from types import ModuleType

from . import aio, echo, micro, soak, sync, threads
from ._build import BuildError, build_c_program
from ._process import signals_raise
from ._runner import Aggregate, machine_info, run_child
from ._chart import ChartUnavailable, speedup, write_chart
from ._table import (
    format_value,
    render_echo_report,
    render_micro_report,
    render_summary_table,
    summary_label,
)


def _split_names(values: list[str] | None, allowed: tuple[str, ...], what: str,
                 parser: argparse.ArgumentParser) -> list[str]:
    """Flatten ``--opt a,b --opt c`` into known names, keeping ``allowed``'s order."""
    if not values:
        return list(allowed)
    wanted = {name.strip() for v in values for name in v.split(",") if name.strip()}
    unknown = sorted(wanted - set(allowed))
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return [name for name in allowed if name in wanted]


#: Suites sharing the runner below: a module with CASES, FRAMEWORKS and
#: child_command(case, framework, params), and the report's title.
_SUITES: dict[str, tuple[ModuleType, str]] = {
    "micro": (micro, "broomio micro-benchmarks"),
    "sync": (sync, "broomio synchronization benchmarks"),
    "threads": (threads, "broomio worker-thread benchmarks"),
}


class _Counter:
    """Progress over a whole invocation: ``[ 7/48, 1m05s elapsed, ~2m10s left]``."""

    def __init__(self, total: int, started: float) -> None:
        self.total = total
        self.step = 0
        self.started = started

    def tick(self) -> str:
        self.step += 1
        elapsed = time.perf_counter() - self.started
        tag = f"[{self.step:>{len(str(self.total))}}/{self.total}, {_duration(elapsed)} elapsed"
        if self.step > 1:
            left = elapsed / (self.step - 1) * (self.total - self.step + 1)
            tag += f", ~{_duration(left)} left"
        return tag + "]"


def _duration(seconds: float) -> str:
    """``65.3`` -> ``"1m05s"``, ``7.2`` -> ``"7s"``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _run_cases(
    suite_name: str,
    cases: list[str],
    frameworks: list[str],
    *,
    repeat: int,
    quick: bool,
    timeout: float,
    progress: Callable[..., None],
    counter: _Counter,
) -> dict[tuple[str, str], Aggregate]:
    """Run every (case, framework) pair of one suite ``repeat`` times, each in a fresh
    process, reporting each run on ``progress``; return the aggregates."""
    suite, _ = _SUITES[suite_name]
    results = {
        (case, fw): Aggregate(suite.CASES[case].higher_is_better)
        for case in cases for fw in frameworks
    }
    # Repetitions are interleaved (round 1 of everything, then round 2, ...) so
    # slow drift of the machine's speed spreads over all frameworks evenly.
    for rep in range(1, repeat + 1):
        for case in cases:
            spec = suite.CASES[case]
            params = spec.quick if quick else spec.full
            for fw in frameworks:
                agg = results[(case, fw)]
                tag = f"{counter.tick()} {suite_name}: {case}/{fw} run {rep}/{repeat}"
                if agg.errors:
                    progress(f"{tag}: skipped (failed before)")
                    continue
                progress(f"{tag} ... ", end="")
                outcome = run_child(suite.child_command(case, fw, params), timeout)
                agg.add(outcome)
                if outcome.record is not None:
                    value = format_value(spec.kind, float(outcome.record["value"]))
                    progress(f"{value} ({outcome.wall:.1f} s wall)")
                else:
                    progress(f"ERROR: {outcome.error}")
    return results


def _add_micro(sub: Any) -> None:
    _add_suite(sub, "micro", "scheduler micro-benchmarks (broomio vs asyncio, uvloop, trio)")


def _add_sync(sub: Any) -> None:
    _add_suite(sub, "sync", "queue, lock and event benchmarks (broomio vs asyncio, uvloop, trio)")


def _add_threads(sub: Any) -> None:
    _add_suite(sub, "threads",
               "run_in_thread round trips (broomio vs asyncio.to_thread, trio.to_thread)")


def _add_suite(sub: Any, name: str, help_text: str) -> None:
    suite, _ = _SUITES[name]
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Run each (benchmark, framework) pair --repeat times, each time in a fresh "
            "process, and print a Markdown table of the best results with ratios to "
            "asyncio. Benchmarks: " + ", ".join(
                f"{c.name} ({c.title})" for c in suite.CASES.values())
        ),
    )
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="repetitions per case, best one reported (default: 3)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes for a CI smoke run (well under a minute)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only these benchmarks (repeatable or comma-separated): "
                        + ", ".join(suite.CASES))
    p.add_argument("--frameworks", action="append", metavar="NAME",
                   help="run only these frameworks (repeatable or comma-separated; "
                        "asyncio is always included as the baseline): "
                        + ", ".join(suite.FRAMEWORKS))
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write every raw result to this JSON file")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="kill a case after S seconds and report it as an error (default: 300)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 if any case failed (results are printed anyway)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run_suite, parser=p, suite_name=name)


def _run_suite(args: argparse.Namespace) -> int:
    """Run the suite described by ``args``; print the report; return the exit code."""
    parser: argparse.ArgumentParser = args.parser
    suite, title = _SUITES[args.suite_name]
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    cases = _split_names(args.only, tuple(suite.CASES), "benchmark", parser)
    frameworks = _split_names(args.frameworks, suite.FRAMEWORKS, "framework", parser)
    if "asyncio" not in frameworks:
        frameworks.insert(0, "asyncio")

    def progress(msg: str, end: str = "\n") -> None:
        if not args.quiet:
            print(msg, end=end, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = _run_cases(args.suite_name, cases, frameworks, repeat=args.repeat,
                         quick=args.quick, timeout=args.timeout, progress=progress,
                         counter=_Counter(args.repeat * len(cases) * len(frameworks), started))
    progress(f"done in {time.perf_counter() - started:.1f} s")

    meta = machine_info(frameworks)
    as_json = {key: agg.to_json() for key, agg in results.items()}
    print(render_micro_report(as_json, cases, frameworks, meta,
                              quick=args.quick, repeat=args.repeat,
                              specs=suite.CASES, title=title))

    if args.json is not None:
        payload = {
            "suite": args.suite_name,
            "meta": meta,
            "config": {"repeat": args.repeat, "quick": args.quick, "timeout": args.timeout,
                       "cases": cases, "frameworks": frameworks},
            "results": [
                {"case": case, "framework": fw, "unit": suite.CASES[case].unit,
                 "higher_is_better": suite.CASES[case].higher_is_better, **as_json[(case, fw)]}
                for case, fw in results
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        progress(f"raw results written to {args.json}")

    failed = any(agg.errors for agg in results.values())
    return 1 if (args.strict and failed) else 0


def _add_echo(sub: Any) -> None:
    p = sub.add_parser(
        "echo",
        help="TCP echo servers under a C load generator (msgs/s, server CPU per message)",
        description=(
            "For each server x message size x repetition: start a fresh server pinned to "
            "one CPU, drive it from a C load generator pinned to another (N connections, "
            "one message in flight per connection, every echoed byte verified), measure the "
            "server's CPU time over the window, stop it. Prints a Markdown table of msgs/s "
            "and server CPU microseconds per message (best run), with ratios to the raw C "
            "server. Servers: " + ", ".join(f"{s.name} ({s.title})"
                                            for s in echo.SERVERS.values())
        ),
    )
    p.add_argument("--servers", action="append", metavar="NAME",
                   help="run only these servers (repeatable or comma-separated; "
                        f"{echo.BASELINE} is always included as the baseline): "
                        + ", ".join(echo.SERVERS))
    p.add_argument("--sizes", metavar="LIST",
                   help="message sizes, comma-separated, e.g. 64,1k,16k (default: "
                        + ",".join(echo.size_label(s).replace(" ", "")
                                   for s in echo.DEFAULT_SIZES) + ")")
    p.add_argument("--repeat", type=int, metavar="N",
                   help="repetitions per case, best one reported (default: 3; --quick: 1)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="measured seconds per run (default: 3; --quick: 1; max 600)")
    p.add_argument("--warmup", type=float, metavar="S",
                   help="uncounted seconds before each window (default: 0.5; --quick: 0.2)")
    p.add_argument("--connections", type=int, default=100, metavar="N",
                   help="concurrent connections (default: 100)")
    p.add_argument("--cpus", metavar="SERVER,CLIENT",
                   help="CPUs to pin the server and the load generator to (default: the "
                        "first two usable CPUs)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: 1 s, 1 repetition, servers "
                        + ",".join(echo.QUICK_SERVERS) + " (well under a minute)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="also write every raw result to this JSON file")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 if any run failed (results are printed anyway)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run_echo, parser=p)


def _echo_config(args: argparse.Namespace) -> echo.EchoConfig:
    """Validate the ``echo`` options and resolve the --quick defaults."""
    parser: argparse.ArgumentParser = args.parser
    quick: bool = args.quick
    if args.servers is None and quick:
        servers = list(echo.QUICK_SERVERS)
    else:
        servers = _split_names(args.servers, tuple(echo.SERVERS), "server", parser)
    if echo.BASELINE not in servers:
        servers.insert(0, echo.BASELINE)
    sizes = list(echo.DEFAULT_SIZES)
    if args.sizes is not None:
        try:
            sizes = [echo.parse_size(t) for t in args.sizes.split(",") if t.strip()]
        except ValueError as exc:
            parser.error(f"--sizes: {exc}")
        if not sizes or any(not 1 <= s <= 16 << 20 for s in sizes):
            parser.error("--sizes: each size must be between 1 byte and 16 MiB")
        sizes = list(dict.fromkeys(sizes))
    repeat = args.repeat if args.repeat is not None else (1 if quick else 3)
    duration = args.duration if args.duration is not None else (1.0 if quick else 3.0)
    warmup = args.warmup if args.warmup is not None else (0.2 if quick else 0.5)
    if repeat < 1:
        parser.error("--repeat must be >= 1")
    if not 0 < duration <= 600:
        parser.error("--duration must be > 0 and <= 600 seconds")
    if not 0 <= warmup <= 60:
        parser.error("--warmup must be between 0 and 60 seconds")
    if not 1 <= args.connections <= 10_000:
        parser.error("--connections must be between 1 and 10000")
    requested: tuple[int, int] | None = None
    if args.cpus is not None:
        try:
            server_cpu, client_cpu = (int(c) for c in args.cpus.split(","))
        except ValueError:
            parser.error("--cpus takes two CPU numbers: SERVER,CLIENT (e.g. 0,1)")
        requested = (server_cpu, client_cpu)
    try:
        server_cpu, client_cpu = echo.pick_cpus(requested)
    except ValueError as exc:
        parser.error(f"--cpus: {exc}")
    return echo.EchoConfig(servers=tuple(servers), sizes=tuple(sizes), repeat=repeat,
                           duration=duration, warmup=warmup, connections=args.connections,
                           server_cpu=server_cpu, client_cpu=client_cpu, quick=quick)


def _run_echo(args: argparse.Namespace) -> int:
    """Run the echo suite described by ``args``; print the report; return the exit code."""
    cfg = _echo_config(args)

    def progress(msg: str, end: str = "\n") -> None:
        if not args.quiet:
            print(msg, end=end, file=sys.stderr, flush=True)

    try:
        loadgen = build_c_program(echo.LOADGEN_SOURCE)
    except BuildError as exc:
        print(f"python -m benchmarks echo: cannot build the load generator: {exc}",
              file=sys.stderr)
        if exc.output:
            print(exc.output, file=sys.stderr)
        return 1
    if cfg.server_cpu == cfg.client_cpu:
        progress(f"warning: only CPU {cfg.server_cpu} is usable: server and load generator "
                 "share it")

    started = time.perf_counter()
    with signals_raise():  # SIGTERM/SIGHUP unwind like Ctrl-C: servers get stopped
        aggregates, interrupted = echo.run_suite(cfg, loadgen, progress)
    progress(f"done in {time.perf_counter() - started:.1f} s")

    dists = [d for d in dict.fromkeys(echo.SERVERS[s].dist for s in cfg.servers) if d]
    meta = machine_info(dists)
    as_json = {key: agg.to_json() for key, agg in aggregates.items()}
    print(render_echo_report(as_json, cfg, meta, interrupted=interrupted))

    if args.json is not None:
        payload = {
            "suite": "echo",
            "meta": meta,
            "config": {**vars(cfg), "interrupted": interrupted},
            "results": [
                {"server": server, "size": size, "unit": "server CPU us/msg",
                 "higher_is_better": False, **as_json[(server, size)]}
                for server, size in aggregates
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        progress(f"raw results written to {args.json}")

    if interrupted:
        return 130
    failed = any(agg.errors for agg in aggregates.values())
    return 1 if (args.strict and failed) else 0


def _add_soak(sub: Any) -> None:
    p = sub.add_parser(
        "soak",
        help="reliability soak: N connections, checksummed messages, RSS bound (exit 1 on fail)",
        description=soak.__doc__.split("\n\n", 1)[0] if soak.__doc__ else None,
    )
    soak.add_arguments(p)
    p.set_defaults(func=_run_soak, parser=p)


def _run_soak(args: argparse.Namespace) -> int:
    cfg = soak.config_from_args(args, args.parser)
    with signals_raise():  # SIGTERM/SIGHUP unwind like Ctrl-C: the children get killed
        result = soak.run_soak(cfg, lambda line: print(line, flush=True))
    return 0 if result.ok else 1


#: Where ``report`` writes its files unless --out says otherwise (gitignored).
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="micro + sync in one run; write a Markdown table and a PNG chart (the default)",
        description=(
            "Run the micro and sync suites (every case, every framework, --repeat times, "
            "each in a fresh process) and write OUT/benchmarks.md (a Markdown table with "
            "the date, the machine and this command), OUT/benchmarks.png (a bar chart of "
            "each framework's speed-up over asyncio; needs matplotlib) and "
            "OUT/benchmarks.json (every run). Progress goes to stderr."
        ),
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="output directory (default: benchmarks/results)")
    p.add_argument("--suites", action="append", metavar="NAME",
                   help="run only these suites (repeatable or comma-separated): "
                        + ", ".join(_SUITES))
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="repetitions per case, best one reported (default: 3)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (a smoke run; not comparable with full-size figures)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="kill a case after S seconds and report it as an error (default: 300)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run_report, parser=p)


def _run_report(args: argparse.Namespace) -> int:
    """Run the suites, write the table, the chart and the JSON; return the exit code."""
    parser: argparse.ArgumentParser = args.parser
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    suite_names = _split_names(args.suites, tuple(_SUITES), "suite", parser)
    frameworks = ["asyncio", "uvloop", "trio", "broomio"]

    def progress(msg: str, end: str = "\n") -> None:
        if not args.quiet:
            print(msg, end=end, file=sys.stderr, flush=True)

    started = time.perf_counter()
    total = sum(len(_SUITES[name][0].CASES) for name in suite_names) * len(frameworks)
    counter = _Counter(total * args.repeat, started)
    progress(f"python -m benchmarks report: {len(suite_names)} suites, {total} "
             f"(benchmark, framework) pairs x {args.repeat} runs, each in a fresh process")
    # One suite after the other (each interleaves its own repetitions).
    rows: list[tuple[Any, Any, dict[str, dict[str, Any]]]] = []
    raw: list[dict[str, Any]] = []
    for name in suite_names:
        suite, _ = _SUITES[name]
        cases = list(suite.CASES)
        results = _run_cases(name, cases, frameworks, repeat=args.repeat, quick=args.quick,
                             timeout=args.timeout, progress=progress, counter=counter)
        for case in cases:
            spec = suite.CASES[case]
            per_fw = {fw: results[(case, fw)].to_json() for fw in frameworks}
            rows.append((spec, spec.quick if args.quick else spec.full, per_fw))
            for fw in frameworks:
                raw.append({"suite": name, "case": case, "framework": fw, "unit": spec.unit,
                            "higher_is_better": spec.higher_is_better, **per_fw[fw]})
    elapsed = time.perf_counter() - started
    progress(f"done in {_duration(elapsed)}")

    meta = machine_info(frameworks)
    command = "python -m benchmarks" + (" " + shlex.join(args.argv) if args.argv else "")
    date = time.strftime("%Y-%m-%d", time.gmtime())
    versions = meta.get("versions", {})
    machine = (f"Python {meta.get('python', '?')} on {meta.get('platform', '?')}, "
               f"{meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', 'unknown CPU')}); "
               + ", ".join(f"{fw} {versions.get(fw, '?')}" for fw in frameworks))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # The chart: each framework's speed-up over asyncio, per benchmark.
    labels: list[str] = []
    ratios: dict[tuple[str, str], float] = {}
    for spec, _params, per_fw in rows:
        labels.append(spec.title.replace(" ", "\n", 1) if len(spec.title) > 12 else spec.title)
        base = per_fw["asyncio"].get("best")
        for fw in frameworks:
            best = per_fw[fw].get("best")
            if base and best:
                ratios[(labels[-1], fw)] = speedup(float(best["value"]), float(base["value"]),
                                                   spec.higher_is_better)
    chart = out / "benchmarks.png"
    chart_note = ""
    try:
        write_chart(chart, labels, frameworks, ratios,
                    title=f"broomio vs asyncio, uvloop and trio ({date}"
                          + (", --quick sizes" if args.quick else "") + ")",
                    subtitle=f"best of {args.repeat}; {meta.get('cpus', '?')} CPUs, "
                             f"Python {platform.python_version()}")
        progress(f"chart written to {chart}")
    except ChartUnavailable as exc:
        chart_note = f"(no chart: {exc})"
        progress(f"warning: {exc}")

    lines = [
        "# broomio benchmarks",
        "",
        f"Run on {date} with `{command}` ({_duration(elapsed)}). {machine}.",
        f"Best of {args.repeat} run{'s' if args.repeat != 1 else ''}, every run a fresh "
        "process; ratios are to asyncio, measured in the same run (read them with each "
        "row's \"higher/lower is better\")."
        + (" **--quick sizes**: a smoke run, not comparable with full-size figures."
           if args.quick else ""),
        "",
        render_summary_table(rows, frameworks),
        "",
        chart_note or f"![speed-up over asyncio per benchmark]({chart.name})",
        "",
    ]
    table = out / "benchmarks.md"
    table.write_text("\n".join(lines), encoding="utf-8")
    (out / "benchmarks.json").write_text(json.dumps(
        {"command": command, "date": date, "meta": meta,
         "config": {"repeat": args.repeat, "quick": args.quick, "suites": suite_names,
                    "labels": [summary_label(s, p) for s, p, _ in rows]},
         "results": raw}, indent=2) + "\n", encoding="utf-8")
    progress(f"table written to {table}")
    print("\n".join(lines))
    return 0


def _add_aio(sub: Any) -> None:
    aio.add_parser(sub, aio.run_command)


#: Sub-parser registrations, one per suite.
SUBCOMMANDS: list[Callable[[Any], None]] = [_add_micro, _add_sync, _add_threads, _add_echo,
                                            _add_soak, _add_aio, _add_report]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen suite."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="broomio benchmarks against asyncio, uvloop and trio.",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    if argv is None:
        argv = sys.argv[1:]
    # Plain `python -m benchmarks` runs the full report; the report records the command
    # exactly as typed.
    args = parser.parse_args(argv or ["report"])
    args.argv = list(argv)
    if args.command is None:
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
