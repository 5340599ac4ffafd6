"""broomio.socket: async sockets mirroring the stdlib ``socket`` module.

``socket()`` returns an async socket whose I/O methods are awaitable::

    sock = broomio.socket.socket()
    await sock.connect(("127.0.0.1", 8080))
    await sock.send_all(b"hello")
    data = await sock.recv(65536)

The hot operations (recv, recv_into, send, send_all) are C awaitables that try the syscall
first and only wait when it would block.  The stdlib constants are re-exported.
"""

from __future__ import annotations

import errno as _errno
import os as _os
import socket as _stdlib
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

from . import _engine
from ._threads import run_in_thread

for _name in dir(_stdlib):
    if _name.isupper() and not _name.startswith("_"):
        globals()[_name] = getattr(_stdlib, _name)
del _name

error = OSError
gaierror = _stdlib.gaierror
herror = _stdlib.herror
AddressFamily = _stdlib.AddressFamily
SocketKind = _stdlib.SocketKind

_READ, _WRITE = 0, 1


class socket(_engine.SocketCore):
    """An async socket.  I/O methods return awaitables; the rest is synchronous."""

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        if family == -1 and fileno is None:
            family = _stdlib.AF_INET
        if type == -1 and fileno is None:
            type = _stdlib.SOCK_STREAM
        if proto == -1:
            proto = 0
        super().__init__(_stdlib.socket(family, type, proto, fileno))

    @classmethod
    def _wrap(cls, sock: _stdlib.socket) -> socket:
        if not isinstance(sock, _stdlib.socket):
            raise TypeError(f"expected a socket.socket, got {type(sock).__name__}")
        self = cls.__new__(cls)
        _engine.SocketCore.__init__(self, sock)
        return self

    # ---- synchronous ------------------------------------------------------------------

    @property
    def proto(self) -> int:
        return int(self._sock.proto)

    def bind(self, address: Any) -> None:
        self._sock.bind(address)

    def listen(self, backlog: int = 128) -> None:
        self._sock.listen(backlog)

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self._sock.getsockopt(*args)

    def get_inheritable(self) -> bool:
        return bool(self._sock.get_inheritable())

    def set_inheritable(self, inheritable: bool) -> None:
        self._sock.set_inheritable(inheritable)

    def shutdown(self, how: int) -> Awaitable[None]:
        """Shut down one or both directions now; also awaitable (a checkpoint)."""
        self._sock.shutdown(how)
        return _engine._optional_checkpoint()  # dropping it is fine, even in debug mode

    @property
    def closed(self) -> bool:
        return self.fileno() < 0

    def __enter__(self) -> socket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> socket:
        return self

    async def __aexit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<broomio.socket.socket [closed]>"
        return f"<broomio.socket.socket fd={self.fileno()} family={self.family!r} type={self.type!r}>"

    # ---- asynchronous -----------------------------------------------------------------

    async def accept(self) -> tuple[socket, Any]:
        """Wait for a connection; returns (socket, address)."""
        fd, address = await self._io(_READ, self._sock._accept)  # type: ignore[attr-defined]
        conn = _stdlib.socket(self._sock.family, self._sock.type, self._sock.proto, fileno=fd)
        return socket._wrap(conn), address

    async def connect(self, address: Any) -> None:
        """Connect to address (host names are resolved in a worker thread)."""
        address = await _resolve_address(self._sock, address)
        try:
            err = self._sock.connect_ex(address)
            if self._sock.family == _stdlib.AF_UNIX:
                # EAGAIN from a Unix connect means the listener's backlog is full: nothing
                # was started and no readiness event will announce room.  Retry with a
                # backoff, as a blocking connect would wait.
                delay = 0.001
                while err == _errno.EAGAIN:
                    await _engine.sleep(delay)
                    delay = min(2 * delay, 0.1)
                    err = self._sock.connect_ex(address)
            if err in (_errno.EINPROGRESS, _errno.EAGAIN):
                await self._wait(_WRITE)
                err = self._sock.getsockopt(_stdlib.SOL_SOCKET, _stdlib.SO_ERROR)
            else:
                await _engine.checkpoint()
        except BaseException:
            # A half-open connect cannot be resumed: close rather than leave it wedged.
            self.close()
            raise
        if err:
            raise OSError(err, f"connect to {address!r} failed: {_os.strerror(err)}")

    def recvfrom(self, bufsize: int, flags: int = 0) -> Awaitable[tuple[bytes, Any]]:
        return self._io(_READ, self._sock.recvfrom, bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Awaitable[tuple[int, Any]]:
        return self._io(_READ, self._sock.recvfrom_into, buffer, nbytes, flags)

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Awaitable[Any]:
        return self._io(_READ, self._sock.recvmsg, bufsize, ancbufsize, flags)

    def sendto(self, data: Any, *args: Any) -> Awaitable[int]:
        """sendto(data, address) or sendto(data, flags, address)."""
        return self._io(_WRITE, self._sock.sendto, data, *args)

    def sendmsg(self, buffers: Any, *args: Any) -> Awaitable[int]:
        return self._io(_WRITE, self._sock.sendmsg, buffers, *args)

    async def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file with os.sendfile(); returns the number of bytes sent."""
        if count is not None and count <= 0:
            raise ValueError("count must be a positive integer or None")
        in_fd = file.fileno()
        total = 0
        while count is None or total < count:
            chunk = 1 << 20 if count is None else min(1 << 20, count - total)
            sent = await self._io(_WRITE, _os.sendfile, self.fileno(), in_fd, offset + total, chunk)
            if sent == 0:
                break
            total += sent
        if hasattr(file, "seek"):
            file.seek(offset + total)
        return total


SocketType = socket


def wrap_socket(sock: _stdlib.socket) -> socket:
    """The async socket for a stdlib socket (it is switched to non-blocking mode)."""
    return socket._wrap(sock)


def socketpair(family: int = _stdlib.AF_UNIX, type: int = _stdlib.SOCK_STREAM, proto: int = 0) -> tuple[socket, socket]:
    a, b = _stdlib.socketpair(family, type, proto)
    return socket._wrap(a), socket._wrap(b)


def fromfd(fd: int, family: int, type: int, proto: int = 0) -> socket:
    return socket._wrap(_stdlib.fromfd(fd, family, type, proto))


def _numeric_host(host: Any) -> bool:
    if host is None or host == "":
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if not isinstance(host, str):
        return False
    for family in (_stdlib.AF_INET, _stdlib.AF_INET6):
        try:
            _stdlib.inet_pton(family, host.split("%", 1)[0])
            return True
        except (OSError, ValueError):
            pass
    return False


async def getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[tuple[Any, Any, int, str, Any]]:
    """Like socket.getaddrinfo; numeric hosts inline, names in a worker thread."""
    if _numeric_host(host):
        await _engine.checkpoint()
        return _stdlib.getaddrinfo(host, port, family, type, proto, flags | _stdlib.AI_NUMERICHOST)
    return await run_in_thread(
        _stdlib.getaddrinfo, host, port, family, type, proto, flags, cancellable=True
    )


async def getnameinfo(sockaddr: Any, flags: int) -> tuple[str, str]:
    """Like socket.getnameinfo, in a worker thread unless numeric output was asked for."""
    if flags & _stdlib.NI_NUMERICHOST and flags & _stdlib.NI_NUMERICSERV:
        await _engine.checkpoint()
        return _stdlib.getnameinfo(sockaddr, flags)
    return await run_in_thread(_stdlib.getnameinfo, sockaddr, flags, cancellable=True)


async def _resolve_address(sock: _stdlib.socket, address: Any) -> Any:
    if sock.family not in (_stdlib.AF_INET, _stdlib.AF_INET6):
        return address
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"{sock.family.name} address must be a (host, port) tuple, got {address!r}")
    host, port = address[0], address[1]
    if _numeric_host(host) and host not in (None, ""):
        return address
    infos = await getaddrinfo(host, port, sock.family, sock.type, sock.proto)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no addresses")
    resolved = infos[0][4]
    if sock.family == _stdlib.AF_INET6 and len(address) == 4:
        return (resolved[0], resolved[1], address[2], address[3])
    return resolved
