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

from ..config.model import normalize_address
from . import auth
from . import pyftpdlib_adapter as pyftpd
from .checksum_commands import PROTO_CMDS as CHECKSUM_CMDS
from .checksum_commands import ChecksumCommands
from .listing import DirectoryReader
from .state import AcceptingListener, ServerState
from .tls import CONTROL_TICKETS
from .tls_channel import HIGH_WATER, TlsChannel, TlsPeerGone, TlsState, describe_ssl_error
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
        self._read_scheduled = False
        self._read_error = ""
        self._listing = False  # sending a listing (formatting costs time, not bytes)
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
        log.info(
            "TLS handshake on data connection from %s failed: %s",
            self.cmd_channel.remote_ip,
            reason,
        )
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
        DTPHandler.close(self)

    def use_sendfile(self) -> bool:
        return self.tls_state is TlsState.PLAIN and bool(super().use_sendfile())

    def push_with_producer(self, producer: Any) -> None:
        # set before pushing: push_with_producer starts sending at once, and pyftpdlib sets
        # self.cmd only afterwards when the data connection was already open (125)
        self._listing = isinstance(producer, pyftpd.BufferedIteratorProducer)
        if hasattr(producer, "buffer_size"):
            producer.buffer_size = _BULK
        super().push_with_producer(producer)

    def _next_chunk(self) -> bytes | None:
        """The next bytes to send from the producer queue, or None when it is empty."""
        return pyftpd.next_chunk(self.producer_fifo)

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
                if self.tls_backlog >= HIGH_WATER and not self._tls_flush():
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
                    self._refuse(_NO_DATA_CONNECTION)  # a spare connection closed by the client

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        if self._accepted:
            self._open_upload()
            if pyftpd.is_closed(self):
                return
        if self.tls_state is TlsState.ESTABLISHED and self._tls_in and self._tls_in.pending:
            self._schedule_read()

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
        return True


class PassiveRangeExhausted(OSError):
    """Every port of passive_ports is in use."""


# open passive listeners per client address, over every session and listener of the process
# (sessions outlive reloads, so not per configuration generation)
_passive_open: Counter[str] = Counter()


class FtpsPassiveDTP(pyftpd.PassiveDTP):
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

    def bind(self, address: Any) -> None:
        if address[1] == 0 and self.cmd_channel.passive_ports is not None:
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
        return super().handle_accepted(sock, addr)


