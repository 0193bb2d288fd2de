"""The INI file -> frozen dataclasses. Every error names the file, section and key.

Nothing past `load` sees a raw string: values are typed here, unknown sections and keys are
errors, and cross-section rules (one certificate per address, one user per fingerprint) are
checked before a server or a reminder ever runs.
"""

from __future__ import annotations

import configparser
import glob
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .errors import ConfigError
from .passwords import PasswordError, parse_hash

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "PORT_KINDS",
    "AlertsConfig",
    "CertificateEntry",
    "CheckConfig",
    "Config",
    "NatRule",
    "PortsConfig",
    "ServerConfig",
    "TlsConfig",
    "UserConfig",
    "load",
    "normalize_address",
]

DEFAULT_CONFIG_PATH = Path("/etc/ftps-server/ftps-server.ini")
PORT_KINDS = ("explicit", "implicit", "client_cert_explicit", "client_cert_implicit")
AUTH_POLICIES = ("password", "certificate", "certificate+password")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
SMTP_SECURITY = ("none", "starttls", "tls")
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
    idle_timeout: int = 300
    handshake_timeout: int = 30
    allow_plain_ftp: bool = False
    state_dir: Path = Path("/var/lib/ftps-server")
    root: Path = Path("/srv/ftp")
    key_group: str = "ftps-server"
    max_login_failures: int = 5
    failure_window: int = 600
    ban_time: int = 900
    include: tuple[str, ...] = ()


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
    ciphers: str = ""
    client_ca: Path | None = None
    crl: Path | None = None
    require_data_protection: bool = True
    require_session_reuse: bool = True
    allow_ccc: bool = False


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


@dataclass(frozen=True)
class AlertsConfig:
    email_to: tuple[str, ...] = ()
    email_from: str = "ftps-server@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password_file: Path | None = None
    smtp_ca_file: Path | None = None
    smtp_timeout: int = 30
    warn_days: tuple[int, ...] = (14,)
    template_dir: Path | None = None


@dataclass(frozen=True)
class CheckConfig:
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None


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

    def listeners(self) -> list[tuple[str, str, int]]:
        """Every (address, kind, port) the server binds."""
        return [(a, k, p) for a in self.server.addresses for k, p in self.ports.enabled()]

    def certificate_for(self, address: str) -> CertificateEntry | None:
        """The certificate section serving local `address`: its own, else the default."""
        fallback = None
        for entry in self.certificates:
            if address in entry.addresses:
                return entry
            if entry.default or "*" in entry.addresses:
                fallback = entry
        return fallback

    def certificate_for_name(self, server_name: str) -> CertificateEntry | None:
        """The certificate section whose server_names include `server_name` (SNI)."""
        wanted = server_name.lower().rstrip(".")
        return next((e for e in self.certificates if wanted in e.server_names), None)


