"""Nothing for the client to read on an upload's data connection: no TLS 1.3 session tickets.

A ticket the client never reads makes its kernel answer the close with a reset; through a
load balancer that reset cut the end off curl's uploads while the server answered 226
(docs/fleet.md). Resumption still works: it uses the control connection's tickets.
"""

from __future__ import annotations

import io
import os
import select
from pathlib import Path
from typing import Any

import pytest
import support

from ftps_server.pki.passwords import HashParams, hash_password

PASSWORD = "Ticket-Horse-Battery-16"
FAST_HASH = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))


@pytest.fixture
def port(pki: support.Pki, tmp_path: Path, start_server: Any) -> int:
    cert = pki.server("tickets", "127.0.0.1")
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    port = support.free_port()
    config = support.node_config(
        tmp_path / "c.ini",
        cert,
        support.section("user:alice", home=home, permissions="elradfmw", password=FAST_HASH),
        explicit=port,
        tls="min_version = TLSv1.3",
    )
    start_server(config)
    return port


def test_upload_data_connection_carries_nothing_to_the_client(
    pki: support.Pki, port: int, tmp_path: Path
) -> None:
    ftp = support.explicit_client(pki, "127.0.0.1", port)
    ftp.login("alice", PASSWORD)
    assert ftp.sock.version() == "TLSv1.3"  # type: ignore[union-attr]
    ftp.voidcmd("TYPE I")
    for attempt in range(3):
        conn = ftp.transfercmd(f"STOR up{attempt}.bin")
        assert conn.session_reused  # type: ignore[attr-defined]
        # the handshake is done; anything the server sends now (a NewSessionTicket) would
        # sit unread in the client's socket for the whole upload
        readable, _, _ = select.select([conn], [], [], 0.5)
        assert readable == [], f"data connection {attempt}: the server sent something"
        data = os.urandom(200_000)
        conn.sendall(data)
        conn.unwrap()  # type: ignore[attr-defined]
        conn.close()
        assert ftp.voidresp().startswith("226")
        got = io.BytesIO()
        ftp.retrbinary(f"RETR up{attempt}.bin", got.write)
        assert got.getvalue() == data, (len(got.getvalue()), len(data))
    ftp.quit()
