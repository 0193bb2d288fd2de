"""Issue 14.1/14.2/20.3 in the booted container: `journalctl USER=bob MESSAGE_ID=<transfer>`.

A user bob is added to the running server (reload), curl on the machine uploads and downloads
over explicit and implicit FTPS, and the real journal of the installed service must return
exactly those transfers with their byte counts and upload digests, one SESSION_ID per curl
session shared by its data connections; the xferlog file in the unit's LogsDirectory= has
the same transfers, and the package's logrotate file rotates it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import helpers
import pytest
from conftest import wait_active
from container import CT_ADDR, EXTRA_ADDRS, Container

import ftps_server.journal.message_ids as message_ids

UNIT = "ftps-server"
XFERLOG = "/var/log/ftps-server/xferlog"


def _bob(ct: Container, site: helpers.Site) -> helpers.Site:
    password = "system-test-bob-4Kp"
    bob = helpers.Site(
        user="bob",
        password=password,
        password_hash=helpers.hash_password(ct, password),
        home="/srv/ftp/bob",
        certs=site.certs,
    )
    ct.run(f"install -d -m 0750 -o ftps-server -g ftps-server {bob.home}")
    return bob


def _journal(ct: Container, cursor: str, *matches: str) -> list[dict[str, object]]:
    out = ct.run(
        ["journalctl", "--no-pager", "-o", "json", f"--after-cursor={cursor}", *matches],
        check=False,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_journalctl_user_and_transfer_id_gives_exactly_the_transfers(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    ct = container
    wait_active(ct)
    bob = _bob(ct, site)
    good = ct.path(helpers.CONFIG).read_text()
    extra = (
        f"\n[user:bob]\nhome = {bob.home}\npermissions = elradfmw\nauth = password\n"
        f"password = {bob.password_hash}\n\n"
        f"[log]\ntransfer_log = {XFERLOG}\nupload_digest = sha256\n"
    )
    helpers.write_config(ct, good + extra)
    ct.run(["systemctl", "reload", UNIT])
    wait_active(ct)
    cursor = ct.run(["journalctl", "-n", "0", "--show-cursor", "--no-pager"]).stdout
    cursor = cursor.strip().rsplit("cursor: ", 1)[-1]
    try:
        small, big = host_dir / "bob-small.bin", host_dir / "bob-big.bin"
        small.write_bytes(hashlib.sha256(b"small").digest() * 1000)  # 32,000 bytes
        big.write_bytes(hashlib.sha256(b"big").digest() * 100_000)  # 3,200,000 bytes
        made: Counter[tuple[str, str, int]] = Counter()
        for name, address, kind, src in (
            ("site-a", CT_ADDR, "explicit", small),
            ("site-b", EXTRA_ADDRS[0], "implicit", big),
        ):
            cert = site.certs[name]
            remote = f"{kind}-{src.name}"
            helpers.curl(
                [
                    *helpers.ftps_args(cert, bob),
                    "-T",
                    str(src),
                    helpers.ftps_url(kind, address, remote),
                ]
            )
            made[("upload", f"/{remote}", src.stat().st_size)] += 1
            back = host_dir / f"back-{remote}"
            helpers.curl(
                [
                    *helpers.ftps_args(cert, bob),
                    "-o",
                    str(back),
                    helpers.ftps_url(kind, address, remote),
                ]
            )
            assert back.read_bytes() == src.read_bytes()
            made[("download", f"/{remote}", src.stat().st_size)] += 1
        # the same user's listing is no transfer; alice's transfers are not bob's
        helpers.curl(
            [
                *helpers.ftps_args(site.certs["site-a"], bob),
                "--list-only",
                helpers.ftps_url("explicit", CT_ADDR),
            ]
        )
        helpers.curl(
            [
                *helpers.ftps_args(site.certs["site-a"], site),
                "-T",
                str(small),
                helpers.ftps_url("explicit", CT_ADDR, "alice-small.bin"),
            ]
        )

        query = ("USER=bob", f"MESSAGE_ID={message_ids.TRANSFER}")
        deadline = time.monotonic() + 15
        while True:
            entries = _journal(ct, cursor, *query)
            if len(entries) >= sum(made.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        got = Counter((str(e["DIRECTION"]), str(e["PATH"]), int(str(e["BYTES"]))) for e in entries)
        assert got == made, entries
        assert all(e["RESULT"] == "ok" and e["USER"] == "bob" for e in entries)
        digests = {str(e["PATH"]): e.get("SHA256") for e in entries if e["DIRECTION"] == "upload"}
        assert digests == {
            "/explicit-bob-small.bin": hashlib.sha256(small.read_bytes()).hexdigest(),
            "/implicit-bob-big.bin": hashlib.sha256(big.read_bytes()).hexdigest(),
        }
        # one curl = one session: 4 sessions, each with its connect, login and one transfer
        sessions = {str(e["SESSION_ID"]) for e in entries}
        assert len(sessions) == 4
        connects = _journal(ct, cursor, f"MESSAGE_ID={message_ids.SESSION_CONNECT}")
        logins = _journal(ct, cursor, "USER=bob", f"MESSAGE_ID={message_ids.LOGIN_OK}")
        assert sessions <= {str(e["SESSION_ID"]) for e in connects}
        assert sessions <= {str(e["SESSION_ID"]) for e in logins}
        for sid in sessions:
            whole = _journal(ct, cursor, f"SESSION_ID={sid}")
            ids = [e["MESSAGE_ID"] for e in whole]
            assert ids.count(message_ids.SESSION_CONNECT) == 1, whole
            assert ids.count(message_ids.SESSION_DISCONNECT) == 1, whole
        explained = ct.run(
            ["journalctl", "-x", "--no-pager", "USER=bob", f"MESSAGE_ID={message_ids.TRANSFER}"]
        ).stdout
        assert "DIRECTION is upload or download" in explained, explained[-2000:]

        # 14.2: the same transfers in the xferlog file of the unit's LogsDirectory=
        lines = [
            line.split()
            for line in ct.path(XFERLOG).read_text().splitlines()
            if " bob ftp " in line
        ]
        assert (
            Counter(
                ("upload" if f[11] == "i" else "download", f[8].removeprefix(bob.home), int(f[7]))
                for f in lines
            )
            == made
        )
        assert all(f[17] == "c" and f[12] == "r" for f in lines)
        owner = ct.run(["stat", "-c", "%U %a", XFERLOG]).stdout.split()
        assert owner == ["ftps-server", "640"], owner
        if ct.run(["sh", "-c", "command -v logrotate"], check=False).returncode == 0:
            assert ct.path("/etc/logrotate.d/ftps-server").is_file()
            ct.run(["logrotate", "-f", "/etc/logrotate.d/ftps-server"])
            helpers.curl(
                [
                    *helpers.ftps_args(site.certs["site-a"], bob),
                    "-o",
                    str(host_dir / "after-rotate.bin"),
                    helpers.ftps_url("explicit", CT_ADDR, "explicit-bob-small.bin"),
                ]
            )
            time.sleep(1)  # the transfer's line follows the client's view by a moment
            assert "explicit-bob-small.bin" in ct.path(XFERLOG).read_text()
            assert ct.path(XFERLOG + ".1").is_file()
        else:
            pytest.skip("logrotate is not installed in the container (the rest passed)")
    finally:
        helpers.write_config(ct, good)
        ct.run(["systemctl", "reload", UNIT])
        wait_active(ct)
