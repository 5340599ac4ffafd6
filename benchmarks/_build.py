"""Compile the benchmarks' C programs on first use.

Each program is built once with ``$CC`` (default ``cc``) into
``benchmarks/.build/`` (gitignored), under a name that carries a hash of the
source, the compiler and the flags: editing the source or changing ``CC``
rebuilds, everything else reuses the cached binary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

__all__ = ["BUILD_DIR", "CFLAGS", "BuildError", "build_c_program"]

#: Where the compiled programs are cached.
BUILD_DIR = Path(__file__).resolve().parent / ".build"

#: Flags for every program: the same warnings policy as the engine.
CFLAGS: tuple[str, ...] = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror")


class BuildError(Exception):
    """The compiler is missing or rejected the source; ``output`` holds its messages."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def _first_error(output: str) -> str:
    for line in output.splitlines():
        if "error" in line:
            return line.strip()
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def build_c_program(source: Path) -> Path:
    """The path of ``source`` compiled to an executable, compiling it if needed."""
    cc = os.environ.get("CC", "cc")
    try:
        code = source.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {source}: {exc.strerror}") from None
    key = hashlib.sha256(b"\0".join([code, cc.encode(), " ".join(CFLAGS).encode()]))
    exe = BUILD_DIR / f"{source.stem}-{key.hexdigest()[:16]}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f"{exe.name}.tmp{os.getpid()}")
    cmd = [cc, *CFLAGS, "-o", str(tmp), str(source)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot run the C compiler {cc!r}: {exc}") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        output = proc.stderr + proc.stdout
        raise BuildError(f"{cc} failed on {source.name}: {_first_error(output)}", output)
    os.replace(tmp, exe)  # atomic: a concurrent run sees the old binary or the new one
    for stale in BUILD_DIR.glob(f"{source.stem}-*"):
        if stale != exe and ".tmp" not in stale.name:
            stale.unlink(missing_ok=True)
    return exe
