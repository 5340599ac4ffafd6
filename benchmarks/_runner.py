"""Run benchmark cases in fresh child processes and keep the best result.

Nothing here knows what a case measures: a child is any command that prints
one JSON line (a record with ``value``, or one with ``error``).  A crash, a
non-zero exit, garbage output or a timeout all become an error string, so one
broken framework never stops the whole run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Aggregate",
    "ChildOutcome",
    "REPO_ROOT",
    "last_line",
    "machine_info",
    "parse_json_line",
    "run_child",
    "signal_name",
    "text_tail",
]

#: The directory that holds the ``benchmarks`` package: children run from here
#: so ``python -m benchmarks.micro`` resolves, whatever the caller's cwd.
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ChildOutcome:
    """What one child process produced: a ``record`` or an ``error``."""

    record: dict[str, Any] | None
    error: str | None
    wall: float
    #: The end of the child's stderr when it failed (tracebacks, faulthandler dumps).
    stderr_tail: str = ""


@dataclass
class Aggregate:
    """All repetitions of one (case, framework) pair and the best of them."""

    higher_is_better: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stderr_tails: list[str] = field(default_factory=list)

    def add(self, outcome: ChildOutcome) -> None:
        """Record one repetition."""
        if outcome.record is not None:
            self.runs.append(outcome.record)
        else:
            self.errors.append(outcome.error or "unknown error")
            self.stderr_tails.append(outcome.stderr_tail)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best successful run (max value if higher is better, else min)."""
        if not self.runs:
            return None
        pick = max if self.higher_is_better else min
        return pick(self.runs, key=lambda r: float(r["value"]))

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form used by the report and ``--json``."""
        return {"best": self.best, "runs": self.runs, "errors": self.errors,
                "stderr_tails": self.stderr_tails}


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def text_tail(stderr: str | bytes | None, limit: int = 4000) -> str:
    """The last ``limit`` characters of a child's stderr."""
    if stderr is None:
        return ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    return stderr[-limit:]


def parse_json_line(stdout: str) -> dict[str, Any] | None:
    """The last stdout line that is a JSON object (earlier output is ignored)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def run_child(
    cmd: Sequence[str],
    timeout: float,
    cwd: Path = REPO_ROOT,
    *,
    result_key: str = "value",
    preexec_fn: Callable[[], None] | None = None,
) -> ChildOutcome:
    """Run ``cmd`` and turn whatever happens into a :class:`ChildOutcome`.

    Success is exit status 0 and a JSON line holding ``result_key``.
    ``preexec_fn`` runs in the child before ``exec`` (e.g. to pin it to a CPU).
    """
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec_fn,
        )
    except subprocess.TimeoutExpired as exc:
        tail = text_tail(exc.stderr)
        return ChildOutcome(None, f"timeout after {timeout:g} s", time.perf_counter() - t0, tail)
    except OSError as exc:
        return ChildOutcome(None, f"could not start: {exc}", time.perf_counter() - t0)
    wall = time.perf_counter() - t0

    obj = parse_json_line(proc.stdout)
    if proc.returncode == 0 and obj is not None and result_key in obj:
        return ChildOutcome(obj, None, wall)
    tail = text_tail(proc.stderr)
    if obj is not None and "error" in obj:
        return ChildOutcome(None, str(obj["error"]), wall, tail)
    if proc.returncode < 0:
        what = f"crashed ({signal_name(proc.returncode)})"
    elif proc.returncode > 0:
        what = f"exit status {proc.returncode}"
    else:
        what = "no result printed"
    detail = "" if proc.returncode < 0 else last_line(proc.stderr)
    return ChildOutcome(None, f"{what}: {detail}" if detail else what, wall, tail)


def _version(dist: str) -> str:
    if dist == "asyncio":
        return "(stdlib)"
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    # Importable without distribution metadata (e.g. on PYTHONPATH)?  find_spec
    # only locates the top-level package; it does not import it.
    try:
        found = importlib.util.find_spec(dist) is not None
    except (ImportError, ValueError):
        found = False
    return "(version unknown)" if found else "(not installed)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(frameworks: Sequence[str]) -> dict[str, Any]:
    """Facts about this machine and the frameworks' versions (without importing them)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return {
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "executable": sys.executable,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": cpus,
        "cpu_model": _cpu_model(),
        "versions": {fw: _version(fw) for fw in frameworks},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
