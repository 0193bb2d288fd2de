"""Thread-safe hand-off of callbacks into a pyftpdlib IOLoop.

pyftpdlib's IOLoop has no `call_soon_threadsafe`: `call_later` mutates a heap the loop thread
reads without a lock. A worker thread therefore puts its callback on a queue and writes one
byte to a socketpair whose other end the loop polls; the loop thread then runs the queue.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections.abc import Callable
from typing import Any

from pyftpdlib.ioloop import AsyncChat

__all__ = ["FdChannel", "LoopWaker"]

log = logging.getLogger(__name__)


class LoopWaker(AsyncChat):
    """Runs callbacks queued from any thread on the IOLoop thread. Create it on that thread."""

    def __init__(self, ioloop: Any) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        super().__init__(self._reader, ioloop=ioloop)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Queue `callback` to run on the loop thread soon; callable from any thread."""
        self._queue.put(callback)
        try:
            self._writer.send(b"\0")
        except BlockingIOError:
            # the socket buffer is full of unread wake-up bytes: the loop is bound to wake
            # and will drain the whole queue, this callback included
            return
        except OSError as exc:
            log.error("cannot wake the event loop (closed?): %s", exc)

    # --- called by the IOLoop -----------------------------------------------------------

    def readable(self) -> bool:
        """Always interested in wake-up bytes."""
        return True

    def writable(self) -> bool:
        """Never writes through the loop."""
        return False

    def handle_read(self) -> None:
        """Drain the wake-up bytes, then run every queued callback."""
        while True:
            try:
                if not self._reader.recv(4096):
                    break
            except BlockingIOError:
                break  # drained: nothing more to read right now
        while True:
            try:
                callback = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                callback()
            except Exception:
                # one failing login callback must not stop the others nor the loop
                log.exception("callback from a worker thread failed")

    def handle_close(self) -> None:
        """Only our own close() ends the pair."""
        self.close()

    def close(self) -> None:
        """Unregister from the loop and close both ends."""
        super().close()
        self._writer.close()


class FdChannel:
    """A raw file descriptor on pyftpdlib's IOLoop (what `IOLoop.register` expects): read
    events only; subclasses define `handle_read_event`."""

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_write_event(self) -> None:
        """Never registered for writing."""

    def handle_close(self) -> None:
        """Closed by its owner."""
