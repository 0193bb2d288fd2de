"""Issue 13.2: a package upgrade during a download does not cut it.

A rate-limited download (curl on the machine, ~60 MB at 1.5 MB/s) runs while apt installs a
rebuilt .deb with a higher version. postinst reloads the service, the running server sees
its code replaced on disk and hands its listening sockets to a new process (the new
version), which systemd follows as MainPID; the old process finishes the download and exits.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import helpers
from conftest import build_deb, wait_active
from container import CT_ADDR, Container

import ftps_server.journal.message_ids as message_ids

SIZE_MB = 60
RATE = "1500K"  # bytes per second: ~40 s for the file, long enough to span the upgrade


def _alive(ct: Container, pid: str) -> bool:
    return ct.run(["test", "-d", f"/proc/{pid}"], check=False).returncode == 0


def _serving_pid(ct: Container, cursor: str) -> str:
    """The PID of the process whose login entry came after `cursor` (one login expected)."""
    deadline = time.monotonic() + 10
    while True:
        logins = ct.journal_json(
            message_id=message_ids.LOGIN_OK, extra=[f"--after-cursor={cursor}"]
        )
        pids = {str(e["_PID"]) for e in logins}
        if pids or time.monotonic() > deadline:
            assert len(pids) == 1, logins
            return pids.pop()
        time.sleep(0.2)


def _messages_of(ct: Container, pid: str, cursor: str) -> list[str]:
    """The service's journal messages after `cursor` from process `pid`."""
    return [
        str(e.get("MESSAGE"))
        for e in ct.journal_json(unit="ftps-server", extra=[f"--after-cursor={cursor}"])
        if str(e.get("_PID")) == pid
    ]


def _cursor(ct: Container) -> str:
    out = ct.run(["journalctl", "--no-pager", "-n", "0", "--show-cursor"]).stdout
    return out.strip().rsplit("-- cursor: ", 1)[-1]


def test_upgrade_during_download_hands_over(
    container: Container, site: helpers.Site, deb_dir: Path, host_dir: Path
) -> None:
    ct = container
    wait_active(ct)
    old_version = ct.run(["dpkg-query", "-W", "-f=${Version}", "ftps-server"]).stdout
    new_version = f"{old_version}+handover1"
    new_deb = build_deb(deb_dir / "handover", version=new_version)
    big = f"{site.home}/big.bin"
    ct.run(
        f"head -c {SIZE_MB}M /dev/urandom > {big} && chown ftps-server:ftps-server {big}",
        timeout=120,
    )
    want = ct.run(["sha256sum", big]).stdout.split()[0]
    cert = site.certs["site-a"]
    target = host_dir / "big.bin"
    target.unlink(missing_ok=True)
    before_download = _cursor(ct)
    started = time.monotonic()
    download = subprocess.Popen(
        [
            "curl", "-sS", "--noproxy", "*", "--connect-timeout", "10",
            *helpers.ftps_args(cert, site), "--limit-rate", RATE,
            "-o", str(target), helpers.ftps_url("explicit", CT_ADDR, "big.bin"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (target.exists() and target.stat().st_size > 1_000_000):
            assert download.poll() is None, download.communicate()
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.2)
        # the process serving the download: the one that logged its login. Not MainPID: an
        # earlier test's reinstall may still be handing over, and then the download can be
        # served by the process that was main before (it drains), while MainPID serves nothing
        # and, at this upgrade, hands over and exits at once
        wait_active(ct)
        old_pid = _serving_pid(ct, before_download)

        cursor = _cursor(ct)
        proc = ct.install_deb(new_deb)
        apt_output = proc.stdout + proc.stderr
        assert ct.run(["dpkg-query", "-W", "-f=${Version}", "ftps-server"]).stdout == new_version
        wait_active(ct)
        # The download spans the upgrade: still running, in the old process.
        if download.poll() is not None:
            raise AssertionError(
                f"the download ended during the upgrade (curl exit {download.returncode}): "
                f"{download.communicate()[1]}\n{apt_output[-2000:]}"
            )
        if not _alive(ct, old_pid):
            raise AssertionError(
                f"PID {old_pid}, serving the download, has gone; its journal: "
                f"{_messages_of(ct, old_pid, before_download)}\n{apt_output[-2000:]}"
            )
        assert "handed over to the new version" in apt_output, apt_output[-3000:]
        new_pid = ct.systemctl_show("ftps-server", "MainPID")
        assert new_pid not in (old_pid, "0"), (old_pid, new_pid)

        # New connections reach the new process: its login entry, its PID.
        helpers.curl(
            [*helpers.ftps_args(cert, site), "--list-only", helpers.ftps_url("implicit", CT_ADDR)]
        )
        logins = ct.journal_json(
            message_id=message_ids.LOGIN_OK, extra=[f"--after-cursor={cursor}"]
        )
        assert logins and {str(e["_PID"]) for e in logins} == {new_pid}, logins
        # ... which runs the code installed by the upgrade (started after dpkg unpacked it).
        cmdline = ct.run(["cat", f"/proc/{new_pid}/cmdline"]).stdout.split("\0")
        assert "ftps_server" in cmdline and "serve" in cmdline, cmdline

        _out, err = download.communicate(timeout=150)
        assert download.returncode == 0, err
        elapsed = time.monotonic() - started
        got = hashlib.sha256(target.read_bytes()).hexdigest()
        assert got == want
        print(f"[system] {SIZE_MB} MB at {RATE}/s in {elapsed:.1f} s across the upgrade, {got}")

        # Its last session over, the old process exits; the new one serves.
        deadline = time.monotonic() + 20
        while _alive(ct, old_pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not _alive(ct, old_pid), "the old process is still there"
        messages = _messages_of(ct, old_pid, cursor)
        assert any(f"handed the listeners over to PID {new_pid}" in m for m in messages), messages
        assert any("drained: every session ended" in m for m in messages), messages
        assert ct.systemctl_show("ftps-server", "MainPID") == new_pid
        assert ct.systemctl_show("ftps-server", "ActiveState") == "active"
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
        target.unlink(missing_ok=True)
        ct.run(["rm", "-f", big])
