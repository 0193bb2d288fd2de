"""TLS on a pyftpdlib channel with Python's ssl module, non-blocking, on the shared IOLoop.

A mixin for pyftpdlib's AsyncChat subclasses (control and data channels). It owns only the
TLS state machine and the movement of bytes between the socket and an `ssl.SSLObject`;
FTP semantics stay in `ftp.py`.

Why memory BIOs instead of `SSLSocket`: OpenSSL on a socket does one or two syscalls per
16 KiB record (header, then body) and one `send` per record written. With memory BIOs one
`recv` or `send` of up to 1 MiB carries dozens of records, so bulk transfers spend their time
in AES, not in syscalls and the event loop.

    PLAIN --start_tls--> HANDSHAKE --ok--> ESTABLISHED --close/CCC--> CLOSING --> closed/PLAIN
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .pyftpdlib_adapter import ERRNOS_DISCONNECTED, RetryError, wanted_io_events

__all__ = ["HIGH_WATER", "TlsChannel", "TlsPeerGone", "TlsState", "describe_ssl_error"]

log = logging.getLogger(__name__)

RAW_CHUNK = 1024 * 1024  # bytes per socket recv/send
HIGH_WATER = 1024 * 1024  # encrypted bytes queued before the writer waits for the socket
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)


class TlsState(enum.Enum):
    PLAIN = "plain"
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"


_ALLOWED = {
    TlsState.PLAIN: {TlsState.HANDSHAKE},
    TlsState.HANDSHAKE: {TlsState.ESTABLISHED, TlsState.PLAIN},
    TlsState.ESTABLISHED: {TlsState.CLOSING, TlsState.PLAIN},
    TlsState.CLOSING: {TlsState.PLAIN},
}


def describe_ssl_error(exc: BaseException) -> str:
    """A short human reason for a failed handshake, e.g. 'certificate verify failed: ...'."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or exc.strerror or str(exc)).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class TlsPeerGone(Exception):
    """The TCP connection is closed or reset."""


