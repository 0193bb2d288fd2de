"""config.loader.load: typed values, defaults, and errors that name file, section and key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ftps_server.config.loader import load
from ftps_server.config.model import Config
from ftps_server.errors import ConfigError

HASH = "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA=="
FP = ":".join(["AB"] * 32)


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.ini"
    path.write_text(text)
    return load(path)


def _error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return info.value


def test_empty_file_gives_documented_defaults(tmp_path: Path) -> None:
    c = _load(tmp_path, "")
    assert c.server.addresses == ("*",)
    assert c.ports.enabled() == [("explicit", 21), ("implicit", 990)]
    assert c.tls.min_version == "TLSv1.2"
    assert c.tls.require_data_protection and c.tls.require_session_reuse
    assert not c.tls.allow_ccc and not c.server.allow_plain_ftp
    assert c.tls.upload_eof == "strict"
    assert c.alerts.warn_days == (14,)
    assert c.certificates == () and c.users == ()


def test_full_example_is_typed(tmp_path: Path) -> None:
    c = _load(
        tmp_path,
        f"""
[server]
addresses = 192.0.2.10, ::ffff:192.0.2.11 ; inline comment
passive_ports = 60000-60099
nat = 10.0.0.0/8 -> 10.0.0.5, 10.1.0.0/16 -> 10.1.0.1, 0.0.0.0/0 -> 203.0.113.5
allow_plain_ftp = yes
[ports]
client_cert_implicit = 991
[tls]
client_ca = /etc/ca.pem
[certificate:main]
cert = /etc/a.pem
key = /etc/a.key
addresses = 192.0.2.10
default = yes
server_names = FTP.Example.com
[user:alice]
auth = certificate+password
password = {HASH}
certificates = sha256:{FP.lower()}
[alerts]
warn_days = 1, 14, 7
""",
    )
    assert c.server.addresses == ("192.0.2.10", "192.0.2.11")
    assert c.server.passive_ports == (60000, 60099)
    assert [r.network.prefixlen for r in c.server.nat] == [16, 8, 0]  # most specific first
    assert c.server.nat[0].network == ipaddress.ip_network("10.1.0.0/16")
    assert c.certificates[0].server_names == ("ftp.example.com",)
    assert c.users[0].certificates == (FP,)
    assert c.alerts.warn_days == (14, 7, 1)
    assert c.resolver.for_address("192.0.2.10") is c.certificates[0]
    assert c.resolver.for_address("192.0.2.99") is c.certificates[0]  # the default
    assert c.resolver.for_name("ftp.example.com.") is c.certificates[0]


@pytest.mark.parametrize(
    ("text", "section", "key", "words"),
    [
        ("[server]\nbogus = 1\n", "server", "bogus", "unknown key"),
        ("[ports]\nimplicit = -1\n", "ports", "implicit", "from 0 to 65535"),
        ("[ports]\nexplicit = 21\nimplicit = 21\n", "ports", "implicit", "already used"),
        ("[server]\npassive_ports = 10-5\n", "server", "passive_ports", "FIRST <= LAST"),
        ("[server]\nnat = 10.0.0.0/8 10.0.0.1\n", "server", "nat", "NETWORK -> ADDRESS"),
        ("[server]\nallow_plain_ftp = maybe\n", "server", "allow_plain_ftp", "yes or no"),
        ("[tls]\nmin_version = SSLv3\n", "tls", "min_version", "TLSv1.2"),
        ("[tls]\nclient_ca = relative.pem\n", "tls", "client_ca", "absolute"),
        ("[tls]\nupload_eof = sloppy\n", "tls", "upload_eof", "strict, lenient"),
        ("[certificate:a]\nkey = /k\n", "certificate:a", "cert", "required"),
        ("[user:bob]\nauth = magic\npassword = x\n", "user:bob", "auth", "one of"),
        ("[user:bob]\npassword = plaintext\n", "user:bob", "password", "hash-password"),
        ("[user:bob]\nauth = certificate\n", "user:bob", "certificates", "certificate_cn"),
        (
            f"[user:bob]\npassword = {HASH}\ncertificates = sha256:12\n",
            "user:bob",
            "certificates",
            "SHA-256",
        ),
        ("[alerts]\nsmtp_security = ssl\n", "alerts", "smtp_security", "starttls"),
    ],
)
def test_errors_name_file_section_and_key(
    tmp_path: Path, text: str, section: str, key: str, words: str
) -> None:
    err = _error(tmp_path, text)
    assert (err.file, err.section, err.key) == (str(tmp_path / "c.ini"), section, key)
    assert words in str(err)
    assert str(err).startswith(f"{tmp_path / 'c.ini'}")


def test_unknown_section(tmp_path: Path) -> None:
    err = _error(tmp_path, "[server]\n[listener]\n")
    assert err.section == "listener" and "unknown section" in str(err)


def test_address_claimed_twice(tmp_path: Path) -> None:
    text = "".join(
        f"[certificate:{n}]\ncert = /{n}.pem\nkey = /{n}.key\naddresses = 192.0.2.1\n"
        for n in ("a", "b")
    )
    err = _error(tmp_path, text)
    assert (err.section, err.key) == ("certificate:b", "addresses")
    assert "already assigned to [certificate:a]" in str(err)


def test_two_users_pinning_one_fingerprint(tmp_path: Path) -> None:
    text = "".join(f"[user:{n}]\npassword = {HASH}\ncertificates = {FP}\n" for n in ("a", "b"))
    err = _error(tmp_path, text)
    assert (err.section, err.key) == ("user:b", "certificates")


def test_client_cert_ports_need_a_client_ca(tmp_path: Path) -> None:
    err = _error(tmp_path, "[ports]\nclient_cert_explicit = 2121\n")
    assert (err.section, err.key) == ("tls", "client_ca")


def test_duplicate_key_has_a_line_number(tmp_path: Path) -> None:
    err = _error(tmp_path, "[server]\nidle_timeout = 1\nidle_timeout = 2\n")
    assert err.line == 3 and err.key == "idle_timeout"


def test_missing_file(tmp_path: Path) -> None:
    err = _error_path(tmp_path / "absent.ini")
    assert "cannot read" in str(err) and "absent.ini" in str(err)


def _error_path(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


def test_included_user_files(tmp_path: Path) -> None:
    users = tmp_path / "users.d"
    users.mkdir()
    (users / "alice.ini").write_text(f"[user:alice]\npassword = {HASH}\n")
    c = _load(tmp_path, f"[server]\ninclude = {users}/*.ini\nroot = /srv\n")
    assert [u.name for u in c.users] == ["alice"]
    assert c.users[0].home == Path("/srv/alice")
    (users / "bad.ini").write_text("[ports]\nexplicit = 1\n")
    err = _error(tmp_path, f"[server]\ninclude = {users}/*.ini\n")
    assert err.file == str(users / "bad.ini")


def test_upload_eof_lenient(tmp_path: Path) -> None:
    assert _load(tmp_path, "[tls]\nupload_eof = Lenient\n").tls.upload_eof == "lenient"


def test_workers_key(tmp_path: Path) -> None:
    assert _load(tmp_path, "").server.workers == 1
    assert _load(tmp_path, "[server]\nworkers = 3\n").server.workers == 3
    assert _load(tmp_path, "[server]\nworkers = auto\n").server.workers >= 1
    bad = _error(tmp_path, "[server]\nworkers = 0\n")
    assert (bad.section, bad.key) == ("server", "workers") and "auto" in str(bad)
    # every worker needs its own slice of at least 2 passive ports
    small = _error(tmp_path, "[server]\nworkers = 4\npassive_ports = 60000-60006\n")
    assert (small.section, small.key) == ("server", "passive_ports")
    fits = _load(tmp_path, "[server]\nworkers = 4\npassive_ports = 60000-60007\n")
    assert fits.server.passive_ports == (60000, 60007)


def test_log_section(tmp_path: Path) -> None:
    default = _load(tmp_path, "")
    assert default.log.transfer_log is None and default.log.upload_digest == "none"
    off = _load(tmp_path, "[log]\ntransfer_log =\nupload_digest = sha256\n")
    assert off.log.transfer_log is None and off.log.upload_digest == "sha256"
    on = _load(tmp_path, "[log]\ntransfer_log = /var/log/ftps-server/xferlog\n")
    assert on.log.transfer_log == Path("/var/log/ftps-server/xferlog")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[log]\ntransfer_log = xferlog\n", "transfer_log", "absolute path"),
        ("[log]\nupload_digest = md5\n", "upload_digest", "sha256, none"),
        ("[log]\ntransfer_file = /x\n", "transfer_file", "unknown key"),
    ],
)
def test_log_errors_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    err = _error(tmp_path, text)
    assert (err.section, err.key) == ("log", key)
    assert words in str(err)
