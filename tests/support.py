"""Shared test parts: a PKI made at test time, config files, a real server process, clients.

Everything here is real: certificates from trustme/cryptography, `ftps-server serve` as a
subprocess on 127.0.0.x that reports READY through a real sd_notify socket, ftplib clients.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ftplib
import io
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.UTC


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` (IPv4 or IPv6) right now, and never one this process
    handed out before: the kernel may give a port it just released again, and two listeners
    of one config then got the same port (seen in CI: "port ... is already used by ...")."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no fresh free port on {host}")


def free_port_range(count: int, hosts: tuple[str, ...]) -> int:
    """The first port of `count` consecutive ports free on every host in `hosts` right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for host in hosts:
                    s = socket.socket()
                    held.append(s)
                    s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise RuntimeError("no free port range")


@dataclass
class CertFiles:
    cert: Path
    key: Path
    fingerprint: str
    pem: bytes


class Pki:
    """A CA plus helpers writing leaf certificates and keys (mode 0600) into `directory`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="ftps-server test CA")
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def _write(self, name: str, leaf: trustme.LeafCert) -> CertFiles:
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        cert_path.write_bytes(chain)
        key_path.write_bytes(leaf.private_key_pem.bytes())
        key_path.chmod(0o600)
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        fp = cert.fingerprint(hashes.SHA256()).hex().upper()
        return CertFiles(
            cert_path,
            key_path,
            ":".join(fp[i : i + 2] for i in range(0, 64, 2)),
            leaf.cert_chain_pems[0].bytes(),
        )

    def server(
        self, name: str, *identities: str, days: int = 90, not_before: dt.datetime | None = None
    ) -> CertFiles:
        """A server certificate for `identities` (IPs or DNS names) valid `days` from now."""
        now = dt.datetime.now(UTC)
        not_after = now + dt.timedelta(days=days)
        leaf = self.ca.issue_cert(
            *(identities or ("127.0.0.1",)),
            common_name=name,
            not_before=not_before or min(now, not_after) - dt.timedelta(days=30),
            not_after=not_after,
        )
        return self._write(name, leaf)

    def client(
        self, name: str, cn: str | None = None, days: int = 90, ca: trustme.CA | None = None
    ) -> CertFiles:
        """A client certificate with subject CN `cn` (default `name`)."""
        now = dt.datetime.now(UTC)
        leaf = (ca or self.ca).issue_cert(
            f"{name}@example.test",
            common_name=cn or name,
            not_before=now - dt.timedelta(days=2),
            not_after=now + dt.timedelta(days=days),
        )
        return self._write(name, leaf)

    def crl(self, revoked: list[CertFiles], name: str = "crl") -> Path:
        """A CRL signed by the CA revoking `revoked`."""
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        now = dt.datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(hours=1))
            .next_update(now + dt.timedelta(days=7))
        )
        for item in revoked:
            serial = x509.load_pem_x509_certificate(item.pem).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=5))
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        path = self.dir / f"{name}.pem"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path


def write_config(path: Path, text: str) -> Path:
    """Write an INI file; leading whitespace is stripped from every line (no continuations)."""
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    return path


def section(name: str, **keys: object) -> str:
    """The text of an INI section `[NAME]` with `keys` in their order, e.g.
    section("user:alice", home=home, password=FAST_HASH)."""
    return "".join([f"[{name}]\n", *(f"{key} = {value}\n" for key, value in keys.items())])


def certificate_section(name: str, cert: Path, key: Path, **keys: str) -> str:
    """A `[certificate:NAME]` section of `cert` and `key` plus `keys` (e.g. addresses=...,
    default="yes", server_names=...)."""
    return section(f"certificate:{name}", cert=cert, key=key, **keys)


def node_config(
    path: Path,
    cert: CertFiles | None,
    *sections: str,
    addresses: str = "127.0.0.1",
    explicit: int = 0,
    implicit: int = 0,
    server: str = "",
    tls: str = "",
    root: Path | None = None,
) -> Path:
    """Write a one-node config to `path`: [server] on `addresses`, its state_dir and (unless
    `root`) its root `home` in the folder of `path`, then the lines `server`; [ports] (0: no
    listener); [tls] with the lines `tls`; [certificate:main] serving `cert` wherever no other
    certificate does (none if None); then `sections` (users, more certificates ...)."""
    base = path.parent
    text = [
        section(
            "server", addresses=addresses, state_dir=base / "state", root=root or base / "home"
        ),
        server,
        section("ports", explicit=explicit, implicit=implicit),
    ]
    if tls:
        text += ["[tls]", tls]
    if cert is not None:
        text.append(certificate_section("main", cert.cert, cert.key, default="yes"))
    return write_config(path, "\n".join(text + list(sections)))


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `proc` (a child the test started) unless it has exited; SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class ServerProcess:
    """`ftps-server serve` as a child process, ready when it says READY=1 over sd_notify."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.workdir = config, workdir
        self.notify_path = Path(tempfile.mkdtemp(prefix="ftps-notify-")) / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        self.messages: list[str] = []
        full_env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify_path),
            "PYTHONPATH": str(ROOT),
            **(env or {}),  # may replace PYTHONPATH
        }
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftps_server", "serve", "--config", str(config)],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(workdir),
        )
        self.wait_for("READY=1")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, word: str, timeout: float = 20.0) -> str:
        """Wait for an sd_notify datagram containing `word`; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            self.notify.settimeout(0.2)
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(msg)
            if word in msg.split("\n"):
                return msg
        raise TimeoutError(f"no {word} from server:\n{self.log()}")

    def status(self) -> str:
        """The last STATUS= the server sent."""
        for msg in reversed(self.messages):
            for line in msg.split("\n"):
                if line.startswith("STATUS="):
                    return line[7:]
        return ""

    def reload(self) -> None:
        """SIGHUP and wait until the server is READY again."""
        os.kill(self.proc.pid, signal.SIGHUP)
        self.wait_for("RELOADING=1")
        self.wait_for("READY=1")

    def wait_log(self, text: str, timeout: float = 5.0) -> bool:
        """True once `text` appears in the server's log (it may trail the client's view)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log_file.close()
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):  # stopped twice (a test and its fixture)
            self.notify_path.parent.rmdir()


