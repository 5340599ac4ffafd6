"""The broomio asyncio event loop class.

``EventLoop``'s first base is the C core ``broomio._engine.AioCore`` (ready queue, timer
heap, epoll readiness, the loop iteration); its second is asyncio's Unix selector loop,
which supplies everything built on those primitives (transports, servers, TLS,
subprocesses, signals, executors) unchanged.  The methods here are the small Python
hooks the core calls in the rare cases: debug mode and a callback that raised.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import asyncio.format_helpers
import asyncio.protocols
import asyncio.selector_events
import asyncio.streams
import asyncio.unix_events
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import Context
from typing import Any

from .. import _engine

__all__ = ["EventLoop"]

_engine.aio_setup(asyncio.events.Handle, asyncio.events.TimerHandle, asyncio.Future, asyncio.Task)

_SocketTransportBase: Any = _engine.aio_make_transport_type(
    asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
)


class _SocketTransport(_SocketTransportBase):  # type: ignore[misc]
    """asyncio's TCP/Unix socket transport with its per-message paths in C.

    Inherits asyncio's _SelectorSocketTransport (so close/abort/write_eof/flow control and
    connection_lost ordering are asyncio's own); ``_read_ready`` and ``write`` are C.
    """

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._broomio_buffered = isinstance(protocol, asyncio.protocols.BufferedProtocol)
        # Exactly asyncio's streams protocol: the C reader feeds its StreamReader directly.
        self._broomio_stream = type(protocol) is asyncio.streams.StreamReaderProtocol
        super().set_protocol(protocol)


_Future = asyncio.Future
_check_ssl_socket = asyncio.base_events._check_ssl_socket  # type: ignore[attr-defined]
_logger = asyncio.base_events.logger  # type: ignore[attr-defined]
_format_handle = asyncio.base_events._format_handle  # type: ignore[attr-defined]


def _fd_of(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        fd = int(fileobj.fileno())
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    def __init__(self, selector: _CoreSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._loop._fd_list())

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector.get_key(fileobj)

    def __iter__(self) -> Iterator[int]:
        return iter(self._selector._loop._fd_list())


class _CoreSelector(selectors.BaseSelector):
    """A read-only selector view of the C core's fd table.

    asyncio's transports look at ``loop._selector`` only to describe themselves in
    ``repr()``; registrations go through ``loop._add_reader`` and friends, which are C.
    """

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        raise NotImplementedError("use loop.add_reader() / loop.add_writer()")

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise NotImplementedError("use loop.remove_reader() / loop.remove_writer()")

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        raise NotImplementedError("the broomio loop polls in C")

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fd_of(fileobj)
        key = self._loop._fd_key(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        events, reader, writer = key
        return selectors.SelectorKey(fileobj, fd, events, (reader, writer))

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return _KeyMap(self)

    def close(self) -> None:
        self._loop._close_core()


class EventLoop(_engine.AioCore, asyncio.unix_events._UnixSelectorEventLoop):
    """An asyncio event loop whose core runs on broomio's C engine."""

    def __init__(self) -> None:
        super().__init__(_CoreSelector(self))

    def _make_socket_transport(
        self,
        sock: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> asyncio.Transport:
        transport: asyncio.Transport = _SocketTransport(self, sock, protocol, waiter, extra, server)
        return transport

    # ---- sock_* whose waits run in C -------------------------------------------------

    def _sock_checks(self, sock: socket.socket) -> int:
        _check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:  # type: ignore[attr-defined]
            raise ValueError("the socket must be non-blocking")
        fd = sock.fileno()
        return fd

    async def sock_recv(self, sock: socket.socket, nbytes: int) -> bytes:
        """Receive up to nbytes from a non-blocking socket."""
        fd = self._sock_checks(sock)
        if fd < 0:  # closed: asyncio's path raises the same error as the socket would
            return await super().sock_recv(sock, nbytes)
        r: Any = self._sock_call(fd, 0, nbytes)
        if type(r) is _Future:
            r = await r
        data: bytes = r
        return data

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive into buf from a non-blocking socket; the number of bytes received."""
        fd = self._sock_checks(sock)
        if fd < 0:
            return await super().sock_recv_into(sock, buf)
        r: Any = self._sock_call(fd, 1, buf)
        if type(r) is _Future:
            r = await r
        nbytes: int = r
        return nbytes

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of data on a non-blocking socket."""
        fd = self._sock_checks(sock)
        if fd < 0:
            return await super().sock_sendall(sock, data)
        r: Any = self._sock_call(fd, 2, data)
        if type(r) is _Future:
            await r

    def run_forever(self) -> None:
        """Run until stop() is called (the iterations themselves run in C)."""
        this: Any = self  # asyncio's private helpers are not in typeshed
        this._check_closed()
        this._check_running()
        this._set_coroutine_origin_tracking(this._debug)
        saved_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=this._asyncgen_firstiter_hook,
                finalizer=this._asyncgen_finalizer_hook,
            )
            asyncio.events._set_running_loop(self)
            self._run_until_stopped()
        finally:
            self._stopping = False
            self._thread_id = None  # type: ignore[assignment]
            asyncio.events._set_running_loop(None)
            this._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*saved_hooks)

    # ---- hooks called by the C core --------------------------------------------------

    def _broomio_debug_handle(
        self,
        kind: str,
        when: float | None,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: Context | None,
    ) -> asyncio.Handle:
        """Debug mode: asyncio's checks, and a handle that records where it was made."""
        this: Any = self
        if kind in ("call_soon", "call_at"):
            this._check_thread()
            this._check_callback(callback, kind)
        handle: asyncio.Handle
        if kind == "call_at":
            assert when is not None
            handle = asyncio.TimerHandle(when, callback, args, self, context)
        else:
            handle = asyncio.Handle(callback, args, self, context)
        tb = handle._source_traceback  # type: ignore[attr-defined]
        if tb:
            del tb[-1]
        return handle

    def _broomio_create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """create_task() with a task factory or in debug mode: asyncio's own code."""
        task = asyncio.unix_events._UnixSelectorEventLoop.create_task(self, coro, **kwargs)
        this: Any = self
        tb = getattr(task, "_source_traceback", None)
        if this._task_factory is None and tb:
            del tb[-1]  # this frame: the traceback ends where create_task() was called
        return task

    def _broomio_run_debug(self, handle: asyncio.Handle) -> None:
        """Debug mode: run a callback, timing it against slow_callback_duration."""
        self._current_handle = handle
        try:
            start = self.time()
            handle._run()
            took = self.time() - start
            if took >= self.slow_callback_duration:
                _logger.warning("Executing %s took %.3f seconds", _format_handle(handle), took)
        finally:
            self._current_handle = None  # type: ignore[assignment]

    def _broomio_callback_error(self, handle: asyncio.Handle, exc: BaseException) -> None:
        """A callback raised: report it through the exception handler, as Handle._run does."""
        h: Any = handle
        source = asyncio.format_helpers._format_callback_source(h._callback, h._args)
        context: dict[str, Any] = {
            "message": f"Exception in callback {source}",
            "exception": exc,
            "handle": handle,
        }
        tb = handle._source_traceback  # type: ignore[attr-defined]
        if tb:
            context["source_traceback"] = tb
        self.call_exception_handler(context)
