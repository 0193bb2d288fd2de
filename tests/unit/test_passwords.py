"""scrypt hashes: format, verification, bounds, and the hash-password command."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from ftps_server import cli
from ftps_server.config import sections
from ftps_server.config.loader import load
from ftps_server.errors import ConfigError
from ftps_server.pki.passwords import (
    DEFAULT_PARAMS,
    HashParams,
    PasswordError,
    hash_password,
    parse_hash,
    verify_password,
)

FAST = HashParams(ln=4, r=8, p=1)


def test_round_trip_and_format_accepted_by_config() -> None:
    stored = hash_password("s3cret ünïcode", FAST)
    assert sections._HASH_RE.match(stored)
    assert stored.startswith("$scrypt$ln=4,r=8,p=1$")
    assert verify_password("s3cret ünïcode", stored)
    assert not verify_password("s3cret unicode", stored)
    assert not verify_password("", stored)


def test_salted() -> None:
    assert hash_password("same", FAST) != hash_password("same", FAST)


def test_defaults_are_owasp_equivalent() -> None:
    # OWASP: N=2**15, r=8, p=3 is listed as equivalent to its N=2**17 minimum
    assert (DEFAULT_PARAMS.ln, DEFAULT_PARAMS.r, DEFAULT_PARAMS.p) == (15, 8, 3)
    assert DEFAULT_PARAMS.memory == 32 * 1024 * 1024


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "$scrypt$ln=4,r=8,p=1$c2FsdA==",
        "$scrypt$ln=4,r=8,p=1$!!!$aGFzaA==",
        "$scrypt$ln=40,r=8,p=1$c2FsdA==$" + "A" * 44,  # would need 128 GiB
        "$scrypt$ln=4,r=8,p=1$c2FsdA==$aGFzaA==",  # hash too short
    ],
)
def test_malformed_or_absurd_hashes_raise(text: str) -> None:
    with pytest.raises(PasswordError):
        parse_hash(text)
    with pytest.raises(PasswordError):
        verify_password("x", text)


def test_cli_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pass word\n"))
    assert cli.main(["hash-password", "--ln", "4", "--p", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"\$scrypt\$ln=4,r=8,p=1\$\S+\$\S+", out)
    assert verify_password("pass word", out)
    assert "pass word" not in out


def test_cli_prompts_without_echo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["tty-pw", "tty-pw"])
    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert cli.main(["hash-password", "--ln", "4", "--p", "1"]) == 0
    assert verify_password("tty-pw", capsys.readouterr().out.strip())


def test_cli_refuses_empty_and_absurd(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["hash-password", "--ln", "4"]) == 1
    assert cli.main(["hash-password", "--ln", "40"]) == 1
    assert "ln must be from 1 to 22" in capsys.readouterr().err


def test_config_rejects_unusable_hash_naming_section_and_key(tmp_path: Path) -> None:
    ini = tmp_path / "x.ini"
    ini.write_text(
        "[user:ann]\nauth = password\npassword = $scrypt$ln=40,r=8,p=1$c2FsdA==$" + "A" * 44 + "\n"
    )
    with pytest.raises(ConfigError, match=r"\[user:ann\] password: is not a usable hash"):
        load(ini)
    ini.write_text(f"[user:ann]\nauth = password\npassword = {hash_password('x', FAST)}\n")
    assert load(ini).users[0].password
