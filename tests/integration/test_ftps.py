"""The core FTPS promises, against a real `ftps-server serve` and real clients on loopback."""

from __future__ import annotations

import ftplib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
from cryptography.hazmat.primitives import hashes

from ftps_server.pki.passwords import HashParams, hash_password

PASSWORD = "Correct-Horse-Battery-9"
FAST_HASH = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))


@dataclass
class Site:
    pki: support.Pki
    dir: Path
    config: Path
    ports: dict[str, int]
    certs: dict[str, support.CertFiles]
    client: support.CertFiles
    server: support.ServerProcess | None = None


def _ports() -> dict[str, int]:
    kinds = ("explicit", "implicit", "client_cert_explicit", "client_cert_implicit")
    return {k: support.free_port() for k in kinds}


def make_site(pki: support.Pki, tmp_path: Path, extra: str = "", **overrides: str) -> Site:
    """Three addresses, a certificate for .2 and .3, a default for the rest, SNI, a user."""
    certs = {
        "main": pki.server("main", "127.0.0.1", "localhost"),
        "two": pki.server("two", "127.0.0.2"),
        "three": pki.server("three", "127.0.0.3"),
        "named": pki.server("named", "ftp.example.test"),
    }
    certs.update({k: v for k, v in overrides.items()})  # type: ignore[misc]
    client = pki.client("alice-client", cn="alice")
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True, exist_ok=True)
    ports = _ports()

    def section(name: str, **keys: str) -> str:
        return support.certificate_section(name, certs[name].cert, certs[name].key, **keys)

    text = f"""
        [server]
        addresses = 127.0.0.1, 127.0.0.2, 127.0.0.3
        state_dir = {tmp_path}/state
        root = {tmp_path}/home
        handshake_timeout = 5
        [ports]
        explicit = {ports["explicit"]}
        implicit = {ports["implicit"]}
        client_cert_explicit = {ports["client_cert_explicit"]}
        client_cert_implicit = {ports["client_cert_implicit"]}
        [tls]
        client_ca = {pki.ca_file}
        {section("main", default="yes")}
        {section("two", addresses="127.0.0.2")}
        {section("three", addresses="127.0.0.3")}
        {section("named", server_names="ftp.example.test")}
        [user:alice]
        home = {home}
        permissions = elradfmw
        password = {FAST_HASH}
        {extra}
    """
    config = support.write_config(tmp_path / "ftps-server.ini", text)
    return Site(pki, tmp_path, config, ports, certs, client)


@pytest.fixture
def site(pki: support.Pki, tmp_path: Path, start_server: object) -> Site:
    s = make_site(pki, tmp_path)
    s.server = start_server(s.config)  # type: ignore[operator]
    return s


def _roundtrip(ftp: ftplib.FTP, size: int = 3_000_001) -> None:
    support.store_and_fetch(ftp, size, "blob.bin")
    assert "blob.bin" in ftp.nlst()
    ftp.delete("blob.bin")


# --- modes with ftplib ---------------------------------------------------------------------


def test_ftplib_explicit_tls_c_with_prot_p(site: Site) -> None:
    ftp = support.explicit_client(site.pki, "127.0.0.1", site.ports["explicit"])
    ftp.login("alice", PASSWORD)
    _roundtrip(ftp)
    ftp.quit()


def test_ftplib_explicit_tls_p_protects_data_from_the_start(site: Site) -> None:
    ftp = support.ReusingFTP_TLS(context=support.client_context(site.pki), timeout=10)
    ftp.connect("127.0.0.2", site.ports["explicit"])
    assert ftp.voidcmd("AUTH TLS-P").startswith("234")
    ftp.sock = ftp.context.wrap_socket(ftp.sock, server_hostname="127.0.0.2")
    ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
    ftp.login("alice", PASSWORD)
    ftp._prot_p = True  # type: ignore[attr-defined]  # no PBSZ/PROT sent: TLS-P implies it
    _roundtrip(ftp, 100_000)
    ftp.quit()


