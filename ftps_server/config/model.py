"""The INI file -> frozen dataclasses. Every error names the file, section and key.

Nothing past `load` sees a raw string: values are typed here, unknown sections and keys are
errors, and cross-section rules (one certificate per address, one user per fingerprint) are
checked before a server or a reminder ever runs.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from ..checksums import ALGORITHMS as CHECKSUM_ALGORITHMS
from ..checksums import parse_algorithms
from ..errors import ConfigError
from ..pki.passwords import PasswordError, parse_hash
from . import ini
from .ini import normalize_address
from .resolver import CertificateResolver, is_default

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "PORT_KINDS",
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
    "load",
    "normalize_address",
]

T = TypeVar("T")
DEFAULT_CONFIG_PATH = Path("/etc/ftps-server/ftps-server.ini")
PORT_KINDS = ("explicit", "implicit", "client_cert_explicit", "client_cert_implicit")
AUTH_POLICIES = ("password", "certificate", "certificate+password")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
SMTP_SECURITY = ("none", "starttls", "tls")
MAIL_TRANSPORTS = ("sendmail", "smtp")
UPLOAD_DIGESTS = ("sha256", "none")
PERMISSION_LETTERS = "elradfmwMT"
_FINGERPRINT_RE = re.compile(r"^(?:sha256:)?([0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){31})$")
_HASH_RE = re.compile(r"^\$scrypt\$ln=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


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

    def is_proxy(self, address: str) -> bool:
        """True when PROXY protocol is on and `address` (normalised) is a balancer's."""
        if not self.proxy_protocol:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in self.proxy_from)
    workers: int = 1  # processes serving the listeners ("auto": one per usable core)


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


def _nat(text: str) -> tuple[NatRule, ...]:
    rules = []
    for item in ini.comma_list(text):
        network, sep, address = item.partition("->")
        if not sep:
            raise ValueError(f"rule {item!r} must be NETWORK -> ADDRESS")
        try:
            net = ipaddress.ip_network(network.strip(), strict=False)
            addr = normalize_address(address.strip())
        except ValueError as exc:
            raise ValueError(f"rule {item!r}: {exc}") from None
        rules.append(NatRule(net, addr))
    # most specific first, so 10.1.0.0/16 wins over 10.0.0.0/8 whatever the order written
    return tuple(sorted(rules, key=lambda r: -r.network.prefixlen))


