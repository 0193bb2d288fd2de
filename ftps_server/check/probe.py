"""The network half of `ftps-server check`: one FTPS connection attempt, as a client sees it.

An attempt connects over TCP, does the `220` / `AUTH TLS` / `234` exchange on explicit ports,
the TLS handshake, and then one FTP exchange over TLS (the banner on implicit ports, `NOOP` on
explicit ones). That last exchange matters: with TLS 1.3 a server that requires a client
certificate finishes the handshake from the client's point of view and sends its refusal (alert
`certificate required`, or just a close) only afterwards, so only the first read tells whether the
client was let in.

Every blocking call gets the time left until the run's deadline, so a listener that accepts TCP
and never says a word costs at most that. Nothing here judges what it saw; `verdict` does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from ..config.model import listener_name
from ..safe_text import escape_controls

__all__ = ["Attempt", "Target", "run_attempt"]

_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
# A banner longer than this is not an FTP server. Bytes received count (line ends too) and
# so do lines: an endless banner of empty lines must stop here, not at the run's deadline.
_MAX_REPLY = 16 * 1024
_MAX_REPLY_LINES = 100
_WAITING = {  # what a timed-out attempt was waiting for, by the stage it had reached
    "tcp": "the TCP connection",
    "banner": "the 220 banner",
    "auth": "the reply to AUTH TLS",
    "handshake": "the TLS handshake",
    "session": "the first reply over TLS",
}


@dataclass(frozen=True)
class Target:
    """One listener as the check reaches it: `bind` is the configured address (maybe `*`).

    server_name: sent as SNI, to check a certificate section chosen by name rather than by the
    address; None (no SNI) for the certificate the address itself serves.
    """

    address: str
    bind: str
    kind: str
    port: int
    server_name: str | None = None
    remote: bool = False  # `check -H`: a host name is sent as SNI, as FTPS clients do

    @property
    def sni(self) -> str | None:
        """The name sent in the handshake: the SNI probe's, or with -H the host name given."""
        if self.server_name or not self.remote:
            return self.server_name
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return self.address
        return None  # an address is never sent as SNI (RFC 6066)

    @property
    def implicit(self) -> bool:
        """True when TLS starts at once on connect."""
        return self.kind.endswith("implicit")

    @property
    def client_cert(self) -> bool:
        """True on the ports that must refuse clients without a certificate."""
        return self.kind.startswith("client_cert")

    @property
    def label(self) -> str:
        """`address:port kind`, the name operators see."""
        sni = f" SNI {self.server_name}" if self.server_name else ""
        return f"{listener_name(self.address, self.port, self.kind)}{sni}"


@dataclass
class Attempt:
    """What one connection saw. `admitted` is the client-certificate question's answer.

    admitted: True when the server answered an FTP command over TLS; False when it refused the
    client in or right after the handshake (alert, close, reset); None when the attempt never got
    that far or the server said nothing in time.
    """

    with_certificate: bool
    stage: str = "tcp"  # last stage reached: tcp, banner, auth, handshake, session
    error: str | None = None
    auth_reply: str | None = None
    verify_error: str | None = None
    leaf_der: bytes | None = None
    chain_der: tuple[bytes, ...] = ()
    tls_version: str | None = None
    cipher: str | None = None
    cipher_bits: int | None = None
    admitted: bool | None = None
    refusal: str | None = None
    reply: str | None = None
    elapsed: float = 0.0

    @property
    def handshake_done(self) -> bool:
        """True when the TLS handshake completed (the served certificate is known)."""
        return self.leaf_der is not None


class _Stop(Exception):
    """Ends an attempt early; the message is already recorded on the Attempt."""


class _Deadline:
    def __init__(self, at: float) -> None:
        self.at = at

    def left(self, attempt: Attempt, what: str) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            attempt.error = f"timed out waiting for {what}"
            raise _Stop
        return remaining


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        # reason is OpenSSL's short name, e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED
        reason = getattr(exc, "reason", None)
        text = str(reason).lower().replace("_", " ") if reason else str(exc)
        return f"TLS error: {text}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _is_alert(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
    return bool(reason) and "ALERT" in str(reason).upper()


