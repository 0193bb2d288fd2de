"""No configuration error echoes a secret: a plain password, an SMTP password or key text.

Issue 12.9: `[user:bob] password = hunter2` used to give `... (got 'hunter2')` in
check-config, in the unit's ExecStartPre/ExecReload journal lines and in `check`'s
monitoring line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ftps_server.reminders.mail as mail
from ftps_server.config.loader import load
from ftps_server.errors import ConfigError

SECRET = "hunter2"


def write(tmp: Path, body: str) -> Path:
    path = tmp / "ftps-server.ini"
    path.write_text(f"[server]\nstate_dir = {tmp}/state\nroot = {tmp}/homes\n{body}")
    return path


@pytest.mark.parametrize(
    "body",
    [
        f"[user:bob]\npassword = {SECRET}\n",
        f"[user:bob]\npassword = $scrypt$ln=99,r=8,p=1${SECRET}$abc\n",
        f"[alerts]\nsmtp_password_file = {SECRET}\n",
    ],
)
def test_config_error_does_not_echo_the_secret(tmp_path: Path, body: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert SECRET not in message
    assert str(path) in message and caught.value.key in ("password", "smtp_password_file")


def test_other_keys_still_show_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'often'"):
        load(write(tmp_path, "max_login_failures = often\n"))


@pytest.mark.parametrize(
    "command", [["check-config"], ["check", "--timeout", "1"]], ids=["check-config", "check"]
)
def test_cli_output_does_not_echo_the_password(tmp_path: Path, command: list[str]) -> None:
    path = write(tmp_path, f"[user:bob]\npassword = {SECRET}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ftps_server", *command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "password" in output and SECRET not in output, output


def test_unreadable_smtp_password_file_is_not_quoted(tmp_path: Path) -> None:
    secret_file = tmp_path / "smtp-password"
    secret_file.write_bytes(b"hunter2\xff\xfe")  # not UTF-8
    path = write(tmp_path, f"[alerts]\nsmtp_password_file = {secret_file}\n")
    with pytest.raises(ConfigError) as caught:
        mail.read_password(load(path).alerts)
    message = str(caught.value)
    assert SECRET not in message and "0xff" not in message and "\\xff" not in message
    assert str(secret_file) in message
