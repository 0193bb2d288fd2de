"""What the reminders found: one `ReminderFinding` per certificate section or uncovered address.

Below `mail` (which renders a finding) and `run` (which decides and sends), so neither imports
the other for the type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config.model import CertificateEntry, host_port
from ..journal import message_ids
from ..pki.certs import CertInfo

__all__ = ["Listener", "ReminderFinding"]

_MESSAGE_IDS = {
    "expiring": message_ids.CERT_EXPIRING,
    "expired": message_ids.CERT_EXPIRED,
    "missing": message_ids.CERT_MISSING,
    "invalid": message_ids.CERT_INVALID,
}


@dataclass(frozen=True)
class Listener:
    """One (address, kind, port) the server binds or serves with a certificate."""

    address: str
    kind: str
    port: int

    def __str__(self) -> str:
        return host_port(self.address, self.port)


@dataclass(frozen=True)
class ReminderFinding:
    """The condition of one certificate section (kind "certificate") or of one listener
    address that no certificate section serves (kind "address", always `missing`)."""

    kind: str
    name: str
    condition: str  # ok | expiring | expired | missing | invalid
    problem: str | None = None
    listeners: tuple[Listener, ...] = ()
    entry: CertificateEntry | None = None
    info: CertInfo | None = None
    days_left: int | None = None
    crossed: tuple[int, ...] = ()  # warn_days thresholds reached (expiring only)

    @property
    def subject(self) -> str:
        """Stable identity for dedup: "certificate:NAME" or "address:ADDR"."""
        return f"{self.kind}:{self.name}"

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 fingerprint of the certificate, when it could be read."""
        return self.info.fingerprint if self.info else None

    def journal_fields(self) -> dict[str, Any]:
        """Structured journal fields of this finding (None values are dropped by the logger)."""
        message_id = _MESSAGE_IDS.get(self.condition)
        if self.kind == "address" and self.condition == "missing":
            message_id = message_ids.LISTENER_NO_CERT
        return {
            "MESSAGE_ID": message_id,
            "CONDITION": self.condition,
            "CERT_NAME": self.entry.name if self.entry else None,
            "CERT_PATH": str(self.entry.cert) if self.entry else None,
            "CERT_FINGERPRINT": self.fingerprint,
            "CERT_NOT_AFTER": self.info.not_after.isoformat() if self.info else None,
            "DAYS_LEFT": self.days_left,
            "LISTENER": ",".join(str(li) for li in self.listeners) or None,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for `remind --json`."""
        return {
            "kind": self.kind,
            "name": self.name,
            "condition": self.condition,
            "problem": self.problem,
            "cert_path": str(self.entry.cert) if self.entry else None,
            "fingerprint": self.fingerprint,
            "not_after": self.info.not_after.isoformat() if self.info else None,
            "days_left": self.days_left,
            "thresholds_crossed": list(self.crossed),
            "listeners": [dataclasses.asdict(li) for li in self.listeners],
        }