def test_ftplib_implicit(site: Site) -> None:
    ftp = support.implicit_client(site.pki, "127.0.0.3", site.ports["implicit"])
    feat = ftp.sendcmd("FEAT")
    assert " PROT" in feat and "AUTH TLS" not in feat  # already TLS: AUTH is not on offer
    ftp.login("alice", PASSWORD)
    _roundtrip(ftp)
    ftp.quit()


# --- curl and lftp -------------------------------------------------------------------------


def _curl(site: Site, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        "30",
        "--cacert",
        str(site.pki.ca_file),
        "--user",
        f"alice:{PASSWORD}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, timeout=60)


@pytest.mark.parametrize("scheme", ["explicit", "implicit"])
def test_curl_upload_download_list(site: Site, tmp_path: Path, scheme: str) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    port = site.ports[scheme]
    base = f"ftp://127.0.0.1:{port}/" if scheme == "explicit" else f"ftps://127.0.0.1:{port}/"
    extra = ["--ssl-reqd"] if scheme == "explicit" else []
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(2_500_000))
    r = _curl(site, base + "up.bin", *extra, "-T", str(src))
    assert r.returncode == 0, (r.stderr, site.server.log()[-3000:])  # type: ignore[union-attr]
    out = tmp_path / "down.bin"
    r = _curl(site, base + "up.bin", *extra, "-o", str(out))
    assert r.returncode == 0, (r.stderr, site.server.log()[-3000:])  # type: ignore[union-attr]
    assert out.read_bytes() == src.read_bytes()
    listing = _curl(site, base, *extra, "--list-only")
    assert b"up.bin" in listing.stdout


@pytest.mark.parametrize("scheme", ["explicit", "implicit"])
def test_lftp_upload_download_list(site: Site, tmp_path: Path, scheme: str) -> None:
    if not shutil.which("lftp"):
        pytest.skip("lftp not installed")
    port = site.ports[scheme]
    url = f"ftp://127.0.0.1:{port}" if scheme == "explicit" else f"ftps://127.0.0.1:{port}"
    src = tmp_path / "l.bin"
    src.write_bytes(os.urandom(1_500_000))
    # lftp 4.9.2 with GnuTLS (Debian 12) stops a TLS 1.3 upload early when the server's
    # NewSessionTicket arrives on the data connection (lavv17/lftp#666, a client bug that
    # vsftpd and ProFTPD trigger too), so lftp is held to TLS 1.2 here; curl and ftplib
    # cover TLS 1.3 uploads.
    script = (
        'set ssl:priority "NORMAL:-VERS-TLS1.3"; '
        f"set ssl:ca-file {site.pki.ca_file}; set ftp:ssl-force true; "
        "set ftp:ssl-protect-data true; set ssl:check-hostname no; set net:max-retries 1; "
        f"set net:timeout 10; open -u alice,{PASSWORD} {url}; "
        f"put {src} -o l.bin; get l.bin -o {tmp_path}/l.out; cls -1; bye"
    )
    r = subprocess.run(["lftp", "-c", script], capture_output=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    stored = (tmp_path / "home" / "alice" / "l.bin").read_bytes()
    assert stored == src.read_bytes(), f"upload differs: {len(stored)} bytes stored"
    assert (tmp_path / "l.out").read_bytes() == src.read_bytes()
    assert b"l.bin" in r.stdout


# --- certificate per address and SNI -------------------------------------------------------


def _s_client_fingerprint(host: str, port: int, explicit: bool, name: str | None = None) -> str:
    cmd = ["openssl", "s_client", "-connect", f"{host}:{port}", "-showcerts"]
    if explicit:
        cmd += ["-starttls", "ftp"]
    if name:
        cmd += ["-servername", name]
    r = subprocess.run(cmd, input=b"", capture_output=True, timeout=20)
    pem = r.stdout.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END CERTIFICATE-----")[
        0
    ]
    pem = b"-----BEGIN CERTIFICATE-----" + pem + b"-----END CERTIFICATE-----\n"
    fp = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
        input=pem,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return fp.strip().split("=", 1)[1].upper()


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_openssl_sees_the_certificate_of_each_address(site: Site, kind: str) -> None:
    port, explicit = site.ports[kind], kind == "explicit"
    assert _s_client_fingerprint("127.0.0.2", port, explicit) == site.certs["two"].fingerprint
    assert _s_client_fingerprint("127.0.0.3", port, explicit) == site.certs["three"].fingerprint
    assert _s_client_fingerprint("127.0.0.1", port, explicit) == site.certs["main"].fingerprint
    named = _s_client_fingerprint("127.0.0.1", port, explicit, "ftp.example.test")
    assert named == site.certs["named"].fingerprint


