"""Issue 6: ftps-server under a real systemd (booted Debian stable container).

FTPS clients (curl) and the SMTP server (aiosmtpd) run on the machine side of the veth;
the server runs inside, managed with systemctl and read with journalctl.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from conftest import wait_active
from container import CT_ADDR, EXTRA_ADDRS, HOST_ADDR, Container

import ftps_server.journal.message_ids as message_ids

UNIT = "ftps-server"


def _wait(predicate, timeout: float, what: str, interval: float = 0.3):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _dropin(ct: Container, unit: str, text: str | None) -> None:
    """Install (or with None remove) a test drop-in for `unit`, then daemon-reload."""
    path = f"/etc/systemd/system/{unit}.d/zz-systest.conf"
    if text is None:
        ct.run(["rm", "-f", path])
    else:
        ct.write_file(path, text)
    ct.run(["systemctl", "daemon-reload"])


def test_start_status_and_transfers(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    """active; StatusText has the summary; upload+download on two addresses, each its own cert."""
    ct = container
    wait_active(ct)
    status = ct.systemctl_show(UNIT, "StatusText")
    assert re.search(r"\d+ listeners?", status), f"StatusText lacks a summary: {status!r}"
    payload = host_dir / "upload.bin"
    payload.write_bytes(hashlib.sha256(b"ftps").digest() * 4096)
    for name, address, kind in (
        ("site-a", CT_ADDR, "explicit"),
        ("site-b", EXTRA_ADDRS[0], "implicit"),
    ):
        cert = site.certs[name]
        remote = f"up-{name}-{kind}.bin"
        helpers.curl(
            [
                *helpers.ftps_args(cert, site),
                "-T",
                str(payload),
                helpers.ftps_url(kind, address, remote),
            ]
        )
        back = host_dir / f"back-{remote}"
        helpers.curl(
            [
                *helpers.ftps_args(cert, site),
                "-o",
                str(back),
                helpers.ftps_url(kind, address, remote),
            ]
        )
        assert back.read_bytes() == payload.read_bytes()
        inside = ct.run(["sha256sum", f"{site.home}/{remote}"]).stdout.split()[0]
        assert inside == hashlib.sha256(payload.read_bytes()).hexdigest()


def test_wildcard_address_transfers(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    """addresses = * (the package default): per-address certificates and data connections work."""
    ct = container
    site.addresses = "*"
    try:
        helpers.write_config(ct, site.config())
        ct.run(["systemctl", "reload", UNIT])
        wait_active(ct)
        payload = host_dir / "wildcard.bin"
        payload.write_bytes(hashlib.sha256(b"wildcard").digest() * 4096)
        for name, address in (("site-a", CT_ADDR), ("site-b", EXTRA_ADDRS[0])):
            cert = site.certs[name]  # ftps_args verifies against this address's certificate
            for kind in ("explicit", "implicit"):
                remote = f"wild-{name}-{kind}.bin"
                url = helpers.ftps_url(kind, address, remote)
                helpers.curl([*helpers.ftps_args(cert, site), "-T", str(payload), url])
                back = host_dir / f"back-{remote}"
                helpers.curl([*helpers.ftps_args(cert, site), "-o", str(back), url])
                assert back.read_bytes() == payload.read_bytes()
                listing = helpers.curl(
                    [*helpers.ftps_args(cert, site), "--list-only", helpers.ftps_url(kind, address)]
                )
                assert remote in listing.stdout.split()
    finally:
        site.addresses = helpers.Site.addresses
        helpers.write_config(ct, site.config())
        ct.run(["systemctl", "reload", UNIT])
        wait_active(ct)


def test_reload_new_certificate_keeps_running_download(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    """Reload with a replaced certificate: new connections see it; a 200 MiB download survives."""
    ct = container
    big = f"{site.home}/big.bin"
    ct.run(f"head -c 200M /dev/urandom > {big} && chown ftps-server:ftps-server {big}", timeout=120)
    want = ct.run(["sha256sum", big], timeout=120).stdout.split()[0]
    old = site.certs["site-a"]
    pid = ct.systemctl_show(UNIT, "MainPID")
    target = host_dir / "big.bin"
    cmd = [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        *helpers.ftps_args(old, site),
        "--limit-rate",
        "25M",
        "-o",
        str(target),
        helpers.ftps_url("explicit", CT_ADDR, "big.bin"),
    ]
    download = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    new: helpers.Cert | None = None
    try:
        _wait(
            lambda: target.exists() and target.stat().st_size > 8 << 20, 60, "the download to start"
        )
        new = helpers.make_cert(ct, "site-a", CT_ADDR, 365, host_dir / "renewed")
        assert new.fingerprint != old.fingerprint
        ct.run(["systemctl", "reload", UNIT])
        wait_active(ct)
        assert target.stat().st_size < 200 << 20, "download finished before the reload; too fast"
        # New connections get the new certificate; the old one no longer verifies.
        helpers.curl(
            [*helpers.ftps_args(new, site), "--list-only", helpers.ftps_url("explicit", CT_ADDR)]
        )
        helpers.curl(
            [*helpers.ftps_args(new, site), "--list-only", helpers.ftps_url("implicit", CT_ADDR)]
        )
        stale = helpers.curl(
            [*helpers.ftps_args(old, site), "--list-only", helpers.ftps_url("implicit", CT_ADDR)],
            check=False,
        )
        assert stale.returncode != 0, "old certificate still served after reload"
        _, err = download.communicate(timeout=120)
        assert download.returncode == 0, f"download broke across the reload: {err}"
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
        if new is not None:
            site.certs["site-a"] = new
        ct.run(["rm", "-f", big])
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    target.unlink()
    assert digest.hexdigest() == want, "downloaded bytes differ"
    assert ct.systemctl_show(UNIT, "MainPID") == pid, "reload changed the main PID"
    assert ct.journal_json(message_id=message_ids.SERVICE_RELOAD), "no reload journal entry"


def test_journal_login_records_and_catalog(container: Container, site: helpers.Site) -> None:
    """journalctl -o json: login records with MESSAGE_ID and fields; -x shows the catalog."""
    ct = container
    cert = site.certs["site-a"]
    helpers.curl(
        [*helpers.ftps_args(cert, site), "--list-only", helpers.ftps_url("explicit", CT_ADDR)]
    )
    bad = [
        a if not a.startswith(f"{site.user}:") else f"{site.user}:wrong-password"
        for a in helpers.ftps_args(cert, site)
    ]
    failed = helpers.curl([*bad, "--list-only", helpers.ftps_url("explicit", CT_ADDR)], check=False)
    assert failed.returncode != 0

    def has_user(entries: list[dict[str, object]]) -> list[dict[str, object]]:
        return [
            e for e in entries if any(v == site.user for k, v in e.items() if not k.startswith("_"))
        ]

    ok = _wait(
        lambda: has_user(ct.journal_json(message_id=message_ids.LOGIN_OK)), 10, "login entry"
    )
    assert (
        ok[-1]["SYSLOG_IDENTIFIER"] == "ftps-server"
        or ok[-1].get("_SYSTEMD_UNIT") == "ftps-server.service"
    )
    assert any(v == HOST_ADDR for v in ok[-1].values()), f"no client address field: {ok[-1]}"
    _wait(
        lambda: has_user(ct.journal_json(message_id=message_ids.LOGIN_FAILED)),
        10,
        "failed-login entry",
    )
    ready = ct.run(
        ["journalctl", "-x", "--no-pager", f"MESSAGE_ID={message_ids.SERVICE_READY}"]
    ).stdout
    assert "ftps-server has started and listens" in ready, ready[-2000:]


@contextlib.contextmanager
def _smtp_server() -> Iterator[list[bytes]]:
    """aiosmtpd on the machine side of the veth; yields the list of received messages."""
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            received.append(envelope.original_content or envelope.content)
            return "250 OK"

    controller = controller_mod.Controller(Handler(), hostname=HOST_ADDR, port=helpers.SMTP_PORT)
    controller.start()
    try:
        yield received
    finally:
        controller.stop()


def test_timer_sends_expiring_certificate_email(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    """Timer fired by a drop-in: ftps-server-remind.service mails about an expiring cert."""
    ct = container
    expiring = helpers.make_cert(ct, "site-c", EXTRA_ADDRS[1], 5, host_dir)
    site.extra_certs.append(expiring)
    site.addresses += f", {EXTRA_ADDRS[1]}"
    site.check_ca = helpers.write_check_ca(ct, [*site.certs.values(), expiring])
    site.smtp = True
    helpers.write_config(ct, site.config())
    ct.run(["ftps-server", "check-config", helpers.CONFIG])
    with _smtp_server() as received:
        _dropin(
            ct,
            "ftps-server-remind.timer",
            "[Timer]\nOnCalendar=\nOnActiveSec=1s\nRandomizedDelaySec=0\nAccuracySec=1s\n",
        )
        try:
            before = int(
                ct.systemctl_show("ftps-server-remind.service", "ExecMainExitTimestampMonotonic")
                or 0
            )
            ct.run(["systemctl", "restart", "ftps-server-remind.timer"])
            _wait(
                lambda: (
                    int(
                        ct.systemctl_show(
                            "ftps-server-remind.service", "ExecMainExitTimestampMonotonic"
                        )
                        or 0
                    )
                    > before
                ),
                60,
                "ftps-server-remind.service to run from the timer",
            )
            result = ct.systemctl_show("ftps-server-remind.service", "Result")
            assert result == "success", ct.run(
                ["journalctl", "--no-pager", "-n", "40", "-u", "ftps-server-remind.service"]
            ).stdout
            _wait(lambda: received, 30, "the reminder email")
        finally:
            _dropin(ct, "ftps-server-remind.timer", None)
            ct.run(["systemctl", "restart", "ftps-server-remind.timer"])
    mails = b"\n".join(received).decode("utf-8", "replace")
    assert "site-c" in mails or expiring.cert in mails, mails[:3000]
    entries = [
        e
        for e in ct.journal_json(message_id=message_ids.CERT_EXPIRING)
        if e.get("CERT_PATH") == expiring.cert
    ]
    assert entries, "no CERT_EXPIRING journal entry for the expiring certificate"
    entry = entries[-1]
    for fieldname in ("CERT_FINGERPRINT", "CERT_NOT_AFTER", "DAYS_LEFT"):
        assert fieldname in entry, f"{fieldname} missing: {entry}"
    assert int(str(entry["DAYS_LEFT"])) in (4, 5)
    catalog = ct.run(
        ["journalctl", "-x", "--no-pager", f"MESSAGE_ID={message_ids.CERT_EXPIRING}"]
    ).stdout
    assert "Assign a renewed certificate" in catalog
    # Bring the running server in line with the file again.
    ct.run(["systemctl", "reload", UNIT])
    wait_active(ct)


def test_broken_config_reload_keeps_old_config(container: Container, site: helpers.Site) -> None:
    """A broken config: reload fails, the server keeps running and serving with the old one."""
    ct = container
    pid = ct.systemctl_show(UNIT, "MainPID")
    good = ct.path(helpers.CONFIG).read_text()
    helpers.write_config(ct, good + "\n[server-typo]\nno_such_key = 1\n")
    try:
        reload = ct.run(["systemctl", "reload", UNIT], check=False)
        assert reload.returncode != 0, "reload with a broken config succeeded"
        assert ct.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "active"
        assert ct.systemctl_show(UNIT, "MainPID") == pid
        cert = site.certs["site-b"]
        helpers.curl(
            [
                *helpers.ftps_args(cert, site),
                "--list-only",
                helpers.ftps_url("implicit", EXTRA_ADDRS[0]),
            ]
        )
    finally:
        helpers.write_config(ct, good)
    ct.run(["systemctl", "reload", UNIT])
    wait_active(ct)


def test_watchdog_restarts_stopped_server(container: Container, site: helpers.Site) -> None:
    """kill -STOP of the main process: systemd's watchdog kills and restarts it."""
    ct = container
    # A short watchdog for the test; the shipped 30 s would only make it slower.
    _dropin(ct, "ftps-server.service", "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=5s\n")
    try:
        # Starts count against StartLimitBurst; earlier tests restarted the unit too.
        ct.run(["systemctl", "reset-failed", UNIT], check=False)
        ct.run(["systemctl", "restart", UNIT])
        wait_active(ct)
        time.sleep(4)  # pings keep it alive across more than one watchdog period
        assert ct.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "active"
        pid = ct.systemctl_show(UNIT, "MainPID")
        restarts = int(ct.systemctl_show(UNIT, "NRestarts"))
        ct.run(["kill", "-STOP", pid])
        _wait(
            lambda: int(ct.systemctl_show(UNIT, "NRestarts")) > restarts, 40, "a watchdog restart"
        )
        wait_active(ct)
        assert ct.systemctl_show(UNIT, "MainPID") != pid
        log = ct.run(["journalctl", "--no-pager", "-u", UNIT, "-n", "200"]).stdout
        assert "Watchdog timeout" in log, log[-2000:]
    finally:
        _dropin(ct, "ftps-server.service", None)
        ct.run(["systemctl", "reset-failed", UNIT], check=False)
        ct.run(["systemctl", "restart", UNIT], check=False)
    wait_active(ct)


