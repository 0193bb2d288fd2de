"""Login policy against a real `ftps-server serve` with real clients (ftplib, curl).

Covers issue 3's "Must show": the policy x listener kind x certificate x password table,
the pending-certificate round trip with reload, ban and unban, path escapes and
permissions, and a download that keeps flowing through a storm of slow-hash logins; a login
flood from one address (issue 19.1), another user's certificate (12.11), forged log lines (12.5).
"""

from __future__ import annotations

import ftplib
import io
import itertools
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import (
    ROOT,
    CertFiles,
    ImplicitFTP_TLS,
    Pki,
    ReusingFTP_TLS,
    ServerProcess,
    client_context,
    free_port,
    write_config,
)

from ftps_server.pki.passwords import HashParams, hash_password

HOST = "127.0.0.1"
KINDS = ("explicit", "implicit", "client_cert_explicit", "client_cert_implicit")
FAST = HashParams(ln=4, r=8, p=1)  # table and escapes: the policy, not the cost, is tested
RIGHT, WRONG = "right horse battery", "wrong horse battery"
UNREGISTERED = "530 Not logged in: client certificate is not registered."
INCORRECT = "530 Login incorrect."
CERT_LOGIN = "232 User logged in, authorized by security data exchange."

_source_ips = (f"127.0.{a}.{b}" for a in range(10, 250) for b in range(1, 255))
_source_lock = threading.Lock()  # a generator must not be advanced by two threads at once


def next_source_ip() -> str:
    """A fresh client address, so one test's failures never delay or ban another's."""
    with _source_lock:
        return next(_source_ips)


@dataclass
class Site:
    """A running server and what a test needs to talk to it."""

    server: ServerProcess
    pki: Pki
    ports: dict[str, int]
    certs: dict[str, CertFiles]
    config: Path
    tmp: Path


class _SourceImplicit(ImplicitFTP_TLS):
    """support's implicit client, bound to a chosen source address."""

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
    ) -> str:
        self.host, self.port, self.source_address = host, port, source_address
        raw = socket.create_connection((host, port), self.timeout, source_address=source_address)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def connect(site: Site, kind: str, cert: str | None, source: str | None = None) -> Any:
    """A client on listener `kind`, TLS up and PROT P set, not logged in."""
    ctx = client_context(site.pki, site.certs[cert] if cert else None)
    source_address = (source or next_source_ip(), 0)
    if kind.endswith("implicit"):
        ftp: Any = _SourceImplicit(context=ctx, timeout=10)
        ftp.connect(HOST, site.ports[kind], source_address=source_address)
    else:
        ftp = ReusingFTP_TLS(context=ctx, timeout=10, source_address=source_address)
        ftp.connect(HOST, site.ports[kind])
        ftp.auth()
    ftp.prot_p()
    return ftp


def command(ftp: Any, line: str) -> str:
    """Send `line`, return the raw reply whatever its code."""
    ftp.putcmd(line)
    return str(ftp.getmultiline())


def start(tmp: Path, users: str, server_extra: str = "") -> Site:
    """PKI, homes and config for `users`; start the server on every listener kind."""
    pki = Pki(tmp / "pki")
    certs = {name: pki.client(name) for name in ("pw-reg", "cert-reg", "both-reg", "stranger")}
    certs["other-ca"] = pki.client("other-ca", ca=trustme.CA())
    server_cert = pki.server("server", HOST)
    ports = {kind: free_port(HOST) for kind in KINDS}
    fp = {name: c.fingerprint for name, c in certs.items()}
    lines = [
        "[server]",
        f"addresses = {HOST}",
        f"state_dir = {tmp}/state",
        f"root = {tmp}/homes",
        *server_extra.splitlines(),
        "[ports]",
        *(f"{kind} = {port}" for kind, port in ports.items()),
        "[tls]",
        f"client_ca = {pki.ca_file}",
        "[certificate:main]",
        f"cert = {server_cert.cert}",
        f"key = {server_cert.key}",
        "default = yes",
    ]
    config = write_config(tmp / "ftps-server.ini", "\n".join(lines) + "\n")
    text = config.read_text() + users.format(fp=fp, pw=hash_password(RIGHT, FAST), tmp=tmp)
    config.write_text(text)
    server = ServerProcess(config, tmp)
    return Site(server, pki, ports, certs, config, tmp)


