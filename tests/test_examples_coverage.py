"""Every example in examples/ is run by some test (CI also runs each one as a script), and
examples that no other test covers are run here with their output checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTS = Path(__file__).resolve().parent


def test_every_example_is_named_by_a_test() -> None:
    """A test file must mention each example's file name (the test that runs it)."""
    test_text = "\n".join(p.read_text(encoding="utf-8") for p in TESTS.glob("test_*.py"))
    missing = [p.name for p in sorted(EXAMPLES.glob("*.py")) if p.name not in test_text]
    assert not missing, f"examples without a test: {missing}"


def test_structured_example() -> None:
    """examples/structured.py: nursery ordering, a failing child, timeouts, start()."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "structured.py")],
                          capture_output=True, text=True, timeout=30, cwd=EXAMPLES,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "finished in order: ['worker-1', 'worker-2', 'worker-0']",
        "caught: ['flaky failed']",
        "moved on after timeout: True",
        "fail_after raised TimeoutError",
        "server started on port 8080",
    ]
