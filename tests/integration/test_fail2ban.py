"""The shipped fail2ban filter against real failed logins of the real server (issue 14.4).

The chain is the production one except journald itself: the real server logs with its real
journal handler (`FTPS_SERVER_LOG=journal`); only the last step, `systemd.journal.send`, is a
stand-in that writes journald's export format instead of talking to a journald this machine
does not run. It adds what journald adds to an entry of the unit (`_SYSTEMD_UNIT`, `_PID`,
`_HOSTNAME`, the timestamp); `systemd-journal-remote` turns the export into a real journal file,
and the real `fail2ban-regex` reads that file with fail2ban's systemd backend, so the filter's
`journalmatch` and `failregex` are applied exactly as the jail (`backend = systemd`) applies them.
"""

from __future__ import annotations

import ftplib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared support
import support

from ftps_server.journal import message_ids
from ftps_server.pki.passwords import HashParams, hash_password

SHIPPED = support.ROOT / "packaging" / "fail2ban"  # laid out as under /etc/fail2ban
FILTER = SHIPPED / "filter.d" / "ftps-server.conf"
JAIL = SHIPPED / "jail.d" / "ftps-server.conf"
SYSTEM_F2B = Path("/etc/fail2ban")
JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
HOST = "127.0.0.2"
FAST = HashParams(ln=4, r=8, p=1)
RIGHT = "right horse battery"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("fail2ban-regex") is None
        or not JOURNAL_REMOTE.exists()
        or not (SYSTEM_F2B / "filter.d" / "common.conf").exists(),
        reason="needs fail2ban-regex (fail2ban) and systemd-journal-remote",
    ),
]

# journald's export format: KEY=value lines, binary-safe form for values with a newline
STAND_IN = """
import os, struct, time

def send(**fields):
    fields = {
        "__REALTIME_TIMESTAMP": str(time.time_ns() // 1000),
        "_SYSTEMD_UNIT": "ftps-server.service",
        "_HOSTNAME": "ftps-host",
        "_PID": str(os.getpid()),
        **{k: str(v) for k, v in fields.items()},
    }
    out = bytearray()
    for key, value in fields.items():
        data = value.encode()
        if b"\\n" in data:
            out += key.encode() + b"\\n" + struct.pack("<Q", len(data)) + data + b"\\n"
        else:
            out += key.encode() + b"=" + data + b"\\n"
    with open(os.environ["JOURNAL_EXPORT"], "ab") as f:
        f.write(bytes(out) + b"\\n")
"""


