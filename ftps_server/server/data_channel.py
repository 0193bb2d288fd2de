"""The data connection: TLS when PROT P, bulk transfers, session reuse enforced; the passive
listener that accepts it.

`FtpsDataHandler` is pyftpdlib's data channel with TLS from `tls_channel`: a connection that
does not resume its control connection's TLS session is refused (522), an upload's file is
opened only once the connection is accepted, and an upload's end is judged by how its TLS
stream ended (226 or 426); a download is read into one buffer per connection and an upload
may be digested as it is stored ([log] upload_digest). `FtpsPassiveDTP` keeps passive
listeners inside the configured port range and within the per-address limit, and reads the
PROXY header of a data connection that comes through the balancer (`proxy_from`).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections import Counter
from typing import Any

from pyftpdlib.handlers import DTPHandler

from ..checksums import StreamDigest
from ..config.ini import normalize_address
from . import metrics
from . import pyftpdlib_adapter as pyftpd
from .proxied import Address, client_address, read_header
from .proxy_protocol import ProxyHeader
from .tls import CONTROL_TICKETS
from .tls_channel import TlsChannel, TlsPeerGone, TlsState, describe_ssl_error
from .tls_openssl import CachedSession, new_session_ticket
from .users import DeferredFile

__all__ = [
    "NO_DATA_CONNECTION",
    "FtpsDataHandler",
    "FtpsPassiveDTP",
    "PassiveRangeExhausted",
    "passive_open",
]

log = logging.getLogger(__name__)

_BULK = 256 * 1024  # bytes per file read, TLS write and decrypt batch on data connections
_EVENT_BUDGET = 8 * 1024 * 1024  # bytes moved per IOLoop event before yielding to others
_LISTING_SLICE = 0.0015  # seconds of listing formatting per loop turn (an lstat per entry)
NO_DATA_CONNECTION = "425 No data connection: send PASV, EPSV, PORT or EPRT first."


class FtpsDataHandler(TlsChannel, DTPHandler):
    """Data connection: TLS when PROT P, bulk reads and writes, session reuse enforced."""

    cmd_channel: Any  # the FtpsHandler (ftp.py) that made it
    _tls_cached: CachedSession | None = None  # see tls_established

    def __init__(self, sock: Any, cmd_channel: Any) -> None:
        self._rbuf: bytearray | None = None
        self._wbuf: bytearray | None = None
        self._read_scheduled = False
        self._read_error = ""
        self._listing = False  # sending a listing (formatting costs time, not bytes)
        self.upload_digest: StreamDigest | None = None  # [log] upload_digest, see _digest_upload
        self.tls_summary = ("none", "none")  # negotiated TLS version and cipher
        self._accepted = False  # TLS up and the session check passed (or PROT C, connected)
        self._constructing = True
        super().__init__(sock, cmd_channel)
        session = cmd_channel.session_tls
        if self.connected and cmd_channel.data_protected and session is not None:
            timeout = cmd_channel.state.config.server.handshake_timeout
            self.start_tls(session.context, timeout)
        elif self.connected:
            self._accepted = True
        self._constructing = False

    # the first handshake step comes from the loop (see TlsChannel.start_tls)
    tls_wrap_on_hello = True

    def __repr__(self) -> str:
        # cheap, as the session's (see FtpsHandler.__repr__): pyftpdlib builds it on close
        return f"<{type(self).__name__} of {getattr(self, 'cmd_channel', None)!r}>"

    __str__ = __repr__

    def tls_wrap(self, context: ssl.SSLContext) -> ssl.SSLObject:
        # No TLS 1.3 tickets on data connections: an uploading client never reads them, and
        # closing a socket with unread data sends a reset that discards the end of its upload
        # still queued at the server. Tickets go out on the control connection instead, one
        # per resumed data connection (tls_established), which every client reads.
        # OpenSSL copies the count into the connection when it is made.
        context.num_tickets = 0
        try:
            conn = super().tls_wrap(context)
        finally:
            context.num_tickets = CONTROL_TICKETS
        session = self.cmd_channel.session_tls
        assert session is not None and session.context is context
        return session.bind(conn)  # only the control connection's sessions resume here

    def _peer(self) -> str:
        try:
            return normalize_address(str(self.socket.getpeername()[0]))
        except (OSError, AttributeError):
            return "?"

    def tls_established(self) -> None:
        channel = self.cmd_channel
        assert self.tls is not None and channel.session_tls is not None
        self._tls_cached = channel.session_tls.cache_entry(self.tls)
        # A data connection is bound to its control connection's TLS (tls.py), so a session
        # resumed here can only be the control connection's: a session of any other
        # connection, listener or client is not resumed and gives a full handshake.
        reused = self.tls.session_reused
        if channel.state.config.tls.require_session_reuse and not reused:
            data_peer = self._peer()
            log.warning(
                "refused data connection from %s for the session of user %s from %s on %s: "
                "TLS session not resumed (a data connection must resume its own control "
                "connection's session)",
                data_peer,
                channel.username or "(not logged in)",
                channel.remote_ip,
                channel.listener_name,
                extra={
                    "fields": {
                        "SESSION_ID": channel.session_log.id,
                        "REMOTE_ADDR": channel.remote_ip,
                        "DATA_REMOTE_ADDR": data_peer,
                        "USER": channel.username,
                        "LISTENER": channel.listener_name,
                    }
                },
            )
            self._refuse(
                "522 Data connection must resume the TLS session of the control "
                "connection (session reuse required)."
            )
            return
        if reused and channel.tls_active and channel.tls is not None:
            # the client may have spent a ticket on this connection (Java uses each once):
            # a fresh one goes out with the next reply on the control connection
            new_session_ticket(channel.tls)
        if not pyftpd.is_closed(self):
            self._transfer_accepted()

    def _transfer_accepted(self) -> None:
        """The connection can carry the transfer: only now may an upload touch its file."""
        self._accepted = True
        if self.tls is not None:  # kept for the transfer's log entry (tls is gone by then)
            self.tls_summary = (str(self.tls.version()), (self.tls.cipher() or ("?",))[0])
        if self.receive:
            self._open_upload()

    def _open_upload(self) -> None:
        file = self.file_obj
        if not isinstance(file, DeferredFile) or file.opened:
            return
        try:
            file.open()
        except OSError as err:
            self._abort(f"553 Cannot open file: {err.strerror or err}.")

    def tls_failed(self, reason: str) -> None:
        if pyftpd.is_closed(self):
            return
        if self._constructing:
            # the ClientHello came with the connection and failed inside __init__: closing
            # now would close the socket under pyftpdlib's active connector, which then
            # answers a stray "425 Can't connect"; fail on the next loop turn instead
            self.modify_ioloop_events(0)
            pyftpd.call_soon(self.ioloop, self.tls_failed, reason, errback=self.handle_error)
            self._constructing = False
            return
        metrics.handshake_failed(reason, "data")
        self.cmd_channel.session_log.tls_failed(reason, data=True, data_peer=self._peer())
        failure = f"TLS negotiation on the data connection failed: {reason}"
        channel = self.cmd_channel
        # this PASV/PORT is spent (pyftpdlib has already closed the passive listener): a
        # later transfer command must not be told 150 and wait for a connection that
        # cannot come
        pyftpd.forget_data_path(channel)
        queued = pyftpd.take_queued_transfer(channel)
        if queued is not None:
            # 150 went out and the transfer waited for this connection; an upload is logged
            # as the upload it was, never opened
            self.file_obj, self.cmd, received = queued
            if received:
                self.receive = True
        self._refuse(f"522 {failure}.")

    def _refuse(self, reply: str) -> None:
        """Close with `reply` as the transfer's final reply; before any transfer command
        (a spare connection, a client that negotiates TLS first) the reply is kept for the
        command: sent now, it would be read as the reply to the client's next command."""
        if self.cmd is None and not pyftpd.dtp_initialized(self):
            self.cmd_channel.data_connection_gone = reply
            reply = ""
        self._abort(reply)

    def _abort(self, reply: str) -> None:
        pyftpd.set_transfer_reply(self, reply, log.warning)
        self._tls_drop()  # no close_notify on a connection we refuse
        self._forget_cached()
        DTPHandler.close(self)

    def close(self) -> None:
        self._forget_cached()
        super().close()

    def _forget_cached(self) -> None:
        if self._tls_cached is not None:
            self._tls_cached.forget()
            self._tls_cached = None

    def use_sendfile(self) -> bool:
        return self.tls_state is TlsState.PLAIN and bool(super().use_sendfile())

    def push_with_producer(self, producer: Any) -> None:
        # set before pushing: push_with_producer starts sending at once, and pyftpdlib sets
        # self.cmd only afterwards when the data connection was already open (125)
        self._listing = isinstance(producer, pyftpd.BufferedIteratorProducer)
        if hasattr(producer, "buffer_size"):
            producer.buffer_size = _BULK
        super().push_with_producer(producer)

    def _next_chunk(self) -> bytes | memoryview | None:
        """The next bytes to send from the producer queue, or None when it is empty.

        A view of `_wbuf` is valid only until the next call: `tls.write` takes all of it
        (a memory BIO never makes it wait) before the buffer is read into again."""
        return pyftpd.next_chunk(self.producer_fifo, self._read_into_buffer)

    def _read_into_buffer(self, file: Any) -> memoryview:
        # one buffer per download instead of a new 256 KiB object per read: no allocation
        # and no fresh pages to fault in for every chunk
        if self._wbuf is None:
            self._wbuf = bytearray(_BULK)
        view = memoryview(self._wbuf)
        return view[: file.readinto(view) or 0]

    def initiate_send(self) -> None:
        if self.tls_state is TlsState.PLAIN:
            super().initiate_send()
            return
        if self.tls_state is not TlsState.ESTABLISHED or self.tls is None:
            return  # the handshake's own events drive the channel until it is done
        moved = 0
        # a listing costs an lstat per line, not AES per byte: bound it by time instead
        deadline = time.monotonic() + _LISTING_SLICE if self._listing else None
        try:
            while moved < _EVENT_BUDGET and self.connected:
                if deadline is not None and time.monotonic() > deadline:
                    break  # the loop comes back: the socket is still writable
                # Encrypt the next chunk only once the previous one is on the socket: the
                # outgoing BIO then never holds more than one chunk. A BIO that grows to
                # megabytes is re-allocated, copied and wiped (OpenSSL cleanses the old
                # buffer) step by step on every new connection: a third of a short
                # download's CPU in OpenSSL and page faults (bench/short_sessions.py).
                if self.tls_backlog and not self._tls_flush():
                    break  # the socket is full: wait for it to drain
                chunk = self._next_chunk()
                if chunk is None:
                    if self.producer_fifo and self.producer_fifo[0] is None:
                        self.producer_fifo.popleft()
                        self.handle_close()  # close() flushes, then sends close_notify
                        return
                    break
                self.tls.write(chunk)
                moved += len(chunk)
                self.tot_bytes_sent += len(chunk)
            self._tls_flush()
        except (ssl.SSLError, OSError, TlsPeerGone):
            self.handle_close()
            return
        if self.connected:
            self._tls_update_events()

    def handle_read_event(self) -> None:
        if self.tls_state is not TlsState.ESTABLISHED:
            TlsChannel.handle_read_event(self)
        elif self.receive:
            self._bulk_read()
        else:
            self._tls_fill()  # data before STOR: keep it for enable_receiving, notice EOF
            if self._tls_raw_eof:
                if pyftpd.dtp_initialized(self):
                    self.handle_close()  # the client went away in the middle of a download
                else:
                    self._refuse(NO_DATA_CONNECTION)  # a spare connection closed by the client

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        self._digest_upload(type)
        if self._accepted:
            self._open_upload()
            if pyftpd.is_closed(self):
                return
        if self.tls_state is TlsState.ESTABLISHED and self._tls_in and self._tls_in.pending:
            self._schedule_read()

    def _digest_upload(self, type: str) -> None:
        """Digest what this upload stores, when that is the whole resulting file.

        Only STOR/STOU from offset 0 (a DeferredFile opened "wb"/"xb"; REST gives a plain
        file, APPE mode "ab") and binary: in ASCII mode the bytes read are not those stored.
        """
        file = self.file_obj
        wanted = self.cmd_channel.state.config.log.upload_digest == "sha256"
        if wanted and type == "i" and isinstance(file, DeferredFile) and file.mode != "ab":
            self.upload_digest = StreamDigest("SHA-256")

    def _bulk_read(self) -> None:
        """Decrypt everything available, write it to the file in large pieces."""
        if self._rbuf is None:
            self._rbuf = bytearray(_BULK)
        view, moved, eof = memoryview(self._rbuf), 0, False
        while moved < _EVENT_BUDGET and not eof:
            filled = 0
            while filled < len(view):
                try:
                    n = self.tls_read_into(view[filled:])
                except (ssl.SSLError, OSError) as exc:
                    # a broken stream ends the upload, as incomplete
                    self._read_error = f"read error ({describe_ssl_error(exc)})"
                    n = 0
                if n is None:
                    break
                if n == 0:
                    eof = True
                    break
                filled += n
            if not filled:
                break
            moved += filled
            if not self._store(view[:filled]):
                return
        if eof:
            self._end_upload()
        elif moved >= _EVENT_BUDGET:
            self._schedule_read()

    def _end_upload(self) -> None:
        """Decide from how the stream ended whether the upload arrived whole: 226 or 426."""
        received = self.tot_bytes_received
        if self.tls_peer_reset or self._read_error:
            why = self._read_error or "connection reset by the client"
        elif (
            self.tls_state is TlsState.PLAIN  # PROT C: a FIN is the only end there is
            or self.tls_close_notify
            or self.cmd_channel.state.config.tls.upload_eof == "lenient"
        ):
            why = ""
        else:
            why = "the data connection closed without TLS close_notify"
        if why:
            self.transfer_finished = False
            pyftpd.set_transfer_reply(
                self,
                f"426 Upload incomplete: {why}; {received} bytes received and kept.",
                log.warning,
            )
        else:
            self.transfer_finished = True
            pyftpd.set_transfer_reply(self, "226 Transfer complete.", log.debug)
        self.close()

    def recv(self, buffer_size: int) -> bytes:
        if self.tls_state is not TlsState.PLAIN or not self.receive:
            return bytes(super().recv(buffer_size))
        # a PROT C upload: asyncore turns a reset into an ordinary EOF (and 226)
        try:
            data = socket.socket.recv(self.socket, buffer_size)
        except OSError as exc:
            if exc.errno in pyftpd.ERRNOS_DISCONNECTED:
                self._read_error = "connection reset by the client"
                self._end_upload()
                return b""
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise pyftpd.RetryError from exc
            raise
        if not data:
            self._end_upload()
        elif self.upload_digest is not None:
            self.upload_digest.update(data)  # stored by pyftpdlib's handle_read as it is
        return data

    def handle_close(self) -> None:
        if self.receive and self.tls_state is not TlsState.PLAIN and not pyftpd.is_closed(self):
            # on a TLS upload the normal end goes through _end_upload; anything else that
            # closes the connection (a failed write, a reset) ends it incomplete, never 226
            if self.tls_state is TlsState.ESTABLISHED:
                self._read_error = self._read_error or "the data connection failed"
                self._end_upload()
                return
            if not pyftpd.transfer_reply_set(self):
                reply = "426 Data connection closed; transfer aborted."
                pyftpd.set_transfer_reply(self, reply, log.warning)
            self.close()
            return
        super().handle_close()

    def _schedule_read(self) -> None:
        """Come back without a socket event: records may wait in memory, the socket drained."""
        if not self._read_scheduled:
            # not self.call_later: those accumulate on the channel until it closes
            self._read_scheduled = True
            pyftpd.call_soon(self.ioloop, self._resume_read, errback=self.handle_error)

    def _resume_read(self) -> None:
        self._read_scheduled = False
        if self.connected and not pyftpd.is_closed(self) and self.tls_state is TlsState.ESTABLISHED:
            self._bulk_read()

    def _store(self, data: memoryview) -> bool:
        self.tot_bytes_received += len(data)
        chunk: Any = data
        wrapper = pyftpd.data_wrapper(self)
        if wrapper is not None:
            chunk = wrapper(bytes(data))
        try:
            self.file_obj.write(chunk)
        except OSError as err:
            reply = f"452 Cannot write file: {err.strerror}; transfer aborted."
            pyftpd.set_transfer_reply(self, reply, log.warning)
            self.close()
            return False
        if self.upload_digest is not None:
            self.upload_digest.update(chunk)
        return True


