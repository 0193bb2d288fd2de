"""workers: which worker serves an address, and each worker's share of the configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ftps_server.config.model import Config
from ftps_server.server import proxy_protocol as pp
from ftps_server.server.workers import (
    WorkerSpec,
    _decode_header,
    _encode_header,
    pick,
    worker_config,
)


def test_an_address_has_one_worker_in_every_spelling() -> None:
    assert pick("192.0.2.7", 4) == pick("::ffff:192.0.2.7", 4) == pick("192.0.2.7", 4)
    assert pick("2001:db8::1", 4) == pick("2001:DB8:0::1", 4)
    spread = {pick(f"10.0.{i // 256}.{i % 256}", 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}


def test_each_worker_gets_its_own_slice_of_passive_ports_and_a_share_of_connections() -> None:
    base = Config(Path("/nonexistent/ftps-server.ini"))
    server = dataclasses.replace(base.server, passive_ports=(60000, 60010), max_connections=10)
    cfg = dataclasses.replace(base, server=server)
    slices = [worker_config(cfg, WorkerSpec(i, 3, -1)).server for i in range(3)]
    ranges = [range(s.passive_ports[0], s.passive_ports[1] + 1) for s in slices if s.passive_ports]
    assert [list(r) for r in ranges] == [
        list(range(60000, 60003)),
        list(range(60003, 60006)),
        list(range(60006, 60011)),  # the remainder goes to the last worker
    ]
    assert {s.max_connections for s in slices} == {4}  # 10 / 3, rounded up
    no_range = dataclasses.replace(base.server, passive_ports=None)
    kernel = worker_config(dataclasses.replace(base, server=no_range), WorkerSpec(1, 2, -1))
    assert kernel.server.passive_ports is None


@pytest.mark.parametrize(
    "raw",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.10 40000 21\r\n",
        b"PROXY TCP6 2001:db8::7 2001:db8::10 40000 990\r\n",
        b"PROXY UNKNOWN\r\n",
        pp.V2_SIGNATURE + b"\x20\x00\x00\x00",  # LOCAL: a health check
        pp.V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 9, 127, 0, 0, 1, 0, 1, 0, 21]),
    ],
)
def test_the_header_the_main_process_read_reaches_the_worker_unchanged(raw: bytes) -> None:
    header = pp.parse(raw)
    assert header is not None
    fields = _encode_header(header)
    assert not any("\t" in field for field in fields)  # the message's separator
    assert _decode_header(fields) == header
    assert _decode_header(_encode_header(None)) is None


@pytest.mark.parametrize("fields", [["1"], ["1", "x", "", "", "", ""], ["2", "16", "a", "b", "c"]])
def test_a_malformed_header_in_a_message_is_a_value_error(fields: list[str]) -> None:
    with pytest.raises(ValueError):
        _decode_header(fields)