class _Replies:
    """Reads FTP replies (multi-line aware) from a plain or TLS socket within the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline, attempt: Attempt) -> None:
        self.sock, self.deadline, self.attempt = sock, deadline, attempt
        self.buffer = b""
        self.taken = 0  # bytes of the current reply consumed, line ends included

    def _line(self, what: str) -> bytes:
        while b"\n" not in self.buffer:
            if self.taken + len(self.buffer) > _MAX_REPLY:
                raise ValueError(f"{what}: no end of reply after {_MAX_REPLY} bytes")
            self.sock.settimeout(self.deadline.left(self.attempt, what))
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionAbortedError(0, "connection closed by the server")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.taken += len(line) + 1
        return line.rstrip(b"\r")

    def read(self, what: str) -> tuple[int, str]:
        """One complete reply: (code, text of all its lines, control characters escaped).
        Raises ValueError if it is not FTP or longer than the reply caps."""
        self.taken = 0
        first = _REPLY_LINE.match(self._line(what))
        if not first:
            raise ValueError(f"{what}: not an FTP reply")
        code, lines = first[1], [first[0]]
        more = first[2] == b"-"
        while more:
            if len(lines) >= _MAX_REPLY_LINES or self.taken > _MAX_REPLY:
                raise ValueError(
                    f"{what}: no end of reply after {len(lines)} lines ({self.taken} bytes)"
                )
            line = self._line(what)
            lines.append(line)
            more = not (line.startswith(code + b" ") or line == code)
        # whoever runs the listener chose these bytes: never raw on a terminal or in JSON
        text = " / ".join(escape_controls(x.decode("utf-8", "replace")) for x in lines)
        return int(code), text


def _context_sock(ctx: ssl.SSLContext, sock: socket.socket, target: Target) -> ssl.SSLSocket:
    # SNI only when a name is being checked: without it the server picks the certificate by the
    # local address, which is what the plain probes judge
    return ctx.wrap_socket(sock, server_hostname=target.sni, do_handshake_on_connect=False)


def served_chain(tls: ssl.SSLSocket) -> tuple[bytes, ...]:
    """DER certificates the server sent, leaf first (empty if this Python cannot tell).

    Python 3.13 has SSLSocket.get_unverified_chain() returning DER bytes; 3.10-3.12 have the
    same method only on the private _sslobj, returning _ssl.Certificate objects.
    """
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return ()
    try:
        chain: list[Any] = getter() or []
    except (ssl.SSLError, ValueError):
        return ()
    der_form = getattr(ssl, "_ssl", None)
    encoding = getattr(der_form, "ENCODING_DER", 2)
    return tuple(c if isinstance(c, bytes) else c.public_bytes(encoding) for c in chain)


def _explicit_prelude(sock: socket.socket, deadline: _Deadline, attempt: Attempt) -> None:
    replies = _Replies(sock, deadline, attempt)
    attempt.stage = "banner"
    code, text = replies.read("the 220 banner")
    if code != 220:
        attempt.error = f"banner is not 220: {text}"
        raise _Stop
    attempt.stage = "auth"
    sock.settimeout(deadline.left(attempt, "sending AUTH TLS"))
    sock.sendall(b"AUTH TLS\r\n")
    code, text = replies.read("the reply to AUTH TLS")
    attempt.auth_reply = text
    if code != 234:
        attempt.error = f"AUTH TLS refused: {text}"
        raise _Stop
    if replies.buffer:
        attempt.error = "server sent data after 234 before the TLS handshake"
        raise _Stop


def _handshake(tls: ssl.SSLSocket, deadline: _Deadline, attempt: Attempt) -> None:
    attempt.stage = "handshake"
    tls.settimeout(deadline.left(attempt, "the TLS handshake"))
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        attempt.verify_error = exc.verify_message or _describe(exc)
        attempt.error = f"certificate does not verify: {attempt.verify_error}"
        raise _Stop from None
    except TimeoutError:
        attempt.error = "timed out waiting for the TLS handshake"
        raise _Stop from None
    except (ssl.SSLError, OSError) as exc:
        # only a TLS alert is a refusal of this client; a reset or close means the server could
        # not do TLS at all (e.g. it has no usable certificate for this address)
        if _is_alert(exc):
            attempt.admitted, attempt.refusal = False, f"in the handshake: {_describe(exc)}"
        attempt.error = f"TLS handshake failed: {_describe(exc)}"
        raise _Stop from None
    attempt.leaf_der = tls.getpeercert(binary_form=True)
    attempt.chain_der = served_chain(tls)
    cipher = tls.cipher()
    attempt.tls_version = tls.version()
    if cipher:
        attempt.cipher, attempt.cipher_bits = cipher[0], cipher[2]


def _session(tls: ssl.SSLSocket, deadline: _Deadline, attempt: Attempt, implicit: bool) -> None:
    """The first FTP exchange over TLS: proves the server let this client in."""
    attempt.stage = "session"
    replies = _Replies(tls, deadline, attempt)
    what = "the 220 banner over TLS" if implicit else "the reply to NOOP over TLS"
    try:
        if not implicit:
            tls.settimeout(deadline.left(attempt, "sending NOOP"))
            tls.sendall(b"NOOP\r\n")
        _, attempt.reply = replies.read(what)
    except TimeoutError:
        attempt.error = f"timed out waiting for {what}"
        return
    except (ssl.SSLError, OSError) as exc:
        attempt.admitted, attempt.refusal = False, f"after the handshake: {_describe(exc)}"
        attempt.error = f"server ended the session after the handshake: {_describe(exc)}"
        return
    attempt.admitted = True


def _connect(target: Target, deadline: _Deadline, attempt: Attempt) -> socket.socket:
    timeout = deadline.left(attempt, "connecting")
    try:
        return socket.create_connection((target.address, target.port), timeout=timeout)
    except TimeoutError:
        attempt.error = "timed out waiting for the TCP connection"
    except OSError as exc:
        attempt.error = f"cannot connect: {_describe(exc)}"
    raise _Stop


def _converse(
    sock: socket.socket, target: Target, ctx: ssl.SSLContext, deadline: _Deadline, attempt: Attempt
) -> None:
    """Everything after TCP connect; closes what it opened."""
    try:
        if not target.implicit:
            _explicit_prelude(sock, deadline, attempt)
        sock = _context_sock(ctx, sock, target)
        _handshake(sock, deadline, attempt)
        _session(sock, deadline, attempt, target.implicit)
    except TimeoutError:
        attempt.error = f"timed out waiting for {_WAITING[attempt.stage]}"
    except (OSError, ValueError) as exc:
        attempt.error = f"{attempt.stage}: {_describe(exc)}"
    finally:
        sock.close()  # the TLS socket when wrapped: wrapping detaches the plain one


def run_attempt(target: Target, ctx: ssl.SSLContext, deadline_at: float, *, cert: bool) -> Attempt:
    """Connect to `target` with `ctx` and record everything seen; never raises for I/O."""
    attempt = Attempt(with_certificate=cert)
    deadline = _Deadline(deadline_at)
    started = time.monotonic()
    # _Stop ends the attempt early once its reason is recorded on `attempt`
    with contextlib.suppress(_Stop):
        _converse(_connect(target, deadline, attempt), target, ctx, deadline, attempt)
    attempt.elapsed = time.monotonic() - started
    return attempt