def test_units_verify_and_security_score(container: Container, installed: str) -> None:
    """systemd-analyze verify is clean; systemd-analyze security rates both services <= 2.0."""
    ct = container
    units = [
        f"/usr/lib/systemd/system/{u}"
        for u in ("ftps-server.service", "ftps-server-remind.service", "ftps-server-remind.timer")
    ]
    verify = ct.run(["systemd-analyze", "verify", *units], check=False)
    noise = [line for line in (verify.stdout + verify.stderr).splitlines() if "ftps-server" in line]
    assert verify.returncode == 0 and not noise, verify.stdout + verify.stderr
    for unit in ("ftps-server.service", "ftps-server-remind.service"):
        security = ct.run(["systemd-analyze", "security", "--no-pager", unit], check=False)
        match = re.search(
            rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", security.stdout
        )
        assert match, security.stdout[-2000:] + security.stderr
        score = float(match[1])
        print(f"[system] systemd-analyze security {unit}: {score}")
        assert score <= 2.0, security.stdout


def test_broken_config_at_start_fails_without_restart_loop(
    container: Container, site: helpers.Site
) -> None:
    """A config error at start fails the unit (status 78) instead of restarting for ever."""
    ct = container
    good = ct.path(helpers.CONFIG).read_text()
    helpers.write_config(ct, good + "\n[server-typo]\nno_such_key = 1\n")
    try:
        ct.run(["systemctl", "reset-failed", UNIT], check=False)
        cursor = ct.run(["journalctl", "-n", "0", "--show-cursor", "--no-pager"]).stdout
        cursor = cursor.strip().rpartition("cursor: ")[2]
        start = ct.run(["systemctl", "restart", UNIT], check=False)
        assert start.returncode != 0, "start with a broken config succeeded"

        def settled_failed() -> bool:
            # failed, and no further try for longer than RestartSec (2 s)
            before = (ct.systemctl_show(UNIT, "SubState"), ct.systemctl_show(UNIT, "NRestarts"))
            time.sleep(3)
            after = (ct.systemctl_show(UNIT, "SubState"), ct.systemctl_show(UNIT, "NRestarts"))
            return before == after and after[0] == "failed"

        _wait(settled_failed, 90, "the unit to give up restarting", interval=0)
        assert ct.systemctl_show(UNIT, "ActiveState") == "failed"
        log = ct.run(["journalctl", "--no-pager", "-u", UNIT, f"--after-cursor={cursor}"]).stdout
        assert "status=78/CONFIG" in log, log[-2000:]
        assert "Start request repeated too quickly" in log, log[-2000:]
    finally:
        helpers.write_config(ct, good)
        ct.run(["systemctl", "reset-failed", UNIT], check=False)
        ct.run(["systemctl", "start", UNIT], check=False)
    wait_active(ct)