TABLE_USERS = """
[user:pw]
auth = password
password = {pw}
certificates = sha256:{fp[pw-reg]}

[user:cert]
auth = certificate
certificates = sha256:{fp[cert-reg]}

[user:both]
auth = certificate+password
password = {pw}
certificates = sha256:{fp[both-reg]}
"""


@pytest.fixture(scope="module")
def table_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    # no bans and a short window: the table's many failures must not change its replies
    site = start(
        tmp_path_factory.mktemp("table"),
        TABLE_USERS,
        "max_login_failures = 1000\nfailure_window = 1\nban_time = 0",
    )
    yield site
    site.server.stop()


def expected(policy: str, kind: str, cert: str, password: str) -> list[str]:
    """The replies one cell must get: 'TLS' (handshake refused) or reply prefixes/lines."""
    if cert == "other-ca" or (kind.startswith("client_cert") and cert == "none"):
        return ["TLS"]
    registered = cert == "registered"
    if policy == "password" or (policy == "certificate+password" and registered):
        user_reply = "331 "
    elif policy == "certificate" and registered:
        return [CERT_LOGIN]
    elif cert == "unregistered":
        return [UNREGISTERED]
    else:
        user_reply = "331 "  # no certificate: asked for a password like anyone else
    if password == "none":
        return [user_reply]
    ok = password == "right" and (policy == "password" or registered)
    return [user_reply, "230 Login successful." if ok else INCORRECT]


CELLS = list(
    itertools.product(
        ("password", "certificate", "certificate+password"),
        KINDS,
        ("none", "registered", "unregistered", "other-ca"),
        ("right", "wrong", "none"),
    )
)


@pytest.mark.parametrize(("policy", "kind", "cert", "password"), CELLS)
def test_policy_table(table_site: Site, policy: str, kind: str, cert: str, password: str) -> None:
    user = {"password": "pw", "certificate": "cert", "certificate+password": "both"}[policy]
    cert_name = {
        "none": None,
        "registered": f"{user}-reg",
        "unregistered": "stranger",
        "other-ca": "other-ca",
    }[cert]
    want = expected(policy, kind, cert, password)
    try:
        ftp = connect(table_site, kind, cert_name)
        replies = [command(ftp, f"USER {user}")]
    except (ssl.SSLError, ConnectionError, EOFError, ftplib.Error, OSError) as exc:
        assert want == ["TLS"], f"TLS refused unexpectedly: {exc!r}"
        return
    assert want != ["TLS"], f"TLS handshake should have failed, got {replies}"
    if replies[0].startswith("331") and password != "none":
        replies.append(command(ftp, f"PASS {RIGHT if password == 'right' else WRONG}"))
    assert [r if not w.endswith(" ") else r[:4] for r, w in zip(replies, want, strict=True)] == want
    logged_in = replies[-1].startswith(("230", "232"))
    assert command(ftp, "PWD").startswith("257" if logged_in else "530")
    ftp.close()


# --- pending certificates -------------------------------------------------------------------

PENDING_USERS = """
[user:dave]
auth = certificate
certificates = sha256:{fp[cert-reg]}
"""


