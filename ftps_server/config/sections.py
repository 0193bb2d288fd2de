"""One INI section -> its frozen dataclass: each key typed and range-checked, with the rules that
need only that section (a password for auth = password, distinct port numbers, ...).

Errors name the file, line, section and key (`ini.Section.error`). Rules across sections, and
which sections may appear, are `loader`'s.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from ..checksums import parse_algorithms
from ..pki.passwords import PasswordError, parse_hash
from . import ini
from .ini import normalize_address
from .model import (
    AUTH_POLICIES,
    MAIL_TRANSPORTS,
    PERMISSION_LETTERS,
    PORT_KINDS,
    SMTP_SECURITY,
    TLS_VERSIONS,
    UPLOAD_DIGESTS,
    AlertsConfig,
    CertificateEntry,
    CheckConfig,
    LogConfig,
    MetricsConfig,
    NatRule,
    PortsConfig,
    ServerConfig,
    TlsConfig,
    UserConfig,
)

__all__ = [
    "MAX_WORKERS",
    "alerts_config",
    "certificate_entry",
    "check_config",
    "log_config",
    "metrics_config",
    "ports_config",
    "server_config",
    "tls_config",
    "user_config",
]

MAX_WORKERS = 256
_FINGERPRINT_RE = re.compile(r"^(?:sha256:)?([0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){31})$")
_HASH_RE = re.compile(r"^\$scrypt\$ln=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")

# --- values: text -> typed value, or ValueError with the reason ------------------------------


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


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    try:
        return ini.int_range(1, MAX_WORKERS)(text)
    except ValueError:
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_WORKERS}") from None


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


# --- sections: one ini.Section -> its dataclass ------------------------------------------


def server_config(s: ini.Section) -> ServerConfig:
    """The [server] section, typed and checked."""
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


def ports_config(s: ini.Section) -> PortsConfig:
    """The [ports] section, typed and checked."""
    port = ini.int_range(0, 65535)
    d = PortsConfig()
    ports = PortsConfig(**{k: s.get(k, port, getattr(d, k)) for k in PORT_KINDS})
    used: dict[int, str] = {}
    for kind, number in ports.enabled():
        if number in used:
            raise s.error(kind, f"port {number} is already used by {used[number]}")
        used[number] = kind
    return ports


def tls_config(s: ini.Section) -> TlsConfig:
    """The [tls] section, typed and checked."""
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


def certificate_entry(s: ini.Section, name: str) -> CertificateEntry:
    """The [certificate:NAME] section, typed and checked."""
    return CertificateEntry(
        name=name,
        cert=s.require("cert", ini.abs_path),
        key=s.require("key", ini.abs_path),
        addresses=s.get("addresses", ini.addresses, ()),
        default=s.get("default", ini.boolean, False),
        server_names=tuple(n.lower() for n in s.get("server_names", ini.comma_list, ())),
    )


def user_config(s: ini.Section, name: str, root: Path) -> UserConfig:
    """The [user:NAME] section, typed and checked; the home defaults to `root`/NAME."""
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


def alerts_config(s: ini.Section) -> AlertsConfig:
    """The [alerts] section, typed and checked."""
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


def check_config(s: ini.Section) -> CheckConfig:
    """The [check] section, typed and checked."""
    check = CheckConfig(
        client_cert=s.get("client_cert", ini.abs_path, None),
        client_key=s.get("client_key", ini.abs_path, None),
        ca_file=s.get("ca_file", ini.abs_path, None),
    )
    if bool(check.client_cert) != bool(check.client_key):
        raise s.error("client_key", "client_cert and client_key must be set together")
    return check


def metrics_config(s: ini.Section) -> MetricsConfig:
    """The [metrics] section, typed and checked."""
    return MetricsConfig(listen=s.get("listen", _listen, None))


def log_config(s: ini.Section) -> LogConfig:
    """The [log] section, typed and checked."""
    d = LogConfig()
    return LogConfig(
        transfer_log=s.get("transfer_log", ini.abs_path, None),
        upload_digest=s.get("upload_digest", ini.choice(UPLOAD_DIGESTS), d.upload_digest),
    )
