"""pyftpdlib hooks: TLS on the control and data channels, the three FTPS modes, PBSZ/PROT/CCC.

Only what FTPS changes is overridden here; login policy lives in `auth`, TLS plumbing in
`tls_channel`, certificate choice in `tls`. A session keeps the configuration generation
(`ServerState`) it connected under, so a reload never changes a session in progress.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from cryptography import x509
from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import _ERRNOS_DISCONNECTED

try:  # pyftpdlib >= 2.1
    from pyftpdlib.handlers.ftp.producers import BufferedIteratorProducer
    from pyftpdlib.ioloop import _RetryError
except ImportError:  # pyftpdlib 2.0 (Debian 13)
    from pyftpdlib.handlers import BufferedIteratorProducer
    from pyftpdlib.ioloop import RetryError as _RetryError

from ..checksums import StreamDigest
from ..config.model import normalize_address
from . import auth, metrics
from .checksum_commands import PROTO_CMDS as CHECKSUM_CMDS
from .checksum_commands import ChecksumCommands
from .events import FILE_COMMANDS, SessionLog, Transfer, transfer_result
from .listing import DirectoryReader
from .proxied import Address, client_address, read_header
from .proxy_protocol import ProxyHeader
from .state import AcceptingListener, ServerState
from .tls import CONTROL_TICKETS
from .tls_channel import TlsChannel, TlsPeerGone, TlsState, describe_ssl_error
from .tls_openssl import new_session_ticket
from .users import DeferredFile

__all__ = ["FtpsDataHandler", "FtpsHandler"]

log = logging.getLogger(__name__)
_pyftpdlib_log = logging.getLogger("pyftpdlib")

_BULK = 256 * 1024  # bytes per file read, TLS write and decrypt batch on data connections
_EVENT_BUDGET = 8 * 1024 * 1024  # bytes moved per IOLoop event before yielding to others
_DATA_COMMANDS = {"PASV", "EPSV", "PORT", "EPRT"}
_NO_DATA_CONNECTION = "425 No data connection: send PASV, EPSV, PORT or EPRT first."
_TRANSFER_COMMANDS = {"RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"}
# queued reply bytes (clear or encrypted) above which a control connection is not read; a
# reply is written whole, so one read's worth of commands can overshoot it (see FtpsHandler)
OUTPUT_BOUND = 64 * 1024
# seconds a connection may keep unsent output after its idle timeout before it is cut
STUCK_OUTPUT_GRACE = 5
_TLS_BUSY = (TlsState.HANDSHAKE, TlsState.CLOSING)
_PRE_TLS_COMMANDS = {"AUTH", "FEAT", "QUIT", "NOOP", "SYST", "HELP", "OPTS"}
# pyftpdlib's own lines for what a session event (events.py) reports with fields
_STRUCTURED = re.compile(r"FTP session (opened|closed) \((dis)?connect\)|USER '.*' logged in\.$")


def strerror(err: BaseException) -> str:
    """pyftpdlib's wording of a filesystem error."""
    return getattr(err, "strerror", None) or str(err)


_LISTING_SLICE = 0.0015  # seconds of listing formatting per loop turn (an lstat per entry)
STAT_LIST_LIMIT = 1000  # entries a STAT <dir> reply shows on the control connection


def _has_control(text: str) -> bool:
    """True when `text` holds a C0 control character or DEL."""
    return any(ch < " " or ch == "\x7f" for ch in text)


