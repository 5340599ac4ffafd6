"""open_file, AsyncFile, wrap_file and Path."""

import io
import os
import pathlib
import threading

import pytest

from broomio import AsyncFile, Path, move_on_after, open_file, wrap_file

from conftest import run


def test_open_file_read_write_seek_tell(tmp_path):
    target = tmp_path / "f.txt"

    async def main():
        async with await open_file(target, "w+", encoding="utf-8") as f:
            assert isinstance(f, AsyncFile)
            assert f.name == str(target) and f.mode == "w+" and not f.closed
            assert f.encoding == "utf-8" and f.readable() and f.writable() and f.seekable()
            assert await f.write("héllo\n") == 6
            await f.writelines(["a\n", "b\n"])
            await f.flush()
            assert await f.tell() == len("héllo\na\nb\n".encode())
            assert await f.seek(0) == 0
            assert await f.readline() == "héllo\n"
            assert await f.readlines() == ["a\n", "b\n"]
            await f.seek(0)
            assert await f.read(3) == "hél"
            await f.seek(0)
            await f.truncate(3)
            await f.seek(0)
            assert await f.read() == "hé"
            assert isinstance(f.fileno(), int)
        assert f.closed
        await f.aclose()  # idempotent

    run(main)
    assert target.read_text(encoding="utf-8") == "hé"


def test_async_iteration_over_lines(tmp_path):
    target = tmp_path / "lines.txt"
    target.write_text("".join(f"line {i}\n" for i in range(1000)) + "no newline")

    async def main():
        got = []
        async with await open_file(target) as f:
            async for line in f:
                got.append(line)
        return got

    got = run(main)
    assert got == [f"line {i}\n" for i in range(1000)] + ["no newline"]


def test_binary_mode(tmp_path):
    target = tmp_path / "b.bin"

    async def main():
        async with await open_file(target, "wb") as f:
            await f.write(b"\x00\x01\x02rest")
        async with await open_file(target, "rb", buffering=0) as f:
            buf = bytearray(3)
            assert await f.readinto(buf) == 3
            assert await f.read() == b"rest"
        async with await open_file(target, "rb") as f:
            assert await f.read1(2) == b"\x00\x01"
            return [chunk async for chunk in f]

    assert run(main) == [b"\x02rest"]


def test_blocking_calls_run_in_a_worker_thread(tmp_path):
    target = tmp_path / "t"
    target.write_text("x")
    seen = []

    class Spy(io.StringIO):
        def read(self, *args):
            seen.append(threading.get_ident())
            return super().read(*args)

    async def main():
        f = wrap_file(Spy("data"))
        assert await f.read() == "data"
        return threading.get_ident()

    loop_thread = run(main)
    assert seen and seen[0] != loop_thread


def test_open_file_errors_are_the_stdlib_ones(tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await open_file(tmp_path / "missing")
        with pytest.raises(ValueError):
            await open_file(tmp_path / "x", "bogus-mode")
        with pytest.raises(TypeError):
            AsyncFile(42)

    run(main)


def test_file_operations_are_not_abandoned_on_cancel(tmp_path):
    target = tmp_path / "c.txt"

    async def main():
        async with await open_file(target, "w") as f:
            with move_on_after(0) as scope:
                scope.cancel()
                await f.write("never")  # cancelled before it started
            assert scope.cancelled_caught
            await f.write("kept")

    run(main)
    assert target.read_text() == "kept"


def test_path_pure_operations_are_sync_and_return_broomio_paths():
    p = Path("/a/b") / "c.txt"
    assert isinstance(p, Path) and isinstance(p, pathlib.PurePath)
    assert str(p) == "/a/b/c.txt" and p.name == "c.txt" and p.suffix == ".txt"
    assert isinstance(p.parent, Path) and isinstance(p.with_suffix(".md"), Path)
    assert os.fspath(p) == "/a/b/c.txt"
    assert repr(p) == "broomio.Path('/a/b/c.txt')"
    assert p == Path("/a/b/c.txt")


def test_path_async_methods(tmp_path):
    base = Path(tmp_path)

    async def main():
        d = base / "dir"
        await d.mkdir()
        assert await d.exists() and await d.is_dir() and not await d.is_file()
        f = d / "x.txt"
        assert await f.write_text("text") == 4
        assert await f.read_text() == "text"
        await (d / "y.bin").write_bytes(b"\x00")
        assert await (d / "y.bin").read_bytes() == b"\x00"
        assert (await f.stat()).st_size == 4
        names = sorted(p.name for p in await d.iterdir())
        assert names == ["x.txt", "y.bin"]
        assert all(isinstance(p, Path) for p in await d.iterdir())
        assert [p.name for p in await d.glob("*.txt")] == ["x.txt"]
        assert [p.name for p in await base.rglob("*.bin")] == ["y.bin"]
        async with await f.open() as fh:
            assert await fh.read() == "text"
        resolved = await f.resolve()
        assert isinstance(resolved, Path) and await resolved.samefile(f)
        link = d / "link"
        await link.symlink_to(f)
        assert await link.is_symlink() and await link.readlink() == f
        moved = await f.rename(d / "z.txt")
        assert isinstance(moved, Path) and not await f.exists()
        await moved.unlink()
        await link.unlink()
        await (d / "y.bin").unlink()
        await (d / "missing").unlink(missing_ok=True)
        with pytest.raises(FileNotFoundError):
            await (d / "missing").unlink()
        await d.rmdir()
        assert not await d.exists()
        assert await Path.cwd() == Path(os.getcwd())
        assert isinstance(await Path.home(), Path)
        await (base / "t").touch()
        assert await (base / "t").exists()

    run(main)
