"""TLS on a pyftpdlib channel with Python's ssl module, non-blocking, on the shared IOLoop.

A mixin for pyftpdlib's AsyncChat subclasses (control and data channels). It owns only the
TLS state machine and the socket-level translation of ssl's want-read/want-write signals
into IOLoop events; FTP semantics stay in `ftp.py`.

    PLAIN --start_tls--> HANDSHAKE --ok--> ESTABLISHED --close/CCC--> CLOSING --> closed/PLAIN
"""

from __future__ import annotations

import enum
import logging
import ssl
from typing import Any

from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED

try:  # pyftpdlib >= 2.1
    from pyftpdlib.ioloop import _RetryError
except ImportError:  # pyftpdlib 2.0 (Debian 13)
    from pyftpdlib.ioloop import RetryError as _RetryError

__all__ = ["TlsChannel", "TlsState"]

log = logging.getLogger(__name__)


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


class TlsChannel:
    """Mixin: put before the pyftpdlib AsyncChat subclass in the bases."""

    tls_state: TlsState = TlsState.PLAIN
    _tls_wants: int = 0  # IOLoop events TLS itself is waiting for
    _tls_ccc: bool = False
    _tls_timer: Any = None
    socket: Any
    ioloop: Any
    _wanted_io_events: int
    connected: bool

    # --- hooks for subclasses

    def tls_established(self) -> None:
        """Called once the handshake completed."""

    def tls_failed(self, reason: str) -> None:
        """Called when the handshake failed; the default closes the connection."""
        self._tls_set_state(TlsState.PLAIN)
        self._tls_hard_close()

    def tls_cleared(self) -> None:
        """Called after CCC brought the connection back to clear text."""

    def tls_io_events(self) -> int:
        """The IOLoop events the channel wants once TLS has nothing pending."""
        return self._wanted_io_events

    # --- state machine

    @property
    def tls_active(self) -> bool:
        return self.tls_state is TlsState.ESTABLISHED

    def _tls_set_state(self, new: TlsState) -> None:
        if new is not self.tls_state and new not in _ALLOWED[self.tls_state]:
            raise RuntimeError(f"illegal TLS transition {self.tls_state.value} -> {new.value}")
        self.tls_state = new

    def start_tls(self, context: ssl.SSLContext, timeout: float | None = None) -> None:
        """Switch the connection to TLS as the server side and start the handshake."""
        self._tls_set_state(TlsState.HANDSHAKE)
        try:
            self.socket = context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:
            self.tls_failed(describe_ssl_error(exc))
            return
        if timeout:
            self._tls_timer = self.ioloop.call_later(timeout, self._tls_handshake_timeout)
        self._tls_handshake()

    def _tls_handshake_timeout(self) -> None:
        if self.tls_state is TlsState.HANDSHAKE:
            self.tls_failed("handshake timed out")

    def _tls_want(self, events: int) -> None:
        self._tls_wants = events
        self.modify_ioloop_events(events or self.tls_io_events())  # type: ignore[attr-defined]

    def _tls_handshake(self) -> None:
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self._tls_want(self.ioloop.READ)
            return
        except ssl.SSLWantWriteError:
            self._tls_want(self.ioloop.WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            self._tls_cancel_timer()
            self._tls_wants = 0
            self.tls_failed(describe_ssl_error(exc))
            return
        self._tls_cancel_timer()
        self._tls_set_state(TlsState.ESTABLISHED)
        self._tls_want(0)
        self.tls_established()

    def _tls_cancel_timer(self) -> None:
        if self._tls_timer is not None and not self._tls_timer.cancelled:
            self._tls_timer.cancel()
        self._tls_timer = None

    def _tls_shutdown(self) -> None:
        """Send close_notify; complete at once unless the kernel buffer is full (or CCC)."""
        try:
            self.socket = self.socket.unwrap()
        except ssl.SSLWantWriteError:
            self._tls_want(self.ioloop.WRITE)
            return
        except ssl.SSLWantReadError:
            if self._tls_ccc:  # clear text may only resume once the peer closed TLS too
                self._tls_want(self.ioloop.READ)
                return
        except (ssl.SSLError, OSError, ValueError):
            self._tls_ccc = False  # the peer is gone or broke the protocol: just close
        self._tls_wants = 0
        self._tls_set_state(TlsState.PLAIN)
        if self._tls_ccc:
            self._tls_ccc = False
            self.modify_ioloop_events(self.tls_io_events())  # type: ignore[attr-defined]
            self.tls_cleared()
        else:
            self._tls_hard_close()

    def clear_command_channel(self) -> None:
        """CCC: end TLS on this connection but keep the TCP connection open."""
        self._tls_ccc = True
        self._tls_set_state(TlsState.CLOSING)
        self._tls_shutdown()

    def _tls_hard_close(self) -> None:
        super().close()  # type: ignore[misc]

    # --- event dispatch

    def _tls_step(self) -> bool:
        """Advance a pending handshake or shutdown; True when the event was consumed."""
        if self.tls_state is TlsState.HANDSHAKE:
            self._tls_handshake()
            return True
        if self.tls_state is TlsState.CLOSING:
            self._tls_shutdown()
            return True
        return False

    def readable(self) -> bool:
        if self.tls_state in (TlsState.HANDSHAKE, TlsState.CLOSING):
            return True
        return bool(super().readable())  # type: ignore[misc]

    def writable(self) -> bool:
        if self.tls_state in (TlsState.HANDSHAKE, TlsState.CLOSING):
            return True
        return bool(super().writable())  # type: ignore[misc]

    def handle_read_event(self) -> None:
        if not self._tls_step():
            super().handle_read_event()  # type: ignore[misc]

    def handle_write_event(self) -> None:
        if not self._tls_step():
            super().handle_write_event()  # type: ignore[misc]

    # --- byte I/O: translate ssl's signals into what pyftpdlib's AsyncChat understands

    def send(self, data: bytes) -> int:
        if self.tls_state is TlsState.PLAIN:
            return super().send(data)  # type: ignore[misc]
        if self.tls_state is not TlsState.ESTABLISHED:
            return 0  # nothing goes out before the handshake is done or after close_notify
        try:
            return int(self.socket.send(data))
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0  # retried later with the very same buffer, as OpenSSL requires
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.handle_close()  # type: ignore[attr-defined]
            return 0
        except OSError as exc:
            if exc.errno in _ERRNOS_DISCONNECTED:
                self.handle_close()  # type: ignore[attr-defined]
                return 0
            raise

    def recv(self, buffer_size: int) -> bytes:
        if self.tls_state is TlsState.PLAIN:
            return super().recv(buffer_size)  # type: ignore[misc]
        if self.tls_state is not TlsState.ESTABLISHED:
            raise _RetryError
        try:
            data = self.socket.recv(buffer_size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise _RetryError from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except OSError as exc:
            if exc.errno not in _ERRNOS_DISCONNECTED:
                raise
            data = b""
        if not data:
            self.handle_close()  # type: ignore[attr-defined]
        return bytes(data)

    def close(self) -> None:
        if self.tls_state is TlsState.ESTABLISHED and self.connected:
            self._tls_set_state(TlsState.CLOSING)
            self._tls_shutdown()
            return
        if self.tls_state is TlsState.CLOSING and self.connected:
            return  # the shutdown in progress closes the connection when done
        self._tls_cancel_timer()
        super().close()  # type: ignore[misc]
