"""Markdown formatting of benchmark results.

Generic helpers (:func:`markdown_table`, number formatting) plus
:func:`render_micro_report` and :func:`render_echo_report`, which turn the
aggregated results into the reports printed by ``python -m benchmarks micro``
and ``python -m benchmarks echo``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .echo import BASELINE, FOREIGN_LOAD_NOTE_PCT, RIVAL, SERVERS, EchoConfig, size_label
from .micro import CASES, CaseSpec, Params

__all__ = [
    "format_ratio",
    "format_value",
    "markdown_table",
    "render_echo_report",
    "render_micro_report",
    "render_summary_table",
    "summary_label",
]

#: Longest error text shown in a table cell (the full text is in the JSON).
MAX_ERROR_CHARS = 90


def _escape(cell: str) -> str:
    """Make ``cell`` safe inside one Markdown table cell."""
    return " ".join(cell.replace("|", "\\|").split())


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """Render a Markdown (GFM) table, padded so it is readable as plain text.

    ``align`` holds one of ``"l"``, ``"r"``, ``"c"`` per column (default: left).
    """
    ncols = len(headers)
    align = list(align or ["l"] * ncols)
    body = [[_escape(c) for c in row] + [""] * (ncols - len(row)) for row in rows]
    head = [_escape(h) for h in headers]
    widths = [max(3, len(head[i]), *(len(r[i]) for r in body)) for i in range(ncols)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i])
            for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rules = []
    for i, a in enumerate(align):
        w = widths[i]
        if a == "r":
            rules.append("-" * (w - 1) + ":")
        elif a == "c":
            rules.append(":" + "-" * (w - 2) + ":")
        else:
            rules.append("-" * w)
    return "\n".join([line(head), "| " + " | ".join(rules) + " |", *(line(r) for r in body)])


def format_value(kind: str, value: float) -> str:
    """Format a measured value: ``rate`` -> ``"1.23 M/s"``, ``ms`` -> ``"3.2 ms"``,
    ``bytes`` -> ``"1,681 B"``."""
    if not math.isfinite(value):
        return str(value)
    if kind == "rate":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}/s"
        return f"{value:.3g} /s"
    if kind == "ms":
        return f"{value:.2f} ms" if abs(value) < 10 else f"{value:.1f} ms"
    if kind == "bytes":
        return f"{value:,.0f} B"
    return f"{value:.4g}"


def format_ratio(ratio: float) -> str:
    """``12.34`` -> ``"12.3x"``, ``1.634`` -> ``"1.63x"``, ``0.4812`` -> ``"0.48x"``."""
    if not math.isfinite(ratio):
        return "n/a"
    return f"{ratio:.1f}x" if abs(ratio) >= 10 else f"{ratio:.2f}x"


def _short_error(error: str, limit: int = MAX_ERROR_CHARS) -> str:
    error = " ".join(error.split())
    if len(error) > limit:
        error = error[: limit - 3] + "..."
    return error


def ratio_to_baseline(value: float, baseline: float | None) -> float:
    """``value / baseline``; NaN when there is no usable baseline."""
    if baseline is None or baseline <= 0 or not math.isfinite(baseline):
        return math.nan
    return value / baseline


def target_status(spec: CaseSpec, value: float | None, ratio: float) -> str:
    """``"met"``, ``"not met"`` or ``"n/a"`` for the issue's target (informational only)."""
    op, bound = spec.target_rule
    if value is None:
        return "n/a"
    if op == "ratio>=":
        if math.isnan(ratio):
            return "n/a"
        return "met" if ratio >= bound else "not met"
    if op == "<":
        return "met" if value < bound else "not met"
    if op == "<=":
        return "met" if value <= bound else "not met"
    return "n/a"


def _cell(spec: CaseSpec, result: Mapping[str, Any], baseline: float | None, is_baseline: bool,
          baseline_name: str) -> str:
    """One table cell: best value, ratio to the baseline, and/or the error."""
    best = result.get("best")
    errors: list[str] = list(result.get("errors", []))
    attempts = len(result.get("runs", [])) + len(errors)
    if best is None:
        if errors:
            return "error: " + _short_error(errors[-1])
        return "not run"
    value = float(best["value"])
    text = format_value(spec.kind, value)
    if not is_baseline:
        ratio = ratio_to_baseline(value, baseline)
        text += f" ({format_ratio(ratio)} {baseline_name})"
    if errors:
        text += f" [{len(errors)} of {attempts} runs failed: {_short_error(errors[-1])}]"
    return text


