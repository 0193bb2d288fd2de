"""TLS on a pyftpdlib channel with Python's ssl module, non-blocking, on the shared IOLoop.

A mixin for pyftpdlib's AsyncChat subclasses (control and data channels). It only moves
bytes between the socket and the connection's `TlsEngine` (tls_engine.py: the state machine,
the `ssl.SSLObject` and its memory BIOs) and sets the loop's events; FTP semantics stay in
`ftp.py` and `data_channel.py`.

Why memory BIOs instead of `SSLSocket`: OpenSSL on a socket does one or two syscalls per
16 KiB record (header, then body) and one `send` per record written. With memory BIOs one
`recv` or `send` of up to 1 MiB carries dozens of records, so bulk transfers spend their time
in AES, not in syscalls and the event loop.

"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from .pyftpdlib_adapter import ERRNOS_DISCONNECTED, RetryError, call_soon, wanted_io_events
from .tls_engine import TlsEngine, TlsState, describe_ssl_error

__all__ = ["HIGH_WATER", "TlsChannel", "TlsPeerGone", "TlsState", "describe_ssl_error"]

log = logging.getLogger(__name__)

RAW_CHUNK = 1024 * 1024  # bytes per socket recv/send
HIGH_WATER = 1024 * 1024  # encrypted bytes queued before the writer waits for the socket
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)


class _RecvBuffer(threading.local):
    """One receive buffer per thread, shared by every channel its IOLoop runs: what a recv
    brings is copied into the channel's incoming BIO at once. recv() would allocate a new
    1 MiB object per call, and idle sessions keep no buffer at all. (The outgoing side has
    no such reuse: MemoryBIO.read() can only return new bytes; see docs/performance.md.)"""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(RAW_CHUNK))


_recv_buffer = _RecvBuffer()


class TlsPeerGone(Exception):
    """The TCP connection is closed or reset."""


class TlsChannel:
    """Mixin: put before the pyftpdlib AsyncChat subclass in the bases."""

    _tls_engine: TlsEngine | None = None  # made by the first start_tls
    _tls_head: memoryview | None = None  # the part of a send the socket did not take
    tls_peer_reset = False  # the raw EOF was a reset (data the peer sent may be lost)
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
        assert self._tls_engine is not None
        return self._tls_engine.wrap(context)

    def tls_io_events(self) -> int:
        """The IOLoop events the channel wants once TLS has nothing pending."""
        return wanted_io_events(self)

    # --- state (the engine's, read through the names the FTP handlers use)

    @property
    def tls_state(self) -> TlsState:
        engine = self._tls_engine
        return engine.state if engine is not None else TlsState.PLAIN

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The connection's SSLObject (None in clear text and before the ClientHello)."""
        engine = self._tls_engine
        return engine.sslobj if engine is not None else None

    @property
    def _tls_in(self) -> ssl.MemoryBIO | None:
        engine = self._tls_engine
        return engine.incoming if engine is not None else None

    @property
    def _tls_raw_eof(self) -> bool:
        engine = self._tls_engine
        return engine.peer_eof if engine is not None else False

    @property
    def tls_close_notify(self) -> bool:
        """The peer ended TLS with close_notify (a clean end of data)."""
        engine = self._tls_engine
        return engine.close_notify if engine is not None else False

    @property
    def tls_active(self) -> bool:
        return self.tls_state is TlsState.ESTABLISHED

    def _tls_set_state(self, new: TlsState) -> None:
        assert self._tls_engine is not None
        self._tls_engine.set_state(new)

    def _tls_drop(self) -> None:
        if self._tls_engine is not None:
            self._tls_engine.drop()
        self._tls_context = None

    def start_tls(self, context: ssl.SSLContext, timeout: float | None = None) -> None:
        """Switch the connection to TLS as the server side and start the handshake."""
        if self._tls_engine is None:
            self._tls_engine = TlsEngine()
        self._tls_engine.begin()
        self._tls_head = None
        if timeout:
            self._tls_timer = self.ioloop.call_later(timeout, self._tls_handshake_timeout)
        if self.tls_wrap_on_hello:
            # first step from the loop, never from the caller: a handshake completing inside
            # the constructor would report to a channel its owner does not know yet
            self._tls_context = context
            self._tls_update_events()
            return
        self._tls_engine.sslobj = self.tls_wrap(context)
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
        engine = self._tls_engine
        assert engine is not None and engine.incoming is not None
        if engine.peer_eof:
            return False
        try:
            view = _recv_buffer.view
            n = socket.socket.recv_into(self.socket, view)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return False
            if exc.errno in ERRNOS_DISCONNECTED:
                self.tls_peer_reset = True
                n = 0
            else:
                raise
        engine.feed(view[:n])  # the buffer is reused: the BIO copies it now
        return True  # EOF (nothing read) is news too: the next read reports it

    @property
    def tls_backlog(self) -> int:
        """Encrypted bytes waiting for the socket."""
        head = len(self._tls_head) if self._tls_head is not None else 0
        return head + (self._tls_engine.pending_out if self._tls_engine is not None else 0)

    def _tls_flush(self) -> bool:
        """Send queued encrypted bytes; True when nothing is left queued."""
        engine = self._tls_engine
        assert engine is not None
        while True:
            head = self._tls_head
            if head is None:
                if not engine.pending_out:
                    return True
                head = memoryview(engine.take(RAW_CHUNK))
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
            engine = self._tls_engine
            assert engine is not None
            if engine.sslobj is None:
                if not self._tls_fill():
                    self._tls_update_events()
                    return
                assert self._tls_context is not None
                engine.sslobj, self._tls_context = self.tls_wrap(self._tls_context), None
            if not self._tls_drive(engine.sslobj.do_handshake):
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
        assert self._tls_engine is not None
        while not self._tls_engine.step(step):
            self._tls_flush()
            if not self._tls_fill():
                self._tls_update_events()
                return False
        return True

    def _tls_try_flush(self) -> None:
        try:
            self._tls_flush()
        except (OSError, TlsPeerGone):
            self._tls_head = None

    def _tls_shutdown(self) -> None:
        """Send close_notify and close, or (CCC) wait for the peer's and go on in clear."""
        engine = self._tls_engine
        assert engine is not None and engine.sslobj is not None
        try:
            if self._tls_ccc:
                if not self._tls_drive(engine.sslobj.unwrap):
                    return
            else:
                engine.send_close_notify()
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
            self._plain_leftover = engine.leftover()
            self._tls_drop()
            self.modify_ioloop_events(self.tls_io_events())  # type: ignore[attr-defined]
            self.tls_cleared()
            if self._plain_leftover:
                # commands that came in the same read as the close_notify: no socket event
                # will announce them
                errback = self.handle_error  # type: ignore[attr-defined]
                call_soon(self.ioloop, self._read_leftover, errback=errback)
        else:
            self._tls_drop()
            self._tls_hard_close()

    def _read_leftover(self) -> None:
        if self.connected and self.tls_state is TlsState.PLAIN and self._plain_leftover:
            self.handle_read_event()

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
        assert self._tls_engine is not None
        try:
            self._tls_fill()
        except OSError:
            self._tls_engine.peer_eof = True
        if self._tls_engine.peer_eof:  # the peer is gone: nothing left to flush to
            self._tls_drop()
            self._tls_hard_close()

    def _tls_read_all(self) -> None:
        """Let the channel read until the BIO holds no complete record (bounded)."""
        for _ in range(256):
            self._tls_progress = False
            super().handle_read_event()  # type: ignore[misc]
            if not self._tls_progress or self.tls_state is not TlsState.ESTABLISHED:
                break
            engine = self._tls_engine
            if engine is None or not engine.input_waiting:
                # all the socket held went into the BIO and was read out: what comes next
                # comes with a socket event (one recv and three exceptions fewer per command)
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
        assert self._tls_engine is not None
        try:
            if self.tls_backlog >= HIGH_WATER and not self._tls_flush():
                return 0
            written = self._tls_engine.write(data)
            self._tls_flush()
        except (ssl.SSLError, TlsPeerGone):
            self.handle_close()  # type: ignore[attr-defined]
            return 0
        return int(written)

    def tls_read_into(self, buffer: memoryview) -> int | None:
        """Decrypt into `buffer`: a count, 0 at EOF, None when no complete record is there."""
        engine = self._tls_engine
        assert engine is not None
        if not engine.input_waiting and not self._tls_fill():
            return None  # nothing in the BIO and nothing on the socket: no decrypt to try
        while True:
            n = engine.read_into(buffer)
            if n is None:
                if not self._tls_fill():
                    return None
                continue
            if n or engine.close_notify:
                self._tls_progress = True  # a record was read (close_notify is one too)
            return n

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
