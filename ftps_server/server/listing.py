"""Directory listings read in slices on the event loop, so a huge directory blocks nobody.

pyftpdlib reads and sorts a whole directory synchronously for LIST, NLST, MLSD and STAT:
with 100,000 entries that is ~0.1 s per command of loop time during which no other session
is served, and eight parallel LISTs queue up behind each other. Here a directory is read a
slice of entries per loop turn, each slice sorted on its own (a small sort), and the sorted
runs are merged lazily while the listing is sent: no step holds the loop for long.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from .pyftpdlib_adapter import call_soon, is_closed
from .wakeup import LoopWaker

__all__ = ["SLICE", "DirectoryReader"]

log = logging.getLogger(__name__)

SLICE = 500  # entries read (and sorted) per loop turn: well under a millisecond

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