class FtpsDataHandler(TlsChannel, DTPHandler):
    """Data connection: TLS when PROT P, bulk reads and writes, session reuse enforced."""

    cmd_channel: FtpsHandler

    def __init__(self, sock: Any, cmd_channel: FtpsHandler) -> None:
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
        context = cmd_channel.session_context
        if self.connected and cmd_channel.data_protected and context is not None:
            timeout = cmd_channel.state.config.server.handshake_timeout
            self.start_tls(context, timeout)
        elif self.connected:
            self._accepted = True
        self._constructing = False

    # the first handshake step comes from the loop (see TlsChannel.start_tls)
    tls_wrap_on_hello = True

    def tls_wrap(self, context: ssl.SSLContext) -> ssl.SSLObject:
        # No TLS 1.3 tickets on data connections: an uploading client never reads them, and
        # closing a socket with unread data sends a reset that discards the end of its upload
        # still queued at the server. Tickets go out on the control connection instead, one
        # per resumed data connection (tls_established), which every client reads.
        # OpenSSL copies the count into the connection when it is made.
        context.num_tickets = 0
        try:
            return super().tls_wrap(context)
        finally:
            context.num_tickets = CONTROL_TICKETS

    def _peer(self) -> str:
        try:
            return normalize_address(str(self.socket.getpeername()[0]))
        except (OSError, AttributeError):
            return "?"

    def tls_established(self) -> None:
        channel = self.cmd_channel
        # Every control connection has contexts of its own (own session cache, own ticket
        # keys; see tls.py), so a session resumed here can only be the control connection's:
        # a session of any other connection, listener or client cannot be decrypted and
        # gives a full handshake.
        reused = self.tls is not None and self.tls.session_reused
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
        if not self._closed:
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
        if self._closed:
            return
        if self._constructing:
            # the ClientHello came with the connection and failed inside __init__: closing
            # now would close the socket under pyftpdlib's active connector, which then
            # answers a stray "425 Can't connect"; fail on the next loop turn instead
            self.modify_ioloop_events(0)
            self.ioloop.call_later(0, self.tls_failed, reason, _errback=self.handle_error)
            self._constructing = False
            return
        metrics.handshake_failed(reason, "data")
        self.cmd_channel.session_log.tls_failed(reason, data=True, data_peer=self._peer())
        failure = f"TLS negotiation on the data connection failed: {reason}"
        channel = self.cmd_channel
        # this PASV/PORT is spent (pyftpdlib has already closed the passive listener): a
        # later transfer command must not be told 150 and wait for a connection that
        # cannot come. An active connector handed its socket to this handler: forget it,
        # closing it would close (and unregister) this handler's socket under it.
        if channel._dtp_acceptor is not None:
            channel._dtp_acceptor.close()
            channel._dtp_acceptor = None
        channel._dtp_connector = None
        if channel._in_dtp_queue or channel._out_dtp_queue:
            # 150 went out and the transfer waited for this connection
            self._discard_queued_transfer()
        self._refuse(f"522 {failure}.")

    def _discard_queued_transfer(self) -> None:
        channel = self.cmd_channel
        if channel._in_dtp_queue is not None:
            self.file_obj, self.cmd = channel._in_dtp_queue
            self.receive = True  # logged as the upload it was, never opened
        elif channel._out_dtp_queue is not None:
            _, _, self.file_obj, self.cmd = channel._out_dtp_queue
        channel._in_dtp_queue = channel._out_dtp_queue = None

    def _refuse(self, reply: str) -> None:
        """Close with `reply` as the transfer's final reply; before any transfer command
        (a spare connection, a client that negotiates TLS first) the reply is kept for the
        command: sent now, it would be read as the reply to the client's next command."""
        if self.cmd is None and not self._initialized:
            self.cmd_channel.data_connection_gone = reply
            reply = ""
        self._abort(reply)

    def _abort(self, reply: str) -> None:
        self._resp = (reply, log.warning) if reply else ()
        self._tls_drop()  # no close_notify on a connection we refuse
        DTPHandler.close(self)

    def use_sendfile(self) -> bool:
        return self.tls_state is TlsState.PLAIN and bool(super().use_sendfile())

    def push_with_producer(self, producer: Any) -> None:
        # set before pushing: push_with_producer starts sending at once, and pyftpdlib sets
        # self.cmd only afterwards when the data connection was already open (125)
        self._listing = isinstance(producer, BufferedIteratorProducer)
        if hasattr(producer, "buffer_size"):
            producer.buffer_size = _BULK
        super().push_with_producer(producer)

    def _next_chunk(self) -> bytes | memoryview | None:
        """The next bytes to send from the producer queue, or None when it is empty.

        A view of `_wbuf` is valid only until the next call: `tls.write` takes all of it
        (a memory BIO never makes it wait) before the buffer is read into again."""
        fifo = self.producer_fifo
        while fifo:
            first = fifo[0]
            if first is None:
                return None
            if isinstance(first, bytes | bytearray | memoryview):
                fifo.popleft()
                if first:
                    return bytes(first)
                continue
            file = _binary_file(first)
            data = self._read_into_buffer(file) if file is not None else first.more()
            if data:
                return data if isinstance(data, memoryview) else bytes(data)
            fifo.popleft()
        return None

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
                if self._initialized:
                    self.handle_close()  # the client went away in the middle of a download
                else:
                    self._refuse(_NO_DATA_CONNECTION)  # a spare connection closed by the client

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        self._digest_upload(type)
        if self._accepted:
            self._open_upload()
            if self._closed:
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
            self._resp = (
                f"426 Upload incomplete: {why}; {received} bytes received and kept.",
                log.warning,
            )
        else:
            self.transfer_finished = True
            self._resp = ("226 Transfer complete.", log.debug)
        self.close()

    def recv(self, buffer_size: int) -> bytes:
        if self.tls_state is not TlsState.PLAIN or not self.receive:
            return bytes(super().recv(buffer_size))
        # a PROT C upload: asyncore turns a reset into an ordinary EOF (and 226)
        try:
            data = socket.socket.recv(self.socket, buffer_size)
        except OSError as exc:
            if exc.errno in _ERRNOS_DISCONNECTED:
                self._read_error = "connection reset by the client"
                self._end_upload()
                return b""
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise _RetryError from exc
            raise
        if not data:
            self._end_upload()
        elif self.upload_digest is not None:
            self.upload_digest.update(data)  # stored by pyftpdlib's handle_read as it is
        return data

    def handle_close(self) -> None:
        if self.receive and self.tls_state is not TlsState.PLAIN and not self._closed:
            # on a TLS upload the normal end goes through _end_upload; anything else that
            # closes the connection (a failed write, a reset) ends it incomplete, never 226
            if self.tls_state is TlsState.ESTABLISHED:
                self._read_error = self._read_error or "the data connection failed"
                self._end_upload()
                return
            if not self._resp:
                self._resp = ("426 Data connection closed; transfer aborted.", log.warning)
            self.close()
            return
        super().handle_close()

    def _schedule_read(self) -> None:
        """Come back without a socket event: records may wait in memory, the socket drained."""
        if not self._read_scheduled:
            # not self.call_later: those accumulate on the channel until it closes
            self._read_scheduled = True
            self.ioloop.call_later(0, self._resume_read, _errback=self.handle_error)

    def _resume_read(self) -> None:
        self._read_scheduled = False
        if self.connected and not self._closed and self.tls_state is TlsState.ESTABLISHED:
            self._bulk_read()

    def _store(self, data: memoryview) -> bool:
        self.tot_bytes_received += len(data)
        chunk: Any = data
        if self._data_wrapper is not None:
            chunk = self._data_wrapper(bytes(data))
        try:
            self.file_obj.write(chunk)
        except OSError as err:
            self._resp = (f"452 Cannot write file: {err.strerror}; transfer aborted.", log.warning)
            self.close()
            return False
        if self.upload_digest is not None:
            self.upload_digest.update(chunk)
        return True


