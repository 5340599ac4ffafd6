"""The PNG chart of ``python -m benchmarks``: one group of bars per benchmark, one bar per
framework, each bar the framework's speed-up over asyncio (log scale, higher is better).

matplotlib is optional: nothing else in the benchmarks needs it, so it is imported only
when a chart is drawn, and a missing matplotlib is reported with the command that
installs it (:class:`ChartUnavailable`) instead of an ImportError traceback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ChartUnavailable", "speedup", "write_chart"]

#: One colour per framework, stable across runs (the same framework is always the same
#: colour); anything else falls back to grey.
COLOURS: Mapping[str, str] = {
    "asyncio": "#9e9e9e",
    "uvloop": "#5b8def",
    "trio": "#f2a541",
    "broomio": "#2e9e5b",
}


class ChartUnavailable(RuntimeError):
    """The chart cannot be drawn (matplotlib is not installed)."""


def speedup(value: float, baseline: float, higher_is_better: bool) -> float:
    """How many times better than the baseline ``value`` is: ``value / baseline`` for
    rates, ``baseline / value`` for times and sizes; NaN when either is unusable."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or value <= 0 or baseline <= 0:
        return math.nan
    return value / baseline if higher_is_better else baseline / value


def write_chart(
    path: Path,
    labels: Sequence[str],
    frameworks: Sequence[str],
    ratios: Mapping[tuple[str, str], float],
    *,
    title: str,
    subtitle: str,
) -> None:
    """Draw ``ratios[(label, framework)]`` (speed-ups over asyncio) as grouped bars.

    Missing or NaN ratios leave a gap (that framework failed that benchmark).
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ChartUnavailable(
            "matplotlib is not installed, so no PNG chart was drawn "
            "(pip install matplotlib; the Markdown table was still written)"
        ) from exc
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    n_fw = len(frameworks)
    width = 0.8 / max(n_fw, 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(labels) + 2), 5.2), dpi=110)
    try:
        top = bottom = 1.0
        for i, fw in enumerate(frameworks):
            xs: list[float] = []
            ys: list[float] = []
            for j, label in enumerate(labels):
                r = ratios.get((label, fw), math.nan)
                if math.isfinite(r) and r > 0:
                    xs.append(j + (i - (n_fw - 1) / 2) * width)
                    ys.append(r)
                    top = max(top, r)
                    bottom = min(bottom, r)
            bars = ax.bar(xs, ys, width, label=fw, color=COLOURS.get(fw, "#cccccc"),
                          edgecolor="black", linewidth=0.4)
            if fw != "asyncio":
                ax.bar_label(bars, labels=[f"{y:.3g}x" for y in ys], fontsize=7, padding=1)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(min(0.1, bottom / 2), top * 2.5)
        ax.set_ylabel("speed-up over asyncio (log scale, higher is better)")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(f"{title}\n{subtitle}", fontsize=10)
        ax.legend(ncols=n_fw, loc="upper left", fontsize=8, frameon=False)
        ax.grid(axis="y", which="major", linewidth=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
