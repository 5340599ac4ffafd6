"""Bad input to the public API: a Python exception, never a crash or a hang.

Two tables:

* ``CASES`` -- explicit wrong types and out-of-range values for the public functions,
  classes and the methods of the objects they return (broomio.__all__, broomio.socket,
  broomio.testing, broomio.from_thread, broomio.lowlevel), each with the exception it
  must raise;
* a sweep: every public callable (enumerated from the modules, so new API is covered
  automatically) called with 1, 2 and 3 copies of each value in ``BAD``, on a running
  loop (its result awaited or entered if it is awaitable or a context manager) and
  outside one.  The call may return or raise any ``Exception``; it must not crash the
  interpreter (faulthandler, enabled by pytest, prints the stack of a segfault) or block
  beyond a short cancel scope (a blocking call must be cancellable; the suite's SIGALRM
  guard catches one that is not).

Policy (docs/reliability.md): wrong type -> TypeError, wrong value -> ValueError (or
OverflowError for integers beyond C ranges), OS-level failure -> OSError; misuse of a
primitive (wrong task, wrong state) -> RuntimeError.

Documented exceptions to the sweep: ``lowlevel.suspend()`` without ``abort_fn`` is
uncancellable by definition (docs/api.md), so it is not called with ``None``; a bool
passed as a file descriptor to ``open_file`` is a descriptor (as with ``open()``), so
``True`` (stdout) is not passed to it.
"""

from __future__ import annotations

import inspect
import math
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

import broomio
import broomio._engine as engine
import broomio.from_thread
import broomio.lowlevel
import broomio.socket as bsocket
import broomio.testing
from broomio import lowlevel
from broomio.testing import MockClock

BIG = 2**70
NAN = float("nan")
INF = float("inf")

