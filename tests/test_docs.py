"""Every ```python block in the tutorial, the docs home page, the migration notes and the
README is a complete program: each is run in a fresh interpreter and must exit 0; when
the block is followed by "Output:" and a ```text block, its stdout must be exactly that.

Convention for the Markdown files (so a fragment can still be shown): fence runnable
programs with ```python, fragments with ```py (not run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "tutorial.md", ROOT / "docs" / "index.md",
        ROOT / "docs" / "migrating.md", ROOT / "docs" / "asyncio.md", ROOT / "README.md"]

BLOCK = re.compile(
    r"^```python\n(?P<code>.*?)^```\n"                       # a runnable program
    r"(?:\s*Output:\s*\n\s*```text\n(?P<output>.*?)^```\n)?",  # optionally, its output
    re.S | re.M,
)


def blocks(path: Path) -> list[tuple[str, str | None, int]]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found.append((m.group("code"), m.group("output"), line))
    return found


CASES = [pytest.param(code, output, id=f"{path.name}:{line}")
         for path in DOCS for code, output, line in blocks(path)]


def test_the_tutorial_has_its_programs() -> None:
    tutorial = blocks(ROOT / "docs" / "tutorial.md")
    assert len(tutorial) >= 9
    # Every tutorial program shows its output, so all of it is checked.
    assert all(output is not None for _, output, _ in tutorial)
    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    assert "serve_tls" in text and "open_tcp_stream" in text and "sleep" in text


def test_no_unrunnable_python_fences() -> None:
    """A ```python fence that the pattern above did not take as a whole block (e.g. a
    missing closing fence) would silently go untested."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        assert text.count("```python\n") == len(blocks(path)), path


@pytest.mark.parametrize("code, output", CASES)
def test_doc_program(code: str, output: str | None, tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONWARNINGS": "error"})
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    if output is not None:
        assert proc.stdout == output
