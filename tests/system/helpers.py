"""Scenario helpers for the system tests: certificates, config, FTPS clients on the machine.

Certificates are made inside the container with openssl (self-signed, an IP SAN per
address), so each one is also the CA a client on the machine verifies it with: ``curl
--cacert CERT`` succeeds against an address only when that address serves CERT.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from container import CT_ADDR, EXTRA_ADDRS, HOST_ADDR, Container

__all__ = [
    "CONFIG",
    "TLS_DIR",
    "Cert",
    "Site",
    "curl",
    "ftps_args",
    "ftps_url",
    "hash_password",
    "make_cert",
    "render_config",
    "write_check_ca",
    "write_config",
]

CONFIG = "/etc/ftps-server/ftps-server.ini"
TLS_DIR = "/etc/ftps-server/tls"
SMTP_PORT = 2525


@dataclass(frozen=True)
class Cert:
    """A certificate entry inside the container, and its PEM copied to the machine."""

    name: str
    address: str
    cert: str  # inside
    key: str  # inside
    host_pem: Path  # on the machine, for curl --cacert
    fingerprint: str  # SHA-256, upper-case hex with colons

    def section(self, default: bool = False) -> str:
        """The [certificate:NAME] section for this certificate."""
        return (
            f"[certificate:{self.name}]\n"
            f"cert = {self.cert}\n"
            f"key = {self.key}\n"
            f"addresses = {self.address}\n"
            f"default = {'yes' if default else 'no'}\n"
        )


def make_cert(ct: Container, name: str, address: str, days: int, host_dir: Path) -> Cert:
    """A self-signed EC certificate for `address`, valid `days` days; key 0640 root:ftps-server."""
    cert, key = f"{TLS_DIR}/{name}.pem", f"{TLS_DIR}/{name}.key"
    ct.run(
        f"install -d -m 0755 {TLS_DIR} && umask 077 && "
        f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days {days} "
        f"-subj /CN={name} -addext subjectAltName=IP:{address} "
        f"-keyout {key}.new -out {cert}.new 2>/dev/null && "
        f"chown root:ftps-server {key}.new && chmod 0640 {key}.new && chmod 0644 {cert}.new && "
        f"mv -f {key}.new {key} && mv -f {cert}.new {cert}"
    )
    pem = ct.path(cert).read_bytes()
    host_dir.mkdir(parents=True, exist_ok=True)
    host_pem = host_dir / f"{name}.pem"
    host_pem.write_bytes(pem)
    der = subprocess.run(
        ["openssl", "x509", "-outform", "DER"], input=pem, capture_output=True, check=True
    ).stdout
    digest = hashlib.sha256(der).hexdigest().upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    return Cert(name, address, cert, key, host_pem, fingerprint)


@dataclass
class Site:
    """What the tests configured: users, certificates, and the config text in force."""

    user: str
    password: str
    password_hash: str
    home: str
    certs: dict[str, Cert] = field(default_factory=dict)
    extra_certs: list[Cert] = field(default_factory=list)
    smtp: bool = False
    # Addresses with a certificate of their own; 10.77.0.4 joins with the expiring one.
    addresses: str = ", ".join((CT_ADDR, EXTRA_ADDRS[0]))
    # CA bundle (every test certificate) for `ftps-server check`, so that it can say OK.
    check_ca: str | None = None

    def config(self) -> str:
        """The full INI text for the current certificates (the first one is the default)."""
        return render_config(self, list(self.certs.values()) + self.extra_certs, self.smtp)


def render_config(site: Site, certs: Sequence[Cert], smtp: bool) -> str:
    """INI for the system tests: the container's addresses, passive ports, one user, the certs."""
    parts = [
        "[server]\n"
        f"addresses = {site.addresses}\n"
        "passive_ports = 60000-60049\n"
        "idle_timeout = 120\n"
        "root = /srv/ftp\n",
        "[ports]\nexplicit = 21\nimplicit = 990\n",
        "[tls]\nmin_version = TLSv1.2\n",
    ]
    if smtp:
        parts.append(
            "[alerts]\n"
            "transport = smtp\n"
            "email_to = ops@example.org\n"
            "email_from = ftps-server@ftps-test.example.org\n"
            f"smtp_host = {HOST_ADDR}\n"
            f"smtp_port = {SMTP_PORT}\n"
            "smtp_security = none\n"
            "warn_days = 14\n"
        )
    if site.check_ca:
        parts.append(f"[check]\nca_file = {site.check_ca}\n")
    for i, cert in enumerate(certs):
        parts.append(cert.section(default=i == 0))
    parts.append(
        f"[user:{site.user}]\n"
        f"home = {site.home}\n"
        "permissions = elradfmw\n"
        "auth = password\n"
        f"password = {site.password_hash}\n"
    )
    return "\n".join(parts)


def write_check_ca(ct: Container, certs: Sequence[Cert]) -> str:
    """Bundle the (self-signed) test certificates as the CA file `ftps-server check` trusts."""
    path = f"{TLS_DIR}/check-ca.pem"
    bundle = b"".join(ct.path(cert.cert).read_bytes() for cert in certs)
    ct.write_file(path, bundle, mode=0o644)
    return path


def hash_password(ct: Container, password: str) -> str:
    """`ftps-server hash-password` reads one line on stdin and prints the hash."""
    out = ct.run(["ftps-server", "hash-password"], input=password + "\n").stdout
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("$")]
    assert lines, f"no hash in hash-password output: {out!r}"
    return lines[-1]


def write_config(ct: Container, text: str) -> None:
    """Install `text` as the config, 0640 root:ftps-server like the package's."""
    ct.write_file(CONFIG, text, mode=0o640, owner="root:ftps-server")


def curl(
    args: Sequence[str],
    timeout: float = 60,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run curl on the machine (never a proxy; -sS; fail on FTP errors)."""
    cmd = ["curl", "-sS", "--noproxy", "*", "--connect-timeout", "10", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"curl failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}"
        )
    return proc


def ftps_url(kind: str, address: str, path: str = "") -> str:
    """URL for an explicit (ftp:// + --ssl-reqd) or implicit (ftps://, port 990) listener."""
    if kind == "implicit":
        return f"ftps://{address}:990/{path}"
    return f"ftp://{address}:21/{path}"


def ftps_args(cert: Cert, site: Site) -> list[str]:
    """curl options: TLS required, verified against `cert` itself, login, PROT P."""
    return [
        "--ssl-reqd",
        "--cacert",
        str(cert.host_pem),
        "--user",
        f"{site.user}:{site.password}",
        "--ftp-pasv",
    ]