#: (label, call, expected exception types).  ``call`` runs inside a task; if it returns
#: an awaitable, that is awaited.
CASES: list[tuple[str, Callable[[], Any], tuple[type[BaseException], ...]]] = [
    # time and cancellation
    ("sleep(str)", lambda: broomio.sleep("1"), (TypeError,)),
    ("sleep(nan)", lambda: broomio.sleep(NAN), (ValueError,)),
    ("sleep(-1)", lambda: broomio.sleep(-1), (ValueError,)),
    ("sleep(None)", lambda: broomio.sleep(None), (TypeError,)),
    ("sleep_until(nan)", lambda: broomio.sleep_until(NAN), (ValueError,)),
    ("sleep_until(object)", lambda: broomio.sleep_until(object()), (TypeError,)),
    ("CancelScope(deadline=nan)", lambda: engine.CancelScope(deadline=NAN), (ValueError,)),
    ("CancelScope(deadline=str)", lambda: engine.CancelScope(deadline="x"), (TypeError,)),
    ("scope.deadline = nan", lambda: setattr(engine.CancelScope(), "deadline", NAN),
     (ValueError,)),
    ("move_on_after(nan)", lambda: broomio.move_on_after(NAN), (ValueError,)),
    ("move_on_after(str)", lambda: broomio.move_on_after("1"), (TypeError,)),
    ("fail_after(-1)", lambda: _enter(broomio.fail_after(-1)), (ValueError,)),
    ("fail_at(nan)", lambda: _enter(broomio.fail_at(NAN)), (ValueError,)),
    # synchronization primitives
    ("Queue(-1)", lambda: engine.Queue(-1), (ValueError,)),
    ("Queue(str)", lambda: engine.Queue("3"), (TypeError,)),
    ("Queue(2**70)", lambda: engine.Queue(BIG), (OverflowError, ValueError)),
    ("Semaphore(-1)", lambda: engine.Semaphore(-1), (ValueError,)),
    ("Semaphore(None)", lambda: engine.Semaphore(None), (TypeError,)),
    ("Semaphore(2, max_value=1)", lambda: engine.Semaphore(2, max_value=1), (ValueError,)),
    ("Semaphore(2**70)", lambda: engine.Semaphore(BIG), (OverflowError, ValueError)),
    ("CapacityLimiter(0)", lambda: engine.CapacityLimiter(0), (ValueError,)),
    ("CapacityLimiter(nan)", lambda: engine.CapacityLimiter(NAN), (ValueError, TypeError)),
    ("CapacityLimiter(-inf)", lambda: engine.CapacityLimiter(-INF), (ValueError, TypeError)),
    ("CapacityLimiter(str)", lambda: engine.CapacityLimiter("2"), (TypeError,)),
    ("limiter.total_tokens = -1", lambda: setattr(engine.CapacityLimiter(1), "total_tokens", -1),
     (ValueError,)),
    ("limiter.release_on_behalf_of(unknown)",
     lambda: engine.CapacityLimiter(1).release_on_behalf_of(object()), (RuntimeError,)),
    ("Lock().release() unheld", lambda: engine.Lock().release(), (RuntimeError,)),
    ("Semaphore(1, max_value=1).release()",
     lambda: engine.Semaphore(1, max_value=1).release(), (ValueError,)),
    ("Queue(1).get_nowait() empty", lambda: engine.Queue(1).get_nowait(), (broomio.WouldBlock,)),
    ("ParkingLot.unpark(-1)", lambda: lowlevel.ParkingLot().unpark(-1), (ValueError,)),
    ("ParkingLot.unpark(str)", lambda: lowlevel.ParkingLot().unpark("1"), (TypeError,)),
    ("Condition(lock=object)", lambda: broomio.Condition(object()), (TypeError,)),
    ("Condition().notify(-1)", lambda: broomio.Condition().notify(-1), (ValueError, RuntimeError)),
    ("ConflictDetector(1)", lambda: engine.ConflictDetector(1), (TypeError,)),
    # loops, tasks, clocks
    ("Loop(backend=bad)", lambda: broomio.Loop(backend="no-such-backend"), (ValueError,)),
    ("Loop(clock=object)", lambda: broomio.Loop(clock=object()), (TypeError,)),
    ("loop.call_soon_threadsafe(1)", lambda: broomio.current_loop().call_soon_threadsafe(1),
     (TypeError,)),
    ("loop.reschedule(None)", lambda: broomio.current_loop().reschedule(None), (TypeError,)),
    ("loop.start_soon(1)", lambda: broomio.current_loop().start_soon(1), (TypeError,)),
    ("loop.start_later(nan, ...)", lambda: _start_later(NAN), (ValueError,)),
    ("loop.wrap_socket(1)", lambda: broomio.current_loop().wrap_socket(1), (TypeError,)),
    ("loop.slow_callback_duration = nan",
     lambda: setattr(broomio.current_loop(), "slow_callback_duration", NAN), (ValueError,)),
    ("MockClock(rate=-1)", lambda: MockClock(rate=-1), (ValueError,)),
    ("MockClock(rate=nan)", lambda: MockClock(rate=NAN), (ValueError,)),
    ("MockClock().jump(-1)", lambda: MockClock().jump(-1), (ValueError,)),
    ("MockClock(autojump_threshold=str)", lambda: MockClock(autojump_threshold="0"),
     (TypeError,)),
    ("wait_all_tasks_blocked(nan)", lambda: broomio.testing.wait_all_tasks_blocked(NAN),
     (ValueError,)),
    ("from_thread.run_sync in the loop thread", lambda: broomio.from_thread.run_sync(len, ""),
     (RuntimeError,)),
    ("from_thread.run(1) in the loop thread", lambda: broomio.from_thread.run(1),
     (RuntimeError, TypeError)),
    ("run_in_thread(1)", lambda: broomio.run_in_thread(1), (TypeError,)),
    ("run_in_thread(limiter=1)", lambda: broomio.run_in_thread(len, "", limiter=1),
     (TypeError,)),
    ("open_nursery().start_soon(1)", lambda: _nursery_start_soon(1), (TypeError,)),
    ("lowlevel.suspend(abort_fn=1)", lambda: lowlevel.suspend(1), (TypeError,)),
    ("lowlevel.wait_readable(-1)", lambda: lowlevel.wait_readable(-1), (ValueError, OSError)),
    ("lowlevel.wait_readable(str)", lambda: lowlevel.wait_readable("0"), (TypeError,)),
    ("lowlevel.notify_closing(str)", lambda: lowlevel.notify_closing("0"), (TypeError,)),
    ("open_signal_receiver(-1)", lambda: _enter(broomio.open_signal_receiver(-1)), (ValueError,)),
    ("open_signal_receiver(str)", lambda: _enter(broomio.open_signal_receiver("INT")),
     (TypeError,)),
    # sockets and streams
    ("socket.recv(-1)", lambda: _pair()[0].recv(-1), (ValueError,)),
    ("socket.recv(str)", lambda: _pair()[0].recv("1"), (TypeError,)),
    ("socket.recv(2**70)", lambda: _pair()[0].recv(BIG), (OverflowError, ValueError)),
    ("socket.recv_into(bytes)", lambda: _pair()[0].recv_into(b"xx"), (TypeError, BufferError)),
    ("socket.recv_into(nbytes > len)", lambda: _pair()[0].recv_into(bytearray(2), 10),
     (ValueError,)),
    ("socket.recv_into(nbytes=-1)", lambda: _pair()[0].recv_into(bytearray(2), -1),
     (ValueError,)),
    ("socket.send(str)", lambda: _pair()[0].send("text"), (TypeError,)),
    ("socket.send_all(None)", lambda: _pair()[0].send_all(None), (TypeError,)),
    ("socket.send_all(non-contiguous)", lambda: _pair()[0].send_all(memoryview(b"abcd")[::2]),
     (TypeError, ValueError, BufferError)),
    ("socket.connect(bad address)", lambda: _bsock().connect("nowhere"),
     (TypeError, OSError)),
    ("socket.sendto(bad address)",
     lambda: _bsock(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", 5), (TypeError,)),
    ("SocketCore(1)", lambda: engine.SocketCore(1), (TypeError,)),  # was AttributeError
    ("SocketCore(True)", lambda: engine.SocketCore(True), (TypeError,)),
    ("SocketCore._from_fd(-1)", lambda: engine.SocketCore._from_fd(-1), (ValueError, OSError)),
    ("StreamCore(1)", lambda: engine.StreamCore(1), (TypeError,)),
    ("SocketStream(stdlib socket)", lambda: broomio.SocketStream(_stdlib_socket()), (TypeError,)),
    ("FdStream(-1)", lambda: broomio.FdStream(-1), (ValueError, OSError)),
    ("FdStream(str)", lambda: broomio.FdStream("0"), (TypeError,)),
    ("stream.receive_some(0)", lambda: _stream().receive_some(0), (ValueError,)),
    ("stream.receive_some(str)", lambda: _stream().receive_some("1"), (TypeError,)),
    ("stream.send_all(str)", lambda: _stream().send_all("text"), (TypeError,)),
    ("stream.read_exactly(-1)", lambda: _stream().read_exactly(-1), (ValueError,)),
    ("stream.read_exactly(1.5)", lambda: _stream().read_exactly(1.5), (TypeError,)),
    ("stream.read_until(b'')", lambda: _stream().read_until(b""), (ValueError,)),
    ("stream.read_until(max_size=0)", lambda: _stream().read_until(b"\n", max_size=0),
     (ValueError,)),
    ("stream.read_line(max_size=-1)", lambda: _stream().read_line(max_size=-1), (ValueError,)),
    ("open_tcp_stream(port=70000)", lambda: broomio.open_tcp_stream("127.0.0.1", 70000),
     (ValueError,)),
    ("open_tcp_stream(host=1)", lambda: broomio.open_tcp_stream(1, 80), (TypeError,)),
    ("open_tcp_stream(delay=nan)",
     lambda: broomio.open_tcp_stream("127.0.0.1", 1, happy_eyeballs_delay=NAN), (ValueError,)),
    ("open_tcp_listeners(-1)", lambda: broomio.open_tcp_listeners(-1), (ValueError,)),
    ("open_tcp_listeners(True)", lambda: broomio.open_tcp_listeners(True), (TypeError,)),
    ("open_tcp_listeners(backlog=str)", lambda: broomio.open_tcp_listeners(0, backlog="1"),
     (TypeError,)),
    ("serve_tcp(workers=0)", lambda: broomio.serve_tcp(_handler, 0, workers=0), (ValueError,)),
    ("open_udp_socket(remote=1)", lambda: broomio.open_udp_socket(remote=1), (TypeError,)),
    ("open_unix_stream(1.5)", lambda: broomio.open_unix_stream(1.5), (TypeError,)),
    ("open_unix_stream(missing)", lambda: broomio.open_unix_stream("/nonexistent/x.sock"),
     (OSError,)),
    ("TLSStream(ssl_context=1)", lambda: broomio.TLSStream(_stream(), 1), (TypeError,)),
    ("serve_tls(ssl_context=None)", lambda: broomio.serve_tls(_handler, 0, None), (TypeError,)),
    ("getaddrinfo(1, 80)", lambda: bsocket.getaddrinfo(1, 80), (TypeError,)),
    ("getnameinfo(1, 0)", lambda: bsocket.getnameinfo(1, 0), (TypeError,)),
    ("socketpair(family=-1)", lambda: bsocket.socketpair(-1), (OSError, ValueError)),
    ("fromfd(-1, ...)", lambda: bsocket.fromfd(-1, socket.AF_INET, socket.SOCK_STREAM),
     (OSError, ValueError)),
    # files, processes
    ("open_file(1.5)", lambda: broomio.open_file(1.5), (TypeError,)),
    ("open_file(bad mode)", lambda: broomio.open_file(os.devnull, "qq"), (ValueError,)),
    ("wrap_file(1)", lambda: broomio.wrap_file(1), (TypeError,)),
    ("run_process(1)", lambda: broomio.run_process(1), (TypeError,)),
    ("run_process([])", lambda: broomio.run_process([]), (ValueError, IndexError)),
    ("run_process(missing)", lambda: broomio.run_process(["/nonexistent/program"]), (OSError,)),
    ("open_process(None)", lambda: broomio.open_process(None), (TypeError,)),
    ("run_in_process(1)", lambda: broomio.run_in_process(1), (TypeError,)),
]


def _enter(cm: Any) -> None:
    with cm:
        pass


async def _handler(stream: Any) -> None:
    pass


async def _nop() -> None:
    pass


def _start_later(delay: float) -> Any:
    coro = _nop()
    try:
        return broomio.current_loop().start_later(delay, coro)
    finally:
        coro.close()


_OPEN: list[Any] = []


def _pair() -> tuple[bsocket.socket, bsocket.socket]:
    a, b = bsocket.socketpair()
    _OPEN.extend((a, b))
    return a, b


def _bsock(*args: Any) -> bsocket.socket:
    s = bsocket.socket(*args)
    _OPEN.append(s)
    return s


def _stream() -> broomio.SocketStream:
    return broomio.SocketStream(_pair()[0])


def _stdlib_socket() -> socket.socket:
    s = socket.socket()
    _OPEN.append(s)
    return s


async def _nursery_start_soon(fn: Any) -> None:
    try:
        async with broomio.open_nursery() as nursery:
            nursery.start_soon(fn)
    except ExceptionGroup as group:  # the body's error comes out of the nursery in a group
        assert len(group.exceptions) == 1
        raise group.exceptions[0] from None


async def _call(fn: Callable[[], Any], timeout: float) -> Any:
    with broomio.move_on_after(timeout):
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        return result


@pytest.mark.parametrize("label,fn,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(label: str, fn: Callable[[], Any],
                          expected: tuple[type[BaseException], ...]) -> None:
    try:
        with pytest.raises(expected):
            broomio.run(_call, fn, 5.0)
    finally:
        while _OPEN:
            _OPEN.pop().close()


async def _serve_unix_empty_path() -> None:
    with broomio.move_on_after(0.05):
        await broomio.serve_unix(_handler, "")


def test_serve_unix_empty_path_does_not_leak_its_listener() -> None:
    # Regression: serve_unix("") (Linux autobinds an abstract address) stat()ed the empty
    # path, failed with FileNotFoundError and leaked the listening socket (a
    # ResourceWarning, an error under this suite's filterwarnings).  Now it serves.
    broomio.run(_serve_unix_empty_path)


# ---------------------------------------------------------------------------
# the sweep

BAD: list[Any] = [None, -1, BIG, NAN, INF, -0.5, "", "\x00", b"\x00", object(), [], True]


def public_callables() -> list[tuple[str, Any]]:
    out = []
    for mod in (broomio, broomio.testing, broomio.from_thread, broomio.lowlevel):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj) and not (isinstance(obj, type) and issubclass(obj, BaseException)):
                out.append((f"{mod.__name__}.{name}", obj))
    for name in ("fromfd", "getaddrinfo", "getnameinfo", "socket", "socketpair", "wrap_socket"):
        out.append((f"broomio.socket.{name}", getattr(bsocket, name)))
    return out


async def _sweep_call(fn: Any, args: list[Any]) -> None:
    with broomio.move_on_after(0.05):
        result = fn(*args)
        if isinstance(result, (socket.socket, bsocket.socket, tuple)):
            _dispose(result)
            return
        if inspect.isawaitable(result):
            result = await result
        if hasattr(result, "__aenter__"):
            async with result:
                pass
        elif hasattr(result, "__enter__") and not isinstance(result, socket.socket):
            with result:
                pass
        _dispose(result)


def _dispose(result: Any) -> None:
    """Close what a call returned (a socket, a pair of them, a loop) or never started."""
    if inspect.iscoroutine(result):
        result.close()
    elif isinstance(result, tuple):
        for item in result:
            _dispose(item)
    elif isinstance(result, (socket.socket, bsocket.socket, broomio.Loop)):
        result.close()


def _skip(name: str, value: Any) -> bool:
    if name.endswith(".suspend") and value is None:
        return True  # uncancellable by definition
    if name.endswith((".open_file", ".wrap_socket", ".fromfd")) and type(value) is bool:
        return True  # True is fd 1 (stdout), which the call would then own and close
    return False


@pytest.mark.parametrize("name,fn", public_callables(), ids=[n for n, _ in public_callables()])
def test_sweep_never_crashes_or_hangs(name: str, fn: Any, tmp_path: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # any file a call creates stays in here
    calls = 0
    for value in BAD:
        if _skip(name, value):
            continue
        for arity in (1, 2, 3):
            args = [value] * arity
            if not name.endswith(".run"):
                try:
                    broomio.run(_sweep_call, fn, args)
                except Exception:
                    pass
            try:
                result = fn(*args)
            except Exception:
                pass
            else:
                _dispose(result)
            calls += 1
    assert calls >= 3 * (len(BAD) - 1)
