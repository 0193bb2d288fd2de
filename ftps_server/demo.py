"""`ftps-server demo`: a throwaway CA, certificates and user, every listener kind on 127.0.0.1.

Everything lives in a temporary directory that is removed on exit; the commands printed use
curl against it, so a new user sees each FTPS mode work within seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .daemon import Daemon
from .pki.passwords import HashParams, hash_password

__all__ = ["make_demo", "register", "write_pem"]

_KEY = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str, key: _KEY, issuer: tuple[x509.Certificate, _KEY] | None, usage: str
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if usage == "ca":
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        eku = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if usage == "server"
            else (ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), False)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    if usage == "server":
        san = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        )
        builder = builder.add_extension(san, False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def write_pem(directory: Path, name: str, cert: x509.Certificate, key: Any = None) -> Path:
    """Write NAME.pem (and NAME.key, mode 0600, when a private key is given)."""
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = directory / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
    return path


def make_demo(directory: Path, ports: dict[str, int]) -> tuple[Path, str]:
    """Write a CA, server and client certificates, a home and a config; return (config, pw)."""
    tls = directory / "tls"
    tls.mkdir(mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("ftps-server demo CA", ca_key, None, "ca")
    write_pem(tls, "ca", ca, None)
    for name, usage in (("server", "server"), ("client", "client")):
        key = ec.generate_private_key(ec.SECP256R1())
        write_pem(tls, name, _issue(f"demo {name}", key, (ca, ca_key), usage), key)
    home = directory / "home" / "demo"
    home.mkdir(parents=True)
    (home / "hello.txt").write_text("Hello from ftps-server.\n")
    password = secrets.token_urlsafe(9)
    config = directory / "ftps-server.ini"
    config.write_text(
        f"""[server]
addresses = 127.0.0.1
state_dir = {directory}/state
root = {directory}/home

[ports]
explicit = {ports["explicit"]}
implicit = {ports["implicit"]}
client_cert_explicit = {ports["client_cert_explicit"]}
client_cert_implicit = {ports["client_cert_implicit"]}

[tls]
client_ca = {tls}/ca.pem

[certificate:demo]
cert = {tls}/server.pem
key = {tls}/server.key
default = yes

[user:demo]
home = {home}
permissions = elradfmw
password = {hash_password(password, HashParams(ln=14, r=8, p=1))}
"""
    )
    return config, password


def _commands(directory: Path, ports: dict[str, int], password: str) -> list[str]:
    tls = directory / "tls"
    base = f"curl --cacert {tls}/ca.pem --user demo:{password}"
    cert = f"--cert {tls}/client.pem --key {tls}/client.key"
    return [
        f"# explicit FTPS (AUTH TLS, PROT P):\n{base} --ssl-reqd "
        f"ftp://127.0.0.1:{ports['explicit']}/hello.txt",
        f"# implicit FTPS:\n{base} ftps://127.0.0.1:{ports['implicit']}/hello.txt",
        f"# upload:\n{base} --ssl-reqd -T /etc/hostname "
        f"ftp://127.0.0.1:{ports['explicit']}/uploaded.txt",
        f"# client-certificate port, explicit (refused without --cert):\n{base} {cert} "
        f"--ssl-reqd ftp://127.0.0.1:{ports['client_cert_explicit']}/",
        f"# client-certificate port, implicit:\n{base} {cert} "
        f"ftps://127.0.0.1:{ports['client_cert_implicit']}/",
    ]


def _run(args: argparse.Namespace) -> int:
    ports = {
        "explicit": args.port,
        "implicit": args.port + 1,
        "client_cert_explicit": args.port + 2,
        "client_cert_implicit": args.port + 3,
    }
    directory = Path(tempfile.mkdtemp(prefix="ftps-server-demo-"))
    try:
        config, password = make_demo(directory, ports)
        print(f"ftps-server demo in {directory} (removed on exit; Ctrl-C to stop)\n")
        print("\n\n".join(_commands(directory, ports, password)) + "\n", flush=True)
        daemon = Daemon(config)
        daemon.start()
        daemon.run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def register(subparsers: Any) -> None:
    """Add `demo`."""
    demo = subparsers.add_parser(
        "demo", help="serve every FTPS mode on 127.0.0.1 with throwaway certificates"
    )
    demo.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("FTPS_DEMO_PORT", 2121)),
        help="first of four consecutive ports (default 2121)",
    )
    demo.set_defaults(func=_run)
