"""PROXY protocol v1 and v2 headers (HAProxy's proxy-protocol.txt), parsed from bytes.

Pure: no sockets, no clock. The caller reads the connection, asks `take()` how many of the
bytes waiting on the socket belong to the header (so not one byte of the FTP or TLS stream
after it is consumed), and calls `parse()` until it returns a header or raises. The size is
bounded here (`MAX_HEADER_BYTES`); the time is the caller's (handshake_timeout).

Written here rather than taken from PyPI's `proxy-protocol` (0.11.3): that one is not in
Debian, which the package depends on alone, and its v1 parser takes what `int()` takes for a
port ("+80", "8_0", " 80") and raises a bare ValueError for a bad address.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER_BYTES",
    "V1_MAX_BYTES",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "parse",
    "take",
]

V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107  # the spec's worst case: "PROXY TCP6 " + two full IPv6 + ports + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length
# The spec allows 65535 bytes of addresses and TLVs. HAProxy in `mode tcp` sends 12 (IPv4) or
# 36 (IPv6) plus a few TLVs when asked; cloud balancers add an id of some 30 bytes. 4 KiB is
# ample and keeps a half-open connection's buffer small.
MAX_V2_PAYLOAD = 4096
MAX_HEADER_BYTES = V2_FIXED + MAX_V2_PAYLOAD

Address = tuple[str, int]

_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_V2_UNIX_SIZE = 216


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. No addresses (v1 UNKNOWN, v2 LOCAL/UNSPEC/UNIX): use the socket's."""

    version: int
    length: int  # bytes of the stream the header occupied
    source: Address | None = None
    destination: Address | None = None


def take(buffered: bytes, peeked: bytes) -> int:
    """How many bytes of `peeked` (the next bytes on the wire) belong to the header.

    `buffered` is what was taken before. Raises ProxyHeaderError as soon as the bytes cannot
    begin a valid header or the header would exceed its bound.
    """
    data = buffered + peeked
    if not data:
        return 0
    if V2_SIGNATURE.startswith(data[:12]):
        if len(data) < V2_FIXED:
            return len(peeked)  # every v2 header is at least 16 bytes
        total = V2_FIXED + _v2_payload_length(data)
        return max(0, min(len(peeked), total - len(buffered)))
    if V1_PREFIX.startswith(data[:6]):
        end = data.find(b"\n", len(buffered))
        if end < 0:
            if len(data) >= V1_MAX_BYTES:
                raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes")
            return len(peeked)  # all bytes before the LF are the header's
        if end + 1 > V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes")
        return end + 1 - len(buffered)
    raise ProxyHeaderError("no PROXY protocol header (neither the v1 nor the v2 signature)")


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, None while it is incomplete; bytes after it ignored."""
    if not data:
        return None
    take(b"", data)  # signature and bounds
    if data[:1] == b"\r":
        return _parse_v2(data)
    return _parse_v1(data)


# --- v1 ---------------------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\n")
    if end < 0:
        return None
    if end == 0 or data[end - 1 : end] != b"\r":
        raise ProxyHeaderError("PROXY v1 line does not end with CRLF")
    line = data[: end - 1]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line holds non-ASCII bytes") from None
    if not text.isprintable():
        raise ProxyHeaderError("PROXY v1 line holds control characters")
    parts = text.split(" ")
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyHeader(version=1, length=end + 1)  # the spec: ignore the rest
    if len(parts) != 6:
        raise ProxyHeaderError(
            "PROXY v1 line is not 'PROXY TCP4|TCP6 <source> <destination> <sport> <dport>'"
        )
    family = parts[1]
    if family not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 protocol {family!r} is not TCP4, TCP6 or UNKNOWN")
    version = 4 if family == "TCP4" else 6
    source = (_v1_address(parts[2], version, "source"), _v1_port(parts[4], "source"))
    destination = (
        _v1_address(parts[3], version, "destination"),
        _v1_port(parts[5], "destination"),
    )
    return ProxyHeader(version=1, length=end + 1, source=source, destination=destination)


def _v1_address(text: str, version: int, what: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 {what} address {text!r} is not an address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 {what} address {text!r} is not IPv{version}")
    return str(address)


def _v1_port(text: str, what: str) -> int:
    # the spec's form: decimal digits, no sign, no leading zero, at most 65535
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text != str(int(text)):
        raise ProxyHeaderError(f"PROXY v1 {what} port {text!r} is not a number 0-65535")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 {what} port {text!r} is not a number 0-65535")
    return port


# --- v2 ---------------------------------------------------------------------------------


def _v2_payload_length(data: bytes) -> int:
    """Validate the fixed 16 bytes of a v2 header; the length of what follows them."""
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("PROXY v2 signature is wrong")
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header says version {version}, not 2")
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL (0) nor PROXY (1)")
    length = int.from_bytes(data[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(
            f"PROXY v2 header announces {length} bytes of addresses and TLVs, "
            f"more than the {MAX_V2_PAYLOAD} accepted"
        )
    return length


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    length = _v2_payload_length(data)
    total = V2_FIXED + length
    if len(data) < total:
        return None
    payload = data[V2_FIXED:total]
    command = data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    if family > 3 or transport > 2:
        raise ProxyHeaderError(f"PROXY v2 address family/transport byte 0x{data[13]:02x} unknown")
    if command == 0:  # LOCAL: the balancer's own connection (health check); use the socket
        return ProxyHeader(version=2, length=total)
    if family == 0:  # UNSPEC: the spec says use the socket's addresses
        return ProxyHeader(version=2, length=total)
    size = {1: _V2_INET.size, 2: _V2_INET6.size, 3: _V2_UNIX_SIZE}[family]
    if length < size:
        raise ProxyHeaderError(
            f"PROXY v2 header holds {length} bytes, too few for its addresses ({size})"
        )
    _check_tlvs(payload[size:])
    if family == 3:  # a client on a UNIX socket of the balancer has no address to use
        return ProxyHeader(version=2, length=total)
    if transport != 1:
        raise ProxyHeaderError("PROXY v2 header describes a datagram, not a stream")
    layout = _V2_INET if family == 1 else _V2_INET6
    src, dst, sport, dport = layout.unpack_from(payload)
    source = (str(ipaddress.ip_address(src)), sport)
    destination = (str(ipaddress.ip_address(dst)), dport)
    return ProxyHeader(version=2, length=total, source=source, destination=destination)


def _check_tlvs(data: bytes) -> None:
    """TLVs are ignored, but their framing must fill the header exactly."""
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            raise ProxyHeaderError("PROXY v2 TLV truncated")
        offset += 3 + int.from_bytes(data[offset + 1 : offset + 3], "big")
        if offset > len(data):
            raise ProxyHeaderError("PROXY v2 TLV longer than the header")
