"""Filesystem policy seen through real FTPS sessions: SITE CHMOD limits, symlinks pointing out
of the home, and directory listings that do not stall other sessions."""

from __future__ import annotations

import ftplib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import support
from test_ftp_policy import _config as policy_config
from test_ftps import PASSWORD

HOST = "127.0.0.1"


def _site(pki: support.Pki, tmp_path: Path, start_server: Any) -> tuple[int, Path]:
    config, ports = policy_config(pki, tmp_path)
    text = config.read_text().replace("permissions = elradfmw", "permissions = elradfmwM")
    config.write_text(text)  # M: SITE CHMOD allowed
    start_server(config)
    return ports["explicit"], tmp_path / "home" / "alice"


def _login(pki: support.Pki, port: int, timeout: float = 20) -> support.ReusingFTP_TLS:
    ftp = support.explicit_client(pki, HOST, port, timeout=timeout)
    ftp.login("alice", PASSWORD)
    return ftp


# --- 12.6 SITE CHMOD ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["4755", "2755", "6755", "1777", "7777"])
def test_site_chmod_above_0777_is_refused(
    pki: support.Pki, tmp_path: Path, start_server: Any, mode: str
) -> None:
    """Before: `SITE CHMOD 6755 file` -> 200 and -rwsr-sr-x."""
    port, home = _site(pki, tmp_path, start_server)
    target = home / "tool"
    target.write_bytes(b"#!/bin/sh\n")
    target.chmod(0o640)
    ftp = _login(pki, port)
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        ftp.sendcmd(f"SITE CHMOD {mode} tool")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert ftp.sendcmd("SITE CHMOD 0755 tool").startswith("200")  # plain modes still work
    assert ftp.sendcmd("SITE CHMOD 600 tool").startswith("200")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    ftp.quit()


# --- 12.7 symlinks out of the home ----------------------------------------------------------


def test_symlink_targets_outside_the_home_are_not_disclosed(
    pki: support.Pki, tmp_path: Path, start_server: Any
) -> None:
    """Before: LIST showed `out -> /…/outside/secret-name.txt`, MLSD its type and size."""
    port, home = _site(pki, tmp_path, start_server)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret-name.txt"
    secret.write_bytes(b"s" * 12345)
    (home / "out").symlink_to(secret)
    (home / "outdir").symlink_to(outside)
    (home / "mine.txt").write_bytes(b"m" * 7)
    (home / "in").symlink_to(home / "mine.txt")  # absolute, inside: shown as a virtual path
    ftp = _login(pki, port)
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    listing = "\n".join(lines)
    assert "outside" not in listing and "secret" not in listing and str(tmp_path) not in listing
    out_line = next(line for line in lines if line.endswith(" out") or " out " in line)
    assert "->" not in out_line  # listed like a broken link: no target
    in_line = next(line for line in lines if " in " in line or line.endswith(" in"))
    assert in_line.endswith("in -> /mine.txt")
    facts = dict(ftp.mlsd())
    assert "out" not in facts and "outdir" not in facts  # skipped like broken links
    assert facts["in"]["size"] == "7"
    assert "12345" not in str(facts)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd("MLST out")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd("SIZE out")
    stat_reply = ftp.sendcmd("STAT /")
    assert "outside" not in stat_reply and "secret" not in stat_reply
    ftp.quit()


# --- 19.7 listings do not block the loop ----------------------------------------------------


@pytest.fixture
def big_dir(tmp_path: Path) -> tuple[Path, int]:
    """alice's home holding a directory of 100,000 empty files (made in tmp)."""
    home = tmp_path / "home" / "alice"
    big = home / "big"
    big.mkdir(parents=True)
    count = 100_000
    fd = os.open(big, os.O_RDONLY)
    try:
        for i in range(count):
            os.close(os.open(f"f{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o640, dir_fd=fd))
    finally:
        os.close(fd)
    return big, count


def test_listings_of_a_huge_directory_do_not_stall_other_sessions(
    pki: support.Pki, tmp_path: Path, start_server: Any, big_dir: tuple[Path, int]
) -> None:
    """8 parallel LISTs of 100,000 entries; another session's NOOP answers within 200 ms.

    Before: the directory was read and sorted in one loop turn and the TLS writer formatted
    up to 8 MiB of lines per event: NOOP waited up to 2.1 s.
    """
    _, count = big_dir
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    port, _ = _site(pki, tmp_path, start_server)
    probe = _login(pki, port)
    # the listers are curl processes: Python client threads would contend for this
    # process's GIL with the probe and measure the client, not the server
    outputs = [tmp_path / f"list{i}.txt" for i in range(8)]
    command = ["curl", "-sS", "--max-time", "100", "--ssl-reqd", "--cacert", str(pki.ca_file)]
    command += ["--user", f"alice:{PASSWORD}", f"ftp://{HOST}:{port}/big/"]
    listers = [subprocess.Popen([*command, "-o", str(out)]) for out in outputs]
    delays: list[float] = []
    deadline = time.monotonic() + 110  # bounded: the listings themselves take seconds
    try:
        while any(p.poll() is None for p in listers) and time.monotonic() < deadline:
            start = time.monotonic()
            assert probe.voidcmd("NOOP").startswith("200")
            delays.append(time.monotonic() - start)
            time.sleep(0.02)
    finally:
        for proc in listers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert [proc.returncode for proc in listers] == [0] * 8
    assert [len(out.read_bytes().splitlines()) for out in outputs] == [count] * 8
    assert len(delays) >= 5, "the listings ended before the probe could measure anything"
    slowest = sorted(delays)[-3:]
    assert max(delays) < 0.2, f"NOOP waited {slowest} s (slowest of {len(delays)} probes)"
    probe.quit()


def test_stat_of_a_huge_directory_is_bounded(
    pki: support.Pki, tmp_path: Path, start_server: Any, big_dir: tuple[Path, int]
) -> None:
    """Before: `STAT big` pushed 10.8 MB onto the control connection."""
    _, count = big_dir
    port, _ = _site(pki, tmp_path, start_server)
    ftp = _login(pki, port)
    ftp.putcmd("STAT big")
    lines: list[str] = []
    while True:
        line = ftp.getline()
        lines.append(line)
        if line.startswith("213 "):
            break
        assert len(lines) < 2000, "STAT output is not bounded"
    size = sum(len(line) + 2 for line in lines)
    assert size < 256 * 1024, size
    assert f"{count - 1000} more entries not shown" in lines[-2]
    assert "f000000.dat" in lines[1]  # sorted: the first entries come first
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()
