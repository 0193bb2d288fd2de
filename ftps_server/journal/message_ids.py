"""Fixed journal MESSAGE_IDs for ftps-server (see systemd/ftps-server.catalog).

Each id is a uuid4 in the 32-character lowercase hex form that journald expects in
``MESSAGE_ID=``. They were generated once and must never change: monitoring filters
(``journalctl MESSAGE_ID=...``) and the catalog entries depend on them.
"""

from __future__ import annotations

__all__ = [
    "ADDRESS_BANNED",
    "ALL",
    "CERT_EXPIRED",
    "CERT_EXPIRING",
    "CERT_INVALID",
    "CERT_MISSING",
    "LISTENER_NO_CERT",
    "LOGIN_FAILED",
    "LOGIN_OK",
    "SERVICE_READY",
    "SERVICE_RELOAD",
]

CERT_EXPIRING = "9b31f8ef2ec84005bde65da4848fbf5f"
CERT_EXPIRED = "9f16420077d7488a822246ce639ba8b3"
CERT_MISSING = "b849000ea1c7463d82266cc746f0ad8f"
CERT_INVALID = "a4ecd04ff10f4203bb3ee03425efb11e"
LISTENER_NO_CERT = "ecda34990e77408d8280a22c68e5242a"
LOGIN_OK = "7f268eb727d94c9fbfdd1bbbd92e6e49"
LOGIN_FAILED = "4b2bc898d32e440485ce4b1cb51f8c3b"
ADDRESS_BANNED = "bd227a3ac6fc4b4f9e390e568e4b131c"
SERVICE_READY = "5a74914bf77e49978eac0e19169f9616"
SERVICE_RELOAD = "ea3a99cd916343ebb90dc0422c939305"

#: Every id by its constant name, for the catalog consistency test.
ALL: dict[str, str] = {
    "CERT_EXPIRING": CERT_EXPIRING,
    "CERT_EXPIRED": CERT_EXPIRED,
    "CERT_MISSING": CERT_MISSING,
    "CERT_INVALID": CERT_INVALID,
    "LISTENER_NO_CERT": LISTENER_NO_CERT,
    "LOGIN_OK": LOGIN_OK,
    "LOGIN_FAILED": LOGIN_FAILED,
    "ADDRESS_BANNED": ADDRESS_BANNED,
    "SERVICE_READY": SERVICE_READY,
    "SERVICE_RELOAD": SERVICE_RELOAD,
}
