"""The control connection: TLS on it, the three FTPS modes, PBSZ/PROT/CCC, the output bound.

Only what FTPS changes is overridden here; login policy lives in `auth`, TLS plumbing in
`tls_channel`, certificate choice in `tls`, the data connection in `data_channel`, the
listing commands in `listing`. A session keeps the configuration generation
(`ServerState`) it connected under, so a reload never changes a session in progress.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

from cryptography import x509
from pyftpdlib.handlers import FTPHandler

from ..config.ini import normalize_address
from ..config.model import host_port
from ..safe_text import before_controls, escape_controls, has_controls
from . import auth, metrics
from . import pyftpdlib_adapter as pyftpd
from .checksum_commands import PROTO_CMDS as CHECKSUM_CMDS
from .checksum_commands import ChecksumCommands
from .data_channel import (
    NO_DATA_CONNECTION,
    FtpsDataHandler,
    FtpsPassiveDTP,
    PassiveRangeExhausted,
    passive_open,
)
from .events import FILE_COMMANDS, SessionLog, Transfer, transfer_result
from .listing import DirectoryReader, ListingCommands
from .state import AcceptingListener, ServerState
from .tls import SessionTls
from .tls_channel import TlsChannel, TlsState
from .tls_openssl import CachedSession

__all__ = ["FtpsDataHandler", "FtpsHandler"]

log = logging.getLogger(__name__)
_pyftpdlib_log = logging.getLogger("pyftpdlib")

_DATA_COMMANDS = {"PASV", "EPSV", "PORT", "EPRT"}
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
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _would_log(logfun: Any) -> bool:
    """False when `logfun`, a bound Logger method, would drop its record (so the line is
    not built and escaped for nothing); True for anything else."""
    logger, level = getattr(logfun, "__self__", None), _LEVELS.get(getattr(logfun, "__name__", ""))
    return not isinstance(logger, logging.Logger) or level is None or logger.isEnabledFor(level)


class FtpsHandler(TlsChannel, ChecksumCommands, ListingCommands, pyftpd.PassiveHook, FTPHandler):
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
        self._tls_after_flush: SessionTls | None = None
        self._cleared_by_ccc = False
        self.session_tls: SessionTls | None = None
        self._tls_cached: CachedSession | None = None  # see tls_established
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
            ccc = ["CCC"] if self._ccc_allowed else []
            pyftpd.set_extra_features(self, [*auth, "PBSZ", "PROT", *ccc])
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
        rules = self.state.config.server.nat
        if rules:
            ip = ipaddress.ip_address(self.remote_ip)
            for rule in rules:
                if ip.version == rule.network.version and ip in rule.network:
                    return rule.address
        if self.proxy_header is not None and self.proxy_header.destination:
            # behind a balancer the node's own address is useless to the client; the
            # address it dialled (the VIP) is where the passive range is forwarded
            dialled = ipaddress.ip_address(self.local_ip)
            return self.local_ip if dialled.version == 4 else None
        return None

    def __repr__(self) -> str:
        # pyftpdlib formats its handlers into a debug line on every close, debug on or not:
        # its own repr walks the session and the data channel's file object every time
        session = getattr(getattr(self, "session_log", None), "id", "-")
        peer = host_port(getattr(self, "remote_ip", "?"), getattr(self, "remote_port", 0))
        return f"<{type(self).__name__} session {session} {peer}>"

    __str__ = __repr__

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
        self.start_tls(self._session_tls().context, self.state.config.server.handshake_timeout)

    def _session_tls(self) -> SessionTls:
        """This connection's TLS (tls.py), made once.

        Data connections start with its context too, not with one SNI may switch to:
        OpenSSL keeps sessions and ticket keys in the context a handshake starts with. Still
        theirs after CCC.
        """
        if self.session_tls is None:
            self.session_tls = self.state.tls.session_for(self.local_ip, self.listener_kind)
            assert self.session_tls is not None
        return self.session_tls

    def tls_wrap(self, context: ssl.SSLContext) -> ssl.SSLObject:
        assert self.session_tls is not None
        return self.session_tls.bind(super().tls_wrap(context))

    def tls_established(self) -> None:
        assert self.tls is not None and self.session_tls is not None
        self._tls_cached = self.session_tls.cache_entry(self.tls)
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
            self.start_tls(pending.context, self.state.config.server.handshake_timeout)
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
            self.respond(self.data_connection_gone or NO_DATA_CONNECTION, log.warning)
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
        """The client's view of a real path, for log entries."""
        fs = getattr(self, "fs", None)
        if fs is None:
            return filename
        # a path under the home is cut by its text: pyftpdlib's fs2ftp would resolve every
        # component again (a path check the command itself already made)
        root, path = fs.root.rstrip("/"), os.path.normpath(filename)
        if path.startswith(root + "/"):
            return path[len(root) :]
        return str(fs.fs2ftp(filename))

    def log_transfer(
        self, cmd: str, filename: str, receive: bool, completed: bool, elapsed: float, bytes: int
    ) -> None:
        # pyftpdlib calls this once per file transfer, complete or not
        metrics.transferred(receive, bytes)
        # called by the data handler's close(), while it is still self.data_channel
        dtp = self.data_channel
        reply = pyftpd.transfer_reply(dtp) if dtp is not None else ""
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
                binary=pyftpd.transfer_type(self) != "a",
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
        if has_controls(cmd) or has_controls(arg):
            # a bare CR or LF would start a forged line in a text log, and what follows one
            # may be anything the client pipelined (a PASS line): log only the size. Any
            # control character withholds, so pyftpdlib's line never needs one escaped
            cmd = before_controls(cmd)[:16]
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
    def _log_line(self, msg: str) -> str:
        return escape_controls(f"{self.log_prefix % self.__dict__} {msg}")

    def log(self, msg: str, logfun: Any = _pyftpdlib_log.info) -> None:
        debug = _pyftpdlib_log.debug
        if logfun != debug and (_STRUCTURED.match(msg) or self._transfer_reply(msg)):
            logfun = debug  # said by a session event already: only for --debug
        if _would_log(logfun):  # pyftpdlib logs every reply at debug: most lines are dropped
            logfun(self._log_line(msg))

    def _transfer_reply(self, msg: str) -> bool:
        """True for the final reply of a transfer: its event (REASON=) says it with fields."""
        reply = pyftpd.transfer_reply(self.data_channel) if self.data_channel is not None else ""
        return bool(reply) and reply[4:] == msg

    def logline(self, msg: str, logfun: Any = _pyftpdlib_log.debug) -> None:
        if pyftpd.debug_lines(self) and _would_log(logfun):
            logfun(self._log_line(msg))

    def logerror(self, msg: str) -> None:
        _pyftpdlib_log.error(self._log_line(msg))

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
            self._tls_after_flush = self._session_tls()
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

    def make_passive(self, extmode: bool, open_listener: Callable[[], None]) -> None:
        cap = self._passive_cap()
        # PASV closes this session's own listener first: it does not count against it
        own = pyftpd.own_passive_listener(self)
        held = passive_open[self.remote_ip] - (own is not None)
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
                extra=self.session_log.fields(),
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
                extra=self.session_log.fields(),
            )
            self.respond("425 No passive port free; try again later.")

    def close(self) -> None:
        self._cancel_listing()
        super().close()  # closes the data connection first: its transfer is logged before
        if self._tls_cached is not None:
            self._tls_cached.forget()
            self._tls_cached = None
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
                extra=self.session_log.fields(),
            )
            self._tls_drop()  # no close_notify behind output that cannot drain
            self.close()
