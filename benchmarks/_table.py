"""Markdown formatting of benchmark results.

Generic helpers (:func:`markdown_table`, number formatting) plus
:func:`render_micro_report`, which turns the aggregated micro results into
the table printed by ``python -m benchmarks micro``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .micro import CASES, CaseSpec, Params

__all__ = [
    "format_ratio",
    "format_value",
    "markdown_table",
    "render_micro_report",
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


def _short_error(error: str) -> str:
    error = " ".join(error.split())
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 3] + "..."
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
