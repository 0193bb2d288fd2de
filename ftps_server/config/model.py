"""The configuration contract: frozen dataclasses, their defaults, and the values a field may take.

`loader.load` builds them from the INI file, typing and checking every value first; nothing here
reads a file or sees a raw string.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..checksums import ALGORITHMS as CHECKSUM_ALGORITHMS
from .resolver import CertificateResolver

__all__ = [
    "AUTH_POLICIES",
    "MAIL_TRANSPORTS",
    "PERMISSION_LETTERS",
    "PORT_KINDS",
    "SMTP_SECURITY",
    "TLS_VERSIONS",
    "UPLOAD_DIGESTS",
    "AlertsConfig",
    "CertificateEntry",
    "CheckConfig",
    "Config",
    "LogConfig",
    "MetricsConfig",
    "NatRule",
    "PortsConfig",
    "ServerConfig",
    "TlsConfig",
    "UserConfig",
    "host_port",
    "listener_name",
]

PORT_KINDS = ("explicit", "implicit", "client_cert_explicit", "client_cert_implicit")
AUTH_POLICIES = ("password", "certificate", "certificate+password")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
SMTP_SECURITY = ("none", "starttls", "tls")
MAIL_TRANSPORTS = ("sendmail", "smtp")
UPLOAD_DIGESTS = ("sha256", "none")
PERMISSION_LETTERS = "elradfmwMT"


@dataclass(frozen=True)
class NatRule:
    """Clients in `network` are told `address` in PASV replies."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    address: str


@dataclass(frozen=True)
class ServerConfig:
    addresses: tuple[str, ...] = ("*",)
    passive_ports: tuple[int, int] | None = None
    nat: tuple[NatRule, ...] = ()
    max_connections: int = 512
    max_connections_per_ip: int = 20
    max_passive_per_address: int = 0  # 0: half of passive_ports, at least 1
    idle_timeout: int = 300
    handshake_timeout: int = 30
    # Seconds an old process keeps serving its sessions after handing its listeners to a new
    # one (package upgrade); long enough for a large transfer, short enough to end.
    drain_timeout: int = 3600
    allow_plain_ftp: bool = False
    state_dir: Path = Path("/var/lib/ftps-server")
    root: Path = Path("/srv/ftp")
    key_group: str = "ftps-server"
    max_login_failures: int = 5
    failure_window: int = 600
    ban_time: int = 900
    ban_prefix_v6: int = 64
    include: tuple[str, ...] = ()
    checksum_algorithms: tuple[str, ...] = CHECKSUM_ALGORITHMS
    proxy_protocol: bool = False
    proxy_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    workers: int = 1  # processes serving the listeners ("auto": one per usable core)

    def is_proxy(self, address: str) -> bool:
        """True when PROXY protocol is on and `address` (normalised) is a balancer's."""
        if not self.proxy_protocol:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in self.proxy_from)


@dataclass(frozen=True)
class PortsConfig:
    explicit: int = 21
    implicit: int = 990
    client_cert_explicit: int = 0
    client_cert_implicit: int = 0

    def enabled(self) -> list[tuple[str, int]]:
        """The (kind, port) pairs with a non-zero port, in a stable order."""
        return [(k, getattr(self, k)) for k in PORT_KINDS if getattr(self, k)]


@dataclass(frozen=True)
class TlsConfig:
    min_version: str = "TLSv1.2"
    max_version: str = ""  # empty: the newest the TLS library has
    ciphers: str = ""
    client_ca: Path | None = None
    crl: Path | None = None
    require_data_protection: bool = True
    require_session_reuse: bool = True
    allow_ccc: bool = False
    upload_eof: str = "strict"  # an upload ending without close_notify: strict = 426


@dataclass(frozen=True)
class CertificateEntry:
    name: str
    cert: Path
    key: Path
    addresses: tuple[str, ...] = ()
    default: bool = False
    server_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserConfig:
    name: str
    home: Path
    permissions: str = "elr"
    auth: str = "password"
    password: str | None = None
    certificates: tuple[str, ...] = ()  # normalised "AB:CD:..." upper-case SHA-256
    certificate_cn: str | None = None
    shared_home: bool = False  # may share its home (or nest) with others that say so too


@dataclass(frozen=True)
class AlertsConfig:
    email_to: tuple[str, ...] = ()
    email_from: str = "ftps-server@localhost"
    transport: str = "sendmail"
    sendmail: Path = Path("/usr/sbin/sendmail")
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password_file: Path | None = None
    smtp_ca_file: Path | None = None
    smtp_timeout: int = 30
    warn_days: tuple[int, ...] = (14,)
    template_dir: Path | None = None
    # A fleet's reminder state on shared storage: one email per condition per day for all nodes.
    shared_state_dir: Path | None = None


@dataclass(frozen=True)
class CheckConfig:
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None  # (address, port) of the Prometheus endpoint; None = off


@dataclass(frozen=True)
class LogConfig:
    transfer_log: Path | None = None  # the wu-ftpd xferlog file; None = none written
    # sha256 | none: digest of every upload in its journal entry; off by default, it costs
    # ~70% more server CPU per uploaded GiB (README, "Upload digest cost")
    upload_digest: str = "none"


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    ports: PortsConfig = field(default_factory=PortsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    certificates: tuple[CertificateEntry, ...] = ()
    users: tuple[UserConfig, ...] = ()
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def listeners(self) -> list[tuple[str, str, int]]:
        """Every (address, kind, port) the server binds."""
        return [(a, k, p) for a in self.server.addresses for k, p in self.ports.enabled()]

    @cached_property
    def resolver(self) -> CertificateResolver[CertificateEntry]:
        """Which certificate section serves an address or server name (built on first use)."""
        return CertificateResolver(self.certificates)


def host_port(address: str, port: int) -> str:
    """`192.0.2.1:21` or `[2001:db8::1]:21`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def listener_name(address: str, port: int, kind: str) -> str:
    """How a listener is named in logs, status, reminders and checks: '127.0.0.2:990 implicit'."""
    return f"{host_port(address, port)} {kind}"
