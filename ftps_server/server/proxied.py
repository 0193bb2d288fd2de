"""Read the PROXY protocol header off a freshly accepted socket, on the IOLoop, then hand on.

A connection from `[server] proxy_from` (when `proxy_protocol = yes`) belongs to a reader
until its header is complete; only then does pyftpdlib's handler see the socket, with the
addresses the header names. Bytes are peeked and only the header's are taken (`take`), so the
FTP or TLS bytes the balancer forwards right behind it stay in the socket for the handler.
A connection that closes, sends anything else or is not done within handshake_timeout is
closed and logged.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from ..config.ini import normalize_address
from .proxy_protocol import MAX_HEADER_BYTES, ProxyHeader, ProxyHeaderError, parse, take
from .pyftpdlib_adapter import call_soon

__all__ = ["Address", "HeaderReader", "client_address", "read_header"]

log = logging.getLogger(__name__)

Address = tuple[str, int]
Done = Callable[[socket.socket, Address, ProxyHeader], Any]


def client_address(peer: Address, header: ProxyHeader) -> Address:
    """The address to treat the connection as coming from: the header's source if it has one."""
    if header.source is None:  # LOCAL (health check), UNKNOWN, UNSPEC: the balancer itself
        return peer
    return normalize_address(header.source[0]), header.source[1]


def read_header(
    sock: socket.socket, peer: Address, ioloop: Any, timeout: float, where: str, done: Done
) -> None:
    """Start a `HeaderReader`; a failure closes this connection only, never the listener."""
    try:
        HeaderReader(sock, peer, ioloop, timeout, where, done)
    except Exception:
        # an exception out of handle_accepted reaches the listener's handle_error, which
        # closes the listening socket: keep it to this one connection
        log.exception("cannot read the PROXY header from %s on %s", peer[0], where)
        sock.close()


class HeaderReader:
    """Owns one accepted socket until its PROXY header is read; an IOLoop channel meanwhile."""

    def __init__(
        self,
        sock: socket.socket,
        peer: Address,
        ioloop: Any,
        timeout: float,
        where: str,
        done: Done,
    ) -> None:
        self.socket, self.peer, self.ioloop, self.where = sock, peer, ioloop, where
        self._done = done
        self._buffer = b""
        self._released = False
        sock.setblocking(False)  # accept() hands out blocking sockets
        self._fd = sock.fileno()
        ioloop.register(self._fd, self, ioloop.READ)
        self._timer = call_soon(ioloop, self._expire, errback=self.handle_error, delay=timeout)

    # --- what pyftpdlib's IOLoop calls

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            peeked = self.socket.recv(MAX_HEADER_BYTES - len(self._buffer), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"connection error before the PROXY header: {exc.strerror or exc}")
            return
        if not peeked:
            self._fail("closed before sending a PROXY header")
            return
        try:
            wanted = take(self._buffer, peeked)
            # the kernel holds these bytes already (peeked), so one recv returns them all
            self._buffer += self.socket.recv(wanted)
            header = parse(self._buffer)
        except ProxyHeaderError as exc:
            self._fail(str(exc))
            return
        except OSError as exc:
            self._fail(f"connection error in the PROXY header: {exc.strerror or exc}")
            return
        if header is not None:
            self._release()
            self._done(self.socket, self.peer, header)

    def handle_write_event(self) -> None:
        pass

    def handle_close(self) -> None:
        self._fail("closed before sending a PROXY header")

    def handle_error(self) -> None:
        log.exception("error reading the PROXY header from %s on %s", self.peer[0], self.where)
        self.close()

    def close(self) -> None:
        if not self._released:
            self._release()
            self.socket.close()

    # ---

    def _expire(self) -> None:
        self._fail("no complete PROXY header within handshake_timeout")

    def _fail(self, reason: str) -> None:
        log.warning(
            "closed connection from %s on %s: %s",
            self.peer[0],
            self.where,
            reason,
            extra={"fields": {"REMOTE_ADDR": self.peer[0], "LISTENER": self.where}},
        )
        self.close()

    def _release(self) -> None:
        """Stop watching the socket (it stays open): the handler registers it anew."""
        self._released = True
        if not self._timer.cancelled:
            self._timer.cancel()
        self.ioloop.unregister(self._fd)