class FtpsHandler(TlsChannel, ChecksumCommands, pyftpd.PassiveHook, FTPHandler):
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
        super().__init__(conn, server, ioloop)
        if not self.connected:
            return
        self.local_ip = normalize_address(self.socket.getsockname()[0])
        self.remote_ip = normalize_address(str(self.remote_ip))
        self.tls_usable = self.state.tls.usable(self.local_ip, self.listener_kind)
        self.tls_problem = self.state.tls.problem_for(self.local_ip)
        self.masquerade_address = self._nat_address()
        if self.tls_usable:
            auth = [] if self._implicit else ["AUTH TLS", "AUTH SSL"]
            ccc = ["CCC"] if self._ccc_allowed else []
            pyftpd.set_extra_features(self, [*auth, "PBSZ", "PROT", *ccc])
        self.checksum_setup(settings)

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
        log.debug(
            "TLS %s %s with %s on %s",
            self.tls.version(),
            (self.tls.cipher() or ("?",))[0],
            self.remote_ip,
            self.listener_name,
        )
        if self._implicit:
            FTPHandler.handle(self)  # the 220 banner, now inside TLS

    def tls_failed(self, reason: str) -> None:
        log.warning(
            "TLS handshake from %s on %s failed: %s",
            self.remote_ip,
            self.listener_name,
            reason,
            extra={"fields": {"REMOTE_ADDR": self.remote_ip, "LISTENER": self.listener_name}},
        )
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
        if pyftpd.is_closed(self) or not self.connected or self.tls_state in _TLS_BUSY:
            return
        if self._output_blocked():
            events = self.ioloop.WRITE
            self._reading_paused = True
        elif self._reading_paused:
            events = self.ioloop.READ | (self.ioloop.WRITE if self.producer_fifo else 0)
            self._unpause_reading()
        else:
            return
        pyftpd.set_io_events(self, events)

    def _unpause_reading(self) -> None:
        self._reading_paused = False
        if self.tls_active and self._tls_in is not None:
            # records may wait in the BIO with nothing new on the socket to signal them
            pyftpd.call_soon(self.ioloop, self._resume_reading, errback=self.handle_error)

    def _resume_reading(self) -> None:
        if (
            self.connected
            and not pyftpd.is_closed(self)
            and not self._reading_paused
            and self.tls_active
        ):
            self.handle_read_event()

    def recv(self, buffer_size: int) -> bytes:
        if self._output_blocked():
            self._gate_reading()
            raise pyftpd.RetryError  # pyftpdlib's handle_read takes it as "nothing to read now"
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
        return pyftpd.data_path_open(self)

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
        result = "completed" if completed else "aborted"
        version, cipher = getattr(self.data_channel, "tls_summary", ("none", "none"))
        log.log(
            logging.INFO if completed else logging.WARNING,
            "%s %r %s %s bytes in %.3f s",  # %r: a file name may hold control characters
            cmd,
            self._virtual(filename),
            result,
            bytes,
            elapsed,
            extra={
                "fields": {
                    "REMOTE_ADDR": self.remote_ip,
                    "USER": self.username,
                    "COMMAND": cmd,
                    "RESULT": result,
                    "BYTES": str(bytes),
                    "TLS_VERSION": version,
                    "TLS_CIPHER": cipher,
                }
            },
        )

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if "\x00" in line:
            # no name or path holds a NUL, and os.path would raise ValueError on one deep
            # in pyftpdlib (seen by the fuzzer: an unhandled exception and a dropped session)
            self.respond("501 Syntax error: NUL byte in command.")
            return
        super().pre_process_command(line, cmd, arg)

    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None:
        if _has_control(cmd) or _has_control(arg):
            # a bare CR or LF would start a forged line in a text log, and what follows one
            # may be anything the client pipelined (a PASS line): log only the size
            cmd = re.sub(r"[\x00-\x1f\x7f].*", "", cmd, flags=re.S)[:16]
            arg = f"<{len(arg)} characters withheld: control characters in the command line>"
        super().log_cmd(cmd, arg, respcode, respstr)

    # pyftpdlib's log wrappers put the client's USER name (and its own messages, which quote
    # paths) after `log_prefix`: escape the whole line, so no client text can forge entries
    def log(self, msg: str, logfun: Any = _pyftpdlib_log.info) -> None:
        logfun(auth.log_safe(f"{self.log_prefix % self.__dict__} {msg}"))

    def logline(self, msg: str, logfun: Any = _pyftpdlib_log.debug) -> None:
        if pyftpd.debug_lines(self):
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
        log.info("control channel of %s cleared by CCC", self.remote_ip)

    def _passive_cap(self) -> int:
        settings = self.state.config.server
        if settings.max_passive_per_address:
            return settings.max_passive_per_address
        return max(1, len(self.passive_ports) // 2) if self.passive_ports else 0

    def make_passive(self, extmode: bool, open_listener: Callable[[], None]) -> None:
        cap = self._passive_cap()
        # PASV closes this session's own listener first: it does not count against it
        own = pyftpd.own_passive_listener(self)
        held = _passive_open[self.remote_ip] - (own is not None)
        if cap and held >= cap:
            pyftpd.close_data_path(self)
            log.warning(
                "refused PASV/EPSV from %s on %s (user %s): %d passive listeners open for "
                "this address, the limit is %d",
                self.remote_ip,
                self.listener_name,
                self.username or "-",
                held,
                cap,
                extra={"fields": {"REMOTE_ADDR": self.remote_ip, "USER": self.username}},
            )
            self.respond("425 Too many passive connections open from your address.")
            return
        try:
            open_listener()
        except PassiveRangeExhausted:
            pyftpd.drop_passive_listener(self)
            log.warning(
                "refused PASV/EPSV from %s on %s (user %s): every port of the passive port "
                "range %d-%d is in use",
                self.remote_ip,
                self.listener_name,
                self.username or "-",
                self.passive_ports[0],
                self.passive_ports[-1],
                extra={"fields": {"REMOTE_ADDR": self.remote_ip, "USER": self.username}},
            )
            self.respond("425 No passive port free; try again later.")

    # --- listings: the directory is read in slices (listing.py), not in one loop turn

    def _read_directory(self, path: str, deliver: Callable[[Iterator[str], int], None]) -> None:
        def done(names: Iterator[str], count: int) -> None:
            self._listing = None
            if self.connected and not pyftpd.is_closed(self):
                deliver(names, count)

        def failed(err: OSError) -> None:
            self._listing = None
            if self.connected and not pyftpd.is_closed(self):
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
        self.push_dtp_data(pyftpd.BufferedIteratorProducer(lines), isproducer=True, cmd=cmd)

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
        facts = pyftpd.mlst_facts(self)
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
        super().close()

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
                pyftpd.call_soon(
                    self.ioloop,
                    self._close_stuck,
                    errback=self.handle_error,
                    delay=STUCK_OUTPUT_GRACE,
                )

    def _close_stuck(self) -> None:
        if self.connected and not pyftpd.is_closed(self):
            log.info(
                "closing the connection of %s on %s: its output could not be sent",
                self.remote_ip,
                self.listener_name,
            )
            self._tls_drop()  # no close_notify behind output that cannot drain
            self.close()
