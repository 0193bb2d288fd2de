"""PROXY protocol v1/v2 parser: headers built by hand per HAProxy's proxy-protocol.txt.

`tests/integration/test_proxy_protocol_server.py` compares them with what a real haproxy sends.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import time

import pytest

from ftps_server.server import proxy_protocol as pp
from ftps_server.server.proxy_protocol import ProxyHeader, ProxyHeaderError

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, family: int, transport: int, payload: bytes, version: int = 2) -> bytes:
    """A v2 header: signature, ver/cmd, fam/transport, length, payload (addresses + TLVs)."""
    return (
        SIG
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack("!H", len(payload))
        + payload
    )


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    return a + b + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# --- v1 -------------------------------------------------------------------------------------


def test_v1_tcp4_with_payload_after_it() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.4 56324 990\r\n"
    got = pp.parse(line + b"\x16\x03\x01 TLS ClientHello follows")
    assert got == ProxyHeader(1, len(line), ("192.0.2.7", 56324), ("198.51.100.4", 990))


def test_v1_tcp6_normalises_addresses() -> None:
    line = b"PROXY TCP6 2001:DB8:0:0::1 ::ffff:192.0.2.1 65535 0\r\n"
    got = pp.parse(line)
    # Python 3.13 writes a mapped address as ::ffff:192.0.2.1, 3.11 as ::ffff:c000:201
    mapped = str(ipaddress.IPv6Address("::ffff:192.0.2.1"))
    assert got == ProxyHeader(1, len(line), ("2001:db8::1", 65535), (mapped, 0))


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    assert pp.parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, 15)
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert pp.parse(line) == ProxyHeader(1, len(line))


def test_v1_longest_lines() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert pp.parse(line) == ProxyHeader(1, 104, (full, 65535), (full, 65535))
    # the spec's 107: "UNKNOWN" is 3 characters longer than "TCP6", with the same rest
    unknown = line.replace(b"TCP6", b"UNKNOWN")
    assert len(unknown) == pp.V1_MAX_BYTES
    assert pp.parse(unknown) == ProxyHeader(1, 107)
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        pp.parse(unknown.replace(b"UNKNOWN", b"UNKNOWN "))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 56324 990\n", "CRLF"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 56324\r\n", "not 'PROXY"),
        (b"PROXY TCP4  192.0.2.7 198.51.100.4 56324 990\r\n", "not 'PROXY"),
        (b"PROXY UDP4 192.0.2.7 198.51.100.4 56324 990\r\n", "'UDP4'"),
        (b"PROXY TCP4 2001:db8::1 198.51.100.4 56324 990\r\n", "not IPv4"),
        (b"PROXY TCP6 192.0.2.7 2001:db8::1 56324 990\r\n", "not IPv6"),
        (b"PROXY TCP4 192.0.2.777 198.51.100.4 1 2\r\n", "not an address"),
        (b"PROXY TCP4 192.0.2.07 198.51.100.4 1 2\r\n", "not an address"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 +80 2\r\n", "source port '+80'"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 8_0 2\r\n", "source port '8_0'"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 080 2\r\n", "source port '080'"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 1 65536\r\n", "destination port '65536'"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.4 1 \xd9\xa8\r\n", "non-ASCII"),
        (b"PROXY TCP4 192.0.2.7\t198.51.100.4 1 2\r\n", "control"),
        (b"PROXY " + b"A" * 120 + b"\r\n", "longer than 107"),
        (b"PROXY-TCP4 x\r\n", "no PROXY protocol header"),
        (b"USER alice\r\n", "no PROXY protocol header"),
    ],
)
def test_v1_refused(line: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason.replace("+", r"\+").replace("'", "'")):
        pp.parse(line)


def test_v1_incomplete_then_overlong() -> None:
    assert pp.parse(b"PROXY TCP4 192.0.2.7") is None
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        pp.parse(b"PROXY UNKNOWN " + b"x" * 100)


# --- v2 -------------------------------------------------------------------------------------


def test_v2_inet_proxy() -> None:
    raw = v2(1, 1, 1, inet("192.0.2.7", "198.51.100.4", 56324, 990))
    got = pp.parse(raw + b"220 is not ours")
    assert got == ProxyHeader(2, 28, ("192.0.2.7", 56324), ("198.51.100.4", 990))


def test_v2_inet6_proxy_with_tlvs() -> None:
    payload = inet("2001:db8::7", "2001:db8::4", 1, 21) + tlv(0x04, b"") + tlv(0xEA, b"vpce-1")
    got = pp.parse(v2(1, 2, 1, payload))
    assert got == ProxyHeader(2, 16 + len(payload), ("2001:db8::7", 1), ("2001:db8::4", 21))


@pytest.mark.parametrize(
    ("command", "family", "transport", "payload"),
    [
        (0, 0, 0, b""),  # LOCAL, as HAProxy's health checks send it
        (0, 1, 1, inet("10.0.0.1", "10.0.0.2", 1, 2)),  # LOCAL: addresses ignored
        (1, 0, 0, b""),  # PROXY but UNSPEC
        (1, 3, 1, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")),  # UNIX
    ],
)
def test_v2_without_usable_addresses(
    command: int, family: int, transport: int, payload: bytes
) -> None:
    raw = v2(command, family, transport, payload)
    assert pp.parse(raw) == ProxyHeader(2, len(raw))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (v2(1, 1, 1, inet("1.2.3.4", "5.6.7.8", 1, 2), version=1), "version 1"),
        (v2(2, 1, 1, inet("1.2.3.4", "5.6.7.8", 1, 2)), "command 2"),
        (v2(1, 1, 1, b"\x01\x02\x03\x04"), "too few"),
        (v2(1, 2, 1, inet("1.2.3.4", "5.6.7.8", 1, 2)), "too few"),
        (v2(1, 1, 2, inet("1.2.3.4", "5.6.7.8", 1, 2)), "datagram"),
        (v2(1, 4, 1, inet("1.2.3.4", "5.6.7.8", 1, 2)), "unknown"),
        (v2(1, 1, 1, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x04\x00"), "TLV truncated"),
        (v2(1, 1, 1, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x04\x00\x09ab"), "TLV longer"),
        (v2(1, 1, 1, b"\0" * (pp.MAX_V2_PAYLOAD + 1)), "more than the 4096"),
        (SIG[:11] + b"X" + b"\x21\x11\x00\x0c", "no PROXY protocol header"),
    ],
)
def test_v2_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        pp.parse(raw)


def test_v2_oversized_length_refused_from_the_fixed_part_alone() -> None:
    # the announced length is refused before any of it is read
    fixed = SIG + b"\x21\x11" + struct.pack("!H", 65535)
    with pytest.raises(ProxyHeaderError, match="65535 bytes"):
        pp.take(b"", fixed)


def test_v2_incomplete() -> None:
    raw = v2(1, 1, 1, inet("1.2.3.4", "5.6.7.8", 1, 2))
    for cut in range(len(raw)):
        assert pp.parse(raw[:cut]) is None


# --- take(): never a byte of the stream after the header --------------------------------------


HEADERS = [
    b"PROXY TCP4 192.0.2.7 198.51.100.4 56324 990\r\n",
    b"PROXY UNKNOWN\r\n",
    v2(1, 1, 1, inet("192.0.2.7", "198.51.100.4", 56324, 990)),
    v2(0, 0, 0, b""),
    v2(1, 2, 1, inet("2001:db8::7", "2001:db8::4", 1, 21) + tlv(0x20, b"x" * 40)),
]


def read_like_a_socket(stream: bytes, rng: random.Random) -> tuple[ProxyHeader, int]:
    """Peek random amounts (as segments arrive), take what `take` allows, until parsed."""
    buffered, offset = b"", 0
    for _ in range(10_000):
        available = stream[offset : offset + rng.randint(1, 64)]
        n = pp.take(buffered, available)
        assert 0 <= n <= len(available)
        buffered += available[:n]
        offset += n
        header = pp.parse(buffered)
        if header is not None:
            return header, offset
    raise AssertionError("never completed")


@pytest.mark.parametrize("header", HEADERS)
def test_take_stops_exactly_at_the_end_of_the_header(header: bytes) -> None:
    rng = random.Random(16)
    payload = b"\x16\x03\x01\x02\x00PROXY \r\n\r\n" * 8  # looks like more headers: must not matter
    for _ in range(200):
        got, consumed = read_like_a_socket(header + payload, rng)
        assert consumed == len(header) == got.length


# --- fuzz: bounded, seeded --------------------------------------------------------------------


def test_fuzz_parse_and_take_never_misbehave() -> None:
    """Random and mutated headers: a header, None or ProxyHeaderError, nothing else."""
    rng = random.Random(20261130)
    deadline = time.monotonic() + 20
    outcomes = {"header": 0, "incomplete": 0, "error": 0}
    for i in range(30_000):
        if time.monotonic() > deadline:
            break
        base = bytearray(rng.choice(HEADERS))
        if i % 3 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        else:
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(base))
                choice = rng.random()
                if choice < 0.5:
                    base[pos] = rng.getrandbits(8)
                elif choice < 0.75:
                    del base[pos]
                else:
                    base[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
            data = bytes(base[: rng.randint(0, len(base))] if i % 5 == 0 else base)
        try:
            header = pp.parse(data)
        except ProxyHeaderError:
            outcomes["error"] += 1
            continue
        if header is None:
            outcomes["incomplete"] += 1
            assert len(data) < pp.MAX_HEADER_BYTES
            continue
        outcomes["header"] += 1
        assert 0 < header.length <= min(len(data), pp.MAX_HEADER_BYTES)
        for address in (header.source, header.destination):
            if address is not None:
                ipaddress.ip_address(address[0])
                assert 0 <= address[1] <= 65535
        assert pp.take(b"", data) == header.length
    # the mutations reached every outcome, so the loop tested something
    assert all(count > 100 for count in outcomes.values()), outcomes