def _proxy_from(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in ini.comma_list(text):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            # strict: 10.0.0.5/24 is a typo for 10.0.0.0/24 or 10.0.0.5, not a guess to make
            raise ValueError(f"{item!r} is not an address or network (CIDR): {exc}") from None
    return tuple(networks)


def _warn_days(text: str) -> tuple[int, ...]:
    days = sorted({ini.int_range(0, 3650)(item) for item in ini.comma_list(text)}, reverse=True)
    if not days:
        raise ValueError("needs at least one number of days")
    return tuple(days)


def _fingerprints(text: str) -> tuple[str, ...]:
    out = []
    for item in ini.comma_list(text):
        match = _FINGERPRINT_RE.match(item)
        if not match:
            raise ValueError(f"{item!r} is not a SHA-256 fingerprint (sha256:AB:CD:... 32 bytes)")
        hexdigits = match[1].replace(":", "").upper()
        out.append(":".join(hexdigits[i : i + 2] for i in range(0, 64, 2)))
    return tuple(out)


def _password_hash(text: str) -> str:
    if not _HASH_RE.match(text):
        raise ValueError("is not a hash made by `ftps-server hash-password` ($scrypt$ln=...)")
    try:
        # cost bounds and base64: a hash asking for 128 GiB must fail here, not at login
        parse_hash(text)
    except PasswordError as exc:
        raise ValueError(f"is not a usable hash: {exc}") from None
    return text


def _permissions(text: str) -> str:
    bad = sorted(set(text) - set(PERMISSION_LETTERS))
    if bad:
        raise ValueError(f"unknown permission letters {''.join(bad)!r} (allowed: elradfmwMT)")
    return text


def _checksum_algorithms(text: str) -> tuple[str, ...]:
    return parse_algorithms(ini.comma_list(text))


def _min_version(text: str) -> str:
    return ini.choice(TLS_VERSIONS)(text)


def host_port(address: str, port: int) -> str:
    """`192.0.2.1:21` or `[2001:db8::1]:21`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def listener_name(address: str, port: int, kind: str) -> str:
    """How a listener is named in logs, status, reminders and checks: '127.0.0.2:990 implicit'."""
    return f"{host_port(address, port)} {kind}"


# --- sections ------------------------------------------------------------------------------


MAX_WORKERS = 256


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    try:
        return ini.int_range(1, MAX_WORKERS)(text)
    except ValueError:
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_WORKERS}") from None


def _server(s: ini.Section) -> ServerConfig:
    d = ServerConfig()
    server = _server_keys(s, d)
    if server.passive_ports and server.workers > 1:
        low, high = server.passive_ports
        if high - low + 1 < 2 * server.workers:
            # each worker gets its own slice of the range (PASV binds only in its slice)
            raise s.error(
                "passive_ports",
                f"{low}-{high} has fewer than 2 ports for each of the {server.workers} workers",
            )
    if server.proxy_protocol and not server.proxy_from:
        raise s.error(
            "proxy_from",
            "proxy_protocol = yes needs the balancers' addresses here (e.g. 10.0.0.0/24); "
            "only they may send a PROXY header",
        )
    return server


def _server_keys(s: ini.Section, d: ServerConfig) -> ServerConfig:
    return ServerConfig(
        addresses=s.get("addresses", ini.addresses, d.addresses),
        passive_ports=s.get("passive_ports", ini.port_range, None),
        nat=s.get("nat", _nat, ()),
        max_connections=s.get("max_connections", ini.int_range(1, 1_000_000), d.max_connections),
        max_connections_per_ip=s.get(
            "max_connections_per_ip", ini.int_range(1, 1_000_000), d.max_connections_per_ip
        ),
        max_passive_per_address=s.get(
            "max_passive_per_address", ini.int_range(0, 1_000_000), d.max_passive_per_address
        ),
        idle_timeout=s.get("idle_timeout", ini.int_range(1, 86400), d.idle_timeout),
        handshake_timeout=s.get("handshake_timeout", ini.int_range(1, 3600), d.handshake_timeout),
        drain_timeout=s.get("drain_timeout", ini.int_range(0, 86400 * 7), d.drain_timeout),
        allow_plain_ftp=s.get("allow_plain_ftp", ini.boolean, False),
        state_dir=s.get("state_dir", ini.abs_path, d.state_dir),
        root=s.get("root", ini.abs_path, d.root),
        key_group=s.get("key_group", str, d.key_group),
        max_login_failures=s.get(
            "max_login_failures", ini.int_range(1, 1000), d.max_login_failures
        ),
        failure_window=s.get("failure_window", ini.int_range(1, 86400 * 7), d.failure_window),
        ban_time=s.get("ban_time", ini.int_range(0, 86400 * 30), d.ban_time),
        ban_prefix_v6=s.get("ban_prefix_v6", ini.int_range(16, 128), d.ban_prefix_v6),
        include=s.get("include", ini.comma_list, ()),
        checksum_algorithms=s.get(
            "checksum_algorithms", _checksum_algorithms, d.checksum_algorithms
        ),
        proxy_protocol=s.get("proxy_protocol", ini.boolean, False),
        proxy_from=s.get("proxy_from", _proxy_from, ()),
        workers=s.get("workers", _workers, d.workers),
    )


def _ports(s: ini.Section) -> PortsConfig:
    port = ini.int_range(0, 65535)
    d = PortsConfig()
    ports = PortsConfig(**{k: s.get(k, port, getattr(d, k)) for k in PORT_KINDS})
    used: dict[int, str] = {}
    for kind, number in ports.enabled():
        if number in used:
            raise s.error(kind, f"port {number} is already used by {used[number]}")
        used[number] = kind
    return ports


def _tls(s: ini.Section) -> TlsConfig:
    return TlsConfig(
        min_version=s.get("min_version", _min_version, "TLSv1.2"),
        max_version=s.get("max_version", _min_version, ""),
        ciphers=s.get("ciphers", str, ""),
        client_ca=s.get("client_ca", ini.abs_path, None),
        crl=s.get("crl", ini.abs_path, None),
        require_data_protection=s.get("require_data_protection", ini.boolean, True),
        require_session_reuse=s.get("require_session_reuse", ini.boolean, True),
        allow_ccc=s.get("allow_ccc", ini.boolean, False),
        upload_eof=s.get("upload_eof", ini.choice(("strict", "lenient")), "strict"),
    )


def _certificate(s: ini.Section, name: str) -> CertificateEntry:
    return CertificateEntry(
        name=name,
        cert=s.require("cert", ini.abs_path),
        key=s.require("key", ini.abs_path),
        addresses=s.get("addresses", ini.addresses, ()),
        default=s.get("default", ini.boolean, False),
        server_names=tuple(n.lower() for n in s.get("server_names", ini.comma_list, ())),
    )


def _user(s: ini.Section, name: str, root: Path) -> UserConfig:
    user = UserConfig(
        name=name,
        home=s.get("home", ini.abs_path, root / name),
        permissions=s.get("permissions", _permissions, "elr"),
        auth=s.get("auth", ini.choice(AUTH_POLICIES), "password"),
        password=s.get("password", _password_hash, None),
        certificates=s.get("certificates", _fingerprints, ()),
        certificate_cn=s.get("certificate_cn", str, None),
        shared_home=s.get("shared_home", ini.boolean, False),
    )
    if "password" in user.auth and not user.password:
        raise s.error("password", f"is required for auth = {user.auth}")
    if "certificate" in user.auth and not (user.certificates or user.certificate_cn):
        raise s.error(
            "certificates", f"auth = {user.auth} needs certificates or certificate_cn to be set"
        )
    return user


def _alerts(s: ini.Section) -> AlertsConfig:
    d = AlertsConfig()
    return AlertsConfig(
        email_to=s.get("email_to", ini.comma_list, ()),
        email_from=s.get("email_from", str, d.email_from),
        transport=s.get("transport", ini.choice(MAIL_TRANSPORTS), d.transport),
        sendmail=s.get("sendmail", ini.abs_path, d.sendmail),
        smtp_host=s.get("smtp_host", str, d.smtp_host),
        smtp_port=s.get("smtp_port", ini.int_range(1, 65535), d.smtp_port),
        smtp_security=s.get("smtp_security", ini.choice(SMTP_SECURITY), d.smtp_security),
        smtp_user=s.get("smtp_user", str, None),
        smtp_password_file=s.get("smtp_password_file", ini.abs_path, None),
        smtp_ca_file=s.get("smtp_ca_file", ini.abs_path, None),
        smtp_timeout=s.get("smtp_timeout", ini.int_range(1, 600), d.smtp_timeout),
        warn_days=s.get("warn_days", _warn_days, d.warn_days),
        template_dir=s.get("template_dir", ini.abs_path, None),
        shared_state_dir=s.get("shared_state_dir", ini.abs_path, None),
    )


def _check(s: ini.Section) -> CheckConfig:
    check = CheckConfig(
        client_cert=s.get("client_cert", ini.abs_path, None),
        client_key=s.get("client_key", ini.abs_path, None),
        ca_file=s.get("ca_file", ini.abs_path, None),
    )
    if bool(check.client_cert) != bool(check.client_key):
        raise s.error("client_key", "client_cert and client_key must be set together")
    return check


def _listen(text: str) -> tuple[str, int] | None:
    if not text.strip():
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} must be ADDRESS:PORT, e.g. 127.0.0.1:9101 or [::1]:9101")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9101")
    return normalize_address(host), int(port)


def _metrics(s: ini.Section) -> MetricsConfig:
    return MetricsConfig(listen=s.get("listen", _listen, None))




def _log(s: ini.Section) -> LogConfig:
    d = LogConfig()
    return LogConfig(
        transfer_log=s.get("transfer_log", ini.abs_path, None),
        upload_digest=s.get("upload_digest", ini.choice(UPLOAD_DIGESTS), d.upload_digest),
    )


_SINGLE = {"server", "ports", "tls", "alerts", "check", "log", "metrics"}


def load(path: str | Path) -> Config:
    """Read and validate the INI file at `path`; raise ConfigError naming what is wrong."""
    path = Path(path)
    sections = ini.read_sections(path)
    by_name = {s.name: s for s in sections}
    for s in sections:
        kind = s.name.split(":", 1)[0]
        if s.name not in _SINGLE and kind not in ("certificate", "user"):
            raise s.error(
                None,
                "unknown section (allowed: server, ports, tls, certificate:NAME, user:NAME, "
                "alerts, check, log, metrics)",
            )
        if kind in ("certificate", "user") and not s.name.partition(":")[2].strip():
            raise s.error(None, f"needs a name, e.g. [{kind}:main]")

    def single(name: str, build: Callable[[ini.Section], T]) -> T:
        section = by_name.get(name) or ini.Section(str(path), name, {})
        value = build(section)
        section.finish()
        return value

    server = single("server", _server)
    sections += _included(path, server.include)
    certificates, users = [], []
    for s in sections:
        kind, _, name = s.name.partition(":")
        if kind == "certificate":
            certificates.append(_certificate(s, name.strip()))
        elif kind == "user":
            users.append(_user(s, name.strip(), server.root))
        else:
            continue
        s.finish()
    config = Config(
        path=path,
        server=server,
        ports=single("ports", _ports),
        tls=single("tls", _tls),
        certificates=tuple(certificates),
        users=tuple(users),
        alerts=single("alerts", _alerts),
        check=single("check", _check),
        metrics=single("metrics", _metrics),
        log=single("log", _log),
    )
    _cross_checks(config, {s.name: s for s in sections})
    _nested_homes(config, {s.name: s for s in sections})
    _shared_state_dir(config)
    return config


def _shared_state_dir(config: Config) -> None:
    """The fleet's reminder state must be the service's alone: an FTP user who can write
    there could plant or delete what suppresses every node's reminders."""
    shared = config.alerts.shared_state_dir
    if shared is None:
        return

    def error(message: str) -> ConfigError:
        return ConfigError(message, file=str(config.path), section="alerts", key="shared_state_dir")

    if shared.resolve() == config.server.state_dir.resolve():
        raise error(f"{shared} is [server] state_dir; name a directory on the shared storage")
    for user in config.users:
        home = user.home.resolve()
        if shared.resolve() == home or home in shared.resolve().parents:
            raise error(
                f"{shared} is inside the home of [user:{user.name}] ({user.home}); "
                "put it outside every FTP home (e.g. /srv/ftp/.ftps-server-fleet)"
            )


def _included(main: Path, patterns: tuple[str, ...]) -> list[ini.Section]:
    """Sections from `[server] include` files: only [user:NAME] sections are allowed there."""
    out: list[ini.Section] = []
    for pattern in patterns:
        if not Path(pattern).is_absolute():
            raise ConfigError(
                "must be absolute paths or globs", file=str(main), section="server", key="include"
            )
        for name in sorted(glob.glob(pattern)):
            for s in ini.read_sections(Path(name)):
                if not s.name.startswith("user:"):
                    raise s.error(None, "included files may hold only [user:NAME] sections")
                out.append(s)
    return out


def _nested_homes(config: Config, sections: dict[str, ini.Section]) -> None:
    """Homes are the only separation between users (one service account owns every file):
    a home equal to or inside another user's home is refused unless both share on purpose."""
    owners: dict[Path, UserConfig] = {}
    for user in config.users:
        # resolve: a symbolic link that already leads into another home counts as inside it
        home = user.home.resolve()
        other = owners.get(home)
        if other is not None and not (user.shared_home and other.shared_home):
            raise sections[f"user:{user.name}"].error(
                "home",
                f"{user.home} is the home of [user:{other.name}] too; give each user its own "
                "directory, or set shared_home = yes in both sections",
            )
        owners.setdefault(home, user)
    for user in config.users:
        home = user.home.resolve()
        for parent in home.parents:
            other = owners.get(parent)
            if other is not None and not (user.shared_home and other.shared_home):
                raise sections[f"user:{user.name}"].error(
                    "home",
                    f"{user.home} is inside the home of [user:{other.name}] ({other.home}), who "
                    "could read, plant and delete its files; move it out, or set "
                    "shared_home = yes in both sections",
                )


def _cross_checks(config: Config, sections: dict[str, ini.Section]) -> None:
    claimed: dict[str, str] = {}
    defaults = []
    for entry in config.certificates:
        sec = sections[f"certificate:{entry.name}"]
        if is_default(entry):
            defaults.append(entry.name)
        for address in entry.addresses:
            if address == "*":
                continue
            if address in claimed:
                other = claimed[address]
                raise sec.error(
                    "addresses", f"{address} is already assigned to [certificate:{other}]"
                )
            claimed[address] = entry.name
        if not entry.addresses and not entry.default and not entry.server_names:
            raise sec.error("addresses", "set addresses, default = yes, or server_names")
    if len(defaults) > 1:
        sec = sections[f"certificate:{defaults[1]}"]
        raise sec.error("default", f"only one default certificate allowed (also: {defaults[0]})")
    names: dict[str, str] = {}
    for entry in config.certificates:
        for server_name in entry.server_names:
            if server_name in names:
                other = names[server_name]
                raise sections[f"certificate:{entry.name}"].error(
                    "server_names", f"{server_name} is already used by [certificate:{other}]"
                )
            names[server_name] = entry.name
    pinned: dict[str, str] = {}
    for user in config.users:
        for fp in user.certificates:
            if fp in pinned:
                raise sections[f"user:{user.name}"].error(
                    "certificates", f"fingerprint {fp} is already pinned by [user:{pinned[fp]}]"
                )
            pinned[fp] = user.name
        if "certificate" in user.auth and not config.tls.client_ca:
            # clients are asked for certificates only where there is a CA to verify them
            key = "certificates" if user.certificates else "certificate_cn"
            raise sections[f"user:{user.name}"].error(
                key, f"auth = {user.auth} needs [tls] client_ca to verify certificates against"
            )
    if (config.ports.client_cert_explicit or config.ports.client_cert_implicit) and not (
        config.tls.client_ca
    ):
        raise ConfigError(
            "client-certificate ports need [tls] client_ca",
            file=str(config.path),
            section="tls",
            key="client_ca",
        )
    if config.tls.crl and not config.tls.client_ca:
        raise ConfigError("crl needs client_ca", file=str(config.path), section="tls", key="crl")
    tls_range = (config.tls.min_version, config.tls.max_version)
    if config.tls.max_version and TLS_VERSIONS.index(tls_range[1]) < TLS_VERSIONS.index(
        tls_range[0]
    ):
        raise ConfigError(
            f"max_version {tls_range[1]} is below min_version {tls_range[0]}",
            file=str(config.path),
            section="tls",
            key="max_version",
        )
