"""TLS contexts for control connections, from certificate material loaded once per reload.

One `TlsContexts` is built per configuration generation (start, each reload): it reads every
certificate, key, client CA and CRL file once into memory. A control connection gets its TLS
from `session_for`: a context shared by the control connections of its certificate, and a
random binding of its own (the session ID context, tls_openssl.bind_session) that its data
connections get too. OpenSSL resumes a session only under the binding it was made with, so a
data connection can resume only its own control connection's session: a session of any other
connection, listener or client from the same address gives a full handshake and is refused
by the data handler. Shared contexts are renewed every `SHARED_CONTEXT_SECONDS`, so their
ticket keys (in memory only) are not used for new sessions longer than that; a session keeps
its context, and its generation, to the end, so neither renewal nor reload changes it.

Where the binding cannot be set (tls_openssl falls back), every control connection gets
contexts of its own instead, with their own session cache and ticket keys: the same boundary
at ~0.25 ms more per connection.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..config.model import PORT_KINDS, CertificateEntry, Config
from ..config.resolver import CertificateResolver
from ..pki.certs import EntryStatus, inspect_entry
from .tls_engine import require_close_notify
from .tls_openssl import (
    BINDING_SIZE,
    CachedSession,
    ParsedChain,
    bind_session,
    binding_supported,
    cached_session,
    parse_chain,
    set_cache_size,
    set_groups,
    use_chain,
)

__all__ = [
    "CONTROL_TICKETS",
    "MOZILLA_INTERMEDIATE_CIPHERS",
    "SHARED_CONTEXT_SECONDS",
    "SessionTls",
    "TlsContexts",
    "build_contexts",
    "client_cert_mode",
]

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

_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

# TLS 1.3 session tickets a control connection gets after its handshake (OpenSSL's default);
# data connections get none, and the control connection one more per data connection (ftp.py)
CONTROL_TICKETS = 2

# a shared context takes new control connections for this long, then a new one (new ticket
# keys) takes over; the old one lives on with the sessions that use it
SHARED_CONTEXT_SECONDS = 3600.0

# TLS 1.2 sessions a shared context keeps; only open connections' are in it (tls_openssl)
_MIN_CACHE_SIZE = 20480

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


class Material:
    """File contents read once, served to OpenSSL by path from memory (a memfd).

    Python's ssl loads certificates and keys only from paths; a memfd keeps this generation's
    bytes even when a file on disk is replaced before the next reload. `certfile` holds the
    key too when there is one (OpenSSL reads the key from the certfile when given no
    keyfile). Where memfd_create is missing or refused (seccomp), the files themselves.
    """

    def __init__(self, path: Path, key: Path | None = None) -> None:
        self.certfile, self.keyfile = str(path), (str(key) if key else None)
        sources = [key, path] if key else [path]
        data = b"".join(_pem_file(p) for p in sources)
        # key and chain parsed once for every context of this generation (tls_openssl)
        self.parsed: ParsedChain | None = parse_chain(data) if key else None
        try:
            fd = os.memfd_create(f"ftps-{path.name}", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return
        weakref.finalize(self, os.close, fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self.certfile, self.keyfile = f"/proc/self/fd/{fd}", None


def _pem_file(path: Path) -> bytes:
    data = path.read_bytes()
    return data if data.endswith(b"\n") else data + b"\n"


@dataclass(frozen=True, slots=True)
class SessionTls:
    """The TLS of one control connection, which its data connections start with too."""

    context: ssl.SSLContext
    # the session ID context of the connection and its data connections (tls_openssl
    # .bind_session); None when `context` is the connection's own
    binding: bytes | None = None

    def bind(self, conn: ssl.SSLObject) -> ssl.SSLObject:
        """`conn`, made from `context`, under this session's binding. One that cannot be
        set fails the handshake: unbound, a shared context would resume anyone's session."""
        if self.binding is not None and not bind_session(conn, self.binding):
            raise ssl.SSLError("cannot bind the TLS session to its control connection")
        return conn

    def cache_entry(self, conn: ssl.SSLObject) -> CachedSession | None:
        """What to take out of the shared cache when `conn` closes (TLS 1.2 full
        handshakes on a shared context), else None."""
        return cached_session(conn, self.context) if self.binding is not None else None