def pending_certs(site: Site, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ftps_server", "pending-certs", "--config", str(site.config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    return result.stdout


def test_pending_certificate_round_trip(tmp_path: Path) -> None:
    site = start(tmp_path, PENDING_USERS)
    try:
        assert pending_certs(site).strip() == "no pending client certificates"
        for kind in ("implicit", "client_cert_explicit"):
            ftp = connect(site, kind, "stranger")
            assert command(ftp, "USER dave") == UNREGISTERED
            ftp.close()
        # a certificate from another CA never verifies: nothing is recorded for it
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
            command(connect(site, "implicit", "other-ca"), "USER dave")
        text = pending_certs(site)
        assert text.count("user dave:") == 1
        assert f"fingerprint: sha256:{site.certs['stranger'].fingerprint}" in text
        assert "2 attempt(s)" in text
        line = next(s.strip() for s in text.splitlines() if s.strip().startswith("certificates ="))
        assert site.certs["stranger"].fingerprint in line
        site.config.write_text(
            site.config.read_text().replace(
                f"certificates = sha256:{site.certs['cert-reg'].fingerprint}", line
            )
        )
        site.server.reload()
        ftp = connect(site, "explicit", "stranger")
        assert command(ftp, "USER dave") == CERT_LOGIN
        ftp.close()
        assert pending_certs(site).strip() == "no pending client certificates"
    finally:
        site.server.stop()


# --- bans -----------------------------------------------------------------------------------


def test_ban_and_unban(tmp_path: Path) -> None:
    site = start(tmp_path, TABLE_USERS, "max_login_failures = 3\nfailure_window = 60\nban_time = 3")
    try:
        attacker, bystander = next_source_ip(), next_source_ip()
        for _ in range(3):
            ftp = connect(site, "explicit", None, attacker)
            command(ftp, "USER pw")
            assert command(ftp, f"PASS {WRONG}") == INCORRECT
            ftp.close()
        banned_at = time.monotonic()
        for kind in ("explicit", "implicit"):
            with socket.create_connection(
                (HOST, site.ports[kind]), 5, source_address=(attacker, 0)
            ) as raw:
                if kind == "explicit":
                    reply = raw.makefile("rb").readline().decode()
                    assert reply.startswith(f"421 Too many failed logins from {attacker}")
        ftp = connect(site, "explicit", None, bystander)  # another address is not affected
        command(ftp, "USER pw")
        assert command(ftp, f"PASS {RIGHT}").startswith("230")
        ftp.close()
        time.sleep(max(0.0, banned_at + 3.5 - time.monotonic()))
        ftp = connect(site, "implicit", None, attacker)
        command(ftp, "USER pw")
        assert command(ftp, f"PASS {RIGHT}").startswith("230")
        ftp.close()
        log = site.server.log()
        assert "banned for 3 s after 3 failed logins" in log and f"ban on {attacker} lifted" in log
        assert RIGHT not in log and WRONG not in log
    finally:
        site.server.stop()


def test_parallel_pass_cannot_overshoot_the_ban(tmp_path: Path) -> None:
    # issue 12.4: 12 connections sending PASS at once (max_login_failures = 5) got eleven 530
    # and then a 230 for the right password after the ban had started
    site = start(tmp_path, TABLE_USERS)
    attacker = next_source_ip()
    barrier = threading.Barrier(12, timeout=20)

    def attempt(n: int) -> str:
        ftp = connect(site, "explicit", None, attacker)
        command(ftp, "USER pw")
        barrier.wait()
        reply = command(ftp, f"PASS {RIGHT if n == 11 else f'{WRONG} {n}'}")
        ftp.close()
        return reply

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(attempt, range(12)))
        log = site.server.log()
    finally:
        site.server.stop()
    wrong = replies.count(INCORRECT)
    logged_in = [r for r in replies if r.startswith("230")]
    refused = [r for r in replies if r.startswith("421 Too many")]
    assert wrong <= 5, f"{wrong} guesses checked against a limit of 5"
    assert len(logged_in) + wrong + len(refused) == 12, replies
    banned_at = log.find(f"address {attacker} banned")
    if logged_in and banned_at >= 0:
        login_at = log.find(f"user pw logged in from {attacker}")
        assert 0 <= login_at < banned_at, "230 after the ban had started"


# --- jail and permissions -------------------------------------------------------------------

JAIL_USERS = """
[user:reader]
auth = password
password = {pw}
home = {tmp}/homes/reader
permissions = elr

[user:writer]
auth = password
password = {pw}
home = {tmp}/homes/writer
permissions = elradfmw
"""


@pytest.fixture
def jail_site(tmp_path: Path) -> Iterator[Site]:
    for user in ("reader", "writer"):
        home = tmp_path / "homes" / user
        (home / "sub").mkdir(parents=True)
        (home / "inside.txt").write_text("inside\n")
        (home / "escape.txt").symlink_to(tmp_path / "secret.txt")
        (home / "escape-dir").symlink_to(tmp_path)
    (tmp_path / "secret.txt").write_text("secret\n")
    site = start(tmp_path, JAIL_USERS)
    yield site
    site.server.stop()


