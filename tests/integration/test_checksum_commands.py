"""HASH, OPTS HASH and the X-commands against a real server, checked with hashlib and zlib.

Clients: ftplib (with session reuse), curl --quote, lftp quote. Every answer is compared with
a digest computed here from the stored file, for whole files and byte ranges.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import support
from test_ftps import FAST_HASH, PASSWORD

ALL = ("SHA-256", "SHA-512", "SHA-1", "MD5", "CRC32")
X_COMMANDS = {
    "XSHA256": "SHA-256",
    "XSHA512": "SHA-512",
    "XSHA1": "SHA-1",
    "XMD5": "MD5",
    "XCRC": "CRC32",
}
GIB = 1024**3


def expected(algorithm: str, data: bytes) -> str:
    """The digest computed here, independently of the server."""
    if algorithm == "CRC32":
        return f"{zlib.crc32(data):08x}"
    name = {"SHA-256": "sha256", "SHA-512": "sha512", "SHA-1": "sha1", "MD5": "md5"}[algorithm]
    return hashlib.new(name, data).hexdigest()


def file_digest(path: Path, algorithm: str = "SHA-256") -> str:
    """hashlib over a (possibly 1 GiB) file without holding it in memory."""
    name = {"SHA-256": "sha256", "SHA-512": "sha512"}[algorithm]
    with path.open("rb") as f:
        return hashlib.file_digest(f, name).hexdigest()


class Site:
    def __init__(
        self,
        pki: support.Pki,
        tmp_path: Path,
        server_extra: str = "",
        users: tuple[tuple[str, str], ...] = (("alice", "elradfmw"),),
    ) -> None:
        cert = pki.server("checksums", "127.0.0.1")
        self.pki, self.root, self.port = pki, tmp_path / "home", support.free_port()
        sections = []
        for name, perms in users:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            sections.append(
                f"[user:{name}]\nhome = {self.root / name}\n"
                f"permissions = {perms}\npassword = {FAST_HASH}"
            )
        user_text = "\n".join(sections)
        self.config = support.write_config(
            tmp_path / "checksums.ini",
            f"""
            [server]
            addresses = 127.0.0.1
            state_dir = {tmp_path}/state
            root = {self.root}
            {server_extra}
            [ports]
            explicit = {self.port}
            implicit = 0
            [certificate:main]
            cert = {cert.cert}
            key = {cert.key}
            default = yes
            {user_text}
            """,
        )

    def home(self, user: str = "alice") -> Path:
        return self.root / user

    def client(self, user: str = "alice", timeout: float = 60) -> support.ReusingFTP_TLS:
        ftp = support.explicit_client(self.pki, "127.0.0.1", self.port, timeout=timeout)
        ftp.login(user, PASSWORD)
        return ftp


@pytest.fixture
def site(pki: support.Pki, tmp_path: Path, start_server: Callable[..., object]) -> Site:
    s = Site(pki, tmp_path)
    start_server(s.config)
    return s


def _sparse(path: Path, size: int) -> None:
    """A sparse file of `size` bytes with some data at both ends and in the middle."""
    with path.open("wb") as f:
        f.write(os.urandom(4096))
        f.seek(size // 2)
        f.write(os.urandom(4096))
        f.truncate(size)


# --- HASH per the draft ----------------------------------------------------------------------


def test_hash_every_algorithm_matches_hashlib_after_a_real_upload(site: Site) -> None:
    data = os.urandom(1_234_567)
    ftp = site.client()
    ftp.storbinary("STOR up load.bin", io.BytesIO(data))  # a name with a space
    assert (site.home() / "up load.bin").read_bytes() == data
    feat = ftp.sendcmd("FEAT")
    assert " HASH SHA-256*;SHA-512;SHA-1;MD5;CRC32\n" in feat, feat
    assert " RANG" not in feat  # ranges by RANG are not offered: HASH always covers the file
    assert ftp.sendcmd("OPTS HASH") == "200 SHA-256"
    for algorithm in ALL:
        assert ftp.sendcmd(f"OPTS HASH {algorithm.lower()}") == f"200 {algorithm}"
        marked = ";".join(a + ("*" if a == algorithm else "") for a in ALL)
        assert f" HASH {marked}" in ftp.sendcmd("FEAT")
        reply = ftp.sendcmd("HASH up load.bin")
        assert reply == f"213 {algorithm} 0-{len(data)} {expected(algorithm, data)} up load.bin"
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        ftp.sendcmd("OPTS HASH SHA-3")
    assert ftp.sendcmd("OPTS HASH") == "200 CRC32"  # unchanged by the refused OPTS
    ftp.quit()


def test_hash_of_an_empty_file_and_absolute_and_subdirectory_paths(site: Site) -> None:
    (site.home() / "sub").mkdir()
    (site.home() / "sub" / "empty").write_bytes(b"")
    (site.home() / "sub" / "f.txt").write_bytes(b"hello\n")
    ftp = site.client()
    assert ftp.sendcmd("HASH /sub/empty") == (
        f"213 SHA-256 0-0 {hashlib.sha256(b'').hexdigest()} /sub/empty"
    )
    ftp.cwd("sub")
    assert ftp.sendcmd("HASH f.txt").split()[3] == hashlib.sha256(b"hello\n").hexdigest()
    ftp.quit()


# --- the X-commands of mod_digest ------------------------------------------------------------


def test_x_commands_whole_files_and_ranges_match_hashlib(site: Site) -> None:
    data = os.urandom(300_001)
    (site.home() / "a file.bin").write_bytes(data)
    ftp = site.client()
    for cmd, algorithm in X_COMMANDS.items():
        assert ftp.sendcmd(f"{cmd} a file.bin") == f"250 {expected(algorithm, data).upper()}"
        for start, end in ((0, 1), (0, len(data)), (12_345, 200_000), (len(data) - 1, len(data))):
            reply = ftp.sendcmd(f"{cmd} a file.bin {start} {end}")
            assert reply == f"250 {expected(algorithm, data[start:end]).upper()}", (start, end)
    for bad in ("0 300002", "5 5", "9 3"):
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.sendcmd(f"XSHA256 a file.bin {bad}")
    # a path ending in one number is a path (mod_digest refuses 'path end' as ambiguous)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd("XSHA256 a file.bin 10")
    ftp.quit()


# --- jail, permissions, odd files ------------------------------------------------------------


def test_jail_and_read_permission_apply_as_for_retr(
    pki: support.Pki, tmp_path: Path, start_server: Callable[..., object]
) -> None:
    site = Site(pki, tmp_path, users=(("alice", "elradfmw"), ("bob", "el")))
    start_server(site.config)
    secret = site.home("alice") / "secret.bin"
    secret.write_bytes(b"alice's data")
    (site.home("bob") / "mine.bin").write_bytes(b"bob's data")
    os.mkfifo(site.home("alice") / "fifo")
    (site.home("alice") / "dir").mkdir()

    bob = site.client("bob")
    for cmd in ("HASH mine.bin", "XSHA256 mine.bin", "XCRC mine.bin 0 3"):
        with pytest.raises(ftplib.error_perm, match=r"^550 Not enough privileges"):
            bob.sendcmd(cmd)  # no 'r': RETR is refused too
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        bob.retrbinary("RETR mine.bin", lambda b: None)
    bob.quit()

    alice = site.client("alice", timeout=10)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd("HASH ../bob/mine.bin")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd("XSHA256 /../../etc/passwd")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd("HASH missing.bin")
    with pytest.raises(ftplib.error_perm, match=r"^553"):
        alice.sendcmd("HASH dir")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd("XMD5 dir")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd("HASH fifo")  # refused at once: opening it must not wait for a writer
    assert alice.voidcmd("NOOP").startswith("200")
    alice.quit()

    # a symlink inside the home pointing out of it is refused, as RETR refuses it
    (site.home("alice") / "out").symlink_to(site.home("bob") / "mine.bin")
    alice = site.client("alice", timeout=10)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd("HASH out")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.retrbinary("RETR out", lambda b: None)
    alice.quit()


def test_weak_algorithms_can_be_switched_off(
    pki: support.Pki, tmp_path: Path, start_server: Callable[..., object]
) -> None:
    site = Site(pki, tmp_path, server_extra="checksum_algorithms = sha-512, SHA256")
    start_server(site.config)
    (site.home() / "f").write_bytes(b"data")
    ftp = site.client()
    assert " HASH SHA-256*;SHA-512" in ftp.sendcmd("FEAT")
    for cmd in ("XMD5 f", "XSHA1 f", "XCRC f"):
        with pytest.raises(ftplib.error_perm, match=r"^504"):
            ftp.sendcmd(cmd)
    for algorithm in ("MD5", "SHA-1", "CRC32"):
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.sendcmd(f"OPTS HASH {algorithm}")
    assert ftp.sendcmd("XSHA512 f") == f"250 {hashlib.sha512(b'data').hexdigest().upper()}"
    ftp.quit()


# --- real clients: curl and lftp -------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_quote_hash_and_xsha256(site: Site) -> None:
    data = os.urandom(70_000)
    (site.home() / "c.bin").write_bytes(data)
    cmd = [
        "curl",
        "-sS",
        "-v",
        "--max-time",
        "30",
        "--ssl-reqd",
        "--cacert",
        str(site.pki.ca_file),
        "--user",
        f"alice:{PASSWORD}",
        "-Q",
        "OPTS HASH SHA-512",
        "-Q",
        "HASH c.bin",
        "--quote",
        "XSHA256 c.bin 10 20",
        "--list-only",
        f"ftp://127.0.0.1:{site.port}/",
    ]
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    # curl -v shows the PASS line: keep it out of any failure report
    lines = r.stderr.decode(errors="replace").splitlines()
    err = "\n".join(line for line in lines if not line.startswith("> PASS"))
    assert r.returncode == 0, err[-2000:]
    assert f"< 213 SHA-512 0-70000 {expected('SHA-512', data)} c.bin" in err
    assert f"< 250 {hashlib.sha256(data[10:20]).hexdigest().upper()}" in err
    assert b"c.bin" in r.stdout


@pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp not installed")
def test_lftp_quote_xsha256_and_hash(site: Site) -> None:
    data = os.urandom(50_000)
    (site.home() / "l.bin").write_bytes(data)
    script = (
        f"set ssl:ca-file {site.pki.ca_file}; set ftp:ssl-force true; "
        "set ftp:ssl-protect-data true; set ssl:check-hostname no; set net:max-retries 1; "
        f"set net:timeout 10; open -u alice,{PASSWORD} ftp://127.0.0.1:{site.port}; "
        "quote XSHA256 l.bin; quote XCRC l.bin 100 200; quote HASH l.bin; bye"
    )
    r = subprocess.run(["lftp", "-c", script], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = r.stdout.decode()
    assert f"250 {hashlib.sha256(data).hexdigest().upper()}" in out
    assert f"250 {zlib.crc32(data[100:200]):08X}" in out
    assert f"213 SHA-256 0-50000 {hashlib.sha256(data).hexdigest()} l.bin" in out


def test_cache_never_serves_a_changed_file(site: Site) -> None:
    f = site.home() / "f.bin"
    f.write_bytes(b"A" * 1000)
    ftp = site.client()
    first = ftp.sendcmd("HASH f.bin")
    assert first.split()[3] == hashlib.sha256(b"A" * 1000).hexdigest()
    # same size, old mtime put back (as MFMT could): ctime still tells the change
    st = f.stat()
    f.write_bytes(b"B" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ftp.sendcmd("HASH f.bin").split()[3] == hashlib.sha256(b"B" * 1000).hexdigest()
    ftp.quit()


# --- never block the loop, never unbounded ---------------------------------------------------


def test_1gib_hash_while_another_client_noop_is_answered_within_200ms(site: Site) -> None:
    big = site.home() / "big.bin"
    _sparse(big, GIB)
    want = file_digest(big)
    hasher, other = site.client(timeout=300), site.client()
    result: dict[str, str] = {}

    def run() -> None:
        result["reply"] = hasher.sendcmd("HASH big.bin")

    thread = threading.Thread(target=run)
    thread.start()
    latencies = []
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline and len(latencies) < 5000:
        t0 = time.monotonic()
        assert other.voidcmd("NOOP").startswith("200")
        latencies.append(time.monotonic() - t0)
        time.sleep(0.02)
    thread.join(60)
    assert result.get("reply") == f"213 SHA-256 0-{GIB} {want} big.bin"
    assert max(latencies) < 0.2, f"slowest NOOP {max(latencies):.3f}s over {len(latencies)}"
    assert len(latencies) >= 5, "the hash finished before the NOOPs could measure anything"
    print(f"1 GiB HASH: {len(latencies)} NOOPs, slowest {max(latencies) * 1000:.1f} ms")

    # unchanged file: the cached digest, no second pass over 1 GiB
    t0 = time.monotonic()
    assert hasher.sendcmd("HASH big.bin") == result["reply"]
    cached = time.monotonic() - t0
    assert cached < 0.5, f"repeated HASH took {cached:.2f}s"
    hasher.quit()
    other.quit()


def _begin(ftp: ftplib.FTP, command: str) -> None:
    """Send a command without waiting for its reply."""
    ftp.putcmd(command)


def test_limits_per_user_and_server_and_cancel_on_disconnect(
    pki: support.Pki, tmp_path: Path, start_server: Callable[..., object]
) -> None:
    users = (("alice", "elr"), ("bob", "elr"), ("carol", "elr"))
    site = Site(pki, tmp_path, users=users)
    start_server(site.config)
    for name, _ in users:
        _sparse(site.home(name) / "huge.bin", 64 * GIB)  # far longer to hash than this test
    a1, a2, a3 = site.client("alice"), site.client("alice"), site.client("alice")
    _begin(a1, "HASH huge.bin")
    _begin(a2, "XSHA512 huge.bin")
    time.sleep(0.3)  # let both start (a reply would come within ms if they were refused)
    with pytest.raises(ftplib.error_temp, match=r"^450"):
        a3.sendcmd("XMD5 huge.bin")  # the user's share (2) is used up
    # a busy session answers nothing else until its checksum reply
    with pytest.raises(ftplib.error_perm, match=r"^503"):
        a1.sendcmd("NOOP")
    b1, b2, c1 = site.client("bob"), site.client("bob"), site.client("carol")
    _begin(b1, "HASH huge.bin")
    _begin(b2, "XCRC huge.bin")
    time.sleep(0.3)
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        c1.sendcmd("HASH huge.bin")  # the server's share (4) is used up
    assert c1.voidcmd("NOOP").startswith("200")  # the session stays usable
    # sessions that go away stop their checksum and give back their share
    for ftp in (a1, a2, b1, b2):
        ftp.close()
    (site.home("carol") / "small").write_bytes(b"abc")
    deadline = time.monotonic() + 20
    reply = ""
    while time.monotonic() < deadline:
        try:
            reply = c1.sendcmd("HASH small")
            break
        except ftplib.error_temp:
            time.sleep(0.1)  # the workers notice the closed sessions at their next chunk
    assert reply == f"213 SHA-256 0-3 {hashlib.sha256(b'abc').hexdigest()} small"
    c1.quit()
    a3.quit()


def test_quit_during_a_long_hash_closes_at_once(site: Site) -> None:
    _sparse(site.home() / "huge.bin", 64 * GIB)
    ftp = site.client()
    _begin(ftp, "HASH huge.bin")
    time.sleep(0.2)
    assert ftp.quit().startswith("221")
    assert re.match(r"^200", site.client().voidcmd("NOOP"))


def test_server_stops_promptly_during_a_long_hash(
    pki: support.Pki, tmp_path: Path, start_server: Callable[..., support.ServerProcess]
) -> None:
    site = Site(pki, tmp_path)
    server = start_server(site.config)
    _sparse(site.home() / "huge.bin", 64 * GIB)
    ftp = site.client()
    _begin(ftp, "HASH huge.bin")
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    # the worker thread must not keep the process alive for the rest of 64 GiB
    assert server.proc.wait(15) is not None


def test_checksums_need_a_login(site: Site) -> None:
    (site.home() / "f").write_bytes(b"x")
    ftp = support.explicit_client(site.pki, "127.0.0.1", site.port)
    for cmd in ("HASH f", "XSHA256 f", "XCRC f 0 1", "OPTS HASH MD5"):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.sendcmd(cmd)
    ftp.quit()
