"""Faults: disk full during an upload, certificate files deleted while serving, a reload in
the middle of 100 transfers, an unreachable SMTP server."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftp_policy import _config as policy_config
from test_ftps import PASSWORD

HOST = "127.0.0.1"


def _login(pki: support.Pki, port: int, implicit: bool = False) -> support.ReusingFTP_TLS:
    connect = support.implicit_client if implicit else support.explicit_client
    ftp = connect(pki, HOST, port, timeout=30)
    ftp.login("alice", PASSWORD)
    return ftp


def _roundtrip(ftp: ftplib.FTP, size: int = 100_000) -> None:
    support.store_and_fetch(ftp, size, "ok.bin")


# --- disk full -----------------------------------------------------------------------------


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """alice's home on a 2 MiB tmpfs, mounted for the test (root only)."""
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs", str(home)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_disk_full_during_upload_is_a_4xx_and_the_session_goes_on(
    pki: support.Pki, tmp_path: Path, small_home: Path, start_server: Any
) -> None:
    config, ports = policy_config(pki, tmp_path)
    server = start_server(config)
    ftp = _login(pki, ports["explicit"])
    conn = ftp.transfercmd("STOR big.bin")
    block = os.urandom(256 * 1024)
    try:
        for _ in range(20):  # 5 MiB into 2 MiB: the server gives up and closes
            conn.sendall(block)
    except (OSError, ssl.SSLError):
        pass  # what any client sees when the server closes the data connection
    conn.close()
    with pytest.raises(ftplib.error_temp, match=r"^45[12] .*No space left"):
        ftp.voidresp()
    assert ftp.voidcmd("NOOP").startswith("200")  # same session, same TLS
    ftp.delete("big.bin")
    _roundtrip(ftp)  # space again: the session works as before
    ftp.quit()
    assert server.proc.poll() is None


# --- certificate files deleted -------------------------------------------------------------


def test_deleted_certificate_files_keep_serving_and_check_tells(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    config, ports = policy_config(pki, tmp_path)
    start_server(config)
    cert = pki.dir / "policy.pem"
    served_before = support.served_certificate(HOST, ports["implicit"], explicit=False)
    cert.unlink()
    (pki.dir / "policy.key").unlink()
    for kind in ("explicit", "implicit"):
        assert support.served_certificate(HOST, ports[kind], kind == "explicit") == served_before
    ftp = _login(pki, ports["explicit"])
    _roundtrip(ftp)
    ftp.quit()
    check = subprocess.run(
        [sys.executable, "-m", "ftps_server", "check", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(support.ROOT)},
    )
    assert check.returncode == 2, check.stdout + check.stderr  # CRITICAL: the disk is wrong
    assert str(cert) in check.stdout, check.stdout


# --- reload during transfers ---------------------------------------------------------------


def test_reload_while_100_sessions_transfer(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    sessions, size = 100, 2 * 2**20
    config, ports = policy_config(
        pki, tmp_path, server_extra="max_connections = 300\nmax_connections_per_ip = 300"
    )
    server = start_server(config)
    home = tmp_path / "home" / "alice"
    source = os.urandom(size)
    (home / "source.bin").write_bytes(source)
    digest = hashlib.sha256(source).hexdigest()
    started = threading.Barrier(sessions + 1, timeout=60)
    results: list[str] = []

    def slow_reader(out: io.BytesIO) -> Any:
        def take(block: bytes) -> None:
            out.write(block)
            time.sleep(0.02)  # stretch the transfer so the reload lands in the middle

        return take

    def session(i: int) -> None:
        t0 = time.monotonic()
        try:
            ftp = (
                _login(pki, ports["explicit"])
                if i % 2
                else _login(pki, ports["implicit"], implicit=True)
            )
            started.wait()
            if i % 4 == 0:  # uploads too
                ftp.storbinary(f"STOR up{i}.bin", io.BytesIO(source), blocksize=16384)
                ok = hashlib.sha256((home / f"up{i}.bin").read_bytes()).hexdigest() == digest
            else:
                got = io.BytesIO()
                ftp.retrbinary("RETR source.bin", slow_reader(got), blocksize=32768)
                ok = hashlib.sha256(got.getvalue()).hexdigest() == digest
            ftp.quit()
            results.append("ok" if ok else f"{i}: bytes differ")
        except Exception as exc:  # every failed session is the finding
            results.append(f"{i}: {exc!r} after {time.monotonic() - t0:.1f} s")
            started.abort()  # do not keep the others waiting for this one

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    try:
        started.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(60)
        failed = [r for r in results if "Barrier" not in r]
        pytest.fail(f"sessions failed before the reload: {failed}\n{server.log()[-3000:]}")
    time.sleep(0.5)
    server.reload()
    finished_before_reload = len(results)
    for t in threads:
        t.join(120)
    assert results.count("ok") == sessions, [r for r in results if r != "ok"][:10]
    # the reload landed in the middle: most transfers were still running when it was done
    assert finished_before_reload < sessions // 2, finished_before_reload
    ftp = _login(pki, ports["explicit"])
    _roundtrip(ftp)
    ftp.quit()


# --- SMTP unreachable ----------------------------------------------------------------------


def test_smtp_unreachable_service_unaffected_alert_spooled(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    expiring = pki.server("expiring", "127.0.0.1", days=3)
    dead_port = support.free_port()  # nothing listens there
    config, ports = policy_config(
        pki,
        tmp_path,
        tls_extra=f"""
        [certificate:expiring]
        cert = {expiring.cert}
        key = {expiring.key}
        addresses = 127.0.0.2
        [alerts]
        email_to = ops@example.com
        smtp_host = 127.0.0.1
        smtp_port = {dead_port}
        smtp_security = none
        """,
    )
    server = start_server(config)
    assert server.wait_log("reminder run finished", timeout=30), server.log()
    spool = tmp_path / "state" / "spool"
    spooled = [p for p in spool.iterdir() if p.is_file()] if spool.is_dir() else []
    assert spooled, f"nothing spooled:\n{server.log()}"
    assert any(b"expiring" in p.read_bytes() for p in spooled)
    ftp = _login(pki, ports["explicit"])
    _roundtrip(ftp)
    ftp.quit()
    assert server.proc.poll() is None