def login(site: Site, user: str, kind: str = "explicit") -> Any:
    ftp = connect(site, kind, None)
    command(ftp, f"USER {user}")
    assert command(ftp, f"PASS {RIGHT}").startswith("230")
    return ftp


def retr(ftp: Any, path: str) -> str:
    try:
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR {path}", chunks.append)
        return b"".join(chunks).decode()
    except ftplib.error_perm as exc:
        return str(exc)


def test_path_escapes_refused(jail_site: Site) -> None:
    outside = (
        "../secret.txt",
        "/../secret.txt",
        "sub/../../secret.txt",
        "escape.txt",
        "escape-dir/secret.txt",
        "/etc/passwd",
        str(jail_site.tmp / "secret.txt"),
    )
    for path in outside:
        # one session per refused RETR: the client's unused data connection is dropped with it
        ftp = login(jail_site, "writer")
        assert retr(ftp, path).startswith("550"), path
        ftp.close()
    ftp = login(jail_site, "writer")
    assert retr(ftp, "inside.txt") == "inside\n"
    for path in outside:
        assert command(ftp, f"SIZE {path}").startswith("550"), path
        assert command(ftp, f"MDTM {path}").startswith("550"), path
    assert command(ftp, "CWD ..").startswith("550")
    assert command(ftp, "CWD escape-dir").startswith("550")
    assert command(ftp, "CWD /").startswith("250")
    assert command(ftp, "CWD sub").startswith("250")
    assert command(ftp, "CWD ..").startswith("250")  # back to the home: allowed
    assert command(ftp, "PWD") == '257 "/" is the current directory.'
    try:
        ftp.nlst("escape-dir")
        raise AssertionError("listing a directory outside the home succeeded")
    except ftplib.error_perm as exc:
        assert str(exc).startswith("550")
    ftp.close()


