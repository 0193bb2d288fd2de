"""Loading and inspecting certificates and keys with `cryptography`.

Flat functions over `cryptography.x509`; each says what it raises. Nothing here ever returns
or logs private key material: keys are loaded only to prove they match their certificate.
"""

from __future__ import annotations

import datetime as dt
import grp
import itertools
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from ..errors import CertificateError
from . import compat

if TYPE_CHECKING:  # only the type: config imports pki (passwords), pki reads no config
    from ..config.model import CertificateEntry

__all__ = [
    "CertInfo",
    "EntryStatus",
    "cert_info",
    "check_key_file_mode",
    "days_left",
    "expiry_phrase",
    "fingerprint",
    "inspect_entry",
    "load_chain",
    "load_key_matching",
    "utcnow",
]


@dataclass(frozen=True)
class CertInfo:
    """The public facts of one certificate, as shown to operators."""

    subject: str
    issuer: str
    common_name: str | None
    sans: tuple[str, ...]
    fingerprint: str  # SHA-256, "AB:CD:..." upper case
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str
    key_bits: int
    serial: int

    def days_left(self, now: dt.datetime) -> int:
        """Whole days until not_after, negative once expired (see `days_left`)."""
        return days_left(self.not_after, now)


def days_left(not_after: dt.datetime, now: dt.datetime) -> int:
    """Whole days to `not_after`, truncated toward zero: 13 = expires in 13 (to 14) days,
    -2 = expired 2 (to 3) days ago, 0 = within a day either side.

    The one meaning of "days left" for check, reminders, emails and the journal.
    """
    return int((not_after - now) / dt.timedelta(days=1))


def expiry_phrase(not_after: dt.datetime, now: dt.datetime) -> str:
    """`expires in 13 days`, `expires within a day`, `expired less than a day ago`,
    `expired 2 days ago`: the words for `days_left`, everywhere they are shown."""
    days = days_left(not_after, now)
    if now >= not_after:
        if days == 0:
            return "expired less than a day ago"
        return f"expired {-days} day{'s' if days < -1 else ''} ago"
    if days == 0:
        return "expires within a day"
    return f"expires in {days} day{'s' if days > 1 else ''}"


@dataclass(frozen=True)
class EntryStatus:
    """What a [certificate:NAME] section amounts to right now.

    condition: "ok", "expired", "missing" (file absent, unreadable, bad key mode, key
    mismatch) or "invalid" (malformed, not yet valid, broken chain). Whether an "ok"
    certificate is "expiring" depends on warn_days, so the reminders decide that.
    """

    entry: CertificateEntry
    condition: str
    problem: str | None
    info: CertInfo | None
    chain_length: int = 0

    @property
    def usable(self) -> bool:
        """True when this entry may be served to clients."""
        return self.condition == "ok"


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (the one clock tests may replace)."""
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated upper-case hex."""
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    # cryptography < 42 has only the naive properties; Debian's 43 has both
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (
        cert.not_valid_before.replace(tzinfo=dt.UTC),
        cert.not_valid_after.replace(tzinfo=dt.UTC),
    )


def _key_description(cert: x509.Certificate) -> tuple[str, int]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, 0


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Extract the operator-facing facts of `cert`."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
            + [f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        sans = ()
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    not_before, not_after = _validity(cert)
    key_type, key_bits = _key_description(cert)
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=str(cns[0].value) if cns else None,
        sans=sans,
        fingerprint=fingerprint(cert),
        not_before=not_before,
        not_after=not_after,
        key_type=key_type,
        key_bits=key_bits,
        serial=cert.serial_number,
    )


def _file_error(what: str, path: Path, exc: OSError) -> CertificateError:
    if isinstance(exc, FileNotFoundError):
        return CertificateError(f"{what} {path} does not exist")
    return CertificateError(f"cannot read {what} {path}: {exc.strerror}")


def load_chain(path: Path) -> list[x509.Certificate]:
    """Read a PEM chain (leaf first). Raises CertificateError(kind=missing|invalid)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _file_error("certificate file", path, exc) from None
    try:
        chain = compat.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise CertificateError(f"{path} holds no PEM certificate", kind="invalid")
    return chain


def check_key_file_mode(path: Path, key_group: str) -> None:
    """Refuse key files others can read, as ssh does.

    Group read is allowed only for the service's own group (`key_group`), which is how the
    package and Ansible role deploy keys: owned by root, readable by group ftps-server.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise _file_error("key file", path, exc) from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        raise CertificateError(
            f"key file {path} is accessible by others (mode {mode:04o}); "
            f"run: chmod 600 {path} (or 640 with group {key_group})"
        )
    if mode & 0o070:
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        if group != key_group:
            raise CertificateError(
                f"key file {path} is accessible by group {group!r} (mode {mode:04o}); "
                f"only group {key_group!r} may read it: chmod 600 {path} or "
                f"chgrp {key_group} {path}"
            )


def load_key_matching(path: Path, cert: x509.Certificate, key_group: str) -> None:
    """Prove the key at `path` is private, readable, unencrypted and belongs to `cert`."""
    check_key_file_mode(path, key_group)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _file_error("key file", path, exc) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        msg = f"key file {path} is encrypted; store it without a passphrase"
        raise CertificateError(msg) from None
    except Exception:  # any parse failure: the message must not quote the key
        raise CertificateError(f"key file {path} holds no readable PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise CertificateError(f"key file {path} does not match certificate (key mismatch)")


def _check_chain(chain: list[x509.Certificate], path: Path) -> None:
    for child, parent in itertools.pairwise(chain):
        try:
            compat.verify_directly_issued_by(child, parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"{path}: chain is broken: {child.subject.rfc4514_string()} is not issued by "
                f"the next certificate {parent.subject.rfc4514_string()}",
                kind="invalid",
            ) from None


def inspect_entry(
    entry: CertificateEntry,
    *,
    key_group: str = "ftps-server",
    now: dt.datetime | None = None,
    with_key: bool = True,
) -> EntryStatus:
    """Load and judge one certificate section; never raises for file problems."""
    now = now or utcnow()
    info = None
    try:
        chain = load_chain(entry.cert)
        info = cert_info(chain[0])
        if with_key:
            load_key_matching(entry.key, chain[0], key_group)
        _check_chain(chain, entry.cert)
    except CertificateError as exc:
        return EntryStatus(entry, exc.kind, str(exc), info)
    if now < info.not_before:
        when = info.not_before.isoformat()
        return EntryStatus(entry, "invalid", f"{entry.cert} is not valid before {when}", info)
    if now >= info.not_after:
        when = info.not_after.isoformat()
        return EntryStatus(entry, "expired", f"{entry.cert} expired on {when}", info, len(chain))
    return EntryStatus(entry, "ok", None, info, len(chain))