# --- clients -------------------------------------------------------------------------------


def closed_without_reply(sock: socket.socket, within: float) -> bool:
    """True when the server closes `sock` (or resets it) within `within` s, sending nothing."""
    sock.settimeout(within)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def client_context(
    pki: Pki, cert: CertFiles | None = None, check_hostname: bool = False
) -> ssl.SSLContext:
    """A client context trusting the test CA, optionally presenting `cert`."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


# the ways a client resumes a TLS session: name -> (maximum version, session tickets offered)
RESUMPTION = {
    "tls1.2-ticket": (ssl.TLSVersion.TLSv1_2, True),
    "tls1.2-session-id": (ssl.TLSVersion.TLSv1_2, False),
    "tls1.3": (ssl.TLSVersion.TLSv1_3, True),
}


def resuming_client_context(pki: Pki, resumption: str) -> ssl.SSLContext:
    """`client_context` that resumes sessions the way `RESUMPTION[resumption]` names."""
    ctx = client_context(pki)
    ctx.maximum_version, tickets = RESUMPTION[resumption]
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2 resumption by session id
    return ctx


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS, but data connections resume the control session (as curl does)."""

    reuse_session = True
    saved_session: ssl.SSLSession | None = None  # e.g. kept from before CCC

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            current = self.saved_session or self.sock.session  # type: ignore[union-attr]
            session = current if self.reuse_session else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


class ImplicitFTP_TLS(ReusingFTP_TLS):
    """Implicit FTPS: TLS from the first byte."""

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
    ) -> str:
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        self.sock = socket.create_connection((host, port), self.timeout)
        self.af = self.sock.family
        self.sock = self.context.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def store_and_fetch(ftp: ftplib.FTP, size: int, name: str = "blob.bin") -> None:
    """Upload `size` random bytes as `name`, download them again, assert they are identical."""
    data = os.urandom(size)
    ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write)
    assert got.getvalue() == data


def refused_upload(ftp: ReusingFTP_TLS, command: str, data: bytes = b"overwritten") -> str:
    """`command` (STOR NAME, APPE NAME ...) sending `data` without resuming the TLS session
    on the data connection, which the server must refuse (522); its final reply."""
    ftp.reuse_session = False
    try:
        ftp.storbinary(command, io.BytesIO(data))
        reply = "226?"  # pragma: no cover - storbinary raises on a 5xx
    except ftplib.Error as err:
        reply = str(err)
    except (ssl.SSLError, OSError):  # broke on the client's side first; the reply is due
        try:
            reply = ftp.voidresp()
        except ftplib.Error as err:
            reply = str(err)
    ftp.reuse_session = True
    return reply


def explicit_client(
    pki: Pki,
    host: str,
    port: int,
    cert: CertFiles | None = None,
    prot_p: bool = True,
    timeout: float = 10,
) -> ReusingFTP_TLS:
    """Connected, AUTH TLS done, PROT P set (not logged in)."""
    ftp = ReusingFTP_TLS(context=client_context(pki, cert), timeout=timeout)
    ftp.connect(host, port)
    ftp.auth()
    if prot_p:
        ftp.prot_p()
    return ftp


def implicit_client(
    pki: Pki, host: str, port: int, cert: CertFiles | None = None, timeout: float = 10
) -> ImplicitFTP_TLS:
    """Connected over implicit TLS, PBSZ 0 + PROT P set (not logged in)."""
    ftp = ImplicitFTP_TLS(context=client_context(pki, cert), timeout=timeout)
    ftp.connect(host, port)
    ftp.prot_p()
    return ftp


def served_certificate(
    host: str, port: int, explicit: bool, server_name: str | None = None, timeout: float = 5
) -> x509.Certificate:
    """The leaf certificate a listener serves (no verification)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout) as raw:
        if explicit:
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"AUTH TLS\r\n")
            reply = f.readline()
            if not reply.startswith(b"234"):
                raise ConnectionError(reply.decode().strip())
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)