def test_permissions_hold(jail_site: Site) -> None:
    reader = login(jail_site, "reader", "implicit")
    assert retr(reader, "inside.txt") == "inside\n"
    for line in ("MKD newdir", "DELE inside.txt", "RNFR inside.txt", "SITE CHMOD 777 inside.txt"):
        assert command(reader, line).startswith("550"), line
    # refused transfers last: the client drops the unused data connection (see escapes test)
    with pytest.raises(ftplib.error_perm, match="550 Not enough privileges"):
        reader.storbinary("STOR new.txt", io.BytesIO(b"x"))
    reader.close()
    assert not (jail_site.tmp / "homes" / "reader" / "new.txt").exists()
    writer = login(jail_site, "writer")
    writer.storbinary("STOR new.txt", io.BytesIO(b"written\n"))
    assert (jail_site.tmp / "homes" / "writer" / "new.txt").read_text() == "written\n"
    assert command(writer, "MKD newdir").startswith("257")
    with pytest.raises(ftplib.error_perm, match="550"):
        writer.storbinary("STOR ../planted.txt", io.BytesIO(b"x"))
    writer.close()
    assert not (jail_site.tmp / "homes" / "planted.txt").exists()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_certificate_and_password_logins(table_site: Site) -> None:
    base = ["curl", "-sS", "--max-time", "20", "--cacert", str(table_site.pki.ca_file)]
    cert = table_site.certs["cert-reg"]
    port = table_site.ports["client_cert_implicit"]
    ok = subprocess.run(
        [
            *base,
            "--cert",
            str(cert.cert),
            "--key",
            str(cert.key),
            "--user",
            "cert:",
            "--interface",
            next_source_ip(),
            f"ftps://{HOST}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    port = table_site.ports["explicit"]
    ok = subprocess.run(
        [
            *base,
            "--ssl-reqd",
            "--user",
            f"pw:{RIGHT}",
            "--interface",
            next_source_ip(),
            f"ftp://{HOST}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [
            *base,
            "--ssl-reqd",
            "--user",
            f"pw:{WRONG}",
            "--interface",
            next_source_ip(),
            f"ftp://{HOST}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 67, bad.stderr  # CURLE_LOGIN_DENIED


def test_password_user_with_another_users_certificate(table_site: Site) -> None:
    # issue 12.11: pw (auth = password) presents the certificate registered to user cert
    ftp = connect(table_site, "client_cert_explicit", "cert-reg")
    reply = command(ftp, "USER pw")
    assert reply == "530 Not logged in: client certificate belongs to another user."
    assert command(ftp, f"PASS {RIGHT}").startswith("503")
    assert command(ftp, "PWD").startswith("530")
    ftp.close()
    log = table_site.server.log()
    assert "failed login for pw from" in log and "client certificate of another user (cert)" in log
    assert "CERT_OWNER=cert" in log


def test_user_name_cannot_forge_log_lines(table_site: Site) -> None:
    # issue 12.5: a bare LF inside USER used to reach pyftpdlib's log prefix
    ftp = connect(table_site, "explicit", None)
    forged = "FORGED 198.51.100.9:4444-[root] USER 'root' logged in."
    # a bidi override would show every later line of the session reordered ("pwexe.jpg")
    for line in (f"USER pw\n{forged}", "USER pw\x1b]0;title\x07", "USER pw\u202egpj.exe"):
        ftp.sock.sendall(line.encode() + b"\r\n")  # ftplib itself refuses to send a bare LF
        assert ftp.getmultiline() == "501 Syntax error: control characters in user name."
    ftp.close()
    time.sleep(0.2)  # the server logs the disconnect after our close
    for line in table_site.server.log().splitlines():
        text = line.split(": ", 1)[-1]
        assert not text.startswith("FORGED") and "\x1b" not in line and "\u202e" not in line


# --- a login flood from one address ---------------------------------------------------------

FLOOD_USERS = """
[user:alice]
auth = password
password = {pw}
"""
PARTNERS = 10


def _flood(site: Site, source: str, worker: int, until: float, refused: list[str]) -> None:
    """USER alice / PASS <a new wrong password> and close without waiting, again and again."""
    for n in range(400):
        if time.monotonic() > until:
            return
        try:
            ftp = ReusingFTP_TLS(context=client_context(site.pki), timeout=5)
            ftp.source_address = (source, 0)
            ftp.connect(HOST, site.ports["explicit"])
            ftp.auth()
            ftp.putcmd("USER alice")
            ftp.putcmd(f"PASS wrong {worker} {n}")  # all different: no check can be shared
            ftp.sock.close()
        except (ftplib.Error, OSError, EOFError) as exc:
            refused.append(str(exc)[:60])
            time.sleep(0.02)  # banned: the answer came at once, do not spin a core with it


def test_login_flood_from_one_address(tmp_path: Path) -> None:
    # issue 19.1 at the strong default hash: 8 threads from 127.0.0.2 queued 523 checks in
    # 5 s and made a login from another address take 87 s
    pw = {f"p{i}": hash_password(RIGHT) for i in range(PARTNERS)}
    users = FLOOD_USERS.replace("{pw}", hash_password(RIGHT)) + "".join(
        f"[user:{name}]\nauth = password\npassword = {h}\nhome = {{tmp}}/homes/{name}\n"
        for name, h in pw.items()
    )
    for name in pw:
        (tmp_path / "homes" / name).mkdir(parents=True)
        (tmp_path / "homes" / name / "report.csv").write_text("a,b\n")
    site = start(tmp_path, users)  # max_login_failures = 5, the default
    flooder, partner = "127.0.0.2", "127.0.0.3"
    timings: list[float] = []
    refused: list[str] = []
    try:
        until = time.monotonic() + 8
        threads = [
            threading.Thread(target=_flood, args=(site, flooder, w, until, refused))
            for w in range(8)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        for n in range(12):  # the first login of each partner pays scrypt, repeats need not
            if time.monotonic() > until:
                break
            started = time.monotonic()
            ftp = connect(site, "implicit", None, partner)
            command(ftp, f"USER p{n % PARTNERS}")
            assert command(ftp, f"PASS {RIGHT}").startswith("230")
            assert ftp.nlst() == ["report.csv"]
            ftp.quit()
            timings.append(time.monotonic() - started)
        for thread in threads:
            thread.join(30)
        log = site.server.log()
    finally:
        site.server.stop()
    assert len(timings) >= 4 and max(timings) < 2.0, timings
    failures = log.count(f"failed login for alice from {flooder}")
    assert failures == 5, f"{failures} failed checks counted against {flooder}"
    assert f"address {flooder} banned for 900 s after 5 failed logins" in log
    assert refused, "the banned address was never refused"
    assert not re.search(r"wrong \d+ \d+", log)  # no password reaches the log


# --- a download keeps flowing during a login storm --------------------------------------------

SLOW = HashParams(ln=16, r=8, p=1)  # ~0.2 s and 64 MiB per verification, by design
STORM_USERS = """
[user:fetch]
auth = password
password = {pw}
home = {tmp}/homes/fetch
"""


def test_download_keeps_flowing_during_slow_logins(tmp_path: Path) -> None:
    home = tmp_path / "homes" / "fetch"
    home.mkdir(parents=True)
    with (home / "big.bin").open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    users = STORM_USERS.replace("{pw}", hash_password(RIGHT, SLOW))
    site = start(tmp_path, users, "max_connections_per_ip = 100")
    received: list[tuple[float, int]] = []
    logins: list[float] = []
    wrong: list[float] = []
    try:
        downloader = login(site, "fetch")
        done = threading.Event()

        def download() -> None:
            def chunk(data: bytes) -> None:
                received.append((time.monotonic(), len(data)))
                time.sleep(0.0015)  # ~16 KiB TLS records: some 8 MiB/s, ~13 s in all

            downloader.retrbinary("RETR big.bin", chunk, blocksize=65536)
            done.set()

        thread = threading.Thread(target=download)
        thread.start()
        time.sleep(0.5)

        until = time.monotonic() + 90

        def storm(worker: int) -> None:
            # Repeat logins of one user are answered from the verifier cache, so half the
            # storm sends wrong passwords, each different: every one of those pays scrypt.
            # The storm lasts as long as the download (bounded), so their overlap does not
            # hang on how fast this machine happens to hash.
            for n in range(60):
                if done.is_set() or time.monotonic() > until:
                    return
                ftp = connect(site, "implicit", None)
                command(ftp, "USER fetch")
                if n % 2:
                    assert command(ftp, f"PASS {WRONG} {worker} {n}") == INCORRECT
                    wrong.append(time.monotonic())
                else:
                    assert command(ftp, f"PASS {RIGHT}").startswith("230")
                    logins.append(time.monotonic())
                ftp.close()

        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(storm, range(10)))
        thread.join(120)
        assert done.is_set()
    finally:
        site.server.stop()
    assert sum(n for _, n in received) == 100 * 1024 * 1024
    assert len(logins) >= 20 and len(wrong) >= 20, (len(logins), len(wrong))
    start_t, end_t = received[0][0], received[-1][0]
    storm = (min(logins + wrong), max(logins + wrong))
    overlap_seconds = int(min(end_t, storm[1]) - max(start_t, storm[0]))
    assert overlap_seconds >= 5, f"download and logins overlapped only {overlap_seconds} s"
    per_second = [0] * (int(end_t - start_t) + 1)
    for t, n in received:
        per_second[int(t - start_t)] += n
    full = sorted(per_second[:-1])  # the last second is partial
    # not merely above zero: no second may fall below a tenth of the typical rate
    assert full[0] > 0 and full[0] >= full[len(full) // 2] / 10, f"stalled: {per_second} B/s"


# --- connection limits and idle timeout -------------------------------------------------------


def test_connection_limits_and_idle_timeout(tmp_path: Path) -> None:
    site = start(tmp_path, TABLE_USERS, "max_connections_per_ip = 2\nidle_timeout = 2")
    try:
        crowd, other = next_source_ip(), next_source_ip()
        first, second = (
            connect(site, "explicit", None, crowd),
            connect(site, "implicit", None, crowd),
        )
        with socket.create_connection(
            (HOST, site.ports["explicit"]), 5, source_address=(crowd, 0)
        ) as raw:
            assert raw.makefile("rb").readline().startswith(b"421 ")
        connect(site, "explicit", None, other).close()  # the limit is per address
        first.close()
        started = time.monotonic()
        # the idle session is closed by the server after idle_timeout, with a reply
        with pytest.raises((EOFError, ConnectionError, ssl.SSLError, ftplib.Error, OSError)):
            while time.monotonic() - started < 10:
                reply = second.getline()
                if not reply:
                    raise EOFError
                assert reply.startswith("421"), reply
        assert 1.5 < time.monotonic() - started < 6
    finally:
        site.server.stop()
