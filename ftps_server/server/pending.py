"""Valid but unregistered client certificates, kept for the administrator to approve.

When a known user whose policy needs a certificate presents one that verified against
`client_ca` but is not theirs, it lands in `<state_dir>/pending-certs.json` (one entry per
user and fingerprint, with a counter). `ftps-server pending-certs` lists what is still not
registered, with the config line and the Ansible variable that would let it in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from ..config.model import DEFAULT_CONFIG_PATH, Config, load
from ..pki.certs import cert_info

__all__ = ["PendingCert", "PendingStore", "register", "run", "suggestion"]

log = logging.getLogger(__name__)

FILE_NAME = "pending-certs.json"
# an authenticated-by-CA client cannot fill the disk: past this, the oldest entries go
MAX_ENTRIES = 500


@dataclass(frozen=True)
class PendingCert:
    """One unregistered certificate seen for one user."""

    user: str
    fingerprint: str  # "AB:CD:..." upper-case SHA-256
    common_name: str | None
    subject: str
    issuer: str
    first_seen: str  # ISO 8601 UTC
    last_seen: str
    peer: str
    listener: str
    attempts: int = 1


class PendingStore:
    """The JSON file of pending certificates; every write is atomic (temp file + rename)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def load(self) -> list[PendingCert]:
        """Every recorded entry (an unreadable or corrupt file reads as empty, logged)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [PendingCert(**item) for item in data.get("certificates", [])]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("cannot read %s (%s); treating it as empty", self.path, exc)
            return []

    def _save(self, entries: list[PendingCert]) -> None:
        payload = {"version": 1, "certificates": [asdict(e) for e in entries]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pending-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=2)
                handle.write("\n")
            os.chmod(tmp, 0o640)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def record(
        self, user: str, cert: x509.Certificate, peer: str, listener: str, now: dt.datetime
    ) -> bool:
        """Add or refresh the entry for (user, cert); True when it is new. Never raises OSError."""
        info = cert_info(cert)
        stamp = now.astimezone(dt.UTC).isoformat(timespec="seconds")
        entries = self.load()
        for i, entry in enumerate(entries):
            if entry.user == user and entry.fingerprint == info.fingerprint:
                entries[i] = replace(
                    entry,
                    last_seen=stamp,
                    peer=peer,
                    listener=listener,
                    attempts=entry.attempts + 1,
                )
                new = False
                break
        else:
            entries.append(
                PendingCert(
                    user=user,
                    fingerprint=info.fingerprint,
                    common_name=info.common_name,
                    subject=info.subject,
                    issuer=info.issuer,
                    first_seen=stamp,
                    last_seen=stamp,
                    peer=peer,
                    listener=listener,
                )
            )
            new = True
        entries.sort(key=lambda e: e.last_seen)
        try:
            self._save(entries[-MAX_ENTRIES:])
        except OSError as exc:
            log.error("cannot record pending certificate in %s: %s", self.path, exc.strerror)
        return new

    def prune(self, config: Config) -> int:
        """Drop entries whose fingerprint is now pinned by some user; return how many."""
        pinned = {fp for user in config.users for fp in user.certificates}
        entries = self.load()
        keep = [e for e in entries if e.fingerprint not in pinned]
        if len(keep) != len(entries):
            try:
                self._save(keep)
            except OSError as exc:
                log.error("cannot update %s: %s", self.path, exc.strerror)
        return len(entries) - len(keep)


def suggestion(config: Config, entry: PendingCert) -> dict[str, Any]:
    """The config line and Ansible value that register `entry` (keeping existing pins)."""
    user = next((u for u in config.users if u.name == entry.user), None)
    pins = [*(user.certificates if user else ()), entry.fingerprint]
    values = [f"sha256:{fp}" for fp in pins]
    return {
        "section": f"[user:{entry.user}]",
        "config_line": f"certificates = {', '.join(values)}",
        "ansible": {"ftps_server_users": [{"name": entry.user, "certificates": values}]},
    }


def still_pending(config: Config, entries: list[PendingCert]) -> list[PendingCert]:
    """Entries whose fingerprint no user pins yet."""
    pinned = {fp for user in config.users for fp in user.certificates}
    return [e for e in entries if e.fingerprint not in pinned]


# --- ftps-server pending-certs -------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `pending-certs` subcommand."""
    parser = subparsers.add_parser(
        "pending-certs",
        help="list valid client certificates that are not registered to their user yet",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _text(config: Config, entry: PendingCert) -> str:
    hint = suggestion(config, entry)
    pins = hint["ansible"]["ftps_server_users"][0]["certificates"]
    return "\n".join(
        [
            f"user {entry.user}: CN={entry.common_name or '-'} ({entry.subject})",
            f"  issuer:      {entry.issuer}",
            f"  fingerprint: sha256:{entry.fingerprint}",
            f"  seen:        {entry.first_seen} .. {entry.last_seen}, {entry.attempts} "
            f"attempt(s), last from {entry.peer} on {entry.listener}",
            f"  config:      {hint['section']}",
            f"               {hint['config_line']}",
            f"  ansible:     ftps_server_users: - name: {entry.user}",
            f"                                   certificates: {json.dumps(pins)}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Print the pending certificates; exit 0 (also when there are none)."""
    config = load(args.config)
    entries = still_pending(config, PendingStore(config.server.state_dir).load())
    if args.json:
        out = [{**asdict(e), **suggestion(config, e)} for e in entries]
        print(json.dumps(out, indent=2))
        return 0
    if not entries:
        print("no pending client certificates")
        return 0
    print("\n\n".join(_text(config, e) for e in entries))
    return 0