def render_micro_report(
    results: Mapping[tuple[str, str], Mapping[str, Any]],
    cases: Sequence[str],
    frameworks: Sequence[str],
    meta: Mapping[str, Any],
    *,
    quick: bool,
    repeat: int,
    baseline_name: str = "asyncio",
    specs: Mapping[str, CaseSpec] | None = None,
    title: str = "broomio micro-benchmarks",
) -> str:
    """Render the full Markdown report for ``python -m benchmarks micro`` (or another
    suite whose cases are ``specs``, e.g. ``benchmarks.sync.CASES``).

    ``results[(case, framework)]`` holds ``best`` (a child record or None),
    ``runs`` (successful records) and ``errors`` (strings).
    """
    if specs is None:
        specs = CASES
    headers = ["benchmark", *frameworks]
    rows: list[list[str]] = []
    target_lines: list[str] = []
    for case in cases:
        spec = specs[case]
        params = Params(**next(
            (r["best"]["params"] for r in (results.get((case, fw), {}) for fw in frameworks)
             if r.get("best")),
            vars(spec.quick if quick else spec.full),
        ))
        better = "higher is better" if spec.higher_is_better else "lower is better"
        label = f"{spec.title}: {spec.describe(params)} [{spec.unit}, {better}]"
        base_result = results.get((case, baseline_name), {})
        base_best = base_result.get("best")
        baseline = float(base_best["value"]) if base_best else None
        row = [label]
        for fw in frameworks:
            row.append(_cell(spec, results.get((case, fw), {}), baseline, fw == baseline_name,
                             baseline_name))
        rows.append(row)

        broom = results.get((case, "broomio"), {}).get("best")
        broom_value = float(broom["value"]) if broom else None
        ratio = ratio_to_baseline(broom_value, baseline) if broom_value is not None else math.nan
        if broom_value is None:
            now = "no broomio result"
        elif spec.target_rule[0] == "ratio>=":
            now = f"{format_ratio(ratio)} {baseline_name}"
        else:
            now = format_value(spec.kind, broom_value)
        if "broomio" in frameworks:
            status = target_status(spec, broom_value, ratio)
            target_lines.append(f"- {spec.title}: {spec.target} -- now {now} ({status})")
        else:
            target_lines.append(f"- {spec.title}: {spec.target}")

    out = [f"## {title}", ""]
    out.append(
        f"Python {meta.get('python', '?')} on {meta.get('platform', '?')}, "
        f"{meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', 'unknown CPU')}). "
        + ", ".join(f"{fw} {meta.get('versions', {}).get(fw, '?')}" for fw in frameworks)
        + "."
    )
    out.append(
        f"Best of {repeat} run{'s' if repeat != 1 else ''}; every run is a fresh process. "
        f"Ratios are value / {baseline_name} value, so read them with the row's "
        "\"higher/lower is better\"."
        + (" **--quick sizes**: not comparable with the targets." if quick else "")
    )
    out.append("")
    out.append(markdown_table(headers, rows, ["l"] + ["r"] * len(frameworks)))
    out.append("")
    out.append("Targets (from the issue; informational, never asserted):")
    out.extend(target_lines)
    return "\n".join(out)


# --------------------------------------------------------------------------
# Echo benchmark.
# --------------------------------------------------------------------------

#: Longest error text in the echo table's notes column (the full text is in the JSON).
ECHO_MAX_ERROR_CHARS = 140

#: broomio's CPU/msg must be at most this multiple of the raw C server's (issue #3).
ECHO_TARGET_VS_BASELINE = 1.15


def _best_value(results: Mapping[tuple[str, int], Mapping[str, Any]], server: str,
                size: int) -> float | None:
    """The best (lowest) server CPU/msg of ``server`` at ``size``, or None."""
    best = results.get((server, size), {}).get("best")
    if not best:
        return None
    value = float(best["value"])
    return value if math.isfinite(value) else None


