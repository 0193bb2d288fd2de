"""Issue 13.6: the default `[alerts] transport = sendmail` with a real Debian MTA.

Postfix (in the root file system) is configured for local delivery only; the hardened
ftps-server-remind.service (NoNewPrivileges=, RestrictSUIDSGID=, ProtectSystem=strict) runs
`ftps-server remind`, whose `/usr/sbin/sendmail -t -oi` is Postfix's: postdrop, without its
set-group-ID bit, queues into the maildrop as a member of group postdrop (postinst), and
Postfix delivers to the local mailbox. Our own spool must be empty afterwards: a mail that
silently stayed there fails the test.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import helpers
from conftest import wait_active
from container import CT_ADDR, EXTRA_ADDRS, Container

MAIN_CF = """\
# test: local delivery only, nothing leaves the container
myhostname = ftps-test.example.org
mydestination = localhost, ftps-test.example.org
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost =
default_transport = error:no outside mail in the test
alias_maps =
alias_database =
mailbox_size_limit = 0
compatibility_level = 3.6
"""
MAILBOX = "/var/mail/ops"


def _postfix_ready(ct: Container) -> None:
    ct.write_file("/etc/postfix/main.cf", MAIN_CF)
    ct.run("id ops >/dev/null 2>&1 || useradd -m ops")
    ct.run(["rm", "-f", MAILBOX])
    ct.run(["systemctl", "restart", "postfix"])
    deadline = time.monotonic() + 30
    while ct.run(["postfix", "status"], check=False).returncode != 0:
        assert time.monotonic() < deadline, ct.run(
            ["journalctl", "--no-pager", "-n", "30", "-u", "postfix@-"], check=False
        ).stdout
        time.sleep(0.3)


def test_remind_service_mails_through_postfix_sendmail(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    ct = container
    if ct.run(["test", "-x", "/usr/sbin/postdrop"], check=False).returncode != 0:
        raise AssertionError("postfix is missing from the root file system (container.py)")
    _postfix_ready(ct)
    groups = ct.run(["id", "-nG", "ftps-server"]).stdout.split()
    assert "postdrop" in groups, groups  # postinst (or its trigger on /usr/sbin/postdrop)

    expiring = helpers.make_cert(ct, "mta-exp", EXTRA_ADDRS[1], 5, host_dir)
    mta_site = dataclasses.replace(
        site, addresses=", ".join((CT_ADDR, *EXTRA_ADDRS)), smtp=False, extra_certs=[expiring]
    )
    saved = ct.path(helpers.CONFIG).read_text()
    text = mta_site.config() + (
        "\n[alerts]\n"
        "transport = sendmail\n"
        "email_to = ops@localhost\n"
        "email_from = ftps-server@ftps-test.example.org\n"
        "warn_days = 14\n"
    )
    try:
        helpers.write_config(ct, text)
        ct.run(["ftps-server", "check-config", helpers.CONFIG])
        # Today's reminders may have gone out in an earlier test: start from a clean state.
        ct.run("rm -f /var/lib/ftps-server/reminders.json /var/lib/ftps-server/spool/*.json")
        proc = ct.run(["systemctl", "start", "ftps-server-remind.service"], check=False)
        log = ct.run(
            ["journalctl", "--no-pager", "-n", "40", "-u", "ftps-server-remind.service"],
            check=False,
        ).stdout
        assert proc.returncode == 0, proc.stderr + log
        assert ct.systemctl_show("ftps-server-remind.service", "Result") == "success", log
        spooled = ct.run("ls /var/lib/ftps-server/spool/ 2>/dev/null", check=False).stdout
        assert not spooled.strip(), f"mail stayed in our spool: {spooled}\n{log}"

        deadline = time.monotonic() + 60
        mailbox = ""
        while "mta-exp" not in mailbox and time.monotonic() < deadline:
            time.sleep(0.5)
            if ct.path(MAILBOX).exists():
                mailbox = ct.path(MAILBOX).read_text(errors="replace")
        postfix_log = ct.run(
            ["journalctl", "--no-pager", "-n", "40", "-t", "postfix/local", "-t", "postfix/pickup"],
            check=False,
        ).stdout
        assert "mta-exp" in mailbox, f"nothing delivered to {MAILBOX}\n{postfix_log}\n{log}"
        headers = mailbox.split("\n\n", 1)[0]
        assert "\nSubject: [ftps-server]" in headers, headers
        assert "From: ftps-server@ftps-test.example.org" in headers, headers
        # Queued by postdrop (uid ftps-server), delivered by Postfix's local agent.
        assert "uid=" in postfix_log and "status=sent (delivered to mailbox)" in postfix_log, (
            postfix_log
        )
    finally:
        helpers.write_config(ct, saved)
        ct.run(["systemctl", "reload", "ftps-server"])
        wait_active(ct)