@dataclass
class TlsContexts:
    """The usable certificates of one configuration and the contexts made from them."""

    config: Config
    statuses: dict[str, EntryStatus]
    modes: dict[str, ssl.VerifyMode]  # listener kind -> client-certificate policy
    # one probe context per (entry, mode), built at load time to find bad material early
    contexts: dict[tuple[str, ssl.VerifyMode], ssl.SSLContext] = field(default_factory=dict)
    material: dict[str, Material] = field(default_factory=dict)  # entry name -> cert + key
    client_ca: Material | None = None
    crl: Material | None = None
    # address / SNI name -> section, with the reasons of the sections that cannot be served;
    # replaced by build_contexts once every section is judged
    resolver: CertificateResolver[CertificateEntry] = field(
        default_factory=lambda: CertificateResolver(())
    )
    sni: bool = False  # a usable section lists server names: contexts get the SNI callback
    shared: bool = False  # control connections share contexts, bound by session ID context
    # (entry, mode) -> the shared context new control connections get, and when it was made
    _current: dict[tuple[str, ssl.VerifyMode], tuple[ssl.SSLContext, float]] = field(
        default_factory=dict
    )

    def entry_for(self, local_address: str) -> CertificateEntry | None:
        """The configured certificate section for a local address (usable or not)."""
        return self.resolver.for_address(local_address)

    def problem_for(self, local_address: str) -> str | None:
        """Why `local_address` cannot offer TLS, or None when it can."""
        return self.resolver.problem_for(local_address)

    def usable(self, local_address: str, kind: str) -> bool:
        """True when connections of `kind` to `local_address` can get a context."""
        entry = self.entry_for(local_address)
        return entry is not None and (entry.name, self.modes[kind]) in self.contexts

    def session_for(self, local_address: str, kind: str) -> SessionTls | None:
        """The TLS for a new control connection to `local_address`, or None."""
        entry = self.entry_for(local_address)
        if entry is None or (entry.name, self.modes[kind]) not in self.contexts:
            return None
        key = (entry.name, self.modes[kind])
        if self.shared:
            return SessionTls(self._shared_context(key), os.urandom(BINDING_SIZE))
        return SessionTls(self._own_context(*key))

    def _shared_context(self, key: tuple[str, ssl.VerifyMode]) -> ssl.SSLContext:
        now = time.monotonic()
        current = self._current.get(key)
        if current is None or now - current[1] >= SHARED_CONTEXT_SECONDS:
            ctx = self._build(*key)
            if self.sni:
                ctx.sni_callback = _shared_sni_chooser(weakref.ref(self), key[0], key[1])
            # only open connections' sessions are cached: room for all of them
            set_cache_size(ctx, max(_MIN_CACHE_SIZE, 4 * self.config.server.max_connections))
            current = self._current[key] = (ctx, now)
        return current[0]

    def _own_context(self, entry_name: str, mode: ssl.VerifyMode) -> ssl.SSLContext:
        first = self._build(entry_name, mode)
        if self.sni:
            first.sni_callback = self._sni_chooser(entry_name, mode)
        return first

    def _build(self, entry_name: str, mode: ssl.VerifyMode) -> ssl.SSLContext:
        material = self.material[entry_name]
        ctx = _new_context(self.config, material, mode, self.client_ca, self.crl)
        ctx.num_tickets = CONTROL_TICKETS
        return ctx

    def _sni_target(self, server_name: str | None, own_entry: str, mode: ssl.VerifyMode) -> str:
        """The section an SNI name asks for, when it is another usable one; else ''."""
        if not server_name:
            return ""
        entry = self.resolver.for_name(server_name)
        wanted = entry.name if entry is not None else own_entry
        if wanted == own_entry or (wanted, mode) not in self.contexts:
            return ""
        return wanted

    def _sni_chooser(
        self, own_entry: str, mode: ssl.VerifyMode
    ) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
        """The SNI callback of one control connection's own first context (no binding).

        It switches to contexts of that connection's own, built on first use and shared by
        its data connections. Those start with the first context as well, never with one SNI
        switched to: OpenSSL keeps sessions and ticket keys in the context a handshake starts
        with. The closure holds no reference back to the first context, so a session's
        contexts are freed with it, without waiting for the cycle collector."""
        others: dict[str, ssl.SSLContext] = {}

        def choose(sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
            wanted = self._sni_target(server_name, own_entry, mode)
            if not wanted:
                return
            target = others.get(wanted)
            if target is None:
                target = others[wanted] = self._build(wanted, mode)
            if target is not sslobj.context:
                sslobj.context = target

        return choose


def _shared_sni_chooser(
    contexts: weakref.ref[TlsContexts], own_entry: str, mode: ssl.VerifyMode
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    """The SNI callback of a shared context: to the shared context of the section asked for.
    OpenSSL keeps the session, and checks its binding, in the context the handshake started
    with; a switch changes only the certificate. A weak reference: the contexts of a
    generation hold this callback."""

    def choose(sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        tls = contexts()
        wanted = tls._sni_target(server_name, own_entry, mode) if tls is not None else ""
        if tls is None or not wanted:
            return
        target = tls._shared_context((wanted, mode))
        if target is not sslobj.context:
            sslobj.context = target

    return choose


def _new_context(
    config: Config,
    material: Material,
    mode: ssl.VerifyMode,
    client_ca: Material | None,
    crl: Material | None,
) -> ssl.SSLContext:
    tls = config.tls
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    require_close_notify(ctx)  # an upload cut short must not read as complete
    ctx.set_ciphers(tls.ciphers or MOZILLA_INTERMEDIATE_CIPHERS)
    set_groups(ctx)
    if material.parsed is None or not use_chain(ctx, material.parsed):
        ctx.load_cert_chain(material.certfile, material.keyfile)
    if mode != ssl.CERT_NONE and client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca.certfile)
        if crl is not None:
            ctx.load_verify_locations(cafile=crl.certfile)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.verify_mode = mode
    return ctx


def _load_material(tls: TlsContexts, modes: set[ssl.VerifyMode]) -> None:
    """Read the client CA and CRL once; a missing file fails like the TLS library would."""
    settings = tls.config.tls
    if settings.client_ca and modes - {ssl.CERT_NONE}:
        tls.client_ca = Material(settings.client_ca)
        if settings.crl:
            tls.crl = Material(settings.crl)


def build_contexts(config: Config) -> TlsContexts:
    """Inspect every certificate section and load the material of the usable ones.

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
    material_error: OSError | None = None
    try:
        _load_material(tls, modes)
    except OSError as exc:
        material_error = exc  # every certificate that asks for client certificates fails
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
        try:
            if material_error is not None:
                raise material_error
            # one memory file holding key and chain: OpenSSL reads the key from the certfile
            combined = Material(entry.cert, entry.key)
            for mode in modes:
                ctx = _new_context(config, combined, mode, tls.client_ca, tls.crl)
                tls.contexts[(entry.name, mode)] = ctx
            tls.material[entry.name] = combined
        except (ssl.SSLError, OSError) as exc:
            for mode in modes:
                tls.contexts.pop((entry.name, mode), None)
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            problem = f"TLS library refused {entry.cert} / {entry.key}: {reason}"
            statuses[entry.name] = EntryStatus(entry, "invalid", problem, status.info)
            log.critical("certificate [%s] cannot be served: %s", entry.name, problem)
    problems = {n: s.problem or s.condition for n, s in statuses.items() if not s.usable}
    tls.resolver = CertificateResolver(config.certificates, problems)
    tls.sni = any(e.server_names for e in config.certificates if e.name in tls.material)
    tls.shared = binding_supported()
    if not tls.shared:
        _warn_own_contexts()
    return tls


@cache
def _warn_own_contexts() -> None:
    log.warning(
        "cannot bind TLS sessions through OpenSSL; every control connection gets TLS "
        "contexts of its own (the same protection, more CPU per connection)"
    )
