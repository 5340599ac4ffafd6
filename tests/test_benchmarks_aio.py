"""benchmarks/aio.py (``python -m benchmarks aio``): its in-process cases run on every loop
and its report renders (benchmarks are not timed in CI; this only keeps them working)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import aio  # noqa: E402


@pytest.mark.parametrize("loop", aio.LOOPS)
@pytest.mark.parametrize("case", ["callsoon", "sleep0"])
def test_child_case_reports_a_rate(loop, case):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.aio", "--child", case, "--loop", loop,
                           "--n", "2000"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["case"] == case and record["loop"] == loop and record["n"] == 2000
    assert record["value"] > 0


def test_report_has_one_row_per_metric_and_speed_ratios():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    aio.add_parser(sub, lambda args: 0)
    cfg = aio.config_from_args(parser.parse_args(["aio", "--quick", "--sizes", "64"]))
    rec = {"msgs_per_s": 1000.0, "value": 10.0}
    results = {
        ("echo-streams-64", "broomio"): {"best": {"msgs_per_s": 2000.0, "value": 5.0}},
        ("echo-streams-64", "uvloop"): {"best": rec},
        ("callsoon", "broomio"): {"best": {"value": 3e6}},
        ("callsoon", "uvloop"): {"best": {"value": 1e6}},
        ("aiohttp", "asyncio"): {"best": None, "errors": ["wrk is not installed"]},
    }
    text = aio.render_report(results, cfg, {"versions": {}})
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]  # no header
    rows = [r for r in rows if not r.startswith("| ---")]
    assert len(rows) == len(aio.rows_for(cfg)) == 8
    streams_rate = next(r for r in rows if "streams" in r and "msgs/s" in r)
    streams_cpu = next(r for r in rows if "streams" in r and "CPU" in r)
    # Both read as speed vs uvloop: 2x the rate, half the CPU per message.
    assert "2.00x" in streams_rate and "2.00x" in streams_cpu
    assert "3.00x" in next(r for r in rows if "call_soon" in r)
    assert "error: wrk is not installed" in next(r for r in rows if "requests/s" in r)
