"""Nested homes (issue 19.4): a home inside (or equal to) another user's home is refused by
the config check unless both users set `shared_home = yes`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftps_server.config.loader import load
from ftps_server.errors import ConfigError

HASH = "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA=="
ROOT = Path(__file__).resolve().parents[2]


def _users(tmp: Path, alice: str, bob: str) -> Path:
    path = tmp / "c.ini"
    path.write_text(
        f"[server]\nroot = {tmp}/homes\n\n"
        f"[user:alice]\npassword = {HASH}\n{alice}\n\n"
        f"[user:bob]\npassword = {HASH}\n{bob}\n"
    )
    return path


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


def test_home_inside_another_users_home_is_refused(tmp_path: Path) -> None:
    path = _users(tmp_path, f"home = {tmp_path}/homes/alice", f"home = {tmp_path}/homes/alice/bob")
    err = _error(path)
    assert (err.section, err.key) == ("user:bob", "home")
    assert "inside the home of [user:alice]" in str(err) and "shared_home = yes" in str(err)


def test_home_above_another_users_home_is_refused(tmp_path: Path) -> None:
    path = _users(tmp_path, f"home = {tmp_path}/homes/alice/sub", f"home = {tmp_path}/homes")
    err = _error(path)
    assert (err.section, err.key) == ("user:alice", "home")
    assert "inside the home of [user:bob]" in str(err)


def test_same_home_is_refused(tmp_path: Path) -> None:
    path = _users(tmp_path, f"home = {tmp_path}/shared", f"home = {tmp_path}/shared/./")
    err = _error(path)
    assert (err.section, err.key) == ("user:bob", "home")
    assert "is the home of [user:alice] too" in str(err)


def test_home_reached_through_a_symlink_is_inside(tmp_path: Path) -> None:
    (tmp_path / "homes" / "alice").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "homes" / "alice")
    path = _users(tmp_path, f"home = {tmp_path}/homes/alice", f"home = {tmp_path}/link/bob")
    assert _error(path).section == "user:bob"


def test_siblings_and_prefix_names_are_fine(tmp_path: Path) -> None:
    path = _users(tmp_path, f"home = {tmp_path}/homes/al", f"home = {tmp_path}/homes/alice")
    assert [u.name for u in load(path).users] == ["alice", "bob"]
    path = _users(tmp_path, "", "")  # root/alice and root/bob by default
    assert load(path).users[0].shared_home is False


def test_sharing_needs_both_users_to_say_so(tmp_path: Path) -> None:
    inner = f"home = {tmp_path}/homes/alice/bob"
    outer = f"home = {tmp_path}/homes/alice"
    only_one = _users(tmp_path, outer, inner + "\nshared_home = yes")
    assert _error(only_one).section == "user:bob"
    both = _users(tmp_path, outer + "\nshared_home = yes", inner + "\nshared_home = yes")
    users = load(both).users
    assert [u.shared_home for u in users] == [True, True]
    same = _users(tmp_path, outer + "\nshared_home = yes", outer + "\nshared_home = yes")
    assert len(load(same).users) == 2
    bad = _users(tmp_path, "shared_home = maybe", "")
    assert (_error(bad).section, _error(bad).key) == ("user:alice", "shared_home")


def test_check_config_refuses_nested_homes(tmp_path: Path) -> None:
    path = _users(tmp_path, f"home = {tmp_path}/homes/alice", f"home = {tmp_path}/homes/alice/bob")
    proc = subprocess.run(
        [sys.executable, "-m", "ftps_server", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "[user:bob] home" in proc.stderr and "inside the home of [user:alice]" in proc.stderr
