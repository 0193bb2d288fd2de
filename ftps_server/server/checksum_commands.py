"""FTP glue for checksums: HASH and OPTS HASH (draft-bryan-ftpext-hash), mod_digest's X-commands.

A mixin for the control handler, kept out of `ftp` so that module stays about FTPS. Everything
that is not FTP (names, ranges, reading, cache, limits, threads) is in `checksums`; here the
command is parsed, the file opened with the user's jail and 'r' permission checked as for RETR,
and the reply sent from the loop thread when the worker is done (through a `LoopWaker`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .. import checksums
from . import pyftpdlib_adapter as pyftpd
from .wakeup import LoopWaker

if TYPE_CHECKING:
    from ..config.model import ServerConfig

__all__ = ["PROTO_CMDS", "ChecksumCommands"]


def _x_command(cmd: str, algorithm: str) -> dict[str, Any]:
    return {
        "perm": None,  # checked by the handler: the argument is not only a path
        "auth": True,
        "arg": True,
        "help": f"Syntax: {cmd} <SP> file-name [<SP> start <SP> end] ({algorithm} of a file).",
    }


# entries for the handler's proto_cmds (pyftpdlib's table of auth, permission and argument rules)
PROTO_CMDS: dict[str, dict[str, Any]] = {
    "HASH": {
        "perm": None,  # checked by the handler, which also opens the file
        "auth": True,
        "arg": True,
        "help": "Syntax: HASH <SP> file-name (checksum, algorithm set by OPTS HASH).",
    },
    **{cmd: _x_command(cmd, alg) for cmd, alg in checksums.X_COMMANDS.items()},
}


class _Runtime:
    """The checksum workers and the waker that brings their results back to the loop."""

    service: checksums.Checksums | None = None
    waker: LoopWaker | None = None

    @classmethod
    def for_loop(cls, ioloop: Any) -> tuple[checksums.Checksums, LoopWaker]:
        if cls.service is None:
            cls.service = checksums.Checksums()
        if cls.waker is None or cls.waker.ioloop is not ioloop:
            if cls.waker is not None:
                cls.waker.close()
            cls.waker = LoopWaker(ioloop)
        return cls.service, cls.waker


class ChecksumCommands:
    """Mixin: put before pyftpdlib's FTPHandler in the bases; call `checksum_setup` in __init__."""

    if TYPE_CHECKING:  # provided by pyftpdlib's FTPHandler
        fs: Any
        authorizer: Any
        username: str
        ioloop: Any
        connected: bool

        def respond(self, resp: str, logfun: Any = ...) -> None: ...
        def run_as_current_user(self, function: Any, *args: Any) -> Any: ...
        def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None: ...

    def checksum_setup(self, settings: ServerConfig) -> None:
        """Per-session state; adds the HASH line to FEAT (call after the FTPS lines are set)."""
        self._checksum_busy = False
        self._hash_offered = settings.checksum_algorithms
        self._hash_algorithm = checksums.default_algorithm(self._hash_offered)
        features = [*pyftpd.extra_features(self), self._hash_feature()]
        pyftpd.set_extra_features(self, features)

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_checksum_busy", False) and cmd != "QUIT":
            # its reply is still to come: answering this one first would swap the two
            self.respond("503 Checksum in progress; wait for its reply.")
            return
        super().process_command(cmd, *args, **kwargs)  # type: ignore[misc]

    def _hash_feature(self) -> str:
        return checksums.hash_feature(self._hash_offered, self._hash_algorithm)

    def ftp_OPTS(self, line: str) -> None:
        name, _, arg = line.strip().partition(" ")
        if name.upper() != "HASH":
            super().ftp_OPTS(line)  # type: ignore[misc]
            return
        arg = arg.strip()
        if not arg:
            self.respond(f"200 {self._hash_algorithm}")
            return
        try:
            wanted = checksums.algorithm_name(arg)
        except ValueError:
            wanted = ""
        if wanted not in self._hash_offered:
            offered = ", ".join(self._hash_offered)
            self.respond(f"501 Unknown or disabled algorithm; selection unchanged ({offered}).")
            return
        self._hash_algorithm = wanted
        feats = [f for f in pyftpd.extra_features(self) if not f.startswith("HASH ")]
        pyftpd.set_extra_features(self, [*feats, self._hash_feature()])
        self.respond(f"200 {wanted}")

    def ftp_HASH(self, line: str) -> None:
        self._start_checksum("HASH", line, None, self._hash_algorithm)

    def ftp_XSHA256(self, line: str) -> None:
        self._x_checksum("XSHA256", line)

    def ftp_XSHA512(self, line: str) -> None:
        self._x_checksum("XSHA512", line)

    def ftp_XSHA1(self, line: str) -> None:
        self._x_checksum("XSHA1", line)

    def ftp_XMD5(self, line: str) -> None:
        self._x_checksum("XMD5", line)

    def ftp_XCRC(self, line: str) -> None:
        self._x_checksum("XCRC", line)

    def _x_checksum(self, cmd: str, line: str) -> None:
        path, wanted = checksums.split_range_argument(line)
        algorithm = checksums.X_COMMANDS[cmd]
        if algorithm not in self._hash_offered:
            self.respond(f"504 {algorithm} checksums are disabled on this server.")
            return
        self._start_checksum(cmd, path, wanted, algorithm)

    def _open_for_checksum(self, cmd: str, ftp_path: str) -> tuple[int, Any] | None:
        """The open file and its stat, with the jail and 'r' checked as for RETR; else reply."""
        path = self.fs.ftp2fs(ftp_path)
        if not self.fs.validpath(path):
            self.respond("550 Path is outside the home directory.")
        elif not self.authorizer.has_perm(self.username, "r", path):
            self.respond("550 Not enough privileges.")
        else:
            try:
                opened: tuple[int, Any] = self.run_as_current_user(checksums.open_regular, path)
                return opened
            except IsADirectoryError:
                # the draft's code for "not a file"; mod_digest's X-commands answer 550
                self.respond(f"{553 if cmd == 'HASH' else 550} {ftp_path}: not a regular file.")
            except OSError as err:
                self.respond(f"550 {ftp_path}: {err.strerror or err}.")
        return None

    def _start_checksum(
        self, cmd: str, ftp_path: str, wanted: checksums.ByteRange | None, algorithm: str
    ) -> None:
        opened = self._open_for_checksum(cmd, ftp_path)
        if opened is None:
            return
        fd, st = opened
        try:
            span = checksums.resolve_range(wanted, st.st_size)
        except checksums.RangeError as exc:
            os.close(fd)
            self.respond(f"501 {cmd}: {exc}.")
            return
        service, waker = _Runtime.for_loop(self.ioloop)
        cached = service.lookup(checksums.FileIdentity.of(st), algorithm, *span)
        if cached is not None:
            os.close(fd)
            self.respond(self._checksum_reply(cmd, algorithm, span, cached, ftp_path))
            return

        def done(outcome: checksums.Outcome) -> None:  # in the worker thread
            waker.call_soon_threadsafe(
                lambda: self._checksum_done(cmd, algorithm, span, ftp_path, outcome)
            )

        refusal = service.start(
            self.username,
            fd,
            algorithm,
            span,
            lambda: pyftpd.is_closed(self) or not self.connected,
            done,
        )
        if refusal is checksums.Refusal.USER:
            os.close(fd)
            self.respond("450 Too many checksums in progress for this user; try again later.")
        elif refusal is checksums.Refusal.SERVER:
            os.close(fd)
            self.respond("421 Server busy computing checksums; try again later.")
        else:
            self._checksum_busy = True

    def _checksum_reply(
        self, cmd: str, algorithm: str, span: tuple[int, int], digest: str, ftp_path: str
    ) -> str:
        if cmd == "HASH":
            return f"213 {algorithm} {span[0]}-{span[1]} {digest} {ftp_path}"
        return f"250 {digest.upper()}"  # mod_digest's form

    def _checksum_done(
        self,
        cmd: str,
        algorithm: str,
        span: tuple[int, int],
        ftp_path: str,
        outcome: checksums.Outcome,
    ) -> None:
        self._checksum_busy = False
        if pyftpd.is_closed(self) or not self.connected or outcome.cancelled:
            return
        if outcome.hexdigest is not None:
            reply = self._checksum_reply(cmd, algorithm, span, outcome.hexdigest, ftp_path)
        else:
            reply = f"450 {ftp_path}: {outcome.error}; try again."
        self.respond(reply)
        self.log_cmd(cmd, ftp_path, int(reply[:3]), reply[4:])
