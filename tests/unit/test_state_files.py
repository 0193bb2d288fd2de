"""`remind` run as root in a state_dir the service user owns: links planted there by the
service user are refused, never followed (issue 19.2). Real symlinks and hard links in tmp."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from reminder_support import AT, free_port, write_cert, write_config
from support import certificate_section

import ftps_server.reminders.run as reminders
from ftps_server.config.model import Config
from ftps_server.errors import ConfigError

SERVICE_UID, SERVICE_GID = 4242, 4243

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs root running remind")


@pytest.fixture(autouse=True)
def _service_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTPS_SERVER_SERVICE_USER", str(SERVICE_UID))


def _config(tmp: Path) -> Config:
    files = write_cert(tmp / "tls", "main", not_after=AT - dt.timedelta(days=1))
    section = certificate_section("main", files.cert, files.key, addresses="127.0.0.1")
    # SMTP down: the run spools an email, so every file kind is written
    return write_config(tmp, smtp_port=free_port(), certificates=section)


def _state(tmp: Path, uid: int = SERVICE_UID) -> Path:
    state = tmp / "state"
    state.mkdir()
    os.chown(state, uid, SERVICE_GID)
    return state


def _victim(tmp: Path) -> Path:
    victim = tmp / "victim"
    victim.write_text("root:secret-hash:::\n")
    victim.chmod(0o600)
    return victim


def _unchanged(victim: Path) -> None:
    st = victim.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)
    assert victim.read_text() == "root:secret-hash:::\n"


def test_lock_symlink_to_a_root_file_is_refused_not_chowned(tmp_path: Path) -> None:
    config, state, victim = _config(tmp_path), _state(tmp_path), _victim(tmp_path)
    (state / "reminders.lock").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"state_dir: .*reminders.lock is a symbolic link"):
        reminders.run_reminders(config, AT)
    _unchanged(victim)


def test_lock_hard_link_to_a_root_file_is_not_chowned(tmp_path: Path) -> None:
    config, state, victim = _config(tmp_path), _state(tmp_path), _victim(tmp_path)
    os.link(victim, state / "reminders.lock")
    with pytest.raises(ConfigError, match=r"reminders.lock has more than one hard link"):
        reminders.run_reminders(config, AT)
    _unchanged(victim)


def test_spool_symlink_to_another_directory_gets_no_files(tmp_path: Path) -> None:
    config, state = _config(tmp_path), _state(tmp_path)
    other = tmp_path / "etc-like"
    other.mkdir(mode=0o755)
    (state / "spool").symlink_to(other)
    with pytest.raises(ConfigError, match=r"spool is a symbolic link"):
        reminders.run_reminders(config, AT)
    assert list(other.iterdir()) == []
    assert (other.stat().st_uid, other.stat().st_gid) == (0, 0)


def test_state_file_symlink_is_set_aside_and_its_target_untouched(tmp_path: Path) -> None:
    config, state, victim = _config(tmp_path), _state(tmp_path), _victim(tmp_path)
    (state / "reminders.json").symlink_to(victim)
    report = reminders.run_reminders(config, AT)
    assert report.spooled == 1
    _unchanged(victim)
    assert (state / "reminders.json.broken").is_symlink()
    new = state / "reminders.json"
    assert not new.is_symlink() and new.stat().st_uid == SERVICE_UID


def test_spooled_file_symlink_is_not_read_or_delivered(tmp_path: Path) -> None:
    config, state, victim = _config(tmp_path), _state(tmp_path), _victim(tmp_path)
    (state / "spool").mkdir()
    (state / "spool" / "0-planted.json").symlink_to(victim)
    report = reminders.run_reminders(config, AT)
    assert report.spooled == 2  # the planted link stays for a human; the new email is spooled
    _unchanged(victim)


def test_state_dir_of_a_stranger_is_refused_as_root(tmp_path: Path) -> None:
    config, state = _config(tmp_path), _state(tmp_path, uid=4244)
    with pytest.raises(ConfigError, match=r"owned by uid 4244, neither root nor the service user"):
        reminders.run_reminders(config, AT)
    assert list(state.iterdir()) == []


def test_state_dir_of_the_service_user_is_used_and_files_stay_theirs(tmp_path: Path) -> None:
    config, state = _config(tmp_path), _state(tmp_path)
    reminders.run_reminders(config, AT)
    files = [state / "reminders.json", state / "reminders.lock", state / "spool"]
    files += list((state / "spool").iterdir())
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in files} == {(SERVICE_UID, SERVICE_GID)}
