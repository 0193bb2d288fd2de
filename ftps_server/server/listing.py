"""Directory listings read in slices on the event loop, so a huge directory blocks nobody.

pyftpdlib reads and sorts a whole directory synchronously for LIST, NLST, MLSD and STAT:
with 100,000 entries that is ~0.1 s per command of loop time during which no other session
is served, and eight parallel LISTs queue up behind each other. Here a directory is read a
slice of entries per loop turn, each slice sorted on its own (a small sort), and the sorted
runs are merged lazily while the listing is sent: no step holds the loop for long.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pyftpdlib.filesystems import FilesystemError

from . import pyftpdlib_adapter as pyftpd
from .pyftpdlib_adapter import call_soon, is_closed
from .wakeup import LoopWaker

__all__ = ["SLICE", "STAT_LIST_LIMIT", "DirectoryReader", "ListingCommands", "strerror"]

log = logging.getLogger(__name__)

SLICE = 500  # entries read (and sorted) per loop turn: well under a millisecond
STAT_LIST_LIMIT = 1000  # entries a STAT <dir> reply shows on the control connection


def strerror(err: BaseException) -> str:
    """pyftpdlib's wording of a filesystem error."""
    return getattr(err, "strerror", None) or str(err)


_wakers: dict[int, LoopWaker] = {}  # per IOLoop: makes its poll return for the next slice


def _kick(ioloop: Any) -> None:
    """Make the loop's next poll return at once.

    The daemon polls with a fixed timeout, so a call_later(0) alone waits up to that long
    when no socket is busy: 100 slices would take 20 s on an idle server.
    """
    waker = _wakers.get(id(ioloop))
    if waker is None or waker.ioloop is not ioloop or is_closed(waker):
        waker = _wakers[id(ioloop)] = LoopWaker(ioloop)
    waker.call_soon_threadsafe(_nothing)


def _nothing() -> None:
    """The wake-up's own callback: the point is the wake-up, the slice is scheduled."""


class DirectoryReader:
    """Reads `path` a slice per loop turn; then calls `done(names, count)` or `failed(error)`.

    `names` is a lazy iterator over the sorted entry names (a merge of sorted runs), `count`
    how many there are.
    `cancel()` stops it (the session went away); neither callback runs afterwards.
    """

    def __init__(
        self,
        ioloop: Any,
        path: str,
        done: Callable[[Iterator[str], int], None],
        failed: Callable[[OSError], None],
    ) -> None:
        self._ioloop = ioloop
        self._done, self._failed = done, failed
        self._runs: list[list[str]] = []
        self._timer: Any = None
        self._cancelled = False
        try:
            self._entries: Any = os.scandir(path)
        except OSError as err:
            self._entries = None
            error = err  # the except clause unbinds err before the call runs
            self._schedule(lambda: self._failed(error))
            return
        self._schedule(self._step)

    def _schedule(self, step: Callable[[], None]) -> None:
        self._timer = call_soon(self._ioloop, step, errback=self._error)
        _kick(self._ioloop)

    def _error(self) -> None:
        log.exception("reading a directory listing failed")
        self.cancel()
        self._failed(OSError(5, "Input/output error"))

    def _step(self) -> None:
        if self._cancelled:
            return
        run: list[str] = []
        try:
            for entry in self._entries:
                run.append(entry.name)
                if len(run) >= SLICE:
                    break
        except OSError as err:
            self.cancel()
            self._failed(err)
            return
        if run:
            run.sort()
            self._runs.append(run)
        if len(run) >= SLICE:
            self._schedule(self._step)
            return
        self._entries.close()
        self._entries = None
        self._done(heapq.merge(*self._runs), sum(len(run) for run in self._runs))

    def cancel(self) -> None:
        """Stop reading; no callback runs after this."""
        self._cancelled = True
        if self._timer is not None and not self._timer.cancelled:
            self._timer.cancel()
        if self._entries is not None:
            self._entries.close()
            self._entries = None


class ListingCommands:
    """Mixin before pyftpdlib's FTPHandler: LIST, NLST, MLSD and STAT <dir> read the directory
    in slices (`DirectoryReader`), not in one loop turn; `_listing` is the one being read."""

    _listing: DirectoryReader | None

    if TYPE_CHECKING:  # provided by pyftpdlib's FTPHandler
        fs: Any
        authorizer: Any
        username: str
        ioloop: Any
        connected: bool
        encoding: str
        unicode_errors: str

        def respond(self, resp: str, logfun: Any = ...) -> None: ...
        def push(self, data: str) -> None: ...
        def push_dtp_data(
            self, data: Any, isproducer: bool = ..., file: Any = ..., cmd: Any = ...
        ) -> None: ...
        def _data_path_open(self) -> bool: ...

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
            return super().ftp_LIST(path)  # type: ignore[misc]
        self._read_directory(
            path, lambda names, _: self._push_listing("LIST", self.fs.format_list(path, names))
        )
        return path

    def ftp_NLST(self, path: str) -> Any:
        isdir = self._is_listable_dir(path)
        if isdir is None:
            return None
        if not isdir:
            return super().ftp_NLST(path)  # type: ignore[misc]

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
            return super().ftp_STAT(path)  # type: ignore[misc]
        isdir = self._is_listable_dir(path)
        if isdir is None:
            return None
        if not isdir:
            return super().ftp_STAT(path)  # type: ignore[misc]
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

    def _cancel_listing(self) -> None:
        """Stop reading a directory (the session is closing)."""
        if self._listing is not None:
            self._listing.cancel()
            self._listing = None
