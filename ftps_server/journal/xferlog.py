"""The classic wu-ftpd `xferlog` transfer log (`[log] transfer_log`), read by log analysers.

One line per transfer, fields separated by single spaces (xferlog(5)):

    current-time transfer-time remote-host file-size filename transfer-type
    special-action-flag direction access-mode username service-name
    authentication-method authenticated-user-id completion-status

e.g. ``Mon Nov 30 07:11:11 2026 1 192.0.2.7 5000000 /srv/ftp/bob/x.bin b _ i r bob ftp 0 * c``.
The filename has its whitespace replaced by ``_`` (as ProFTPD does) so that a name never
shifts the fields after it. Each line is one `os.write` to a file opened with O_APPEND: short
enough for the event loop, whole even when another process appends too. Before each write the
file's identity is compared with the path's, so a file moved away by logrotate (`create`) is
reopened at the next transfer without a reload; `copytruncate` works as is (O_APPEND).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

__all__ = ["TransferLogFile", "append_line", "close_all", "xferlog_line"]

log = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s")
_MODE = 0o640  # LogsDirectory= is 0750; readable by the service group (e.g. for fail2ban)
_ERROR_INTERVAL = 60.0  # seconds between two journal entries about a failing transfer log


def xferlog_line(
    *,
    when: float,
    seconds: float,
    remote_host: str,
    size: int,
    filename: str,
    binary: bool,
    incoming: bool,
    user: str,
    complete: bool,
) -> str:
    """One xferlog line (with its newline) for a transfer that ended at `when` (epoch)."""
    fields = [
        time.asctime(time.localtime(when)),  # "Mon Nov  3 07:11:11 2026", local time
        str(max(1, round(seconds))),  # whole seconds, at least 1 as wu-ftpd writes it
        remote_host,
        str(size),
        _WHITESPACE.sub("_", filename) or "-",
        "b" if binary else "a",
        "_",  # special-action-flag: no compression or tar on the fly
        "i" if incoming else "o",
        "r",  # access-mode: a real (configured) user, never anonymous or guest
        _WHITESPACE.sub("_", user) or "-",
        "ftp",  # service-name
        "0",  # authentication-method: none (RFC 931 ident is not used)
        "*",  # authenticated-user-id: not available
        "c" if complete else "i",
    ]
    return " ".join(fields) + "\n"


class TransferLogFile:
    """An append-only log file, reopened when the path no longer names the open file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._last_error = -_ERROR_INTERVAL

    def _current_fd(self) -> int:
        if self._fd is not None:
            try:
                on_disk, held = os.stat(self.path), os.fstat(self._fd)
                if (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
                    return self._fd
            except FileNotFoundError:
                pass  # rotated away and not recreated: make it again
            self.close()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
        self._fd = os.open(self.path, flags, _MODE)
        return self._fd

    def append(self, line: str) -> bool:
        """Write `line`; False (and a journal entry at most once a minute) when that fails."""
        try:
            os.write(self._current_fd(), line.encode("utf-8", "backslashreplace"))
            return True
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_error >= _ERROR_INTERVAL:
                self._last_error = now
                log.error("cannot write the transfer log %s: %s", self.path, exc)
            self.close()
            return False

    def close(self) -> None:
        """Close the file (the next `append` opens it again)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                log.debug("closing the transfer log %s failed", self.path)


_files: dict[Path, TransferLogFile] = {}


def append_line(path: Path, line: str) -> bool:
    """Append `line` to the transfer log at `path` (opened once per process and path)."""
    file = _files.get(path)
    if file is None:
        file = _files[path] = TransferLogFile(path)
    return file.append(line)


def close_all() -> None:
    """Close every transfer log (e.g. on reload); each is reopened at its next line."""
    for file in _files.values():
        file.close()
    _files.clear()