def _binary_file(producer: object) -> Any | None:
    """The file of a binary-mode pyftpdlib FileProducer (it sends the file's bytes as they
    are, so they can be read straight into a buffer), else None."""
    if getattr(producer, "type", None) != "i":
        return None
    file = getattr(producer, "file", None)
    return file if callable(getattr(file, "readinto", None)) else None


# PassiveDTP's module differs between pyftpdlib 2.0 and 2.2; the handler names it in both
class PassiveRangeExhausted(OSError):
    """Every port of passive_ports is in use."""


# open passive listeners per client address, over every session and listener of the process
# (sessions outlive reloads, so not per configuration generation)
_passive_open: Counter[str] = Counter()


class FtpsPassiveDTP(FTPHandler.passive_dtp):
    """Passive data listener: addresses compared in one form, only ports of the range.

    On a dual-stack `*` listener the data connection comes from ::ffff:a.b.c.d while the
    session knows its client as a.b.c.d; pyftpdlib would refuse it as a foreign address.
    With every port of the range in use pyftpdlib falls back to a kernel port outside it,
    which firewalls drop: refused here instead.
    """

    _counted: str | None = None

    def __init__(self, cmd_channel: FtpsHandler, extmode: bool = False) -> None:
        super().__init__(cmd_channel, extmode)
        self._counted = cmd_channel.remote_ip
        _passive_open[self._counted] += 1

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
            _passive_open[self._counted] -= 1
            if _passive_open[self._counted] <= 0:
                del _passive_open[self._counted]
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
        if self._closed:  # timed out, or another connection came first
            sock.close()
            return None
        return super().handle_accepted(sock, client_address(peer, header))


