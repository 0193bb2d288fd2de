"""pyftpdlib hooks: TLS on the control and data channels, the three FTPS modes, PBSZ/PROT/CCC.

Only what FTPS changes is overridden here; login policy lives in `auth`, TLS plumbing in
`tls_channel`, certificate choice in `tls`. A session keeps the configuration generation
(`ServerState`) it connected under, so a reload never changes a session in progress.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import ssl
from typing import Any, ClassVar

from cryptography import x509
from pyftpdlib.handlers import DTPHandler, FTPHandler

from ..config.model import normalize_address
from . import auth
from .checksum_commands import PROTO_CMDS as CHECKSUM_CMDS
from .checksum_commands import ChecksumCommands
from .proxied import Address, client_address, read_header
from .proxy_protocol import ProxyHeader
from .state import AcceptingListener, ServerState
from .tls_channel import HIGH_WATER, TlsChannel, TlsPeerGone, TlsState

__all__ = ["FtpsDataHandler", "FtpsHandler"]

log = logging.getLogger(__name__)

_BULK = 256 * 1024  # bytes per file read, TLS write and decrypt batch on data connections
_EVENT_BUDGET = 8 * 1024 * 1024  # bytes moved per IOLoop event before yielding to others
_DATA_COMMANDS = {"PASV", "EPSV", "PORT", "EPRT"}
_PRE_TLS_COMMANDS = {"AUTH", "FEAT", "QUIT", "NOOP", "SYST", "HELP", "OPTS"}


def _has_control(text: str) -> bool:
    """True when `text` holds a C0 control character or DEL."""
    return any(ch < " " or ch == "\x7f" for ch in text)


class FtpsDataHandler(TlsChannel, DTPHandler):
    """Data connection: TLS when PROT P, bulk reads and writes, session reuse enforced."""

    cmd_channel: FtpsHandler

    def __init__(self, sock: Any, cmd_channel: FtpsHandler) -> None:
        self._rbuf: bytearray | None = None
        self._read_scheduled = False
        super().__init__(sock, cmd_channel)
        context = cmd_channel.session_context
        if self.connected and cmd_channel.data_protected and context is not None:
            timeout = cmd_channel.state.config.server.handshake_timeout
            # No TLS 1.3 session tickets on data connections (OpenSSL copies the count into
            # each connection when it is made, so this touches only this one): clients never
            # read them during an upload, and closing with a ticket unread makes their kernel
            # send a reset, which loses the end of the stream where a balancer relays it
            # (curl 7.88 behind HAProxy: 3 of 24 uploads short, yet answered 226).
            # Resumption needs only the control connection's tickets.
            tickets = context.num_tickets
            context.num_tickets = 0
            try:
                self.start_tls(context, timeout)
            finally:
                context.num_tickets = tickets

    def tls_established(self) -> None:
        channel = self.cmd_channel
        reused = self.tls is not None and self.tls.session_reused
        if channel.state.config.tls.require_session_reuse and not reused:
            log.warning(
                "refused data connection from %s on %s: TLS session not resumed",
                channel.remote_ip,
                channel.listener_name,
                extra={"fields": {"REMOTE_ADDR": channel.remote_ip, "USER": channel.username}},
            )
            self._abort(
                "522 Data connection must resume the TLS session of the control "
                "connection (session reuse required)."
            )

    def tls_failed(self, reason: str) -> None:
        log.info(
            "TLS handshake on data connection from %s failed: %s",
            self.cmd_channel.remote_ip,
            reason,
        )
        if self.cmd is None and not self._initialized:
            # no transfer was asked on it yet (a client dropping a spare connection): a
            # 522 now would be read as the reply to the client's next command
            self._abort("")
            return
        self._abort(f"522 TLS negotiation on the data connection failed: {reason}.")

    def _abort(self, reply: str) -> None:
        self._resp = (reply, log.warning) if reply else ()
        self._tls_drop()  # no close_notify on a connection we refuse
        DTPHandler.close(self)

    def use_sendfile(self) -> bool:
        return self.tls_state is TlsState.PLAIN and bool(super().use_sendfile())

    def push_with_producer(self, producer: Any) -> None:
        if hasattr(producer, "buffer_size"):
            producer.buffer_size = _BULK
        super().push_with_producer(producer)

    def _next_chunk(self) -> bytes | None:
        """The next bytes to send from the producer queue, or None when it is empty."""
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
            data = first.more()
            if data:
                return bytes(data)
            fifo.popleft()
        return None

    def initiate_send(self) -> None:
        if self.tls_state is TlsState.PLAIN:
            super().initiate_send()
            return
        if self.tls_state is not TlsState.ESTABLISHED or self.tls is None:
            return  # the handshake's own events drive the channel until it is done
        moved = 0
        try:
            while moved < _EVENT_BUDGET and self.connected:
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
                if self._initialized:
                    self.handle_close()  # the client went away in the middle of a download
                else:
                    self._abort("")  # a spare connection closed by the client

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
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
                except (ssl.SSLError, OSError):
                    n = 0  # a broken stream ends the upload like an EOF; the log says how much
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
            self.transfer_finished = True
            self.handle_close()
        elif moved >= _EVENT_BUDGET:
            self._schedule_read()

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
        return True


# PassiveDTP's module differs between pyftpdlib 2.0 and 2.2; the handler names it in both
class FtpsPassiveDTP(FTPHandler.passive_dtp):
    """Passive data listener comparing addresses in one form.

    On a dual-stack `*` listener the data connection comes from ::ffff:a.b.c.d while the
    session knows its client as a.b.c.d; pyftpdlib would refuse it as a foreign address.
    """

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
        self._pbsz = False
        self._prot = False
        settings = self.state.config.server
        self.timeout = settings.idle_timeout
        if settings.passive_ports:
            # a range, not a list: pyftpdlib copies it when it picks a port, and a list of
            # 3,000 ints kept by every idle session is ~100 KiB each
            self.passive_ports = range(settings.passive_ports[0], settings.passive_ports[1] + 1)
        self.authorizer = self.state.auth.authorizer
        self.abstracted_fs = self.state.auth.filesystem
        self.proxy_header = server.proxy_header
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
        self.tls_context = self.state.tls.context_for(self.local_ip, self.listener_kind)
        self.tls_problem = self.state.tls.problem_for(self.local_ip)
        self.masquerade_address = self._nat_address()
        if self.tls_context is not None:
            auth = [] if self._implicit else ["AUTH TLS", "AUTH SSL"]
            self._extra_feats = [*auth, "PBSZ", "PROT"]
            if self._ccc_allowed:
                self._extra_feats.append("CCC")
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
            if self.tls_context is None:
                self.banner = "ftps-server: TLS unavailable on this address (no valid certificate)."
            super().handle()
            return
        if self.tls_context is None:
            log.info(
                "closing implicit connection from %s on %s: %s",
                self.remote_ip,
                self.listener_name,
                self.tls_problem,
            )
            self.close()
            return
        self.start_tls(self.tls_context, self.state.config.server.handshake_timeout)

    def tls_established(self) -> None:
        assert self.tls is not None
        # data connections resume against the context the control connection ended up
        # with (after SNI), and still may after CCC
        self.session_context = self.tls.context
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
        return int(self.ioloop.READ | (self.ioloop.WRITE if self.producer_fifo else 0))

    def initiate_send(self) -> None:
        super().initiate_send()
        pending = self._tls_after_flush
        if pending is not None and not self.producer_fifo and self.connected:
            self._tls_after_flush = None
            self.start_tls(pending, self.state.config.server.handshake_timeout)

    # --- commands

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        if self.login_pending and cmd != "QUIT":
            self.respond("503 Login in progress; wait for the reply to PASS.")
            return
        clear_ok = self._plain_allowed or self._cleared_by_ccc
        if not self.tls_active and cmd not in _PRE_TLS_COMMANDS and not clear_ok:
            if self.tls_context is None:
                why = "TLS is unavailable on this address (no valid certificate)"
                self.respond(f"530 {why}; plain FTP is not allowed.")
            else:
                self.respond("530 TLS is required: send AUTH TLS first.")
            return
        if cmd in _DATA_COMMANDS and self._protection_required and not self._prot:
            self.respond("521 Data connections must be protected: send PBSZ 0 and PROT P first.")
            return
        super().process_command(cmd, *args, **kwargs)

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
        if _has_control(cmd) or _has_control(arg):
            # a bare CR or LF would start a forged line in a text log, and what follows one
            # may be anything the client pipelined (a PASS line): log only the size
            cmd = re.sub(r"[\x00-\x1f\x7f].*", "", cmd, flags=re.S)[:16]
            arg = f"<{len(arg)} characters withheld: control characters in the command line>"
        super().log_cmd(cmd, arg, respcode, respstr)

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
        elif self.tls_context is None:
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
            self._tls_after_flush = self.tls_context
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
            self.clear_command_channel()

    def tls_cleared(self) -> None:
        self._cleared_by_ccc = True
        log.info("control channel of %s cleared by CCC", self.remote_ip)

    def ftp_REIN(self, line: str) -> None:
        self.respond("502 REIN is not supported over TLS.")

    def handle_timeout(self) -> None:
        if self.tls_state is TlsState.HANDSHAKE:
            self.tls_failed("handshake timed out")
        else:
            super().handle_timeout()
