"""Valid but unregistered client certificates, kept for the administrator to approve.

When a known user whose policy needs a certificate presents one that verified against
`client_ca` but is not theirs, it lands in `<state_dir>/pending-certs.json` (one entry per
user and fingerprint, with a counter). `ftps-server pending-certs` lists what is still not
registered, with the config line and the Ansible variable that would let it in.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from .. import state_files
from ..config.loader import DEFAULT_CONFIG_PATH, load
from ..config.model import Config
from ..pki.certs import cert_info
from ..safe_text import escape_controls, has_controls

__all__ = ["PendingCert", "PendingStore", "register", "run", "suggestion", "suspicious"]

log = logging.getLogger(__name__)

FILE_NAME = "pending-certs.json"
# an authenticated-by-CA client cannot fill the disk: past this, the oldest entries go
MAX_ENTRIES = 500
# a subject is chosen by the client (within what the CA signed): longer ones are cut
MAX_TEXT = 512
# seconds between two writes of the file, however many failed logins happen meanwhile
WRITE_INTERVAL = 0.25
_MAX_FILE = 16 * 1024 * 1024
_NOT_STR = {"common_name", "attempts"}


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
    """The JSON file of pending certificates.

    `record` runs on the event loop for every failed certificate login, so it only updates
    an in-memory table (bounded: MAX_ENTRIES entries, MAX_TEXT characters a field) and wakes
    a writer thread; the writer replaces the file atomically at most once per
    `write_interval` seconds, however many logins fail meanwhile.
    """

    def __init__(self, state_dir: Path, *, write_interval: float = WRITE_INTERVAL) -> None:
        self.state_dir = state_dir
        self.path = state_dir / FILE_NAME
        self.write_interval = write_interval
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], PendingCert] | None = None  # loaded lazily
        self._dirty = threading.Event()
        self._writer: threading.Thread | None = None
        self._write_lock = threading.Lock()  # one writer at a time: worker or flush
        self._removed: set[tuple[str, str]] = set()  # dropped here since the last write
        self._changes = 0  # bumped by every change of the table
        self._saved = 0  # the value of _changes the file reflects

    def _read(self) -> list[PendingCert]:
        try:
            top = state_files.open_dir(self.state_dir)
        except FileNotFoundError:
            return []
        try:
            raw = state_files.read_bytes(
                FILE_NAME, dir_fd=top, dir_path=self.state_dir, limit=_MAX_FILE
            )
            data = json.loads(raw.decode("utf-8"))
            items = data.get("certificates", [])
            if not isinstance(items, list):
                raise TypeError('"certificates" is not a list')
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("cannot read %s (%s); treating it as empty", self.path, exc)
            return []
        finally:
            os.close(top)
        entries = []
        for item in items:
            entry = _entry(item)
            if entry is None:
                log.error("%s: skipping an entry of the wrong shape", self.path)
            else:
                entries.append(entry)
        return entries

    def _table(self) -> dict[tuple[str, str], PendingCert]:
        if self._entries is None:
            self._entries = {(e.user, e.fingerprint): e for e in self._read()[-MAX_ENTRIES:]}
        return self._entries

    def load(self) -> list[PendingCert]:
        """Every recorded entry, oldest first (an unreadable file reads as empty, logged)."""
        with self._lock:
            if self._entries is None:
                return sorted(self._read(), key=lambda e: e.last_seen)
            return sorted(self._entries.values(), key=lambda e: e.last_seen)

    def record(
        self, user: str, cert: x509.Certificate, peer: str, listener: str, now: dt.datetime
    ) -> bool:
        """Add or refresh the entry for (user, cert); True when it is new. Never blocks on
        the disk: the file is written by a worker thread (see the class docstring)."""
        info = cert_info(cert)
        stamp = now.astimezone(dt.UTC).isoformat(timespec="seconds")
        key = (user, info.fingerprint)
        with self._lock:
            table = self._table()
            old = table.get(key)
            if old is not None:
                table[key] = replace(
                    old, last_seen=stamp, peer=peer, listener=listener, attempts=old.attempts + 1
                )
            else:
                if len(table) >= MAX_ENTRIES:
                    # an authenticated-by-CA client cannot fill the disk: the oldest goes
                    oldest = min(table, key=lambda k: table[k].last_seen)
                    del table[oldest]
                    self._removed.add(oldest)
                table[key] = PendingCert(
                    user=user,
                    fingerprint=info.fingerprint,
                    common_name=_clip(info.common_name),
                    subject=_clip(info.subject) or "",
                    issuer=_clip(info.issuer) or "",
                    first_seen=stamp,
                    last_seen=stamp,
                    peer=peer,
                    listener=listener,
                )
        self._schedule()
        return old is None

    def prune(self, config: Config) -> int:
        """Drop entries whose fingerprint is now pinned by some user; return how many."""
        pinned = {fp for user in config.users for fp in user.certificates}
        with self._lock:
            table = self._table()
            gone = [k for k, e in table.items() if e.fingerprint in pinned]
            for k in gone:
                del table[k]
            self._removed.update(gone)
        if gone:
            self._schedule()
        return len(gone)

    def flush(self) -> None:
        """Write pending changes now, or wait for the worker's write in progress."""
        self._write()

    def _schedule(self) -> None:
        with self._lock:
            self._changes += 1
        self._dirty.set()
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="ftps-pending", daemon=True
            )
            self._writer.start()
            atexit.register(self.flush)

    def _write_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            self._write()
            # a burst of failed logins becomes one write per interval, not one per login
            time.sleep(self.write_interval)

    def _write(self) -> None:
        with self._write_lock:
            with self._lock:
                if self._saved == self._changes:
                    return
                changes = self._changes
                mine, removed = dict(self._table()), set(self._removed)
            with _DirLock(self.state_dir):
                # with `[server] workers = N` every worker writes this file: keep what the
                # others recorded (each client address has one worker, so they differ)
                merged = {
                    (e.user, e.fingerprint): e
                    for e in self._read()
                    if (e.user, e.fingerprint) not in removed
                }
                for key, entry in mine.items():
                    theirs = merged.get(key)
                    if theirs is None or theirs.last_seen <= entry.last_seen:
                        merged[key] = entry
                entries = sorted(merged.values(), key=lambda e: e.last_seen)[-MAX_ENTRIES:]
                self._save(entries)
            with self._lock:
                self._removed -= removed
            self._saved = changes

    def _save(self, entries: list[PendingCert]) -> None:
        payload = {"version": 1, "certificates": [asdict(e) for e in entries]}
        data = (json.dumps(payload, indent=2) + "\n").encode()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            top = state_files.open_dir(self.state_dir)
            try:
                state_files.atomic_write(FILE_NAME, data, dir_fd=top, mode=0o640)
            finally:
                os.close(top)
        except OSError as exc:
            log.error("cannot record pending certificates in %s: %s", self.path, exc.strerror)