def normalize_address(text: str) -> str:
    """Canonical text form of an IP address (IPv4-mapped IPv6 becomes IPv4)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


# --- typed readers -------------------------------------------------------------------------

T = TypeVar("T")
D = TypeVar("D")


class _Section:
    """One INI section being read: every read key is ticked off, leftovers are errors."""

    def __init__(self, file: str, name: str, items: dict[str, str]) -> None:
        self.file, self.name, self.items = file, name, items
        self.seen: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, section=self.name, key=key)

    def raw(self, key: str) -> str | None:
        self.seen.add(key)
        value = self.items.get(key)
        return None if value is None else value.strip()

    def get(self, key: str, parse: Callable[[str], T], default: D) -> T | D:
        value = self.raw(key)
        if value is None or value == "":
            return default
        return self._parse(key, value, parse)

    def require(self, key: str, parse: Callable[[str], T]) -> T:
        value = self.raw(key)
        if not value:
            raise self.error(key, "is required")
        return self._parse(key, value, parse)

    def _parse(self, key: str, value: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise self.error(key, f"{exc} (got {value!r})") from None

    def finish(self) -> None:
        unknown = sorted(set(self.items) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown key (allowed here: {allowed})")


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _abs_path(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for option in options:
            if text.lower() == option.lower():
                return option
        raise ValueError(f"must be one of: {', '.join(options)}")

    return parse


def _addresses(text: str) -> tuple[str, ...]:
    items = _list(text)
    if not items:
        raise ValueError("needs at least one address")
    out = []
    for item in items:
        if item == "*":
            out.append("*")
            continue
        try:
            out.append(normalize_address(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or *") from None
    if len(set(out)) != len(out):
        raise ValueError("lists an address twice")
    return tuple(out)


def _port_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not match:
        raise ValueError("must be FIRST-LAST, e.g. 60000-60099")
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low <= high <= 65535:
        raise ValueError("must be within 1024-65535 with FIRST <= LAST")
    return low, high


def _nat(text: str) -> tuple[NatRule, ...]:
    rules = []
    for item in _list(text):
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


def _warn_days(text: str) -> tuple[int, ...]:
    days = sorted({_int_range(0, 3650)(item) for item in _list(text)}, reverse=True)
    if not days:
        raise ValueError("needs at least one number of days")
    return tuple(days)


def _fingerprints(text: str) -> tuple[str, ...]:
    out = []
    for item in _list(text):
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


def _min_version(text: str) -> str:
    return _choice(TLS_VERSIONS)(text)


# --- sections ------------------------------------------------------------------------------


def _server(s: _Section) -> ServerConfig:
    d = ServerConfig()
    return ServerConfig(
        addresses=s.get("addresses", _addresses, d.addresses),
        passive_ports=s.get("passive_ports", _port_range, None),
        nat=s.get("nat", _nat, ()),
        max_connections=s.get("max_connections", _int_range(1, 1_000_000), d.max_connections),
        max_connections_per_ip=s.get(
            "max_connections_per_ip", _int_range(1, 1_000_000), d.max_connections_per_ip
        ),
        idle_timeout=s.get("idle_timeout", _int_range(1, 86400), d.idle_timeout),
        handshake_timeout=s.get("handshake_timeout", _int_range(1, 3600), d.handshake_timeout),
        allow_plain_ftp=s.get("allow_plain_ftp", _bool, False),
        state_dir=s.get("state_dir", _abs_path, d.state_dir),
        root=s.get("root", _abs_path, d.root),
        key_group=s.get("key_group", str, d.key_group),
        max_login_failures=s.get("max_login_failures", _int_range(1, 1000), d.max_login_failures),
        failure_window=s.get("failure_window", _int_range(1, 86400 * 7), d.failure_window),
        ban_time=s.get("ban_time", _int_range(0, 86400 * 30), d.ban_time),
        include=s.get("include", _list, ()),
    )


def _ports(s: _Section) -> PortsConfig:
    port = _int_range(0, 65535)
    d = PortsConfig()
    ports = PortsConfig(**{k: s.get(k, port, getattr(d, k)) for k in PORT_KINDS})
    used: dict[int, str] = {}
    for kind, number in ports.enabled():
        if number in used:
            raise s.error(kind, f"port {number} is already used by {used[number]}")
        used[number] = kind
    return ports


def _tls(s: _Section) -> TlsConfig:
    return TlsConfig(
        min_version=s.get("min_version", _min_version, "TLSv1.2"),
        ciphers=s.get("ciphers", str, ""),
        client_ca=s.get("client_ca", _abs_path, None),
        crl=s.get("crl", _abs_path, None),
        require_data_protection=s.get("require_data_protection", _bool, True),
        require_session_reuse=s.get("require_session_reuse", _bool, True),
        allow_ccc=s.get("allow_ccc", _bool, False),
    )


def _certificate(s: _Section, name: str) -> CertificateEntry:
    return CertificateEntry(
        name=name,
        cert=s.require("cert", _abs_path),
        key=s.require("key", _abs_path),
        addresses=s.get("addresses", _addresses, ()),
        default=s.get("default", _bool, False),
        server_names=tuple(n.lower() for n in s.get("server_names", _list, ())),
    )


def _user(s: _Section, name: str, root: Path) -> UserConfig:
    user = UserConfig(
        name=name,
        home=s.get("home", _abs_path, root / name),
        permissions=s.get("permissions", _permissions, "elr"),
        auth=s.get("auth", _choice(AUTH_POLICIES), "password"),
        password=s.get("password", _password_hash, None),
        certificates=s.get("certificates", _fingerprints, ()),
        certificate_cn=s.get("certificate_cn", str, None),
    )
    if "password" in user.auth and not user.password:
        raise s.error("password", f"is required for auth = {user.auth}")
    if "certificate" in user.auth and not (user.certificates or user.certificate_cn):
        raise s.error(
            "certificates", f"auth = {user.auth} needs certificates or certificate_cn to be set"
        )
    return user


def _alerts(s: _Section) -> AlertsConfig:
    d = AlertsConfig()
    return AlertsConfig(
        email_to=s.get("email_to", _list, ()),
        email_from=s.get("email_from", str, d.email_from),
        smtp_host=s.get("smtp_host", str, d.smtp_host),
        smtp_port=s.get("smtp_port", _int_range(1, 65535), d.smtp_port),
        smtp_security=s.get("smtp_security", _choice(SMTP_SECURITY), d.smtp_security),
        smtp_user=s.get("smtp_user", str, None),
        smtp_password_file=s.get("smtp_password_file", _abs_path, None),
        smtp_ca_file=s.get("smtp_ca_file", _abs_path, None),
        smtp_timeout=s.get("smtp_timeout", _int_range(1, 600), d.smtp_timeout),
        warn_days=s.get("warn_days", _warn_days, d.warn_days),
        template_dir=s.get("template_dir", _abs_path, None),
    )


def _check(s: _Section) -> CheckConfig:
    check = CheckConfig(
        client_cert=s.get("client_cert", _abs_path, None),
        client_key=s.get("client_key", _abs_path, None),
        ca_file=s.get("ca_file", _abs_path, None),
    )
    if bool(check.client_cert) != bool(check.client_key):
        raise s.error("client_key", "client_cert and client_key must be set together")
    return check


# --- file level ----------------------------------------------------------------------------


def _read(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), strict=True, interpolation=None
    )
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle, source=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text: {exc.reason}", file=str(path)) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            "section appears twice", file=str(path), section=exc.section, line=exc.lineno
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            "key appears twice",
            file=str(path),
            section=exc.section,
            key=exc.option,
            line=exc.lineno,
        ) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            "text before the first [section] header", file=str(path), line=exc.lineno
        ) from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0] if exc.errors else None
        raise ConfigError(
            "cannot parse this line (expected key = value)", file=str(path), line=line
        ) from None
    return parser


def _sections(path: Path) -> list[_Section]:
    parser = _read(path)
    return [_Section(str(path), name, dict(parser.items(name))) for name in parser.sections()]


_SINGLE = {"server", "ports", "tls", "alerts", "check"}


def load(path: str | Path) -> Config:
    """Read and validate the INI file at `path`; raise ConfigError naming what is wrong."""
    path = Path(path)
    sections = _sections(path)
    by_name = {s.name: s for s in sections}
    for s in sections:
        kind = s.name.split(":", 1)[0]
        if s.name not in _SINGLE and kind not in ("certificate", "user"):
            raise s.error(
                None,
                "unknown section (allowed: server, ports, tls, certificate:NAME, user:NAME, "
                "alerts, check)",
            )
        if kind in ("certificate", "user") and not s.name.partition(":")[2].strip():
            raise s.error(None, f"needs a name, e.g. [{kind}:main]")

    def single(name: str, build: Callable[[_Section], T]) -> T:
        section = by_name.get(name) or _Section(str(path), name, {})
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
    )
    _cross_checks(config, {s.name: s for s in sections})
    return config


def _included(main: Path, patterns: tuple[str, ...]) -> list[_Section]:
    """Sections from `[server] include` files: only [user:NAME] sections are allowed there."""
    out: list[_Section] = []
    for pattern in patterns:
        if not Path(pattern).is_absolute():
            raise ConfigError(
                "must be absolute paths or globs", file=str(main), section="server", key="include"
            )
        for name in sorted(glob.glob(pattern)):
            for s in _sections(Path(name)):
                if not s.name.startswith("user:"):
                    raise s.error(None, "included files may hold only [user:NAME] sections")
                out.append(s)
    return out


def _cross_checks(config: Config, sections: dict[str, _Section]) -> None:
    claimed: dict[str, str] = {}
    defaults = []
    for entry in config.certificates:
        sec = sections[f"certificate:{entry.name}"]
        if entry.default or "*" in entry.addresses:
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
