"""Async files and paths, backed by worker threads: ``open_file``, ``AsyncFile``, ``Path``.

Regular files are always "ready" for epoll, so the only way not to block the loop on a slow
disk or a network file system is to do the blocking call in a thread.  Every blocking method
here is one ``run_in_thread`` call (not cancellable: a read or write that has started cannot
be taken back, so a cancelled task waits for it and sees ``Cancelled`` at its next
checkpoint).  Cheap attribute reads (``name``, ``closed``, ``mode``, ...) stay synchronous.

``Path`` is a ``pathlib.PurePosixPath`` subclass: the pure operations (joining, ``name``,
``suffix``, ``with_suffix`` ...) are inherited and return ``broomio.Path`` objects; every
method of ``pathlib.Path`` that touches the file system is an ``async`` method here that runs
the ``pathlib.Path`` method in a thread.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import IO, Any, AnyStr, Generic

from ._threads import run_in_thread


class AsyncFile(Generic[AnyStr]):
    """An async wrapper around a file object; blocking methods run in a worker thread.

    ``async with`` closes it; ``async for line in f`` iterates over lines.  The wrapped
    object is ``f.wrapped``.
    """

    def __init__(self, file: IO[AnyStr]) -> None:
        if not hasattr(file, "read") and not hasattr(file, "write"):
            raise TypeError(f"AsyncFile() expects a file object, not {type(file).__name__}")
        self._file: IO[AnyStr] = file

    @property
    def wrapped(self) -> IO[AnyStr]:
        return self._file

    # -- synchronous attributes

    @property
    def name(self) -> Any:
        return self._file.name

    @property
    def mode(self) -> str:
        return self._file.mode

    @property
    def closed(self) -> bool:
        return self._file.closed

    @property
    def encoding(self) -> str | None:
        return getattr(self._file, "encoding", None)

    @property
    def errors(self) -> str | None:
        return getattr(self._file, "errors", None)

    @property
    def newlines(self) -> Any:
        return getattr(self._file, "newlines", None)

    @property
    def buffer(self) -> Any:
        return self._file.buffer  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return self._file.fileno()

    def readable(self) -> bool:
        return self._file.readable()

    def writable(self) -> bool:
        return self._file.writable()

    def seekable(self) -> bool:
        return self._file.seekable()

    def isatty(self) -> bool:
        return self._file.isatty()

    def __repr__(self) -> str:
        return f"<broomio.AsyncFile wrapping {self._file!r}>"

    # -- blocking methods, in a thread

    async def read(self, size: int = -1) -> AnyStr:
        return await run_in_thread(self._file.read, size)

    async def read1(self, size: int = -1) -> bytes:
        result: bytes = await run_in_thread(self._file.read1, size)  # type: ignore[attr-defined]
        return result

    async def readinto(self, buffer: Any) -> int | None:
        result: int | None = await run_in_thread(self._file.readinto, buffer)  # type: ignore[attr-defined]
        return result

    async def readline(self, size: int = -1) -> AnyStr:
        return await run_in_thread(self._file.readline, size)

    async def readlines(self, hint: int = -1) -> list[AnyStr]:
        return await run_in_thread(self._file.readlines, hint)

    async def write(self, data: AnyStr) -> int:
        return await run_in_thread(self._file.write, data)

    async def writelines(self, lines: Iterable[AnyStr]) -> None:
        await run_in_thread(self._file.writelines, lines)

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return await run_in_thread(self._file.seek, offset, whence)

    async def tell(self) -> int:
        return await run_in_thread(self._file.tell)

    async def truncate(self, size: int | None = None) -> int:
        return await run_in_thread(self._file.truncate, size)

    async def flush(self) -> None:
        await run_in_thread(self._file.flush)

    async def aclose(self) -> None:
        """Close the file (flushing it) in a thread.  Idempotent."""
        if self._file.closed:
            return
        await run_in_thread(self._file.close)

    close = aclose

    async def __aenter__(self) -> AsyncFile[AnyStr]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[AnyStr]:
        return self

    async def __anext__(self) -> AnyStr:
        line = await run_in_thread(self._file.readline)
        if not line:
            raise StopAsyncIteration
        return line


async def open_file(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Callable[[str, int], int] | None = None,
) -> AsyncFile[Any]:
    """``open()`` in a worker thread, returning an :class:`AsyncFile`."""
    f = await run_in_thread(open, file, mode, buffering, encoding, errors, newline, closefd, opener)
    return AsyncFile(f)


def wrap_file(file: IO[AnyStr]) -> AsyncFile[AnyStr]:
    """An :class:`AsyncFile` for an already open file object."""
    return AsyncFile(file)


def _plain(path: Any) -> Any:
    """A broomio.Path argument as a pathlib.Path (whose methods pathlib may call)."""
    return pathlib.Path(path) if isinstance(path, Path) else path


class Path(pathlib.PurePosixPath):
    """A ``pathlib`` path whose file-system methods are async (run in a worker thread)."""

    __slots__ = ()

    def _sync(self) -> pathlib.Path:
        return pathlib.Path(self)

    def __repr__(self) -> str:
        return f"broomio.Path({str(self)!r})"

    # -- constructors

    @classmethod
    async def cwd(cls) -> Path:
        return cls(await run_in_thread(os.getcwd))

    @classmethod
    async def home(cls) -> Path:
        return cls(await run_in_thread(pathlib.Path.home))

    # -- queries

    async def exists(self) -> bool:
        return await run_in_thread(self._sync().exists)

    async def is_file(self) -> bool:
        return await run_in_thread(self._sync().is_file)

    async def is_dir(self) -> bool:
        return await run_in_thread(self._sync().is_dir)

    async def is_symlink(self) -> bool:
        return await run_in_thread(self._sync().is_symlink)

    async def is_mount(self) -> bool:
        return await run_in_thread(self._sync().is_mount)

    async def is_socket(self) -> bool:
        return await run_in_thread(self._sync().is_socket)

    async def is_fifo(self) -> bool:
        return await run_in_thread(self._sync().is_fifo)

    async def stat(self) -> os.stat_result:
        return await run_in_thread(self._sync().stat)

    async def lstat(self) -> os.stat_result:
        return await run_in_thread(self._sync().lstat)

    async def samefile(self, other: Any) -> bool:
        return await run_in_thread(self._sync().samefile, _plain(other))

    async def owner(self) -> str:
        return await run_in_thread(self._sync().owner)

    async def group(self) -> str:
        return await run_in_thread(self._sync().group)

    async def readlink(self) -> Path:
        return Path(await run_in_thread(self._sync().readlink))

    # -- resolving

    async def absolute(self) -> Path:
        return Path(await run_in_thread(self._sync().absolute))

    async def resolve(self, strict: bool = False) -> Path:
        return Path(await run_in_thread(self._sync().resolve, strict))

    async def expanduser(self) -> Path:
        return Path(await run_in_thread(self._sync().expanduser))

    # -- contents

    async def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        return await run_in_thread(self._sync().read_text, encoding, errors)

    async def read_bytes(self) -> bytes:
        return await run_in_thread(self._sync().read_bytes)

    async def write_text(
        self,
        data: str,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> int:
        return await run_in_thread(self._sync().write_text, data, encoding, errors, newline)

    async def write_bytes(self, data: bytes) -> int:
        return await run_in_thread(self._sync().write_bytes, data)

    async def open(
        self,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> AsyncFile[Any]:
        return await open_file(self, mode, buffering, encoding, errors, newline)

    # -- directories

    async def iterdir(self) -> list[Path]:
        """The directory's entries (read completely in the thread)."""
        entries = await run_in_thread(lambda: list(self._sync().iterdir()))
        return [Path(p) for p in entries]

    async def glob(self, pattern: str) -> list[Path]:
        """The matches (collected completely in the thread), like ``pathlib.Path.glob``."""
        matches = await run_in_thread(lambda: list(self._sync().glob(pattern)))
        return [Path(p) for p in matches]

    async def rglob(self, pattern: str) -> list[Path]:
        matches = await run_in_thread(lambda: list(self._sync().rglob(pattern)))
        return [Path(p) for p in matches]

    async def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        await run_in_thread(self._sync().mkdir, mode, parents, exist_ok)

    async def rmdir(self) -> None:
        await run_in_thread(self._sync().rmdir)

    # -- changing

    async def touch(self, mode: int = 0o666, exist_ok: bool = True) -> None:
        await run_in_thread(self._sync().touch, mode, exist_ok)

    async def unlink(self, missing_ok: bool = False) -> None:
        await run_in_thread(self._sync().unlink, missing_ok)

    async def rename(self, target: Any) -> Path:
        return Path(await run_in_thread(self._sync().rename, _plain(target)))

    async def replace(self, target: Any) -> Path:
        return Path(await run_in_thread(self._sync().replace, _plain(target)))

    async def chmod(self, mode: int, *, follow_symlinks: bool = True) -> None:
        await run_in_thread(lambda: self._sync().chmod(mode, follow_symlinks=follow_symlinks))

    async def symlink_to(self, target: Any, target_is_directory: bool = False) -> None:
        await run_in_thread(self._sync().symlink_to, _plain(target), target_is_directory)

    async def hardlink_to(self, target: Any) -> None:
        await run_in_thread(self._sync().hardlink_to, _plain(target))
