"""Session events: one journal entry per thing that happens in an FTPS session.

Each event has a fixed MESSAGE_ID (`journal.message_ids`, explained in
systemd/ftps-server.catalog) and the fields an administrator filters on. Every entry of one
control connection and of its data connections carries the same SESSION_ID, so
``journalctl SESSION_ID=...`` tells a whole session and ``journalctl USER=bob
MESSAGE_ID=<transfer>`` every file bob moved. The handlers call one method of their
`SessionLog` per event; what the entry says is decided here, from plain values (no sockets,
no pyftpdlib), so it is tested without either.

Text a client chose (paths, certificate subjects) is escaped: a control character can neither
forge a line in a text log nor repaint a terminal that shows the journal.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from ..journal import message_ids
from ..journal.log import log_event
from ..journal.xferlog import append_line, xferlog_line
from ..pki.certs import fingerprint
from ..safe_text import escape_controls

__all__ = [
    "FILE_COMMANDS",
    "FileAction",
    "SessionLog",
    "SessionView",
    "Transfer",
    "transfer_result",
]

log = logging.getLogger(__name__)

#: final replies of a transfer that the client (or the network) cut short, not the server
_ABORT_CODES = {"", "421", "426"}


def transfer_result(completed: bool, reply: str) -> str:
    """ok | aborted (cut short by the client or the network) | failed (refused or a local error).

    `reply` is the transfer's final reply ("" when none was sent, e.g. after ABOR).
    """
    if completed:
        return "ok"
    return "aborted" if reply[:3] in _ABORT_CODES else "failed"


class SessionView(Protocol):
    """What the events need from a control connection (the FTP handler)."""

    remote_ip: str
    listener_name: str
    username: str


@dataclass(frozen=True)
class Transfer:
    """One file transfer over a data connection, as it ended."""

    command: str  # RETR, STOR, APPE, STOU
    upload: bool
    path: str  # as the client sees it (inside its home)
    real_path: str  # on the server's file system (the xferlog's filename)
    size: int  # bytes moved over the data connection
    seconds: float
    result: str  # ok | aborted | failed (see transfer_result)
    reply: str = ""  # the final reply, said when the result is not ok
    binary: bool = True
    tls_version: str = "none"
    tls_cipher: str = "none"
    sha256: str | None = None  # of the bytes stored, for an upload from offset 0

    @property
    def direction(self) -> str:
        return "upload" if self.upload else "download"

    def fields(self) -> dict[str, str]:
        """The transfer's own journal fields (the session adds SESSION_ID, USER, ...)."""
        out = {
            "DIRECTION": self.direction,
            "PATH": escape_controls(self.path),
            "BYTES": str(self.size),
            "DURATION_MS": str(round(self.seconds * 1000)),
            "RESULT": self.result,
            "COMMAND": self.command,
            "TLS_VERSION": self.tls_version,
            "TLS_CIPHER": self.tls_cipher,
        }
        if self.result != "ok" and self.reply:
            out["REASON"] = escape_controls(self.reply)
        if self.sha256 and self.result != "failed":  # what was kept on disk: the digest holds
            out["SHA256"] = self.sha256
        return out


@dataclass(frozen=True)
class FileAction:
    """DELE, RNFR/RNTO, MKD or RMD, with how it went."""

    action: str  # delete | rename | mkdir | rmdir
    path: str
    code: int  # the reply code
    reply: str = ""
    new_path: str | None = None  # rename: the destination

    @property
    def ok(self) -> bool:
        return self.code < 400

    def fields(self) -> dict[str, str]:
        out = {
            "ACTION": self.action,
            "PATH": escape_controls(self.path),
            "RESULT": "ok" if self.ok else "failed",
        }
        if self.new_path is not None:
            out["NEW_PATH"] = escape_controls(self.new_path)
        if not self.ok:
            out["REASON"] = escape_controls(f"{self.code} {self.reply}")
        return out


#: pyftpdlib command -> the action it is (XMKD/XRMD are the RFC 775 spellings)
FILE_COMMANDS = {
    "DELE": "delete",
    "MKD": "mkdir",
    "XMKD": "mkdir",
    "RMD": "rmdir",
    "XRMD": "rmdir",
    "RNFR": "rename",
    "RNTO": "rename",
}


@dataclass
class _Totals:
    uploads: int = 0
    downloads: int = 0
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0


