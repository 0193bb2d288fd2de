"""Shared pieces for the auth unit tests: a config writer, a PKI, a handler stand-in.

The handler stand-in has the attributes and methods of the `auth.LoginHandler` protocol and
runs on a real pyftpdlib IOLoop, so the worker-thread -> loop hand-off is exercised for real.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import AsyncChat, IOLoop

from ftps_server.config import loader
from ftps_server.config.model import Config
from ftps_server.pki.certs import fingerprint
from ftps_server.pki.passwords import HashParams, hash_password

# cheap hashes keep unit tests fast; the cost parameters are tested in test_passwords
FAST = HashParams(ln=4, r=8, p=1)
PASSWORD = "correct horse battery staple"


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    alice: x509.Certificate  # pinned by alice
    carol: x509.Certificate  # CN=carol, matched by certificate_cn
    stranger: x509.Certificate  # valid, CN=alice-laptop, pinned by nobody


def _leaf(ca: trustme.CA, cn: str) -> x509.Certificate:
    issued = ca.issue_cert(f"{cn}@example.org", common_name=cn)
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())


def make_pki(tmp: Path) -> Pki:
    """A client CA and three client certificates."""
    ca = trustme.CA()
    ca_file = tmp / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, ca_file, _leaf(ca, "alice"), _leaf(ca, "carol"), _leaf(ca, "alice-laptop"))


def write_config(tmp: Path, pki: Pki, *, server: str = "", extra: str = "") -> Path:
    """A config with users alice (pinned cert + password), bob (password), carol (CN),
    dave (pinned cert only) and erin (certificate+password by CN)."""
    pw = hash_password(PASSWORD, FAST)
    text = f"""
[server]
state_dir = {tmp}/state
root = {tmp}/homes
max_login_failures = 3
failure_window = 60
ban_time = 300
{server}

[tls]
client_ca = {pki.ca_file}

[user:alice]
auth = certificate+password
password = {pw}
certificates = sha256:{fingerprint(pki.alice)}
permissions = elradfmw

[user:bob]
auth = password
password = {pw}

[user:carol]
auth = certificate
certificate_cn = carol

[user:dave]
auth = certificate
certificates = sha256:{":".join(["11"] * 32)}

[user:erin]
auth = certificate+password
password = {pw}
certificate_cn = erin
{extra}
"""
    path = tmp / "ftps-server.ini"
    path.write_text(text)
    return path


def load(path: Path) -> Config:
    return loader.load(path)


class FakeHandler(AsyncChat):
    """Stands in for the FTP handler (see auth.LoginHandler): a real pyftpdlib channel over a
    socket pair, so closing it and pyftpdlib's login body are pyftpdlib's own, not copies
    (test_pyftpdlib_contract checks what the server assumes of them)."""

    # pyftpdlib's own: the password login ends in it (230), the certificate login in
    # pyftpdlib_adapter.complete_login (232)
    handle_auth_success = FTPHandler.handle_auth_success

    def __init__(
        self, state: Any, ioloop: Any, cert: x509.Certificate | None = None, ip: str = "127.0.0.1"
    ) -> None:
        self.peer, sock = socket.socketpair()
        super().__init__(sock, ioloop=ioloop)
        self.server_state = state
        self.remote_ip = ip
        self.listener_name = "127.0.0.1:990 implicit"
        self.listener_kind = "implicit"
        self.peer_certificate = cert
        self.username = ""
        self.password = ""
        self.authenticated = False
        self.login_pending = False
        self.attempted_logins = 0
        self.authorizer = state.auth.authorizer
        self.abstracted_fs = state.auth.filesystem
        self.fs: Any = None
        self.replies: list[str] = []
        self.closing = False
        self.logged_in_as: str | None = None

    def respond(self, line: str) -> None:
        self.replies.append(line)

    def push(self, data: str) -> None:  # type: ignore[override]
        self.replies.append(data)

    def log(self, msg: str) -> None:
        """pyftpdlib's session log line (handle_auth_success writes one)."""

    def on_login(self, username: str) -> None:
        self.logged_in_as = username

    def close_when_done(self) -> None:
        self.closing = True

    def close(self) -> None:
        super().close()
        self.peer.close()


@dataclass
class State:
    config: Config
    auth: Any


def run_until(ioloop: IOLoop, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll the loop until `done()` (or fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting on the IOLoop")
        ioloop.loop(timeout=0.02, blocking=False)


def events(caplog: pytest.LogCaptureFixture, message_id: str) -> list[dict[str, str]]:
    """The journal fields of the records `caplog` caught with MESSAGE_ID `message_id`."""
    return [
        r.fields for r in caplog.records if getattr(r, "fields", {}).get("MESSAGE_ID") == message_id
    ]


class FakeClock:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