class PassiveRangeExhausted(OSError):
    """Every port of passive_ports is in use."""


# open passive listeners per client address, over every session and listener of the process
# (sessions outlive reloads, so not per configuration generation)
passive_open: Counter[str] = Counter()


class FtpsPassiveDTP(pyftpd.PassiveDTP):
    """Passive data listener: addresses compared in one form, only ports of the range.

    On a dual-stack `*` listener the data connection comes from ::ffff:a.b.c.d while the
    session knows its client as a.b.c.d; pyftpdlib would refuse it as a foreign address.
    With every port of the range in use pyftpdlib falls back to a kernel port outside it,
    which firewalls drop: refused here instead.
    """

    _counted: str | None = None

    def __init__(self, cmd_channel: Any, extmode: bool = False) -> None:
        super().__init__(cmd_channel, extmode)
        self._counted = cmd_channel.remote_ip
        passive_open[self._counted] += 1

    _probing_family = False

    def bind_af_unspecified(self, addr: Any) -> Any:
        # on a dual-stack listener pyftpdlib first binds port 0 once only to learn the address
        # family, then closes that socket: not the kernel-port fallback refused in bind()
        self._probing_family = True
        try:
            return super().bind_af_unspecified(addr)
        finally:
            self._probing_family = False

    def bind(self, address: Any) -> None:
        fallback = address[1] == 0 and not self._probing_family
        if fallback and self.cmd_channel.passive_ports is not None:
            self.close()
            raise PassiveRangeExhausted(errno.EADDRINUSE, "passive port range exhausted")
        super().bind(address)

    def close(self) -> None:
        if self._counted is not None:
            passive_open[self._counted] -= 1
            if passive_open[self._counted] <= 0:
                del passive_open[self._counted]
            self._counted = None
        super().close()

    def handle_accepted(self, sock: Any, addr: Any) -> Any:
        addr = (normalize_address(addr[0]), *addr[1:])
        settings = self.cmd_channel.state.config.server
        if settings.is_proxy(addr[0]):
            # through the balancer: the foreign-address check compares the header's source
            where = f"data connection of {self.cmd_channel.remote_ip}"
            read_header(sock, addr, self.ioloop, settings.handshake_timeout, where, self._proxied)
            return None
        return super().handle_accepted(sock, addr)

    def _proxied(self, sock: Any, peer: Address, header: ProxyHeader) -> Any:
        if pyftpd.is_closed(self):  # timed out, or another connection came first
            sock.close()
            return None
        return super().handle_accepted(sock, client_address(peer, header))