def start_server(tmp_path: Path, export: Path) -> tuple[subprocess.Popen[bytes], int, support.Pki]:
    pki = support.Pki(tmp_path / "pki")
    cert = pki.server("main", HOST, "::1")
    port = support.free_port(HOST)
    (tmp_path / "root" / "bob").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    config = support.node_config(
        tmp_path / "ftps-server.ini",
        cert,
        support.section("user:bob", password=hash_password(RIGHT, FAST)),
        addresses=f"{HOST}, ::1",
        explicit=port,
        server="key_group = root\nmax_login_failures = 100",
        root=tmp_path / "root",
    )
    stand_in = tmp_path / "journal-stand-in" / "systemd"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("")
    (stand_in / "journal.py").write_text(STAND_IN)
    env = dict(
        os.environ,
        PYTHONPATH=f"{stand_in.parent}:{support.ROOT}",
        FTPS_SERVER_LOG="journal",
        JOURNAL_EXPORT=str(export),
    )
    env.pop("NOTIFY_SOCKET", None)
    cmd = [sys.executable, "-m", "ftps_server", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # ready when it accepts: no sd_notify without journald
        assert proc.poll() is None, f"server exited {proc.returncode}"
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, port, pki
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not listen within 20 s")


def login(pki: support.Pki, port: int, source: str, user: str, password: str) -> str:
    ftp = support.ReusingFTP_TLS(context=support.client_context(pki), timeout=10)
    ftp.connect("::1" if source == "::1" else HOST, port, source_address=(source, 0))
    ftp.auth()
    try:
        return ftp.login(user, password)
    except ftplib.error_perm as exc:
        return str(exc)
    finally:
        ftp.close()


def installed(tmp_path: Path) -> Path:
    """Debian's /etc/fail2ban with the shipped filter and jail put where the package puts them
    (filter.d/ftps-server.conf; the example jail copied to jail.d/ as the README says)."""
    conf = tmp_path / "fail2ban"
    shutil.copytree(SYSTEM_F2B, conf, symlinks=True)
    shutil.copy(FILTER, conf / "filter.d" / "ftps-server.conf")
    shutil.copy(JAIL, conf / "jail.d" / "ftps-server.conf")
    return conf


def journalmatch(conf: Path) -> str:
    text = (conf / "filter.d" / "ftps-server.conf").read_text()
    match = re.search(r"^journalmatch = (.+)$", text, re.M)
    assert match
    return match[1]


def fail2ban_regex(conf: Path, journal: Path, *extra: str, regex: str = "ftps-server") -> str:
    source = f"systemd-journal[journalfiles={journal}]"
    cmd = ["fail2ban-regex", "-c", str(conf), *extra, source, regex]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_filter_bans_the_real_address_of_real_failed_logins(tmp_path: Path) -> None:
    export = tmp_path / "ftps-server.export"
    proc, port, pki = start_server(tmp_path, export)
    try:
        outcomes = [
            login(pki, port, "127.0.0.5", "bob", "wrong"),  # wrong password
            login(pki, port, "127.0.0.5", "mallory", "x"),  # unknown user
            login(pki, port, "127.0.0.5", "bob", "wrong again"),
            # a user name that pretends another address failed: 127.0.0.6 did, not 6.6.6.6
            login(pki, port, "127.0.0.6", "x from 6.6.6.6: wrong password", "x"),
            login(pki, port, "::1", "bob", "wrong"),  # IPv6: colons in the address itself
            login(pki, port, "127.0.0.7", "bob", RIGHT),  # a login that worked: never a failure
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert [o[:3] for o in outcomes] == ["530", "530", "530", "530", "530", "230"], outcomes
    # what a local user could forge with `logger` or `systemd-cat`: right MESSAGE_ID and text,
    # but journald would never give it the service's _SYSTEMD_UNIT
    forged = (
        f"__REALTIME_TIMESTAMP={time.time_ns() // 1000}\n_SYSTEMD_UNIT=session-1.scope\n"
        f"_PID=4242\nSYSLOG_IDENTIFIER=ftps-server\nMESSAGE_ID={message_ids.LOGIN_FAILED}\n"
        "MESSAGE=failed login for bob from 127.0.0.66: wrong password\nREMOTE_ADDR=127.0.0.66\n\n"
    )
    with export.open("a") as f:
        f.write(forged)
    journal = tmp_path / "ftps-server.journal"
    subprocess.run(
        [str(JOURNAL_REMOTE), "--split-mode=none", "-o", str(journal), str(export)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    # the journal holds what journalctl would show: 4 failures with their REMOTE_ADDR field
    shown = subprocess.run(
        [
            "journalctl",
            "--file",
            str(journal),
            f"MESSAGE_ID={message_ids.LOGIN_FAILED}",
            "-o",
            "cat",
            "--output-fields=REMOTE_ADDR",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert sorted(shown) == ["127.0.0.5"] * 3 + ["127.0.0.6", "127.0.0.66", "::1"], shown

    conf = installed(tmp_path)
    ips = fail2ban_regex(conf, journal, "--out", "ip").split()
    assert sorted(ips) == ["127.0.0.5"] * 3 + ["127.0.0.6", "::1"], ips
    summary = fail2ban_regex(conf, journal)
    assert re.search(r"^Lines: 5 lines, 0 ignored, 5 matched, 0 missed", summary, re.M), summary
    # the test can fail: a filter taking the first "from ADDRESS" bans whom the name says
    naive = fail2ban_regex(
        conf,
        journal,
        "--out",
        "ip",
        "-m",
        journalmatch(conf),
        regex="failed login for .*? from <ADDR>",
    ).split()
    assert "6.6.6.6" in naive and "127.0.0.6" not in naive, naive


def test_example_jail_reads_the_journal_with_the_filter(tmp_path: Path) -> None:
    """fail2ban-client's own reading of the installed jail (-d dumps it, starts nothing)."""
    proc = subprocess.run(
        ["fail2ban-client", "-c", str(installed(tmp_path)), "-d"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jail = [line for line in proc.stdout.splitlines() if "'ftps-server'" in line]
    dump = "\n".join(jail)
    assert "['add', 'ftps-server', 'systemd']" in dump, dump
    assert f"MESSAGE_ID={message_ids.LOGIN_FAILED}" in dump
    assert "_SYSTEMD_UNIT=ftps-server.service" in dump
    assert "'maxretry', 5]" in dump and "'bantime', '1h']" in dump
    assert "allports" in dump
