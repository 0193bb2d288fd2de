"""The TLS record engine of one connection: an `ssl.SSLObject` over two memory BIOs.

Bytes from the peer go in (`feed`, `feed_eof`), bytes for the peer come out (`take`), clear
text is read and written in between; the handshake, close_notify and CCC's unwrap are steps
that either complete or wait for more bytes from the peer. No sockets and no event loop:
`tls_channel` moves the bytes for pyftpdlib's channels, and the engine is tested with two
engines talking to each other.

    PLAIN --begin--> HANDSHAKE --ok--> ESTABLISHED --close/CCC--> CLOSING --> PLAIN
"""

from __future__ import annotations

import contextlib
import enum
import ssl
from collections.abc import Callable

__all__ = ["TlsEngine", "TlsState", "describe_ssl_error", "require_close_notify"]


class TlsState(enum.Enum):
    PLAIN = "plain"
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"


_ALLOWED = {
    TlsState.PLAIN: {TlsState.HANDSHAKE},
    TlsState.HANDSHAKE: {TlsState.ESTABLISHED, TlsState.PLAIN},
    TlsState.ESTABLISHED: {TlsState.CLOSING, TlsState.PLAIN},
    TlsState.CLOSING: {TlsState.PLAIN},
}


def describe_ssl_error(exc: BaseException) -> str:
    """A short human reason for a failed handshake, e.g. 'certificate verify failed: ...'."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or exc.strerror or str(exc)).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def require_close_notify(context: ssl.SSLContext) -> None:
    """Make a TCP end without close_notify read as what it is: a truncated stream.

    Python 3.11.0-3.11.3 (Debian 12 ships 3.11.2) set OP_IGNORE_UNEXPECTED_EOF on every new
    context; OpenSSL then reports a cut-off stream as a clean close, and an upload cut short
    would be stored as complete (226) whatever [tls] upload_eof says."""
    context.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


class TlsEngine:
    """TLS state, the SSLObject and its BIOs for one connection (server side)."""

    __slots__ = ("close_notify", "incoming", "outgoing", "peer_eof", "sslobj", "state")

    def __init__(self) -> None:
        self.state = TlsState.PLAIN
        self.sslobj: ssl.SSLObject | None = None
        self.incoming: ssl.MemoryBIO | None = None
        self.outgoing: ssl.MemoryBIO | None = None
        self.peer_eof = False  # the peer's bytes ended (TCP EOF or reset)
        self.close_notify = False  # the peer ended TLS with close_notify (a clean end of data)

    # --- state

    def set_state(self, new: TlsState) -> None:
        """Move to `new`; an illegal transition raises RuntimeError."""
        if new is not self.state and new not in _ALLOWED[self.state]:
            raise RuntimeError(f"illegal TLS transition {self.state.value} -> {new.value}")
        self.state = new

    def begin(self) -> None:
        """Start a handshake: fresh BIOs, no SSLObject yet (see `wrap`)."""
        self.set_state(TlsState.HANDSHAKE)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.peer_eof = False

    def wrap(self, context: ssl.SSLContext) -> ssl.SSLObject:
        """The server-side SSLObject over this engine's BIOs (not yet kept: see `sslobj`)."""
        assert self.incoming is not None and self.outgoing is not None
        return context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def drop(self) -> None:
        """Forget TLS at once (no close_notify): back to PLAIN."""
        self.state = TlsState.PLAIN
        self.sslobj = None

    # --- bytes from and for the peer

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the peer sent (copied into the BIO at once); empty is its EOF."""
        assert self.incoming is not None
        if data:
            self.incoming.write(data)
        else:
            self.peer_eof = True
            self.incoming.write_eof()

    @property
    def pending_out(self) -> int:
        """Encrypted bytes waiting to go to the peer."""
        return self.outgoing.pending if self.outgoing is not None else 0

    @property
    def input_waiting(self) -> bool:
        """Bytes from the peer not yet read out: in the BIO, decrypted in the SSLObject, or
        its EOF (which the next read reports)."""
        incoming, sslobj = self.incoming, self.sslobj
        return bool(
            self.peer_eof
            or (incoming is not None and incoming.pending)
            or (sslobj is not None and sslobj.pending())
        )

    def take(self, size: int) -> bytes:
        """Up to `size` encrypted bytes for the peer."""
        assert self.outgoing is not None
        return self.outgoing.read(size)

    def leftover(self) -> bytes:
        """What the peer sent after its close_notify (clear text after CCC)."""
        assert self.incoming is not None
        return self.incoming.read()

    # --- steps

    def step(self, action: Callable[[], object]) -> bool:
        """Run a TLS step (handshake, unwrap): True when it completed, False when it waits for
        bytes from the peer. Other SSL errors propagate."""
        try:
            action()
        except ssl.SSLWantReadError:
            return False
        return True

    def send_close_notify(self) -> None:
        """Queue our close_notify; the peer's is not waited for."""
        assert self.sslobj is not None
        with contextlib.suppress(ssl.SSLWantReadError):
            self.sslobj.unwrap()

    def read_into(self, buffer: memoryview) -> int | None:
        """Decrypt into `buffer`: a count, 0 at the end of the data, None when no complete
        record is there (feed more). A clean end sets `close_notify`."""
        assert self.sslobj is not None
        try:
            n = self.sslobj.read(len(buffer), buffer)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            self.close_notify = True
            return 0
        except ssl.SSLEOFError:
            return 0  # TCP closed without close_notify: close_notify stays False
        except ssl.SSLError as exc:
            # the same, from Python before 3.11.3 (Debian 12), which does not map it
            if exc.reason == "UNEXPECTED_EOF_WHILE_READING":
                return 0
            raise
        if not n and len(buffer):
            self.close_notify = True  # SSLObject.read reports close_notify as 0
        return int(n)

    def write(self, data: bytes) -> int:
        """Encrypt `data` into records for the peer."""
        assert self.sslobj is not None
        return int(self.sslobj.write(data))