# --- client-certificate ports --------------------------------------------------------------


def _cc_login(site: Site, kind: str, cert: support.CertFiles | None) -> str:
    port = site.ports[kind]
    if kind == "client_cert_explicit":
        ftp: ftplib.FTP_TLS = support.explicit_client(
            site.pki, "127.0.0.1", port, cert, prot_p=False
        )
    else:
        ftp = support.ImplicitFTP_TLS(context=support.client_context(site.pki, cert), timeout=10)
        ftp.connect("127.0.0.1", port)
    reply = ftp.login("alice", PASSWORD)
    ftp.prot_p()
    _roundtrip(ftp, 10_000)
    ftp.quit()
    return reply


@pytest.mark.parametrize("kind", ["client_cert_explicit", "client_cert_implicit"])
def test_client_cert_port_admits_a_certificate_from_client_ca(site: Site, kind: str) -> None:
    assert _cc_login(site, kind, site.client).startswith("230")


@pytest.mark.parametrize("kind", ["client_cert_explicit", "client_cert_implicit"])
@pytest.mark.parametrize("case", ["none", "other_ca", "expired", "revoked"])
def test_client_cert_port_refuses(
    pki: support.Pki, tmp_path: Path, start_server: object, kind: str, case: str
) -> None:
    import trustme

    revoked = pki.client("revoked-client", cn="alice")
    site = make_site(pki, tmp_path)
    crl = pki.crl([revoked], name=f"crl-{case}-{kind}")
    text = site.config.read_text().replace("[tls]\n", f"[tls]\ncrl = {crl}\n")
    site.config.write_text(text)
    site.server = start_server(site.config)  # type: ignore[operator]
    cert = {
        "none": None,
        "other_ca": pki.client("stranger", ca=trustme.CA()),
        "expired": pki.client("old", cn="alice", days=-1),
        "revoked": revoked,
    }[case]
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, ftplib.Error, OSError)):
        _cc_login(site, kind, cert)
    assert site.server.wait_log("TLS handshake from 127.0.0.1")
    # the same port still admits a good client, so the refusal was about the certificate
    assert _cc_login(site, kind, site.client).startswith("230")


# --- data channel policy -------------------------------------------------------------------


def test_prot_c_refused_and_transfers_need_prot_p(site: Site) -> None:
    ftp = support.explicit_client(site.pki, "127.0.0.1", site.ports["explicit"], prot_p=False)
    ftp.login("alice", PASSWORD)
    with pytest.raises(ftplib.error_perm, match=r"^521"):
        ftp.nlst()
    ftp.voidcmd("PBSZ 0")
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        ftp.voidcmd("PROT C")
    ftp.quit()


def test_data_connection_without_session_reuse_is_refused(site: Site) -> None:
    ftp = support.explicit_client(site.pki, "127.0.0.1", site.ports["explicit"])
    ftp.reuse_session = False  # type: ignore[attr-defined]
    ftp.login("alice", PASSWORD)
    # The server drops the data connection without close_notify and answers 522 once. Where
    # the client sees that drop as an error (a reset, or an EOF it does not suppress), nlst
    # raises before reading the reply; where it takes the EOF as the listing's end (Debian
    # 12's Python, with a FIN), nlst itself reads the 522. Either way exactly one 522.
    try:
        ftp.nlst()
    except ftplib.Error as exc:
        reply = str(exc)
    except OSError:
        with pytest.raises(ftplib.Error) as raised:
            ftp.voidresp()
        reply = str(raised.value)
    else:
        pytest.fail("NLST succeeded on a data connection that did not resume the session")
    assert re.match(r"522 .*resume the TLS session", reply), reply
    assert ftp.voidcmd("NOOP").startswith("200")  # no second final reply is waiting
    assert site.server.wait_log("TLS session not resumed")  # type: ignore[union-attr]