class _DirLock:
    """An exclusive flock on the state directory itself, across processes (workers); a
    directory that cannot be opened or locked (it does not exist yet) is not waited for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd: int | None = None

    def __enter__(self) -> None:
        try:
            self.fd = state_files.open_dir(self.directory)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            self.__exit__()

    def __exit__(self, *_exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + "..."


def _entry(item: object) -> PendingCert | None:
    """A PendingCert from one JSON object, None when a field is missing or of the wrong type."""
    if not isinstance(item, dict):
        return None
    try:
        entry = PendingCert(**item)
    except TypeError:
        return None
    strings = [getattr(entry, f.name) for f in fields(PendingCert) if f.name not in _NOT_STR]
    if not all(isinstance(v, str) for v in strings):
        return None
    if not isinstance(entry.attempts, int) or not isinstance(entry.common_name, str | None):
        return None
    return entry


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


def _client_chosen(entry: PendingCert) -> list[str]:
    return [entry.common_name or "", entry.subject, entry.issuer, entry.peer, entry.listener]


def suspicious(entry: PendingCert) -> bool:
    """True when a client-chosen field holds control characters (shown escaped)."""
    return any(has_controls(text) for text in _client_chosen(entry))


def _text(config: Config, entry: PendingCert) -> str:
    hint = suggestion(config, entry)
    pins = hint["ansible"]["ftps_server_users"][0]["certificates"]
    cn, subject, issuer, peer, listener = map(escape_controls, _client_chosen(entry))
    lines = [
        f"user {escape_controls(entry.user)}: CN={cn or '-'} ({subject})",
        f"  issuer:      {issuer}",
        f"  fingerprint: sha256:{entry.fingerprint}",
        f"  seen:        {entry.first_seen} .. {entry.last_seen}, {entry.attempts} "
        f"attempt(s), last from {peer} on {listener}",
    ]
    if suspicious(entry):
        lines.append(
            "  WARNING:     this certificate's names hold control characters (shown escaped, "
            "e.g. \\x1b): a client may be trying to forge this listing; check before "
            "registering it"
        )
    lines += [
        f"  config:      {hint['section']}",
        f"               {hint['config_line']}",
        f"  ansible:     ftps_server_users: - name: {entry.user}",
        f"                                   certificates: {json.dumps(pins)}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the pending certificates; exit 0 (also when there are none)."""
    config = load(args.config)
    entries = still_pending(config, PendingStore(config.server.state_dir).load())
    if args.json:
        # json.dumps escapes control characters itself; "suspicious" flags the entry
        out = [{**asdict(e), **suggestion(config, e), "suspicious": suspicious(e)} for e in entries]
        print(json.dumps(out, indent=2))
        return 0
    if not entries:
        print("no pending client certificates")
        return 0
    print("\n\n".join(_text(config, e) for e in entries))
    return 0
