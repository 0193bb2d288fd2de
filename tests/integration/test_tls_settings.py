"""[tls] max_version (issue 18.5) and the groups offered (issue 18.4), against a real server."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import support

from ftps_server.config.loader import load
from ftps_server.errors import ConfigError

HOST = "127.0.0.1"


def _serve(pki: support.Pki, tmp_path: Path, start_server: object, tls: str = "") -> int:
    cert = pki.server("main", HOST)
    port = support.free_port()
    config = support.node_config(
        tmp_path / "ftps-server.ini", cert, addresses=HOST, implicit=port, tls=tls, root=tmp_path
    )
    start_server(config)  # type: ignore[operator]
    return port


def _version(pki: support.Pki, port: int) -> str:
    ctx = support.client_context(pki)
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        return str(tls.version())


def test_default_offers_the_newest_version(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    assert _version(pki, _serve(pki, tmp_path, start_server)) == "TLSv1.3"


def test_max_version_caps_what_is_offered(
    pki: support.Pki, tmp_path: Path, start_server: object
) -> None:
    port = _serve(pki, tmp_path, start_server, "max_version = TLSv1.2")
    assert _version(pki, port) == "TLSv1.2"
    only13 = support.client_context(pki)
    only13.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection((HOST, port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        only13.wrap_socket(raw, server_hostname=HOST)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[tls]\nmax_version = TLSv1.4\n", "TLSv1.2"),
        ("[tls]\nmin_version = TLSv1.3\nmax_version = TLSv1.2\n", "below min_version"),
    ],
)
def test_bad_max_version_names_file_section_and_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "c.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.file, info.value.section, info.value.key) == (
        str(path),
        "tls",
        "max_version",
    )
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("group", "accepted"),
    [("X25519", True), ("P-256", True), ("P-384", True), ("P-521", False), ("X448", False)],
)
def test_groups_are_the_mozilla_intermediate_set(
    pki: support.Pki, tmp_path: Path, start_server: object, group: str, accepted: bool
) -> None:
    """openssl s_client offering one group: X25519, P-256 and P-384 complete a TLS 1.3
    handshake without a HelloRetryRequest; P-521 and X448 are not offered."""
    port = _serve(pki, tmp_path, start_server)
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-tls1_3", "-groups", group],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    out = done.stdout.decode(errors="replace")
    if accepted:
        assert done.returncode == 0 and "Server Temp Key" in out, out + done.stderr.decode()
    else:
        assert "Server Temp Key" not in out