class FtpsHandler(TlsChannel, ChecksumCommands, FTPHandler):
    """Control connection of one FTPS session on one listener."""

    dtp_handler = FtpsDataHandler
    passive_dtp = FtpsPassiveDTP
    proto_cmds: ClassVar[dict[str, Any]] = dict(FTPHandler.proto_cmds)
    proto_cmds.update(
        {
            "AUTH": {
                "perm": None,
                "auth": False,
                "arg": True,
                "help": "Syntax: AUTH <SP> TLS|TLS-C|TLS-P|SSL (secure the control channel).",
            },
            "PBSZ": {
                "perm": None,
                "auth": False,
                "arg": True,
                "help": "Syntax: PBSZ <SP> 0 (negotiate TLS buffer).",
            },
            "PROT": {
                "perm": None,
                "auth": False,
                "arg": True,
                "help": "Syntax: PROT <SP> C|P (clear or protected data channel).",
            },
            "CCC": {
                "perm": None,
                "auth": True,
                "arg": False,
                "help": "Syntax: CCC (clear the command channel).",
            },
            **CHECKSUM_CMDS,
        }
    )
    banner = "ftps-server ready."
    # commands read per event: each may queue a reply of ~1 KiB (HELP), and all lines of one
    # read are processed before the output bound is checked again
    ac_in_buffer_size = 1024
    _reading_paused = False
    server: AcceptingListener
    remote_ip: str

    def __init__(self, conn: Any, server: AcceptingListener, ioloop: Any = None) -> None:
        self.state: ServerState = server.state
        self.server_state = self.state  # the name auth's LoginHandler protocol uses
        self.listener_kind = server.kind
        self.listener_name = server.name
        self.peer_certificate: x509.Certificate | None = None
        self.login_pending = False
        self._tls_after_flush: ssl.SSLContext | None = None
        self._cleared_by_ccc = False
        self.session_context: ssl.SSLContext | None = None
        self._listing: DirectoryReader | None = None  # a directory being read for a reply
        self._pbsz = False
        self._prot = False
        # the final reply for the next transfer command when the data connection PASV/PORT
        # made was refused or closed before that command came
        self.data_connection_gone = ""
        settings = self.state.config.server
        self.timeout = settings.idle_timeout
        if settings.passive_ports:
            # a range, not a list: pyftpdlib copies it when it picks a port, and a list of
            # 3,000 ints kept by every idle session is ~100 KiB each
            self.passive_ports = range(settings.passive_ports[0], settings.passive_ports[1] + 1)
        self.authorizer = self.state.auth.authorizer
        self.abstracted_fs = self.state.auth.filesystem
        self.proxy_header = server.proxy_header
        self.session_log = SessionLog(self, transfer_log=self.state.config.log.transfer_log)
        super().__init__(conn, server, ioloop)
        if not self.connected:
            return
        self.local_ip = normalize_address(self.socket.getsockname()[0])
        self.remote_ip = normalize_address(str(self.remote_ip))
        header = self.proxy_header
        if header is not None and header.source and header.destination:
            # the client behind the balancer, and the address it dialled (picks the certificate)
            self.remote_ip, self.remote_port = normalize_address(header.source[0]), header.source[1]
            self.local_ip = normalize_address(header.destination[0])
        self.tls_usable = self.state.tls.usable(self.local_ip, self.listener_kind)
        self.tls_problem = self.state.tls.problem_for(self.local_ip)
        self.masquerade_address = self._nat_address()
        if self.tls_usable:
            auth = [] if self._implicit else ["AUTH TLS", "AUTH SSL"]
            self._extra_feats = [*auth, "PBSZ", "PROT"]
            if self._ccc_allowed:
                self._extra_feats.append("CCC")
        self.checksum_setup(settings)
        self.session_log.connected(int(self.remote_port))

    # --- policy

    @property
    def _implicit(self) -> bool:
        return self.listener_kind.endswith("implicit")

    @property
    def _ccc_allowed(self) -> bool:
        return self.state.config.tls.allow_ccc and not self.listener_kind.startswith("client")

    @property
    def _protection_required(self) -> bool:
        return self.state.config.tls.require_data_protection or self.listener_kind.startswith(
            "client"
        )

    @property
    def _plain_allowed(self) -> bool:
        return self.state.config.server.allow_plain_ftp and self.listener_kind == "explicit"

    @property
    def data_protected(self) -> bool:
        return self._prot

    def _nat_address(self) -> str | None:
        ip = ipaddress.ip_address(self.remote_ip)
        for rule in self.state.config.server.nat:
            if ip.version == rule.network.version and ip in rule.network:
                return rule.address
        if self.proxy_header is not None and self.proxy_header.destination:
            # behind a balancer the node's own address is useless to the client; the
            # address it dialled (the VIP) is where the passive range is forwarded
            dialled = ipaddress.ip_address(self.local_ip)
            return self.local_ip if dialled.version == 4 else None
        return None

    # --- connection lifecycle

    def handle(self) -> None:
        refusal = auth.connection_refusal(self)
        if refusal:
            self.respond(refusal)
            self.close_when_done()
            return
        if not self._implicit:
            if not self.tls_usable:
                self.banner = "ftps-server: TLS unavailable on this address (no valid certificate)."
            super().handle()
            return
        if not self.tls_usable:
            log.info(
                "closing implicit connection from %s on %s: %s",
                self.remote_ip,
                self.listener_name,
                self.tls_problem,
                extra=self.session_log.fields(),
            )
            self.close()
            return
        self.start_tls(self._own_context(), self.state.config.server.handshake_timeout)

    def _own_context(self) -> ssl.SSLContext:
        """This connection's own context (own session cache and ticket keys), made once.

        Data connections start with it too, not with the one SNI may switch to: OpenSSL
        keeps sessions and ticket keys in the context a handshake starts with. Still theirs
        after CCC.
        """
        if self.session_context is None:
            self.session_context = self.state.tls.context_for(self.local_ip, self.listener_kind)
            assert self.session_context is not None
        return self.session_context

    def tls_established(self) -> None:
        assert self.tls is not None
        der = self.tls.getpeercert(binary_form=True)
        self.peer_certificate = x509.load_der_x509_certificate(der) if der else None
        cipher = (self.tls.cipher() or ("?",))[0]
        version, resumed = str(self.tls.version()), self.tls.session_reused
        self.session_log.tls_established(version, cipher, resumed, self.peer_certificate)
        if self._implicit:
            FTPHandler.handle(self)  # the 220 banner, now inside TLS

    def tls_failed(self, reason: str) -> None:
        metrics.handshake_failed(reason, "control")
        self.session_log.tls_failed(reason)
        super().tls_failed(reason)

    def tls_io_events(self) -> int:
        blocked = self._output_blocked()
        if not blocked and self._reading_paused:
            self._unpause_reading()
        read = 0 if blocked else self.ioloop.READ
        return int(read | (self.ioloop.WRITE if self.producer_fifo else 0))

    def initiate_send(self) -> None:
        super().initiate_send()
        pending = self._tls_after_flush
        if pending is not None and not self.producer_fifo and self.connected:
            self._tls_after_flush = None
            self.start_tls(pending, self.state.config.server.handshake_timeout)
        self._gate_reading()

    # --- output bound: a client that does not read its replies is not read either

    def _output_backlog(self) -> int:
        queued = sum(len(item) for item in self.producer_fifo if isinstance(item, bytes))
        return queued + self.tls_backlog

    def _output_blocked(self) -> bool:
        return self._output_backlog() > OUTPUT_BOUND

    def _gate_reading(self) -> None:
        """Stop reading while the queued output is above OUTPUT_BOUND; start again below."""
        if self._closed or not self.connected or self.tls_state in _TLS_BUSY:
            return
        if self._output_blocked():
            events = self.ioloop.WRITE
            self._reading_paused = True
        elif self._reading_paused:
            events = self.ioloop.READ | (self.ioloop.WRITE if self.producer_fifo else 0)
            self._unpause_reading()
        else:
            return
        # pyftpdlib keeps two records of the registered events; keep both right
        current = getattr(self, "_current_io_events", None)
        if events != current or events != self._wanted_io_events:
            self.ioloop.modify(self._fileno, events)
            self._current_io_events = self._wanted_io_events = events

    def _unpause_reading(self) -> None:
        self._reading_paused = False
        if self.tls_active and self._tls_in is not None:
            # records may wait in the BIO with nothing new on the socket to signal them
            self.ioloop.call_later(0, self._resume_reading, _errback=self.handle_error)

    def _resume_reading(self) -> None:
        if self.connected and not self._closed and not self._reading_paused and self.tls_active:
            self.handle_read_event()

    def recv(self, buffer_size: int) -> bytes:
        if self._output_blocked():
            self._gate_reading()
            raise _RetryError  # pyftpdlib's handle_read takes it as "nothing to read now"
        return super().recv(buffer_size)

    # --- commands

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        if self.login_pending and cmd != "QUIT":
            self.respond("503 Login in progress; wait for the reply to PASS.")
            return
        clear_ok = self._plain_allowed or self._cleared_by_ccc
        if not self.tls_active and cmd not in _PRE_TLS_COMMANDS and not clear_ok:
            if not self.tls_usable:
                why = "TLS is unavailable on this address (no valid certificate)"
                self.respond(f"530 {why}; plain FTP is not allowed.")
            else:
                self.respond("530 TLS is required: send AUTH TLS first.")
            return
        if cmd in _DATA_COMMANDS and self._protection_required and not self._prot:
            self.respond("521 Data connections must be protected: send PBSZ 0 and PROT P first.")
            return
        listing_cmd = cmd in _TRANSFER_COMMANDS or (cmd == "STAT" and bool(args and args[0]))
        if self._listing is not None and listing_cmd:
            self.respond("503 A directory listing is still being read; wait for its reply.")
            return
        if cmd in _DATA_COMMANDS:
            self.data_connection_gone = ""
        if cmd in _TRANSFER_COMMANDS and self._no_data_connection():
            # pyftpdlib would answer 150 and wait for a connection that cannot come (the
            # one PASV/PORT made was refused or closed before this command)
            self.respond(self.data_connection_gone or _NO_DATA_CONNECTION, log.warning)
            self.data_connection_gone = ""
            return
        super().process_command(cmd, *args, **kwargs)

    def _data_path_open(self) -> bool:
        return (
            self.data_channel is not None
            or self._dtp_acceptor is not None
            or self._dtp_connector is not None
        )

    def _no_data_connection(self) -> bool:
        if self.data_channel is not None or not self.authenticated:
            return False
        return bool(self.data_connection_gone) or not self._data_path_open()

    def _virtual(self, filename: str) -> str:
        fs = getattr(self, "fs", None)
        return str(fs.fs2ftp(filename)) if fs is not None else filename

    def log_transfer(
        self, cmd: str, filename: str, receive: bool, completed: bool, elapsed: float, bytes: int
    ) -> None:
        # pyftpdlib calls this once per file transfer, complete or not
        metrics.transferred(receive, bytes)
        # called by the data handler's close(), while it is still self.data_channel
        dtp = self.data_channel
        reply = dtp._resp[0] if dtp is not None and dtp._resp else ""
        digest = getattr(dtp, "upload_digest", None)
        version, cipher = getattr(dtp, "tls_summary", ("none", "none"))
        self.session_log.transfer(
            Transfer(
                command=cmd,
                upload=receive,
                path=self._virtual(filename),
                real_path=filename,
                size=bytes,
                seconds=elapsed,
                result=transfer_result(completed, reply),
                reply=reply,
                binary=getattr(self, "_current_type", "i") != "a",
                tls_version=version,
                tls_cipher=cipher,
                sha256=digest.hexdigest() if digest is not None else None,
            )
        )

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if cmd == "PROXY" or line == "\x00":
            # a PROXY v1 line, or the NUL line of a v2 signature, from an address that is not
            # in proxy_from (or with proxy_protocol = no): a balancer we do not trust
            log.warning(
                "closed connection from %s on %s: PROXY protocol header from an address not "
                "in [server] proxy_from (or proxy_protocol = no)",
                self.remote_ip,
                self.listener_name,
                extra={"fields": {"REMOTE_ADDR": self.remote_ip, "LISTENER": self.listener_name}},
            )
            self.close()
            return
        if "\x00" in line:
            # no name or path holds a NUL, and os.path would raise ValueError on one deep
            # in pyftpdlib (seen by the fuzzer: an unhandled exception and a dropped session)
            self.respond("501 Syntax error: NUL byte in command.")
            return
        super().pre_process_command(line, cmd, arg)

    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None:
        withheld = ""
        if _has_control(cmd) or _has_control(arg):
            # a bare CR or LF would start a forged line in a text log, and what follows one
            # may be anything the client pipelined (a PASS line): log only the size
            cmd = re.sub(r"[\x00-\x1f\x7f].*", "", cmd, flags=re.S)[:16]
            withheld = f"<{len(arg)} characters withheld: control characters in the command line>"
        if cmd in FILE_COMMANDS:  # a structured entry instead of pyftpdlib's line
            # CR/LF: withheld as above; other controls (ESC in a name) are escaped by events
            broken = not arg or "\r" in arg or "\n" in arg
            path = withheld if broken else self._virtual(arg)
            self.session_log.command(cmd, path, respcode, respstr)
            return
        super().log_cmd(cmd, withheld or arg, respcode, respstr)

    # pyftpdlib's log wrappers put the client's USER name (and its own messages, which quote
    # paths) after `log_prefix`: escape the whole line, so no client text can forge entries
    def log(self, msg: str, logfun: Any = _pyftpdlib_log.info) -> None:
        if _STRUCTURED.match(msg) or self._transfer_reply(msg):
            logfun = _pyftpdlib_log.debug  # said by a session event already: only for --debug
        logfun(auth.log_safe(f"{self.log_prefix % self.__dict__} {msg}"))

    def _transfer_reply(self, msg: str) -> bool:
        """True for the final reply of a transfer: its event (REASON=) says it with fields."""
        dtp = self.data_channel
        return dtp is not None and bool(dtp._resp) and dtp._resp[0][4:] == msg

    def logline(self, msg: str, logfun: Any = _pyftpdlib_log.debug) -> None:
        if self._log_debug:
            logfun(auth.log_safe(f"{self.log_prefix % self.__dict__} {msg}"))

    def logerror(self, msg: str) -> None:
        _pyftpdlib_log.error(auth.log_safe(f"{self.log_prefix % self.__dict__} {msg}"))

    def ftp_USER(self, line: str) -> None:
        auth.user_command(self, line)

    def ftp_PASS(self, line: str) -> None:
        auth.pass_command(self, line)

    def ftp_AUTH(self, line: str) -> None:
        arg = line.strip().upper()
        if self.tls_state is not TlsState.PLAIN:
            self.respond("503 Already using TLS.")
        elif arg not in ("TLS", "TLS-C", "TLS-P", "SSL"):
            self.respond("504 AUTH type not supported (use TLS, TLS-C, TLS-P or SSL).")
        elif not self.tls_usable:
            log.info(
                "AUTH refused for %s on %s: %s",
                self.remote_ip,
                self.listener_name,
                self.tls_problem,
                extra=self.session_log.fields(),
            )
            self.respond(
                "431 TLS is unavailable on this address: no valid certificate is "
                "configured; contact the administrator."
            )
        else:
            if arg == "TLS-P":  # RFC 4217 TLS-P: data protected from the start
                self._pbsz = self._prot = True
            self.respond(f"234 AUTH {arg} successful.")
            self._tls_after_flush = self._own_context()
            self.initiate_send()

    def ftp_PBSZ(self, line: str) -> None:
        if not self.tls_active:
            self.respond("503 PBSZ not allowed on insecure control connection.")
            return
        self.respond("200 PBSZ=0 successful.")
        self._pbsz = True

    def ftp_PROT(self, line: str) -> None:
        arg = line.strip().upper()
        if not self.tls_active:
            self.respond("503 PROT not allowed on insecure control connection.")
        elif not self._pbsz:
            self.respond("503 You must issue the PBSZ command prior to PROT.")
        elif arg == "C":
            if self._protection_required:
                self.respond("534 Data protection is required on this listener: use PROT P.")
            else:
                self._prot = False
                self.respond("200 Protection set to Clear.")
        elif arg == "P":
            self._prot = True
            self.respond("200 Protection set to Private.")
        elif arg in ("S", "E"):
            self.respond(f"536 PROT {arg} unsupported (use C or P).")
        else:
            self.respond("504 Unrecognized PROT type (use C or P).")

    def ftp_CCC(self, line: str) -> None:
        if not self.tls_active:
            self.respond("533 Command channel is not protected.")
        elif not self._ccc_allowed:
            self.respond("534 CCC is not allowed on this server.")
        else:
            self.respond("200 Command channel cleared; data protection level unchanged.")
            self.clear_command_channel(self.state.config.server.handshake_timeout)

    def tls_cleared(self) -> None:
        self._cleared_by_ccc = True
        log.info(
            "control channel of %s cleared by CCC",
            self.remote_ip,
            extra=self.session_log.fields(),
        )

    def _passive_cap(self) -> int:
        settings = self.state.config.server
        if settings.max_passive_per_address:
            return settings.max_passive_per_address
        return max(1, len(self.passive_ports) // 2) if self.passive_ports else 0

    def _make_epasv(self, extmode: bool) -> None:
        cap = self._passive_cap()
        # PASV closes this session's own listener first: it does not count against it
        own = vars(self).get("_dtp_acceptor")
        held = _passive_open[self.remote_ip] - (own is not None)
        if cap and held >= cap:
            self._shutdown_connecting_dtp()
            log.warning(
                "refused PASV/EPSV from %s on %s (user %s): %d passive listeners open for "
                "this address, the limit is %d",
                self.remote_ip,
                self.listener_name,
                self.username or "-",
                held,
                cap,
                extra=self.session_log.fields(),
            )
            self.respond("425 Too many passive connections open from your address.")
            return
        try:
            super()._make_epasv(extmode)
        except PassiveRangeExhausted:
            self._dtp_acceptor = None
            log.warning(
                "refused PASV/EPSV from %s on %s (user %s): every port of the passive port "
                "range %d-%d is in use",
                self.remote_ip,
                self.listener_name,
                self.username or "-",
                self.passive_ports[0],
                self.passive_ports[-1],
                extra=self.session_log.fields(),
            )
            self.respond("425 No passive port free; try again later.")

    # --- listings: the directory is read in slices (listing.py), not in one loop turn

    def _read_directory(self, path: str, deliver: Callable[[Iterator[str], int], None]) -> None:
        def done(names: Iterator[str], count: int) -> None:
            self._listing = None
            if self.connected and not self._closed:
                deliver(names, count)

        def failed(err: OSError) -> None:
            self._listing = None
            if self.connected and not self._closed:
                self.respond(f"550 {strerror(err)}.")

        self._listing = DirectoryReader(self.ioloop, path, done, failed)

    def _is_listable_dir(self, path: str) -> bool | None:
        """True for a directory inside the home; None after answering an error."""
        try:
            isdir = bool(self.fs.isdir(path))
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        if isdir and not self.fs.validpath(path):
            self.respond("550 Path is outside the home directory.")
            return None
        return isdir

    def _push_listing(self, cmd: str, lines: Iterator[bytes]) -> None:
        if not self._data_path_open():  # e.g. the passive listener timed out meanwhile
            self.respond("425 Can't open data connection: it closed while the listing was read.")
            return
        self.push_dtp_data(BufferedIteratorProducer(lines), isproducer=True, cmd=cmd)

    def ftp_LIST(self, path: str) -> Any:
        isdir = self._is_listable_dir(path)
        if isdir is None:
            return None
        if not isdir:
            return super().ftp_LIST(path)
        self._read_directory(
            path, lambda names, _: self._push_listing("LIST", self.fs.format_list(path, names))
        )
        return path

    def ftp_NLST(self, path: str) -> Any:
        isdir = self._is_listable_dir(path)
        if isdir is None:
            return None
        if not isdir:
            return super().ftp_NLST(path)

        def lines(names: Iterator[str]) -> Iterator[bytes]:
            for name in names:
                yield f"{name}\r\n".encode(self.encoding, self.unicode_errors)

        self._read_directory(path, lambda names, _: self._push_listing("NLST", lines(names)))
        return path

    def ftp_MLSD(self, path: str) -> Any:
        isdir = self._is_listable_dir(path)
        if isdir is None:
            return None
        if not isdir:
            self.respond("501 No such directory.")
            return None
        perms = self.authorizer.get_perms(self.username)
        facts = self._current_facts
        self._read_directory(
            path,
            lambda names, _: self._push_listing(
                "MLSD", self.fs.format_mlsx(path, names, perms, facts)
            ),
        )
        return path

    def ftp_STAT(self, path: str) -> Any:
        if not path:
            return super().ftp_STAT(path)
        isdir = self._is_listable_dir(path)
        if isdir is None:
            return None
        if not isdir:
            return super().ftp_STAT(path)
        line = self.fs.fs2ftp(path)

        def deliver(names: Iterator[str], count: int) -> None:
            # on the control connection: bounded, whatever the directory holds
            shown = list(itertools.islice(names, STAT_LIST_LIMIT))
            self.push(f'213-Status of "{line}":\r\n')
            for entry in self.fs.format_list(path, shown):
                self.push(entry.decode(self.encoding, self.unicode_errors))
            if count > len(shown):
                hidden = count - len(shown)
                self.push(f" ... {hidden} more entries not shown; use LIST or MLSD.\r\n")
            self.respond("213 End of status.")

        self._read_directory(path, deliver)
        return path

    def close(self) -> None:
        if self._listing is not None:
            self._listing.cancel()
            self._listing = None
        super().close()  # closes the data connection first: its transfer is logged before
        self.session_log.disconnected()

    def ftp_SITE_CHMOD(self, path: str, mode: str) -> Any:
        try:
            too_high = int(mode, 8) > 0o777
        except ValueError:
            too_high = False  # pyftpdlib answers the syntax error
        if too_high:
            # setuid/setgid/sticky on files every user's service account owns
            self.respond("501 SITE CHMOD: modes above 0777 (setuid, setgid, sticky) are refused.")
            return None
        return super().ftp_SITE_CHMOD(path, mode)

    def ftp_REIN(self, line: str) -> None:
        self.respond("502 REIN is not supported over TLS.")

    def handle_timeout(self) -> None:
        if self.tls_state is TlsState.HANDSHAKE:
            self.tls_failed("handshake timed out")
        else:
            super().handle_timeout()  # queues 421 and closes once the output is sent
            if self.connected:
                # ... which never happens for a client that does not read
                self.ioloop.call_later(
                    STUCK_OUTPUT_GRACE, self._close_stuck, _errback=self.handle_error
                )

    def _close_stuck(self) -> None:
        if self.connected and not self._closed:
            log.info(
                "closing the connection of %s on %s: its output could not be sent",
                self.remote_ip,
                self.listener_name,
                extra=self.session_log.fields(),
            )
            self._tls_drop()  # no close_notify behind output that cannot drain
            self.close()