def _us(value: Any) -> str:
    """Microseconds: ``"3.11 us"``, ``"19.7 us"``, ``"313 us"``, ``"2,277 us"``; ``-`` if none."""
    if value is None:
        return "-"
    v = float(value)
    if not math.isfinite(v):
        return "-"
    if v < 10:
        return f"{v:.2f} us"
    return f"{v:.1f} us" if v < 100 else f"{v:,.0f} us"


def _echo_notes(result: Mapping[str, Any], cfg: EchoConfig) -> str:
    """Errors, and other processes' load on the pinned CPUs during the reported run."""
    notes: list[str] = []
    best = result.get("best")
    if best:
        load: Mapping[str, float] = best.get("foreign_load_pct", {})
        busy = [f"{load[role]:.0f}% of CPU {cpu}"
                for role, cpu in (("server_cpu", cfg.server_cpu), ("client_cpu", cfg.client_cpu))
                if load.get(role, 0.0) >= FOREIGN_LOAD_NOTE_PCT]
        if busy:
            notes.append("busy machine: others used " + ", ".join(busy))
    errors: list[str] = list(result.get("errors", []))
    if errors:
        last = _short_error(errors[-1], ECHO_MAX_ERROR_CHARS)
        if best is None:
            notes.append("error: " + last)
        else:
            attempts = len(result.get("runs", [])) + len(errors)
            notes.append(f"{len(errors)} of {attempts} runs failed: {last}")
    return "; ".join(notes)


def _target_line(results: Mapping[tuple[str, int], Mapping[str, Any]], server: str,
                 other: str, sizes: Sequence[int], bound: float, strict: bool,
                 text: str) -> str:
    """One target line: ``server``'s CPU/msg / ``other``'s at each size, against ``bound``
    (``ratio < bound`` if ``strict``, else ``ratio <= bound``)."""
    parts: list[str] = []
    statuses: list[str] = []
    missing: list[str] = []
    for size in sizes:
        mine = _best_value(results, server, size)
        theirs = _best_value(results, other, size)
        if mine is None or theirs is None:
            missing.append(server if mine is None else other)
            parts.append(f"{size_label(size)} n/a (no {missing[-1]} result)")
            statuses.append("n/a")
            continue
        ratio = ratio_to_baseline(mine, theirs)
        statuses.append("met" if (ratio < bound if strict else ratio <= bound) else "not met")
        parts.append(f"{size_label(size)} {format_ratio(ratio)} ({statuses[-1]})")
    if len(missing) == len(sizes) and len(set(missing)) == 1:
        return f"- `{server}` {text}: n/a (no {missing[0]} result)"
    overall = ("n/a" if "n/a" in statuses else
               "not met" if "not met" in statuses else "met")
    return f"- `{server}` {text}: " + ", ".join(parts) + f" -- **{overall}**"


