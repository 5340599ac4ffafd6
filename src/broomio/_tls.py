"""TLS over any broomio stream, with ``ssl.MemoryBIO`` (no socket wrapping).

The TLS state machine is ``ssl.SSLObject``; this module moves its ciphertext between two
memory BIOs and the transport stream.  The design follows trio's SSLStream:

* every TLS call goes through ``_retry``: call the SSLObject; ship whatever it wrote to the
  outgoing BIO; if it wants to read, receive from the transport into the incoming BIO; repeat
  until the call completes;
* one task may send while another receives.  Transport sends are serialised by a strict-FIFO
  lock taken right after the outgoing BIO is read (no await in between), so ciphertext goes
  out in the order it was produced.  Transport receives are serialised by a second lock and
  a counter: a task that waited for the receive lock while another task received retries
  its TLS call first instead of receiving again;
* a transport send interrupted half-way (cancellation, error) leaves the peer with a partial
  record: the stream is then *broken* (``BrokenResourceError`` from then on).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ._core import Nursery
from ._engine import (
    BrokenResourceError,
    ClosedResourceError,
    ConflictDetector,
    ParkingLot,
    checkpoint,
)
from ._streams import (
    TASK_STATUS_IGNORED,
    BufferedReceiveMixin,
    Handler,
    _checkpoint_if_cancelled,
    _check_max_bytes,
    _HasStarted,
    open_tcp_stream,
    serve_tcp,
)

__all__ = ["TLSStream", "open_tls_stream", "serve_tls"]

T = TypeVar("T")

DEFAULT_RECEIVE_SIZE = 16384  # one TLS record
SEND_SLICE = 256 * 1024

_log = logging.getLogger("broomio.serve")

_OK, _BROKEN, _CLOSED = "ok", "broken", "closed"


class _FIFOLock:
    """A strict-FIFO lock: release() hands ownership to the first waiter (no barging)."""

    __slots__ = ("_lot", "_held")

    def __init__(self) -> None:
        self._lot = ParkingLot()
        self._held = False

    def locked(self) -> bool:
        return self._held

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        await self._lot.park()  # woken by release(), which handed the lock over

    def release(self) -> None:
        if len(self._lot):
            self._lot.unpark(1)
        else:
            self._held = False


class TLSStream(BufferedReceiveMixin):
    """TLS over ``transport_stream`` (anything with ``receive_some``/``send_all``/``aclose``).

    The handshake runs on the first ``receive_some``/``send_all`` or on ``do_handshake()``;
    a failed handshake raises the ``ssl.SSLError`` itself (``ssl.SSLCertVerificationError``
    for an untrusted certificate or a wrong host name).  After the handshake, TLS protocol
    errors and transport failures raise ``BrokenResourceError``; use after ``aclose()``
    raises ``ClosedResourceError``.  ``receive_some`` returns ``b''`` after the peer's
    close_notify.  TLS cannot half-close, so there is no ``send_eof``.

    ``https_compatible=True`` treats a transport EOF without close_notify as a clean EOF
    (many HTTPS servers close that way); otherwise it is ``BrokenResourceError``.
    """

    def __init__(
        self,
        transport_stream: Any,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        https_compatible: bool = False,
    ) -> None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
        self.transport_stream = transport_stream
        self.server_side = server_side
        self.server_hostname = server_hostname
        self._https_compatible = https_compatible
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ssl_context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._state = _OK
        self._handshook = False
        self._handshake_lock = _FIFOLock()
        self._inner_send_lock = _FIFOLock()
        self._inner_receive_lock = _FIFOLock()
        self._inner_receive_count = 0
        self._init_buffer()
        self._send_conflict = ConflictDetector("another task is already sending on this stream")

    def __repr__(self) -> str:
        side = "server" if self.server_side else "client"
        return f"<broomio.TLSStream {side} {self._state} over {self.transport_stream!r}>"

    # -- information about the connection ----------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    # -- the engine room ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state == _CLOSED:
            raise ClosedResourceError("this TLS stream was closed")
        if self._state == _BROKEN:
            raise BrokenResourceError("this TLS stream is broken")

    async def _send_outgoing(self) -> bool:
        """Ship what the SSLObject wrote, if anything (in production order)."""
        data = self._outgoing.read()
        if not data:
            return False
        await self._inner_send_lock.acquire()
        try:
            await self.transport_stream.send_all(data)
        except BaseException:
            # Some unknown part of a record went out: the stream cannot be resumed.
            if self._state == _OK:
                self._state = _BROKEN
            raise
        finally:
            self._inner_send_lock.release()
        return True

    async def _receive_incoming(self) -> None:
        count = self._inner_receive_count
        await self._inner_receive_lock.acquire()
        try:
            if count != self._inner_receive_count:
                return  # another task received while we waited: retry the TLS call first
            try:
                data = await self.transport_stream.receive_some()
            except (BrokenResourceError, ClosedResourceError, OSError):
                if self._state == _OK:
                    self._state = _BROKEN
                raise
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            self._inner_receive_count += 1
        finally:
            self._inner_receive_lock.release()

    async def _retry(self, fn: Callable[..., T], *args: Any, handshake: bool = False) -> T:
        await _checkpoint_if_cancelled()
        while True:
            want_read = False
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                want_read = True
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._state = _BROKEN
                # Send the alert the SSLObject produced, so the peer learns why.
                try:
                    await self._send_outgoing()
                except (BrokenResourceError, ClosedResourceError, OSError):
                    pass
                if handshake:
                    raise
                raise BrokenResourceError(f"TLS error: {exc}") from exc
            else:
                await self._send_outgoing()
                return result
            if not await self._send_outgoing() and want_read:
                await self._receive_incoming()

    # -- the stream interface ----------------------------------------------------------

    async def do_handshake(self) -> None:
        """Perform the TLS handshake if it has not been done yet (idempotent)."""
        self._check_open()
        if self._handshook:
            await _checkpoint_if_cancelled()
            return
        await self._handshake_lock.acquire()
        try:
            if not self._handshook:
                self._check_open()
                await self._retry(self._ssl.do_handshake, handshake=True)
                self._handshook = True
        finally:
            self._handshake_lock.release()

    def _read(self, max_bytes: int) -> bytes:
        try:
            return self._ssl.read(max_bytes)
        except ssl.SSLZeroReturnError:
            return b""  # close_notify: a clean EOF
        except ssl.SSLEOFError:
            if self._https_compatible:
                return b""
            raise

    async def _receive_raw(self, max_bytes: int) -> bytes:
        self._check_open()
        await self.do_handshake()
        return await self._retry(self._read, max_bytes)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` bytes of plaintext; ``b''`` after the peer's close_notify."""
        return await super().receive_some(_check_max_bytes(max_bytes, DEFAULT_RECEIVE_SIZE))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send every byte of ``data``."""
        with self._send_conflict:
            self._check_open()
            await self.do_handshake()
            if not len(data):
                await _checkpoint_if_cancelled()
                return
            # Encrypt in slices: the outgoing BIO never holds more than one slice of
            # ciphertext, and the peer starts receiving before everything is encrypted.
            view = memoryview(data).cast("B")
            for start in range(0, len(view), SEND_SLICE):
                await self._retry(self._ssl.write, view[start:start + SEND_SLICE])

    async def unwrap(self) -> tuple[Any, bytes]:
        """Close TLS cleanly (close_notify both ways) and return ``(transport_stream,
        leftover)``: the transport, usable again, and bytes received after the peer's
        close_notify."""
        with self._receive_conflict, self._send_conflict:
            self._check_open()
            await self.do_handshake()
            await self._retry(self._ssl.unwrap)
            self._state = _CLOSED
            leftover = self._incoming.read()
            return self.transport_stream, leftover

    async def aclose(self) -> None:
        """Send close_notify (best effort, without waiting for the peer's) and close the
        transport.  Idempotent; tasks blocked on the stream get ClosedResourceError."""
        if self._state == _CLOSED:
            await checkpoint()
            return
        send_close_notify = (
            self._state == _OK and self._handshook and not self._inner_send_lock.locked()
        )
        self._state = _CLOSED
        self._buffer.clear()
        try:
            if send_close_notify:
                try:
                    self._ssl.unwrap()
                except ssl.SSLWantReadError:
                    pass  # our close_notify is written; we do not wait for the peer's
                except (ssl.SSLError, ssl.CertificateError):
                    pass
                try:
                    await self._send_outgoing()
                except (BrokenResourceError, ClosedResourceError, OSError):
                    pass
        finally:
            await self.transport_stream.aclose()

    async def __aenter__(self) -> TLSStream:
        return self

    async def __aexit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_tls_stream(
    host: str | bytes,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    happy_eyeballs_delay: float | None = 0.25,
    https_compatible: bool = False,
) -> TLSStream:
    """Connect with ``open_tcp_stream`` and complete a TLS handshake.

    ``ssl_context`` defaults to ``ssl.create_default_context()`` (certificates and host
    names verified); ``server_hostname`` defaults to ``host``.  A failed handshake closes
    the connection and raises the ``ssl.SSLError``.
    """
    if ssl_context is None:
        ssl_context = ssl.create_default_context()
    if server_hostname is None:
        server_hostname = host.decode("ascii") if isinstance(host, bytes) else host
    tcp = await open_tcp_stream(host, port, happy_eyeballs_delay=happy_eyeballs_delay)
    try:
        tls = TLSStream(
            tcp, ssl_context, server_hostname=server_hostname, https_compatible=https_compatible
        )
        await tls.do_handshake()
    except BaseException:
        tcp.socket.close()
        raise
    return tls


async def serve_tls(
    handler: Handler,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: Nursery | None = None,
    workers: int = 1,
    task_status: _HasStarted = TASK_STATUS_IGNORED,
) -> None:
    """Like ``serve_tcp``, but each handler gets a TLSStream whose handshake has completed.

    A connection whose handshake fails (bad client, rejected certificate, EOF) is closed
    and logged at DEBUG level on the ``broomio.serve`` logger; the server goes on.
    """
    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")

    async def tls_handler(stream: Any) -> None:
        tls = TLSStream(stream, ssl_context, server_side=True)
        try:
            await tls.do_handshake()
        except (ssl.SSLError, ssl.CertificateError, BrokenResourceError, ClosedResourceError,
                OSError) as exc:
            _log.debug("TLS handshake with a client failed: %r", exc)
            await tls.aclose()
            return
        try:
            await handler(tls)
        finally:
            await tls.aclose()

    await serve_tcp(
        tls_handler,
        port,
        host=host,
        backlog=backlog,
        handler_nursery=handler_nursery,
        workers=workers,
        task_status=task_status,
    )
