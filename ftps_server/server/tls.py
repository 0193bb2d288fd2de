"""ssl.SSLContext per certificate entry and listener policy, SNI, client CA and CRL.

One `TlsContexts` is built per configuration generation (start, each reload). Sessions keep
the contexts they started with, so a reload never changes a session's TLS state, and the data
connections of a session resume against the very context its control connection used.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from ..config.model import PORT_KINDS, CertificateEntry, Config
from ..pki.certs import EntryStatus, inspect_entry

__all__ = ["MOZILLA_INTERMEDIATE_CIPHERS", "TlsContexts", "build_contexts", "client_cert_mode"]

log = logging.getLogger(__name__)

# Mozilla "intermediate" (v5.7) TLS 1.2 suites, ECDHE only: Python cannot set the ffdhe2048
# group the profile asks of DHE, so DHE is left out rather than served with weaker groups.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

ECDH_CURVE = "prime256v1"

# client-certificate policy of a context: None = not asked, OPTIONAL = asked (certificate
# logins), REQUIRED = client-cert ports
_CLIENT_CERT_KINDS = ("client_cert_explicit", "client_cert_implicit")


def client_cert_mode(config: Config, kind: str) -> ssl.VerifyMode:
    """How a listener of `kind` treats client certificates."""
    if kind in _CLIENT_CERT_KINDS:
        return ssl.CERT_REQUIRED
    wants_certs = any("certificate" in u.auth or u.certificates for u in config.users)
    if config.tls.client_ca and wants_certs:
        return ssl.CERT_OPTIONAL
    return ssl.CERT_NONE


@dataclass
class TlsContexts:
    """The usable server contexts of one configuration, keyed by entry name and verify mode."""

    config: Config
    statuses: dict[str, EntryStatus]
    modes: dict[str, ssl.VerifyMode]  # listener kind -> client-certificate policy
    contexts: dict[tuple[str, ssl.VerifyMode], ssl.SSLContext] = field(default_factory=dict)

    def entry_for(self, local_address: str) -> CertificateEntry | None:
        """The configured certificate section for a local address (usable or not)."""
        return self.config.certificate_for(local_address)

    def problem_for(self, local_address: str) -> str | None:
        """Why `local_address` cannot offer TLS, or None when it can."""
        entry = self.entry_for(local_address)
        if entry is None:
            return f"no certificate is assigned to {local_address} and none is the default"
        status = self.statuses[entry.name]
        if not status.usable:
            return f"certificate [{entry.name}]: {status.problem}"
        return None

    def context_for(self, local_address: str, kind: str) -> ssl.SSLContext | None:
        """The context to serve on a connection to `local_address`, or None."""
        entry = self.entry_for(local_address)
        if entry is None:
            return None
        return self.contexts.get((entry.name, self.modes[kind]))


def _new_context(config: Config, entry: CertificateEntry, mode: ssl.VerifyMode) -> ssl.SSLContext:
    tls = config.tls
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(tls.ciphers or MOZILLA_INTERMEDIATE_CIPHERS)
    # OpenSSL's default groups include secp521r1 and X448, which the Mozilla profile rejects.
    # Python before 3.15 can set one group only; P-256 is the one every ECDHE client has
    # (X25519 is missing in older Java and embedded stacks). TLS 1.3 clients that sent an
    # X25519 key share get a HelloRetryRequest: one more round trip, no failure.
    ctx.set_ecdh_curve(ECDH_CURVE)
    ctx.load_cert_chain(str(entry.cert), str(entry.key))
    if mode != ssl.CERT_NONE and tls.client_ca:
        ctx.load_verify_locations(cafile=str(tls.client_ca))
        if tls.crl:
            ctx.load_verify_locations(cafile=str(tls.crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.verify_mode = mode
    # a session id context is required for resumption when client certificates are asked
    return ctx


def _install_sni(tls: TlsContexts) -> None:
    by_name = {name: entry.name for entry in tls.config.certificates for name in entry.server_names}
    if not by_name:
        return

    def choose(sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        if not server_name:
            return
        wanted = by_name.get(server_name.lower().rstrip("."))
        target = tls.contexts.get((wanted, ctx.verify_mode)) if wanted else None
        if target is not None and target is not ctx:
            sslobj.context = target

    for ctx in tls.contexts.values():
        ctx.sni_callback = choose


def build_contexts(config: Config) -> TlsContexts:
    """Inspect every certificate section and build contexts for the usable ones.

    Never raises for a bad certificate: its problem is kept in `statuses` so that the
    listeners it serves can explain themselves while every other listener works.
    """
    statuses = {
        e.name: inspect_entry(e, key_group=config.server.key_group) for e in config.certificates
    }
    # decided once per configuration, not per connection: it looks at every user
    tls = TlsContexts(
        config, statuses, {kind: client_cert_mode(config, kind) for kind in PORT_KINDS}
    )
    kinds = {kind for kind, _ in config.ports.enabled()} or {"explicit"}
    modes = {tls.modes[kind] for kind in kinds}
    for entry in config.certificates:
        status = statuses[entry.name]
        if not status.usable:
            log.critical(
                "certificate [%s] cannot be served: %s",
                entry.name,
                status.problem,
                extra={"fields": {"CERT_NAME": entry.name, "CERT_PATH": str(entry.cert)}},
            )
            continue
        for mode in modes:
            try:
                tls.contexts[(entry.name, mode)] = _new_context(config, entry, mode)
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
                problem = f"TLS library refused {entry.cert} / {entry.key}: {reason}"
                statuses[entry.name] = EntryStatus(entry, "invalid", problem, status.info)
                log.critical("certificate [%s] cannot be served: %s", entry.name, problem)
                break
    _install_sni(tls)
    return tls
