"""message_ids: fixed, well-formed, and each explained once in the journal catalog.

The module's source is read with `ast` (not only `ALL`), so an id defined but left out of
`ALL`, or a catalog entry for an id the module does not define, fails here.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import ftps_server.journal.message_ids as message_ids

CATALOG = Path(__file__).resolve().parents[2] / "systemd" / "ftps-server.catalog"
ID = re.compile(r"[0-9a-f]{32}")


def _module_ids() -> dict[str, str]:
    """Every `NAME = "<32 hex>"` assignment in the module's source."""
    tree = ast.parse(Path(message_ids.__file__).read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            value = node.value.value
            if isinstance(value, str) and ID.fullmatch(value):
                for target in node.targets:
                    assert isinstance(target, ast.Name)
                    found[target.id] = value
    return found


def _catalog_blocks() -> dict[str, str]:
    """Catalog entry text by id, failing on an id explained twice."""
    blocks: dict[str, str] = {}
    for block in CATALOG.read_text().split("\n-- ")[1:]:
        header, _, body = block.partition("\n")
        assert ID.fullmatch(header.strip()), f"bad catalog header {header!r}"
        assert header not in blocks, f"{header} explained twice"
        blocks[header] = body
    return blocks


def test_ids_are_distinct_uuid4_hex() -> None:
    ids = list(_module_ids().values())
    assert len(set(ids)) == len(ids) >= 16
    for value in ids:
        assert value[12] == "4", f"{value} is not a uuid4"


def test_all_is_exactly_the_module_ids() -> None:
    defined = _module_ids()
    assert defined == message_ids.ALL
    assert set(defined) <= set(message_ids.__all__)


def test_catalog_explains_exactly_the_module_ids() -> None:
    blocks = _catalog_blocks()
    defined = _module_ids()
    by_id = {value: name for name, value in defined.items()}
    assert not set(blocks) - set(by_id), f"catalog ids the module lacks: {set(blocks) - set(by_id)}"
    missing = {by_id[i] for i in set(by_id) - set(blocks)}
    assert not missing, f"ids without a catalog entry: {sorted(missing)}"


def test_catalog_entries_are_well_formed() -> None:
    for value, body in _catalog_blocks().items():
        assert re.search(r"^Subject: ftps-server", body, re.M), value
        assert re.search(r"^Defined-By: ftps-server$", body, re.M), value
        # journalctl -x fills @FIELD@ from the entry: field names are upper-case
        for field in re.findall(r"@([^@\s]+)@", body):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", field), (value, field)


def test_session_ids_have_their_fields_in_the_catalog() -> None:
    # the fields an administrator filters on are named in the text journalctl -x shows
    blocks = _catalog_blocks()
    assert "SESSION_ID" in blocks[message_ids.SESSION_CONNECT]
    for name in ("DIRECTION", "BYTES", "DURATION_MS", "RESULT", "SHA256"):
        assert name in blocks[message_ids.TRANSFER], name


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl is not installed")
def test_journalctl_reads_every_entry(tmp_path: Path) -> None:
    """The real journalctl compiles the catalog into its database (in a scratch root)."""
    (tmp_path / "usr/lib/systemd/catalog").mkdir(parents=True)
    (tmp_path / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, tmp_path / "usr/lib/systemd/catalog/ftps-server.catalog")
    root = f"--root={tmp_path}"
    subprocess.run(["journalctl", root, "--update-catalog"], check=True, timeout=60)
    listed = subprocess.run(
        ["journalctl", root, "--list-catalog"], capture_output=True, text=True, timeout=60
    ).stdout
    ids = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert ids == set(message_ids.ALL.values())
