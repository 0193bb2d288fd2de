"""message_ids: fixed, well-formed, and each explained once in the journal catalog."""

from __future__ import annotations

import re
from pathlib import Path

import ftps_server.journal.message_ids as message_ids

CATALOG = Path(__file__).resolve().parents[2] / "systemd" / "ftps-server.catalog"


def test_ids_are_distinct_uuid_hex() -> None:
    ids = list(message_ids.ALL.values())
    assert len(set(ids)) == len(ids) == 10
    for value in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", value), value
        assert value[12] == "4", f"{value} is not a uuid4"


def test_all_matches_module_constants() -> None:
    for name, value in message_ids.ALL.items():
        assert getattr(message_ids, name) == value


def test_catalog_explains_every_id_once() -> None:
    headers = re.findall(r"^-- ([0-9a-f]{32})$", CATALOG.read_text(), re.M)
    assert sorted(headers) == sorted(message_ids.ALL.values())
    for block in CATALOG.read_text().split("\n-- ")[1:]:
        assert re.search(r"^Subject: ftps-server", block, re.M), block[:200]
        assert re.search(r"^Defined-By: ftps-server$", block, re.M), block[:200]
