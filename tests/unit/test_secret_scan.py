"""The session-end secret scan (tests/secret_scan.py) finds what it is meant to find.

Its planted secrets live in a directory outside pytest's temporary tree and in local
variables, so the real scan at the end of the session does not trip over them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import secret_scan
import trustme


def test_scan_finds_passwords_hashes_and_key_lines_but_skips_inputs() -> None:
    password = "planted-" + "password-value"  # local: not a module constant
    key_pem = trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "server.key").write_bytes(key_pem)  # an input: skipped, its lines gathered
        (root / "site.ini").write_text("password = $scrypt$ln=10,r=8,p=1$c2FsdA==$aGFzaA==\n")
        key_line = next(line for line in key_pem.splitlines() if len(line) >= 40)
        (root / "server.log").write_bytes(b"INFO ok\nDEBUG loaded " + key_line + b"\n")
        (root / "state").mkdir()
        (root / "state" / "mail.eml").write_text(f"Subject: x\n\npassword {password}\n")
        (root / "dump.txt").write_bytes(key_pem)  # a whole key where no key belongs
        (root / "clean.json").write_text('{"fine": true}')
        (root / "smtp-password").write_text(password + "\n")  # a credential file: an input
        secrets = secret_scan.gather_secrets(root)
        secrets.values[password.encode()] = "password"
        found = {(f.where, f.kind) for f in secret_scan.scan_files(root, secrets)}
        texts = secret_scan.scan_texts([("t::x [stdout]", f"login {password}")], secrets)
    assert ("server.log", "private key line") in found
    assert ("state/mail.eml", "password") in found
    assert ("dump.txt", "a PRIVATE KEY block") in found
    assert not {w for w, _ in found} & {"server.key", "site.ini", "clean.json", "smtp-password"}
    assert [str(f) for f in texts] == ["t::x [stdout]: password"]
    assert all(password not in str(f) for f in texts)  # findings never repeat the secret


def test_module_constants_are_gathered() -> None:
    import auth_fakes  # a test module with a PASSWORD constant

    secrets = secret_scan.gather_secrets(None)
    assert secrets.values.get(auth_fakes.PASSWORD.encode()) == "password"