class SessionLog:
    """The journal entries of one control connection and its data connections."""

    def __init__(
        self,
        session: SessionView,
        *,
        transfer_log: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = secrets.token_hex(8)
        self._session = session
        self._transfer_log = transfer_log
        self._clock = clock
        self._started: float | None = None  # set by connected()
        self._totals = _Totals()
        self._rename_from: str | None = None

    def fields(self) -> dict[str, dict[str, str]]:
        """``extra=`` for any other log call about this session: its SESSION_ID and peer."""
        return {"fields": self._common_fields({})}

    def _common_fields(self, out: dict[str, str]) -> dict[str, str]:
        out["SESSION_ID"] = self.id
        out["REMOTE_ADDR"] = self._session.remote_ip
        out["LISTENER"] = self._session.listener_name
        user = self._session.username
        if user:
            out["USER"] = escape_controls(user)
        return out

    def _emit(self, level: int, message_id: str, text: str, fields: dict[str, str]) -> None:
        every = self._common_fields({"MESSAGE_ID": message_id})
        every.update(fields)
        log_event(log, level, text, every)

    def connected(self, remote_port: int) -> None:
        """A client connected (before any TLS)."""
        self._started = self._clock()
        ip, listener = self._session.remote_ip, self._session.listener_name
        self._emit(
            logging.INFO,
            message_ids.SESSION_CONNECT,
            f"session {self.id}: connection from {ip} port {remote_port} on {listener}",
            {"REMOTE_PORT": str(remote_port)},
        )

    def tls_established(
        self, version: str, cipher: str, resumed: bool, client_cert: x509.Certificate | None
    ) -> None:
        """The control connection's TLS handshake completed."""
        fields = {
            "TLS_VERSION": version,
            "TLS_CIPHER": cipher,
            "TLS_RESUMED": "yes" if resumed else "no",
        }
        who = ""
        if client_cert is not None:
            subject = escape_controls(client_cert.subject.rfc4514_string())
            fields["CLIENT_CERT_SUBJECT"] = subject
            fields["CLIENT_CERT_FINGERPRINT"] = fingerprint(client_cert)
            who = f", client certificate {subject}"
        self._emit(
            logging.INFO,
            message_ids.SESSION_TLS,
            f"session {self.id}: TLS {version} {cipher} with {self._session.remote_ip}{who}",
            fields,
        )

    def tls_failed(self, reason: str, *, data: bool = False, data_peer: str = "") -> None:
        """A TLS handshake failed: on the control connection, or on a data connection."""
        ip, listener = self._session.remote_ip, self._session.listener_name
        reason = escape_controls(reason)
        fields = {"REASON": reason, "CHANNEL": "data" if data else "control"}
        if data:
            fields["DATA_REMOTE_ADDR"] = data_peer or ip
            text = f"TLS handshake on data connection from {data_peer or ip} failed: {reason}"
        else:
            text = f"TLS handshake from {ip} on {listener} failed: {reason}"
        level = logging.INFO if data else logging.WARNING
        self._emit(level, message_ids.SESSION_TLS_FAILED, text, fields)

    def transfer(self, transfer: Transfer) -> None:
        """A transfer ended (whatever its result): one journal entry, one xferlog line."""
        totals = self._totals
        if transfer.upload:
            totals.uploads += 1
            totals.bytes_uploaded += transfer.size
        else:
            totals.downloads += 1
            totals.bytes_downloaded += transfer.size
        path, user = escape_controls(transfer.path), escape_controls(self._session.username or "-")
        text = (
            f"{transfer.direction} {path!r} by {user}: {transfer.result}, "
            f"{transfer.size} bytes in {transfer.seconds:.3f} s"
        )
        level = logging.INFO if transfer.result == "ok" else logging.WARNING
        self._emit(level, message_ids.TRANSFER, text, transfer.fields())
        if self._transfer_log is not None:
            line = xferlog_line(
                when=time.time(),
                seconds=transfer.seconds,
                remote_host=self._session.remote_ip,
                size=transfer.size,
                filename=escape_controls(transfer.real_path),
                binary=transfer.binary,
                incoming=transfer.upload,
                user=self._session.username,
                complete=transfer.result == "ok",
            )
            append_line(self._transfer_log, line)

    def command(self, cmd: str, path: str, code: int, reply: str) -> bool:
        """A command pyftpdlib logs (`log_cmd`); True when it was a file action logged here."""
        action = FILE_COMMANDS.get(cmd)
        if action is None:
            return False
        if cmd == "RNFR":
            if code < 400:  # 350: the rename is logged with its RNTO
                self._rename_from = path
                return True
            event = FileAction(action, path, code, reply)
        elif cmd == "RNTO":
            source, self._rename_from = self._rename_from, None
            if source is None:  # 503: RNTO without RNFR
                event = FileAction(action, "", code, reply, new_path=path)
            else:
                event = FileAction(action, source, code, reply, new_path=path)
        else:
            event = FileAction(action, path, code, reply)
        self.file_action(event)
        return True

    def file_action(self, event: FileAction) -> None:
        """A file or directory was deleted, renamed or made (or the attempt failed)."""
        target = f" to {escape_controls(event.new_path)!r}" if event.new_path is not None else ""
        outcome = "ok" if event.ok else f"failed: {event.code} {escape_controls(event.reply)}"
        user = escape_controls(self._session.username or "-")
        self._emit(
            logging.INFO if event.ok else logging.WARNING,
            message_ids.FILE_ACTION,
            f"{event.action} {escape_controls(event.path)!r}{target} by {user}: {outcome}",
            event.fields(),
        )

    def disconnected(self) -> None:
        """The control connection closed: the session's totals (once, if it connected)."""
        if self._started is None:
            return
        duration_ms = round((self._clock() - self._started) * 1000)
        self._started = None
        t = self._totals
        self._emit(
            logging.INFO,
            message_ids.SESSION_DISCONNECT,
            f"session {self.id} of {self._session.remote_ip} ended after {duration_ms} ms: "
            f"{t.uploads} uploads ({t.bytes_uploaded} bytes), "
            f"{t.downloads} downloads ({t.bytes_downloaded} bytes)",
            {
                "DURATION_MS": str(duration_ms),
                "UPLOADS": str(t.uploads),
                "DOWNLOADS": str(t.downloads),
                "BYTES_UPLOADED": str(t.bytes_uploaded),
                "BYTES_DOWNLOADED": str(t.bytes_downloaded),
            },
        )