def test_user_before_auth_is_refused(site: Site) -> None:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", site.ports["explicit"], timeout=10)
    with pytest.raises(ftplib.error_perm, match=r"^530 TLS is required"):
        ftp.login("alice", PASSWORD)
    ftp.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "accepted"),
    [("TLSv1", False), ("TLSv1_1", False), ("TLSv1_2", True), ("TLSv1_3", True)],
)
def test_protocol_versions(site: Site, version: str, accepted: bool) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    v = getattr(ssl.TLSVersion, version)
    ctx.minimum_version = ctx.maximum_version = v
    if not accepted:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    raw = socket.create_connection(("127.0.0.1", site.ports["implicit"]), timeout=5)
    try:
        if accepted:
            with ctx.wrap_socket(raw) as tls:
                assert tls.version() == version.replace("_", ".")
        else:
            with pytest.raises((ssl.SSLError, OSError)):
                ctx.wrap_socket(raw).recv(10)
    finally:
        raw.close()


# --- listeners without a valid certificate -------------------------------------------------


def _break(site: Site, case: str) -> None:
    cert = site.certs["two"]
    if case == "missing_key":
        cert.key.unlink()
    elif case == "mismatched_key":
        cert.key.write_bytes(site.certs["three"].key.read_bytes())
    elif case == "group_readable_key":
        cert.key.chmod(0o640)
    elif case == "expired":
        new = site.pki.server("two-expired", "127.0.0.2", days=-2, not_before=None)
        shutil.copy(new.cert, cert.cert)
        shutil.copy(new.key, cert.key)


@pytest.mark.parametrize("case", ["missing_key", "mismatched_key", "group_readable_key", "expired"])
def test_bad_certificate_disables_only_its_listener(
    pki: support.Pki, tmp_path: Path, start_server: object, case: str
) -> None:
    site = make_site(pki, tmp_path)
    good = (site.certs["two"].cert.read_bytes(), site.certs["two"].key.read_bytes())
    _break(site, case)
    server = start_server(site.config)  # type: ignore[operator]
    assert "without a valid certificate" in server.status()
    raw = socket.create_connection(("127.0.0.2", site.ports["explicit"]), timeout=5)
    f = raw.makefile("rb")
    assert b"TLS unavailable" in f.readline()
    raw.sendall(b"FEAT\r\n")
    feat = b""
    while not feat.startswith(b"211 ") and b"\n211 " not in feat:
        feat += f.readline()
    assert b"AUTH TLS" not in feat
    raw.sendall(b"AUTH TLS\r\n")
    assert f.readline().startswith(b"431")
    raw.close()
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
        support.implicit_client(pki, "127.0.0.2", site.ports["implicit"])
    assert "crit" in server.log().lower() or "<2>" in server.log()
    # every other listener works
    ftp = support.explicit_client(pki, "127.0.0.3", site.ports["explicit"])
    ftp.login("alice", PASSWORD)
    ftp.quit()
    # fix the files, SIGHUP: the listener comes up
    site.certs["two"].cert.write_bytes(good[0])
    site.certs["two"].key.write_bytes(good[1])
    site.certs["two"].key.chmod(0o600)
    server.reload()
    cert = support.served_certificate("127.0.0.2", site.ports["explicit"], True)
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    assert ":".join(fp[i : i + 2] for i in range(0, 64, 2)) == site.certs["two"].fingerprint


# --- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\naddresses\n", "cannot parse"),
        ("[server]\nbogus = 1\n", "[server] bogus: unknown key"),
        ("[ports]\nexplicit = 70000\n", "[ports] explicit: must be from 0 to 65535"),
        ("[wat]\n", "[wat]: unknown section"),
        ("[server]\naddresses = 300.1.1.1\n", "[server] addresses"),
    ],
)
def test_check_config_errors_name_file_section_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.ini"
    path.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "ftps_server", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(support.ROOT)),
    )
    assert r.returncode == 78
    assert str(path) in r.stderr
    assert expected in r.stderr
