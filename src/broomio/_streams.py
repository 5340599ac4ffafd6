"""Byte streams: SocketStream, FdStream (pipes), listeners, TCP/Unix servers, UDP endpoints.

Layering (see docs/architecture.md):

* ``broomio.socket`` -- async sockets; the hot operations are C awaitables.
* ``SocketStream`` -- a connected stream socket with trio's stream contract (``b''`` means
  EOF, ``OSError`` becomes ``BrokenResourceError``, use after close ``ClosedResourceError``)
  plus a small read-ahead buffer for ``read_exactly`` / ``read_until`` / ``read_line``.
* ``TLSStream`` (``_tls.py``) -- TLS over *any* stream with ``receive_some``/``send_all``.
* ``open_tcp_stream`` (happy eyeballs), ``open_tcp_listeners``, ``serve_tcp``,
  ``open_unix_stream``, ``serve_unix``, ``open_udp_socket``.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket as _stdlib_socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Protocol, TypeVar

from . import _engine
from . import socket as bsocket
from ._core import Nursery, move_on_after, open_nursery
from ._engine import (
    Event,
    BrokenResourceError,
    ClosedResourceError,
    ConflictDetector,
    IncompleteReadError,
    ParkingLot,
    StreamCore,
    checkpoint,
    current_effective_deadline,
    sleep,
)

__all__ = [
    "FdStream",
    "SocketStream",
    "SocketListener",
    "UDPSocket",
    "open_tcp_stream",
    "open_tcp_listeners",
    "serve_tcp",
    "serve_listeners",
    "open_unix_stream",
    "open_unix_listener",
    "serve_unix",
    "open_udp_socket",
]

DEFAULT_RECEIVE_SIZE = 65536
DEFAULT_MAX_SIZE = 65536

_log = logging.getLogger("broomio.serve")


# ---------------------------------------------------------------------------
# small internal helpers


async def _checkpoint_if_cancelled() -> None:
    """Raise Cancelled if this task is cancelled, without yielding otherwise."""
    if current_effective_deadline() == -math.inf:
        await checkpoint()


@contextmanager
def _translate_errors(what: str) -> Iterator[None]:
    """OSError from the socket -> BrokenResourceError (the original is the __cause__)."""
    try:
        yield
    except OSError as exc:
        raise BrokenResourceError(f"{what} failed: {exc}") from exc


def _check_max_bytes(max_bytes: int | None, default: int) -> int:
    if max_bytes is None:
        return default
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int or None, not {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    return max_bytes


class _TaskStatusIgnored:
    """The default ``task_status``: started() does nothing."""

    def started(self, value: Any = None) -> None:
        pass

    def __repr__(self) -> str:
        return "TASK_STATUS_IGNORED"


TASK_STATUS_IGNORED: Any = _TaskStatusIgnored()


class _HasStarted(Protocol):
    def started(self, value: Any = ...) -> None: ...


# ---------------------------------------------------------------------------
# SocketStream


class BufferedReceiveMixin:
    """read_exactly / read_until / read_line / ``async for`` on top of ``_receive_raw``.

    Subclasses provide ``_receive_raw(max_bytes)`` (one receive from the underlying
    channel; ``b''`` at EOF) and ``_check_open()``, and call ``_init_buffer()``.
    """

    _buffer: bytearray
    _receive_conflict: ConflictDetector

    def _init_buffer(self) -> None:
        self._buffer = bytearray()
        self._receive_conflict = ConflictDetector(
            "another task is already receiving on this stream"
        )

    def _check_open(self) -> None:
        raise NotImplementedError

    async def _receive_raw(self, max_bytes: int) -> bytes:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` bytes (at least one); ``b''`` once the peer has closed."""
        size = _check_max_bytes(max_bytes, DEFAULT_RECEIVE_SIZE)
        with self._receive_conflict:
            if self._buffer:
                self._check_open()
                await _checkpoint_if_cancelled()
                data = bytes(self._buffer[:size])
                del self._buffer[:size]
                return data
            return await self._receive_raw(size)

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; IncompleteReadError (``.partial``, ``.expected``) at EOF."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._receive_conflict:
            self._check_open()
            if len(self._buffer) >= n:
                await _checkpoint_if_cancelled()
            while len(self._buffer) < n:
                chunk = await self._receive_raw(max(n - len(self._buffer), DEFAULT_RECEIVE_SIZE))
                if not chunk:
                    partial = bytes(self._buffer)
                    self._buffer.clear()
                    raise _incomplete(partial, n)
                self._buffer += chunk
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data

    async def read_until(self, delim: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """Data up to and including ``delim``.

        EOF first: IncompleteReadError (the partial data is ``.partial``).  No ``delim`` in
        the first ``max_size`` bytes: ValueError, and the data stays buffered.
        """
        if not isinstance(delim, (bytes, bytearray)) or not delim:
            raise ValueError("delim must be non-empty bytes")
        max_size = _check_max_bytes(max_size, DEFAULT_MAX_SIZE)
        with self._receive_conflict:
            self._check_open()
            found = await self._fill_until(bytes(delim), max_size)
            if found < 0:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise _incomplete(partial, None)
            data = bytes(self._buffer[:found])
            del self._buffer[:found]
            return data

    async def read_line(self, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """One line including its ``b'\\n'``; at EOF the rest (without one), then ``b''``.

        A line longer than ``max_size`` raises ValueError (the data stays buffered).
        """
        max_size = _check_max_bytes(max_size, DEFAULT_MAX_SIZE)
        with self._receive_conflict:
            self._check_open()
            found = await self._fill_until(b"\n", max_size)
            if found < 0:
                found = len(self._buffer)
            data = bytes(self._buffer[:found])
            del self._buffer[:found]
            return data

    async def _fill_until(self, delim: bytes, max_size: int) -> int:
        """Receive until ``delim`` is buffered; its end offset, or -1 at EOF."""
        start = 0
        received = False
        while True:
            i = self._buffer.find(delim, start)
            if i >= 0:
                end = i + len(delim)
                if end > max_size:
                    break
                if not received:
                    await _checkpoint_if_cancelled()
                return end
            if len(self._buffer) >= max_size:
                break
            start = max(0, len(self._buffer) - len(delim) + 1)
            chunk = await self._receive_raw(DEFAULT_RECEIVE_SIZE)
            received = True
            if not chunk:
                return -1
            self._buffer += chunk
        raise ValueError(f"delimiter {delim!r} not found within max_size={max_size} bytes")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self.receive_some()
        if not data:
            raise StopAsyncIteration
        return data


_S = TypeVar("_S", bound="_Stream")


class _Stream(StreamCore, BufferedReceiveMixin):
    """What SocketStream and FdStream share: the C hot paths (StreamCore), the read helpers
    (BufferedReceiveMixin), closing.  ``self.socket`` is the engine's SocketCore: a
    ``broomio.socket.socket``, or a raw fd core (``SocketCore._from_fd``) for FdStream."""

    def _check_open(self) -> None:
        if self.socket.fileno() < 0:
            raise ClosedResourceError("this stream was closed")

    async def _receive_raw(self, max_bytes: int) -> bytes:
        try:
            data: bytes = await self.socket.recv(max_bytes)  # ClosedResourceError if closed
        except OSError as exc:
            raise BrokenResourceError(f"receive failed: {exc}") from exc
        return data

    #: StreamCore.receive_some's slow path: serve the read-ahead buffer under the detector.
    _receive_buffered = BufferedReceiveMixin.receive_some

    def fileno(self) -> int:
        """The underlying file descriptor (-1 once closed)."""
        return int(self.socket.fileno())

    async def aclose(self) -> None:
        """Close the stream (idempotent); tasks blocked on it get ClosedResourceError."""
        self._buffer.clear()
        self.socket.close()
        await checkpoint()

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SocketStream(_Stream):
    """A byte stream over a connected ``broomio.socket`` stream socket.

    ``receive_some`` returns ``b''`` at EOF; ``OSError``s (ECONNRESET, EPIPE, ...) become
    ``BrokenResourceError``; any operation after ``aclose()`` raises ``ClosedResourceError``.
    One task may send while another receives; two tasks receiving (or sending) at the same
    time get ``BusyResourceError``.  TCP streams get ``TCP_NODELAY``.

    ``receive_some`` and ``send_all``, the per-message hot paths, come from the C base class
    ``StreamCore`` (``_engine/stream.c``): when nothing is buffered and no read helper is
    running they return the C socket operation itself, in stream mode (BusyResourceError
    for a second concurrent receiver/sender, ClosedResourceError once closed,
    BrokenResourceError with the OSError as ``__cause__``), with no Python frame per call.
    Otherwise ``receive_some`` falls back to ``_receive_buffered``.  ``StreamCore.__init__``
    creates the read-ahead buffer and the two conflict detectors.
    """

    socket: bsocket.socket

    def __init__(self, socket: bsocket.socket) -> None:
        if not isinstance(socket, bsocket.socket):
            raise TypeError(f"SocketStream requires a broomio.socket.socket, got {socket!r}")
        if socket.type != _stdlib_socket.SOCK_STREAM:
            raise ValueError("SocketStream requires a SOCK_STREAM socket")
        super().__init__(socket)
        if socket.family in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
            try:
                socket.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<broomio.SocketStream {self.socket!r}>"

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> Any:
        if buffersize:
            return self.socket.getsockopt(level, option, buffersize)
        return self.socket.getsockopt(level, option)

    async def send_eof(self) -> None:
        """Close the sending direction (``shutdown(SHUT_WR)``); receiving still works."""
        with self._send_conflict:
            self._check_open()
            with _translate_errors("send_eof"):
                await self.socket.shutdown(_stdlib_socket.SHUT_WR)


class FdStream(_Stream):
    """A byte stream over a file descriptor that is not a socket: a pipe, a FIFO, a tty.

    It takes ownership of ``fd``: it makes it non-blocking (which affects every descriptor
    sharing its open file description) and closes it in ``aclose()``.  Same contract and
    C hot paths as SocketStream, on the engine's raw fd mode (read()/write()): ``b''`` at
    EOF, ``OSError`` (EPIPE when the reader of a pipe is gone, ...) becomes
    ``BrokenResourceError``, use after close raises ``ClosedResourceError``.  A pipe can
    only signal EOF by being closed, so ``send_eof()`` is ``aclose()``.
    """

    def __init__(self, fd: int) -> None:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"FdStream requires an int file descriptor, got {fd!r}")
        super().__init__(_engine.SocketCore._from_fd(fd))

    def __repr__(self) -> str:
        return f"<broomio.FdStream fd={self.fileno()}>"

    async def send_eof(self) -> None:
        """Close the stream: for a pipe, that is the only way to send EOF."""
        with self._send_conflict:
            await self.aclose()


def _incomplete(partial: bytes, expected: int | None) -> IncompleteReadError:
    if expected is None:
        message = f"the stream ended after {len(partial)} bytes, before the delimiter"
    else:
        message = f"the stream ended after {len(partial)} of {expected} bytes"
    exc = IncompleteReadError(message)
    exc.partial = partial
    exc.expected = expected
    return exc


# ---------------------------------------------------------------------------
# listeners and servers

# accept() errors that concern only the connection being accepted: skip it.
_IGNORED_ACCEPT_ERRNOS = {
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
}
# accept() errors that mean "out of resources": wait a little and try again.
_RESOURCE_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_BACKOFF = 0.1


class SocketListener:
    """A listening stream socket: ``accept()`` returns a SocketStream."""

    def __init__(self, socket: bsocket.socket) -> None:
        if not isinstance(socket, bsocket.socket):
            raise TypeError(f"SocketListener requires a broomio.socket.socket, got {socket!r}")
        if socket.type != _stdlib_socket.SOCK_STREAM:
            raise ValueError("SocketListener requires a SOCK_STREAM socket")
        self.socket = socket
        self._conflict = ConflictDetector("another task is already accepting on this listener")

    def __repr__(self) -> str:
        return f"<broomio.SocketListener {self.socket!r}>"

    async def accept(self) -> SocketStream:
        """The next connection.  Errors about a connection the peer already dropped
        (ECONNABORTED, ...) are skipped; others (EMFILE, ...) are raised."""
        with self._conflict:
            while True:
                if self.socket.closed:
                    raise ClosedResourceError("this listener was closed")
                try:
                    sock, _ = await self.socket.accept()
                except OSError as exc:
                    if exc.errno in _IGNORED_ACCEPT_ERRNOS:
                        continue
                    raise
                return SocketStream(sock)

    async def aclose(self) -> None:
        self.socket.close()
        await checkpoint()

    async def __aenter__(self) -> SocketListener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


Handler = Callable[[Any], Awaitable[Any]]


async def _run_handler(handler: Handler, stream: Any) -> None:
    try:
        await handler(stream)
    finally:
        await stream.aclose()


async def _serve_one_listener(listener: Any, handler_nursery: Nursery, handler: Handler) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ACCEPT_ERRNOS:
                    _log.error(
                        "accept() on %r failed (%s); retrying in %.1f s",
                        listener, errno.errorcode.get(exc.errno, exc.errno), ACCEPT_BACKOFF,
                    )
                    await sleep(ACCEPT_BACKOFF)
                    continue
                if exc.errno in _IGNORED_ACCEPT_ERRNOS:
                    continue
                raise
            if type(stream) is SocketStream:
                # The handler's own coroutine is the task's: a wrapper's `finally:` frame
                # would sit under every resumption (~9% of the work per 64 B echo). The
                # task closes the socket when it finishes, before anyone hears of it.
                try:
                    task = handler_nursery.start_soon(handler, stream)
                except BaseException:
                    stream.socket.close()
                    raise
                task._close_on_exit(stream.socket)
            else:
                handler_nursery.start_soon(_run_handler, handler, stream)


async def serve_listeners(
    handler: Handler,
    listeners: list[Any],
    *,
    handler_nursery: Nursery | None = None,
    task_status: _HasStarted = TASK_STATUS_IGNORED,
) -> None:
    """Accept forever on every listener, one ``handler(stream)`` task per connection.

    The stream is closed when the handler returns.  ``task_status.started(listeners)`` is
    called once every accept loop runs.  The listeners are closed when this returns
    (cancellation, or an error in a handler or an accept loop).
    """
    try:
        async with open_nursery() as nursery:
            target = nursery if handler_nursery is None else handler_nursery
            for listener in listeners:
                nursery.start_soon(_serve_one_listener, listener, target, handler)
            task_status.started(listeners)
    finally:
        for listener in listeners:
            listener.socket.close()


def _backlog(backlog: int | None) -> int:
    if backlog is None:
        return 0xFFFF  # the kernel caps it at net.core.somaxconn
    if isinstance(backlog, bool) or not isinstance(backlog, int):
        raise TypeError(f"backlog must be an int or None, not {type(backlog).__name__}")
    return max(0, min(backlog, 0xFFFF))


def _check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return port


async def open_tcp_listeners(
    port: int, *, host: str | bytes | None = None, backlog: int | None = None
) -> list[SocketListener]:
    """Listening TCP sockets on every address of ``host`` (``None`` or ``""``: all interfaces).

    SO_REUSEADDR is set; IPv6 sockets are IPV6_V6ONLY (so that an IPv4 and an IPv6 socket
    can share the port).  With ``port=0`` every listener gets the same free port.
    """
    _check_port(port)
    listen_backlog = _backlog(backlog)
    infos = await bsocket.getaddrinfo(
        host or None,  # "" (as in bind(("", port))) also means every interface
        port, _stdlib_socket.AF_UNSPEC, _stdlib_socket.SOCK_STREAM, 0, _stdlib_socket.AI_PASSIVE
    )
    targets = []
    seen = set()
    for family, type_, proto, _, sockaddr in infos:
        key = (family, sockaddr)
        if key not in seen:
            seen.add(key)
            targets.append((family, type_, proto, sockaddr))
    if not targets:
        raise OSError(f"getaddrinfo({host!r}, {port}) returned no addresses")
    last_error: OSError | None = None
    for _attempt in range(20):
        try:
            return _bind_listeners(targets, port, listen_backlog)
        except OSError as exc:
            # With port=0, the port picked for the first address may be taken for another
            # family: pick again.
            if port != 0 or exc.errno != errno.EADDRINUSE or len(targets) == 1:
                raise
            last_error = exc
    assert last_error is not None
    raise last_error


def _bind_listeners(targets: list[Any], port: int, backlog: int) -> list[SocketListener]:
    listeners: list[SocketListener] = []
    chosen_port = port
    try:
        for family, type_, proto, sockaddr in targets:
            try:
                sock = bsocket.socket(family, type_, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT and len(targets) > 1:
                    continue  # e.g. no IPv6 in this kernel: serve the other families
                raise
            try:
                sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
                if family == _stdlib_socket.AF_INET6:
                    sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
                if chosen_port != port:
                    sockaddr = (sockaddr[0], chosen_port, *sockaddr[2:])
                sock.bind(sockaddr)
                sock.listen(backlog)
                if chosen_port == 0:
                    chosen_port = sock.getsockname()[1]
            except BaseException:
                sock.close()
                raise
            listeners.append(SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def serve_tcp(
    handler: Handler,
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: Nursery | None = None,
    workers: int = 1,
    task_status: _HasStarted = TASK_STATUS_IGNORED,
) -> None:
    """Serve TCP on ``port`` forever: one ``handler(stream)`` task per connection.

    ``task_status.started(listeners)`` once listening.  ``workers=N > 1``: N forked worker
    processes share the port with SO_REUSEPORT (see ``docs/api.md``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1:
        if handler_nursery is not None:
            raise ValueError("handler_nursery cannot be used with workers > 1")
        from ._workers import serve_tcp_workers

        await serve_tcp_workers(
            handler, port, host=host, backlog=backlog, workers=workers, task_status=task_status
        )
        return
    listeners = await open_tcp_listeners(port, host=host, backlog=backlog)
    await serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


# ---------------------------------------------------------------------------
# happy eyeballs


def _interleave(infos: list[Any]) -> list[Any]:
    """RFC 8305 section 4: alternate address families, starting with the first result's."""
    by_family: dict[int, list[Any]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    out = []
    while queues:
        for queue in list(queues):
            out.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return out


# Indirections the tests replace to observe happy eyeballs (resolver answers, sockets).
_getaddrinfo = bsocket.getaddrinfo
_socket_factory: Callable[[int, int, int], bsocket.socket] = bsocket.socket


async def open_tcp_stream(
    host: str | bytes,
    port: int,
    *,
    happy_eyeballs_delay: float | None = 0.25,
    local_address: str | None = None,
) -> SocketStream:
    """Connect to ``host``:``port`` and return a SocketStream (TCP_NODELAY set).

    Happy eyeballs (RFC 8305): the addresses from getaddrinfo are tried in order, families
    interleaved; a new attempt starts every ``happy_eyeballs_delay`` seconds, or as soon as
    the previous one fails.  The first connection wins; the other attempts are cancelled
    and their sockets closed.  ``happy_eyeballs_delay=None`` tries one address at a time.
    ``local_address``: bind to this local IP before connecting.
    """
    if not isinstance(host, (str, bytes)):
        raise TypeError(f"host must be str or bytes, not {type(host).__name__}")
    _check_port(port)
    delay = math.inf if happy_eyeballs_delay is None else float(happy_eyeballs_delay)
    if math.isnan(delay) or delay < 0:
        raise ValueError(f"happy_eyeballs_delay must be >= 0 or None, got {happy_eyeballs_delay!r}")
    infos = await _getaddrinfo(host, port, 0, _stdlib_socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}, {port}) returned no addresses")
    targets = _interleave(list(infos))

    winner: bsocket.socket | None = None
    errors: list[OSError] = []

    async def attempt(target: Any, failed: Event, nursery: Nursery) -> None:
        nonlocal winner
        family, type_, proto, _, sockaddr = target
        try:
            sock = _socket_factory(family, type_, proto)
        except OSError as exc:
            errors.append(exc)
            failed.set()
            return
        try:
            if local_address is not None:
                if hasattr(bsocket, "IP_BIND_ADDRESS_NO_PORT"):
                    try:
                        sock.setsockopt(_stdlib_socket.IPPROTO_IP, _stdlib_socket.IP_BIND_ADDRESS_NO_PORT, 1)
                    except OSError:
                        pass
                sock.bind((local_address, 0))
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            failed.set()
            return
        except BaseException:
            sock.close()
            raise
        if winner is None:
            winner = sock
            nursery.cancel()
        else:
            sock.close()  # two connected in the same instant: the first one wins

    try:
        async with open_nursery() as nursery:
            for target in targets:
                failed = Event()
                nursery.start_soon(attempt, target, failed, nursery)
                with move_on_after(delay):
                    await failed.wait()
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if winner is None:
        if len(errors) == 1:
            raise errors[0]
        codes = {exc.errno for exc in errors}
        message = f"all {len(errors)} attempts to connect to {host!r}:{port} failed"
        error = OSError(codes.pop(), message) if len(codes) == 1 else OSError(message)
        raise error from ExceptionGroup(message, errors)
    try:
        return SocketStream(winner)
    except BaseException:
        winner.close()
        raise


# ---------------------------------------------------------------------------
# Unix sockets


async def open_unix_stream(path: str | bytes | os.PathLike[str]) -> SocketStream:
    """Connect to the Unix socket at ``path``."""
    sock = bsocket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        await sock.connect(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    return SocketStream(sock)


def _is_stale_socket(path: Any) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    probe = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        return probe.connect_ex(path) == errno.ECONNREFUSED
    finally:
        probe.close()


async def open_unix_listener(
    path: str | bytes | os.PathLike[str], *, backlog: int | None = None
) -> SocketListener:
    """A listening Unix socket at ``path``.  A stale socket file left by a dead server (a
    socket nobody accepts on) is replaced; a live one raises EADDRINUSE."""
    fspath = os.fspath(path)
    sock = bsocket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        try:
            sock.bind(fspath)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not _is_stale_socket(fspath):
                raise
            os.unlink(fspath)
            sock.bind(fspath)
        sock.listen(_backlog(backlog))
    except BaseException:
        sock.close()
        raise
    await checkpoint()
    return SocketListener(sock)


async def serve_unix(
    handler: Handler,
    path: str | bytes | os.PathLike[str],
    *,
    backlog: int | None = None,
    handler_nursery: Nursery | None = None,
    task_status: _HasStarted = TASK_STATUS_IGNORED,
) -> None:
    """Serve the Unix socket ``path`` forever (like serve_tcp); the socket file is removed
    when serving stops."""
    fspath = os.fspath(path)
    listener = await open_unix_listener(fspath, backlog=backlog)
    identity = None
    # An abstract address ("\0name") or an empty path (Linux autobinds an abstract one)
    # has no file to remove afterwards.
    if fspath and not (isinstance(fspath, (str, bytes)) and fspath[:1] in ("\0", b"\0")):
        try:
            st = os.stat(fspath)
        except BaseException:
            listener.socket.close()  # never leak the listener (it used to, on "")
            raise
        identity = (st.st_dev, st.st_ino)
    try:
        await serve_listeners(
            handler, [listener], handler_nursery=handler_nursery, task_status=task_status
        )
    finally:
        if identity is not None:
            try:
                st = os.stat(fspath)
                if (st.st_dev, st.st_ino) == identity:
                    os.unlink(fspath)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# UDP


class UDPSocket:
    """A UDP endpoint: ``sendto``/``recvfrom``, and ``send``/``recv`` when connected.

    Errors are the socket's ``OSError``s (e.g. ConnectionRefusedError on a connected
    endpoint whose peer has no socket); ``ClosedResourceError`` after ``close()``.
    """

    def __init__(self, socket: bsocket.socket) -> None:
        if socket.type != _stdlib_socket.SOCK_DGRAM:
            raise ValueError("UDPSocket requires a SOCK_DGRAM socket")
        self.socket = socket

    def __repr__(self) -> str:
        return f"<broomio.UDPSocket {self.socket!r}>"

    @property
    def local_address(self) -> Any:
        return self.socket.getsockname()

    @property
    def remote_address(self) -> Any:
        try:
            return self.socket.getpeername()
        except OSError:
            return None

    async def sendto(self, data: bytes | bytearray | memoryview, address: Any) -> int:
        """Send one datagram to ``address`` (host names are resolved)."""
        address = await bsocket._resolve_address(self.socket._sock, address)
        return await self.socket.sendto(data, address)

    async def recvfrom(self, bufsize: int = DEFAULT_RECEIVE_SIZE) -> tuple[bytes, Any]:
        """The next datagram and its sender's address."""
        return await self.socket.recvfrom(bufsize)

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send one datagram to the connected peer."""
        return await self.socket.send(data)

    async def recv(self, bufsize: int = DEFAULT_RECEIVE_SIZE) -> bytes:
        """The next datagram from the connected peer."""
        return await self.socket.recv(bufsize)

    def close(self) -> None:
        self.socket.close()

    async def aclose(self) -> None:
        self.socket.close()
        await checkpoint()

    async def __aenter__(self) -> UDPSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def open_udp_socket(local: Any = None, remote: Any = None) -> UDPSocket:
    """A UDP endpoint bound to ``local`` ``(host, port)`` and/or connected to ``remote``.

    The address family follows ``remote`` (else ``local``; else IPv4).
    """
    family = 0
    remote_addr = None
    if remote is not None:
        host, port = _host_port(remote, "remote")
        infos = await bsocket.getaddrinfo(host, port, 0, _stdlib_socket.SOCK_DGRAM)
        family, remote_addr = infos[0][0], infos[0][4]
    local_addr = None
    if local is not None:
        host, port = _host_port(local, "local")
        infos = await bsocket.getaddrinfo(
            host, port, family, _stdlib_socket.SOCK_DGRAM, 0, _stdlib_socket.AI_PASSIVE
        )
        if not infos:
            raise OSError(f"no address for local={local!r} in the remote's family")
        family, local_addr = infos[0][0], infos[0][4]
    sock = bsocket.socket(family or _stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    try:
        if local_addr is not None:
            sock.bind(local_addr)
        if remote_addr is not None:
            await sock.connect(remote_addr)
        else:
            await checkpoint()
    except BaseException:
        sock.close()
        raise
    return UDPSocket(sock)


def _host_port(address: Any, what: str) -> tuple[Any, int]:
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"{what} must be a (host, port) tuple, got {address!r}")
    return address[0], _check_port(address[1])
