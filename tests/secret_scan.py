"""Look for secrets the test suite used in everything it produced.

Secrets are gathered, not listed by hand: module-level constants of the test modules whose
names say PASSWORD, HASH, SECRET or PASSPHRASE (and any `$scrypt$` hash string), and the body
lines of every private key file the suite wrote. They are then looked for in

- every file under the session's pytest temporary directory that is not a deliberate input:
  server logs, state and spool files, check/remind output, pending-certificate records. Key
  files (a PRIVATE KEY block in a .key/.pem), configuration sources (.ini, .yml, .yaml, .j2,
  .conf, .cfg) and credential files (one secret and nothing else, e.g. an SMTP password file)
  hold secrets on purpose and are skipped;
- every captured stdout/stderr/log section and failure report of the tests.

A finding names the place and the kind of secret, never the secret itself.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Finding", "Secrets", "gather_secrets", "scan_files", "scan_texts"]

TESTS = Path(__file__).resolve().parent
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
KEY_BODY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\s*(.*?)-----END", re.S)
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|HASH|SECRET|PASSPHRASE")
CONFIG_SUFFIXES = {".ini", ".yml", ".yaml", ".j2", ".conf", ".cfg"}
MAX_FILE = 64 * 2**20


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}"


@dataclass
class Secrets:
    values: dict[bytes, str]  # secret -> kind ("password", "hash", "private key line")

    def __bool__(self) -> bool:
        return bool(self.values)


def _module_secrets() -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not Path(path).resolve().is_relative_to(TESTS):
            continue
        for name, value in list(vars(module).items()):
            if not isinstance(value, str) or len(value) < 8:
                continue
            if value.startswith("$scrypt$"):
                found[value.encode()] = "password hash"
            elif name.isupper() and SECRET_NAME.search(name):
                found[value.encode()] = "hash" if "HASH" in name else "password"
    return found


def _is_key_file(path: Path, data: bytes) -> bool:
    return path.suffix in (".key", ".pem") and PRIVATE_KEY.search(data) is not None


def _key_lines(data: bytes) -> dict[bytes, str]:
    lines: dict[bytes, str] = {}
    for body in KEY_BODY.findall(data):
        for line in body.split():
            if len(line) >= 40:  # a full base64 line: unique enough to mean that key
                lines[line] = "private key line"
    return lines


def _files(root: Path) -> Iterable[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_FILE:
                continue
            yield path, path.read_bytes()
        except OSError:
            continue


def gather_secrets(root: Path | None) -> Secrets:
    """The secrets of this session: test constants, and key lines of key files under root."""
    values = _module_secrets()
    if root is not None and root.is_dir():
        for path, data in _files(root):
            if _is_key_file(path, data):
                values.update(_key_lines(data))
    return Secrets(values)


def _search(data: bytes, secrets: Secrets) -> list[str]:
    kinds = {kind for secret, kind in secrets.values.items() if secret in data}
    if PRIVATE_KEY.search(data):
        kinds.add("a PRIVATE KEY block")
    return sorted(kinds)


def scan_files(root: Path, secrets: Secrets) -> list[Finding]:
    """Findings in the files under `root` that are not deliberate inputs."""
    findings = []
    for path, data in _files(root):
        if _is_key_file(path, data) or path.suffix in CONFIG_SUFFIXES:
            continue
        if data.strip() in secrets.values:
            continue  # a credential file (e.g. smtp_password_file): the secret and nothing else
        for kind in _search(data, secrets):
            findings.append(Finding(str(path.relative_to(root)), kind))
    return findings


def scan_texts(texts: Iterable[tuple[str, str]], secrets: Secrets) -> list[Finding]:
    """Findings in captured output: (where, text) pairs."""
    findings = []
    for where, text in texts:
        for kind in _search(text.encode("utf-8", "replace"), secrets):
            findings.append(Finding(where, kind))
    return findings