class TlsChannel:
    """Mixin: put before the pyftpdlib AsyncChat subclass in the bases."""

    tls_state: TlsState = TlsState.PLAIN
    tls: ssl.SSLObject | None = None
    _tls_in: ssl.MemoryBIO | None = None
    _tls_out: ssl.MemoryBIO | None = None
    _tls_head: memoryview | None = None  # the part of a send the socket did not take
    _tls_raw_eof = False
    tls_peer_reset = False  # the raw EOF was a reset (data the peer sent may be lost)
    tls_close_notify = False  # the peer ended TLS with close_notify (a clean end of data)
    _tls_ccc = False
    _tls_timer: Any = None
    _tls_progress = False
    _plain_leftover = b""  # clear text that arrived right behind the peer's close_notify
    _tls_context: ssl.SSLContext | None = None  # until the client's first bytes (see below)
    # True: the SSLObject is made when the ClientHello arrives, not at start_tls, so that
    # `tls_wrap` can decide with what the client asked by then (data connections)
    tls_wrap_on_hello = False
    socket: Any
    ioloop: Any
    connected: bool

    # --- hooks for subclasses

    def tls_established(self) -> None:
        """Called once the handshake completed."""

    def tls_failed(self, reason: str) -> None:
        """Called when the handshake failed; the default closes the connection."""
        self._tls_drop()
        self._tls_hard_close()

    def tls_cleared(self) -> None:
        """Called after CCC brought the connection back to clear text."""

    def tls_wrap(self, context: ssl.SSLContext) -> ssl.SSLObject:
        """Make the server-side SSLObject over the channel's memory BIOs."""
        assert self._tls_in is not None and self._tls_out is not None
        return context.wrap_bio(self._tls_in, self._tls_out, server_side=True)

    def tls_io_events(self) -> int:
        """The IOLoop events the channel wants once TLS has nothing pending."""
        return wanted_io_events(self)

    # --- state

    @property
    def tls_active(self) -> bool:
        return self.tls_state is TlsState.ESTABLISHED

    def _tls_set_state(self, new: TlsState) -> None:
        if new is not self.tls_state and new not in _ALLOWED[self.tls_state]:
            raise RuntimeError(f"illegal TLS transition {self.tls_state.value} -> {new.value}")
        self.tls_state = new

    def _tls_drop(self) -> None:
        self.tls_state = TlsState.PLAIN
        self.tls = None
        self._tls_context = None

    def start_tls(self, context: ssl.SSLContext, timeout: float | None = None) -> None:
        """Switch the connection to TLS as the server side and start the handshake."""
        self._tls_set_state(TlsState.HANDSHAKE)
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls_head = None
        self._tls_raw_eof = False
        if timeout:
            self._tls_timer = self.ioloop.call_later(timeout, self._tls_handshake_timeout)
        if self.tls_wrap_on_hello:
            # first step from the loop, never from the caller: a handshake completing inside
            # the constructor would report to a channel its owner does not know yet
            self._tls_context = context
            self._tls_update_events()
            return
        self.tls = self.tls_wrap(context)
        self._tls_handshake()

    def _tls_handshake_timeout(self) -> None:
        if self.tls_state is TlsState.HANDSHAKE:
            self.tls_failed("handshake timed out")

    def _tls_cancel_timer(self) -> None:
        if self._tls_timer is not None and not self._tls_timer.cancelled:
            self._tls_timer.cancel()
        self._tls_timer = None

    # --- raw socket <-> BIO

    def _tls_fill(self) -> bool:
        """Move what the socket has into the incoming BIO; False when nothing was there."""
        assert self._tls_in is not None
        if self._tls_raw_eof:
            return False
        try:
            data = socket.socket.recv(self.socket, RAW_CHUNK)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return False
            if exc.errno in ERRNOS_DISCONNECTED:
                self.tls_peer_reset = True
                data = b""
            else:
                raise
        if not data:
            self._tls_raw_eof = True
            self._tls_in.write_eof()
            return True  # EOF is news too: the next read reports it
        self._tls_in.write(data)
        return True

    @property
    def tls_backlog(self) -> int:
        """Encrypted bytes waiting for the socket."""
        head = len(self._tls_head) if self._tls_head is not None else 0
        return head + (self._tls_out.pending if self._tls_out is not None else 0)

    def _tls_flush(self) -> bool:
        """Send queued encrypted bytes; True when nothing is left queued."""
        out = self._tls_out
        assert out is not None
        while True:
            head = self._tls_head
            if head is None:
                if not out.pending:
                    return True
                head = memoryview(out.read(RAW_CHUNK))
            try:
                sent = socket.socket.send(self.socket, head)
            except OSError as exc:
                self._tls_head = head
                if exc.errno in _AGAIN:
                    return False
                if exc.errno in ERRNOS_DISCONNECTED:
                    raise TlsPeerGone from exc
                raise
            self._tls_head = head[sent:] if sent < len(head) else None
            if self._tls_head is not None:
                return False

    def _tls_update_events(self) -> None:
        pending = self.ioloop.WRITE if self.tls_backlog else 0
        if self.tls_state is TlsState.ESTABLISHED:
            wants = self.tls_io_events() | pending
        else:  # handshake or shutdown: only TLS's own needs, or the loop would spin
            wants = self.ioloop.READ | pending
        self.modify_ioloop_events(wants)  # type: ignore[attr-defined]

    # --- handshake and shutdown

    def _tls_handshake(self) -> None:
        try:
            if self.tls is None:
                if not self._tls_fill():
                    self._tls_update_events()
                    return
                assert self._tls_context is not None
                self.tls, self._tls_context = self.tls_wrap(self._tls_context), None
            if not self._tls_drive(self.tls.do_handshake):
                return
        except (ssl.SSLError, OSError, TlsPeerGone) as exc:
            self._tls_cancel_timer()
            self._tls_try_flush()
            self.tls_failed(
                describe_ssl_error(exc)
                if not isinstance(exc, TlsPeerGone)
                else "connection closed during the handshake"
            )
            return
        self._tls_cancel_timer()
        self._tls_set_state(TlsState.ESTABLISHED)
        self._tls_try_flush()
        self._tls_update_events()
        self.tls_established()
        if (
            self.tls_state is TlsState.ESTABLISHED
            and self._tls_in is not None
            and (self._tls_in.pending)
        ):
            # the client's first command may have come in the same read as its Finished
            self.handle_read_event()

    def _tls_drive(self, step: Callable[[], object]) -> bool:
        """Run a TLS step (handshake, CCC unwrap) until it completes: True, or False when it
        waits for the peer (the loop's events are then set to come back)."""
        while True:
            try:
                step()
                return True
            except ssl.SSLWantReadError:
                self._tls_flush()
                if not self._tls_fill():
                    self._tls_update_events()
                    return False

    def _tls_try_flush(self) -> None:
        try:
            self._tls_flush()
        except (OSError, TlsPeerGone):
            self._tls_head = None

    def _tls_shutdown(self) -> None:
        """Send close_notify and close, or (CCC) wait for the peer's and go on in clear."""
        assert self.tls is not None
        try:
            if self._tls_ccc:
                if not self._tls_drive(self.tls.unwrap):
                    return
            else:
                with contextlib.suppress(ssl.SSLWantReadError):
                    self.tls.unwrap()  # queues our close_notify; the peer's is not needed
            done = self._tls_flush()
        except (ssl.SSLError, OSError, ValueError, TlsPeerGone):
            self._tls_ccc, done = False, True
            self._tls_head = None
        if not done:
            self._tls_update_events()  # finish sending before closing
            return
        if self._tls_ccc:
            self._tls_ccc = False
            self._tls_cancel_timer()
            assert self._tls_in is not None
            self._plain_leftover = self._tls_in.read()
            self._tls_drop()
            self.modify_ioloop_events(self.tls_io_events())  # type: ignore[attr-defined]
            self.tls_cleared()
        else:
            self._tls_drop()
            self._tls_hard_close()

    def clear_command_channel(self, timeout: float | None = None) -> None:
        """CCC: end TLS on this connection but keep the TCP connection open.

        The peer's close_notify must come within `timeout` seconds, or the connection is
        closed: a client that never sends it would otherwise hold it open for ever (close()
        cannot end a CCC in progress)."""
        self._tls_ccc = True
        self._tls_set_state(TlsState.CLOSING)
        if timeout:
            self._tls_timer = self.ioloop.call_later(timeout, self._tls_ccc_timeout)
        self._tls_shutdown()

    def _tls_ccc_timeout(self) -> None:
        self._tls_timer = None
        if self.tls_state is TlsState.CLOSING and self._tls_ccc:
            log.info("CCC: no close_notify from the peer in time; closing the connection")
            self._tls_ccc = False
            self._tls_drop()
            self._tls_hard_close()

    def _tls_hard_close(self) -> None:
        self._tls_cancel_timer()
        super().close()  # type: ignore[misc]

    # --- event dispatch

    def readable(self) -> bool:
        if self.tls_state in (TlsState.HANDSHAKE, TlsState.CLOSING):
            return True
        return bool(super().readable())  # type: ignore[misc]

    def writable(self) -> bool:
        if self.tls_state is not TlsState.PLAIN and self.tls_backlog:
            return True
        if self.tls_state in (TlsState.HANDSHAKE, TlsState.CLOSING):
            return True
        return bool(super().writable())  # type: ignore[misc]

    def handle_read_event(self) -> None:
        if self.tls_state is TlsState.HANDSHAKE:
            self._tls_handshake()
        elif self.tls_state is TlsState.CLOSING:
            if self._tls_ccc:
                self._tls_shutdown()
            else:
                self._tls_drain_closing()
        elif self.tls_state is TlsState.ESTABLISHED:
            self._tls_read_all()
        else:
            super().handle_read_event()  # type: ignore[misc]

    def _tls_drain_closing(self) -> None:
        try:
            self._tls_fill()
        except OSError:
            self._tls_raw_eof = True
        if self._tls_raw_eof:  # the peer is gone: nothing left to flush to
            self._tls_drop()
            self._tls_hard_close()

    def _tls_read_all(self) -> None:
        """Let the channel read until the BIO holds no complete record (bounded)."""
        for _ in range(256):
            self._tls_progress = False
            super().handle_read_event()  # type: ignore[misc]
            if not self._tls_progress or self.tls_state is not TlsState.ESTABLISHED:
                break

    def handle_write_event(self) -> None:
        if self.tls_state is TlsState.HANDSHAKE:
            self._tls_handshake()
            return
        if self.tls_state is TlsState.CLOSING:
            self._tls_shutdown()
            return
        if self.tls_state is TlsState.ESTABLISHED:
            try:
                if not self._tls_flush():
                    return
            except TlsPeerGone:
                self.handle_close()  # type: ignore[attr-defined]
                return
            if not super().writable():  # type: ignore[misc]
                self._tls_update_events()
                return
        super().handle_write_event()  # type: ignore[misc]

    def initiate_send(self) -> None:
        super().initiate_send()  # type: ignore[misc]
        if self.tls_state is TlsState.ESTABLISHED and self.tls_backlog and self.connected:
            self._tls_update_events()

    # --- byte I/O for pyftpdlib's AsyncChat (control channel, listings)

    def send(self, data: bytes) -> int:
        if self.tls_state is TlsState.PLAIN:
            return super().send(data)  # type: ignore[misc]
        if self.tls_state is not TlsState.ESTABLISHED or self.tls is None:
            return 0  # nothing goes out before the handshake is done or after close_notify
        try:
            if self.tls_backlog >= HIGH_WATER and not self._tls_flush():
                return 0
            written = self.tls.write(data)
            self._tls_flush()
        except (ssl.SSLError, TlsPeerGone):
            self.handle_close()  # type: ignore[attr-defined]
            return 0
        return int(written)

    def tls_read_into(self, buffer: memoryview) -> int | None:
        """Decrypt into `buffer`: a count, 0 at EOF, None when no complete record is there."""
        assert self.tls is not None
        while True:
            try:
                n = self.tls.read(len(buffer), buffer)
            except ssl.SSLWantReadError:
                if not self._tls_fill():
                    return None
                continue
            except ssl.SSLZeroReturnError:
                self.tls_close_notify = True
                return 0
            except ssl.SSLEOFError:
                return 0  # TCP closed without close_notify: tls_close_notify stays False
            if not n and len(buffer):
                self.tls_close_notify = True  # SSLObject.read reports close_notify as 0
            self._tls_progress = True
            return int(n)

    def recv(self, buffer_size: int) -> bytes:
        if self.tls_state is TlsState.PLAIN:
            if self._plain_leftover:
                data, self._plain_leftover = self._plain_leftover, b""
                return data
            return super().recv(buffer_size)  # type: ignore[misc]
        if self.tls_state is not TlsState.ESTABLISHED or self.tls is None:
            raise RetryError
        buffer = bytearray(min(buffer_size, 16384 + 256))
        try:
            n = self.tls_read_into(memoryview(buffer))
        except (ssl.SSLError, OSError):
            n = 0
        if n is None:
            raise RetryError
        if n == 0:
            self.handle_close()  # type: ignore[attr-defined]
            return b""
        return bytes(buffer[:n])

    def close(self) -> None:
        if self.tls_state is TlsState.ESTABLISHED and self.connected:
            self._tls_set_state(TlsState.CLOSING)
            self._tls_shutdown()
            return
        if self.tls_state is TlsState.CLOSING and self.connected and self._tls_ccc:
            return  # CCC in progress
        # a second close() while close_notify waits to be flushed (a timeout, the control
        # connection going away) gives up on the flush
        self._tls_drop()
        self._tls_cancel_timer()
        super().close()  # type: ignore[misc]
