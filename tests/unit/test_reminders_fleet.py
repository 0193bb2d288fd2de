"""One reminder per fleet: nodes whose configs name one `[alerts] shared_state_dir` send one
email per condition per day between them, against a real aiosmtpd server on loopback."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reminder_support import AT, SmtpServer, write_cert, write_config
from support import certificate_section

import ftps_server.reminders.run as reminders
from ftps_server.config.model import Config
from ftps_server.errors import ConfigError
from ftps_server.pki.passwords import HashParams, hash_password

DAY = dt.timedelta(days=1)
ROOT = Path(__file__).resolve().parents[2]


def _nodes(tmp: Path, port: int, days: float, shared: Path | None, count: int = 2) -> list[Config]:
    """`count` node configs: own state_dir and address each, the same certificate files."""
    files = write_cert(tmp / "tls", "main", not_after=AT + dt.timedelta(days=days))
    certificates = certificate_section(
        "main", files.cert, files.key, addresses="127.0.0.1, 127.0.0.2, 127.0.0.3"
    )
    alerts = f"shared_state_dir = {shared}\n" if shared else ""
    configs = []
    for index in range(count):
        node = tmp / f"node{index + 1}"
        node.mkdir()
        configs.append(
            write_config(
                node,
                smtp_port=port,
                certificates=certificates,
                addresses=f"127.0.0.{index + 1}",
                warn_days="14, 7",
                alerts=alerts,
            )
        )
    return configs


def _remind_processes(configs: list[Config], day: str) -> None:
    """Every node's timer firing at once: `ftps-server remind` processes started together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FTPS_SERVER_LOG": "stderr"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ftps_server", "remind", "--config", str(c.path), "--at", day],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for c in configs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()


def test_two_nodes_at_once_send_one_email_and_one_node_alone_still_sends(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    shared = tmp_path / "shared" / ".ftps-server-fleet"
    configs = _nodes(tmp_path, smtp.port, -2, shared)
    _remind_processes(configs, AT.date().isoformat())
    assert len(smtp.sink.messages) == 1  # expired: one email for the fleet, not one per node
    # the same day again on both: nothing
    _remind_processes(configs, f"{AT.date().isoformat()}T23:00")
    assert len(smtp.sink.messages) == 1
    # next day node1 is down: node2 alone still sends the daily reminder
    _remind_processes(configs[1:], (AT + DAY).date().isoformat())
    assert len(smtp.sink.messages) == 2
    assert [s.split(":", 1)[0] for s in smtp.sink.subjects()] == ["[ftps-server] EXPIRED"] * 2
    # and node1, back up that day, does not repeat it
    report = reminders.run_reminders(configs[0], AT + DAY + dt.timedelta(hours=2))
    assert report.shared and report.actions["certificate:main"] == "already sent today"
    assert len(smtp.sink.messages) == 2
    # the per-node state_dirs hold no reminder state: it is all in the shared directory
    assert (shared / "reminders.json").is_file()
    assert not (tmp_path / "node1" / "state" / "reminders.json").exists()


def test_expiring_threshold_mailed_once_across_three_nodes(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    configs = _nodes(tmp_path, smtp.port, 10, tmp_path / "fleet", count=3)
    for offset in range(3):  # days 10, 9, 8 left: all inside the 14-day threshold
        for config in configs:
            reminders.run_reminders(config, AT + offset * DAY)
    assert len(smtp.sink.messages) == 1
    assert "expires in 10 days" in smtp.sink.subjects()[0]


def test_without_shared_state_dir_every_node_mails(tmp_path: Path, smtp: SmtpServer) -> None:
    """The control: what the shared directory prevents."""
    configs = _nodes(tmp_path, smtp.port, -2, None)
    _remind_processes(configs, AT.date().isoformat())
    assert len(smtp.sink.messages) == 2


def test_unusable_shared_dir_falls_back_to_the_node_and_says_so(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    blocker = tmp_path / "gone"
    blocker.write_text("a file where the shared storage's directory should be")
    configs = _nodes(tmp_path, smtp.port, -2, blocker / "fleet")
    for config in configs:
        report = reminders.run_reminders(config, AT)
        assert not report.shared and "shared_state_dir unusable" in report.errors[0]
    # a duplicate rather than silence, and the email says why
    assert len(smtp.sink.messages) == 2
    for body in smtp.sink.bodies():
        assert "shared_state_dir was not usable" in body and str(blocker / "fleet") in body
    # each node still deduplicates in its own state_dir
    reminders.run_reminders(configs[0], AT + dt.timedelta(hours=1))
    assert len(smtp.sink.messages) == 2


def test_symlinked_shared_dir_is_not_followed(tmp_path: Path, smtp: SmtpServer) -> None:
    """The state_files protections hold for the shared directory too: a link planted in its
    place is refused (the node falls back to its own state_dir), never written through."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "fleet"
    link.symlink_to(target)
    (config,) = _nodes(tmp_path, smtp.port, -2, link, count=1)
    report = reminders.run_reminders(config, AT)
    assert report.fallback and len(smtp.sink.messages) == 1
    assert list(target.iterdir()) == []


def test_shared_dir_inside_a_home_or_equal_to_state_dir_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "homes" / "alice"
    for shared, words in (
        (home / ".fleet", "inside the home of [user:alice]"),
        (tmp_path / "state", "is [server] state_dir"),
    ):
        with pytest.raises(ConfigError) as caught:
            write_config(
                tmp_path,
                smtp_port=25,
                certificates=f"""
                    [user:alice]
                    home = {home}
                    password = {hash_password("not used", HashParams(ln=4, r=8, p=1))}
                    """,
                alerts=f"shared_state_dir = {shared}\n",
            )
        text = str(caught.value)
        assert "[alerts]" in text and "shared_state_dir" in text and words in text


def test_a_node_does_not_reset_another_nodes_noticed_since(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """Per-node conditions (node 1's address without a certificate) keep their first day in
    the shared state while node 2, which has no such problem, runs in between."""
    files = write_cert(tmp_path / "tls", "main", not_after=AT + dt.timedelta(days=200))
    shared = tmp_path / "fleet"
    configs = []
    for index, addresses in ((1, "127.0.0.1"), (2, "127.0.0.2")):
        node = tmp_path / f"node{index}"
        node.mkdir()
        configs.append(
            write_config(
                node,
                smtp_port=smtp.port,
                addresses=addresses,
                alerts=f"shared_state_dir = {shared}\n",
                certificates=certificate_section(
                    "main", files.cert, files.key, addresses="127.0.0.2"
                ),
            )
        )
    reminders.run_reminders(configs[0], AT)
    reminders.run_reminders(configs[1], AT + DAY)
    reminders.run_reminders(configs[0], AT + 2 * DAY)
    bodies = smtp.sink.bodies()
    assert len(bodies) == 2  # node 1's problem, once a day on its days; node 2 has none
    assert all(f"Noticed since:    {AT.date().isoformat()}" in body for body in bodies)