def render_echo_report(
    results: Mapping[tuple[str, int], Mapping[str, Any]],
    cfg: EchoConfig,
    meta: Mapping[str, Any],
    *,
    interrupted: bool = False,
) -> str:
    """Render the Markdown report for ``python -m benchmarks echo``.

    ``results[(server, size)]`` holds ``best`` (the run with the lowest server
    CPU/msg, or None), ``runs`` and ``errors``, as in :class:`_runner.Aggregate`.
    """
    headers = ["size", "server", "msgs/s", "p50", "p99", "server CPU", "client CPU",
               "server CPU/msg", f"vs {BASELINE}", "notes"]
    rows: list[list[str]] = []
    for size in cfg.sizes:
        base = _best_value(results, BASELINE, size)
        for server in cfg.servers:
            result = results.get((server, size), {})
            best = result.get("best")
            notes = _echo_notes(result, cfg)
            if best is None:
                rows.append([size_label(size), server, *(["-"] * 7),
                             notes or ("interrupted" if interrupted else "not run")])
                continue
            value = float(best["value"])
            rows.append([
                size_label(size),
                server,
                format_value("rate", float(best["msgs_per_s"])),
                _us(best.get("p50_us")),
                _us(best.get("p99_us")),
                f"{float(best['server_cpu_pct']):.0f}%",
                f"{float(best['client_cpu_pct']):.0f}%",
                _us(value),
                format_ratio(ratio_to_baseline(value, base)),
                notes,
            ])

    versions = meta.get("versions", {})
    shown = [d for d in dict.fromkeys(SERVERS[s].dist for s in cfg.servers) if d is not None]
    out = ["## broomio echo benchmark", ""]
    out.append(
        f"Python {meta.get('python', '?')} on {meta.get('platform', '?')}, "
        f"{meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', 'unknown CPU')}). "
        + ", ".join(f"{d} {versions.get(d, '?')}" for d in shown) + "."
    )
    same_cpu = cfg.server_cpu == cfg.client_cpu
    out.append(
        f"Server pinned to CPU {cfg.server_cpu}, load generator (C, epoll, one thread) to CPU "
        f"{cfg.client_cpu}"
        + (" -- **the same CPU: msgs/s and latency are meaningless, CPU/msg is still fair**"
           if same_cpu else "")
        + f". {cfg.connections} connections, one message in flight on each (send, wait for "
        f"the whole echo, verify every byte, repeat); {cfg.warmup:g} s warm-up, then "
        f"{cfg.duration:g} s measured. Best of {cfg.repeat} run{'s' if cfg.repeat != 1 else ''} "
        "by server CPU/msg (every number in a row comes from that run); every run starts a "
        "fresh server."
        + (" **--quick**: short runs, not for comparing with the targets." if cfg.quick else "")
    )
    out.append(
        "**server CPU/msg** = the server's user+system CPU time during the measured window / "
        f"round trips completed in it (lower is better); `vs {BASELINE}` divides it by the raw "
        "C server's at the same size. server/client CPU = share of one core used during the "
        "window; a server below ~95% was not the bottleneck. \"busy machine\" = other "
        "processes used the pinned CPUs during that run: Python servers then look costlier."
    )
    if interrupted:
        out.append("**Interrupted**: some runs are missing.")
    out.append("")
    out.append(markdown_table(headers, rows, ["l", "l"] + ["r"] * 7 + ["l"]))
    out.append("")
    broomios = [s for s in cfg.servers if s.startswith("broomio")]
    out.append("Targets (issue #3; informational, never asserted):")
    if not broomios:
        out.append(f"- broomio server CPU/msg <= {ECHO_TARGET_VS_BASELINE:g}x {BASELINE} "
                   f"and < {RIVAL}'s at every size (no broomio server in this run)")
    for server in broomios:
        out.append(_target_line(results, server, BASELINE, cfg.sizes, ECHO_TARGET_VS_BASELINE,
                                False, f"server CPU/msg <= {ECHO_TARGET_VS_BASELINE:g}x "
                                f"{BASELINE}'s at every size"))
        out.append(_target_line(results, server, RIVAL, cfg.sizes, 1.0, True,
                                f"server CPU/msg < {RIVAL}'s at every size"))
    return "\n".join(out)


# --------------------------------------------------------------------------
# Summary of several suites (python -m benchmarks report).
# --------------------------------------------------------------------------


def summary_label(spec: CaseSpec, params: Params) -> str:
    """The row label of one benchmark in the summary table."""
    better = "higher is better" if spec.higher_is_better else "lower is better"
    return f"{spec.title}: {spec.describe(params)} [{spec.unit}, {better}]"


def render_summary_table(
    rows: Sequence[tuple[CaseSpec, Params, Mapping[str, Mapping[str, Any]]]],
    frameworks: Sequence[str],
    baseline_name: str = "asyncio",
) -> str:
    """One Markdown table for benchmarks of several suites: a row per benchmark (its spec,
    the parameters it ran with, and ``results[framework]`` as in
    :func:`render_micro_report`), a column per framework, ratios to ``baseline_name``.
    broomio's cells are bold."""
    table: list[list[str]] = []
    for spec, params, results in rows:
        base_best = results.get(baseline_name, {}).get("best")
        baseline = float(base_best["value"]) if base_best else None
        row = [summary_label(spec, params)]
        for fw in frameworks:
            cell = _cell(spec, results.get(fw, {}), baseline, fw == baseline_name,
                         baseline_name)
            row.append(f"**{cell}**" if fw == "broomio" and results.get(fw, {}).get("best")
                       else cell)
        table.append(row)
    return markdown_table(["benchmark", *frameworks], table, ["l"] + ["r"] * len(frameworks))
