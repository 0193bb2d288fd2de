"""Issue 8: the Ansible role, run with real ``ansible-playbook`` over ssh into the booted
Debian container (the harness's one container, see conftest.py).

The tests run in file order and build on each other: a first run on the fresh container,
an identical second run, ``--check --diff``, a certificate rotation, a variable error, a
CRITICAL check (and its switch), and a package upgrade.
The module starts and ends by purging the package and what the role added, so that the
suites after it (test_package, test_systemd) find the container as they expect it.

Certificates are made on the machine with trustme at test time: one server CA (two leaves
plus a rotated one), one client CA (the probe certificate of ``ftps-server check``).
Served certificates are read with ``openssl s_client`` from the machine side.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_support
import pytest
from conftest import build_deb
from container import CT_ADDR, EXTRA_ADDRS, Container

trustme = pytest.importorskip("trustme")

from ftps_server.pki.passwords import hash_password  # noqa: E402  (this tree, via conftest)

HOST = "ftps-test"
ADDR_A = CT_ADDR  # 10.77.0.2, already on host0
# The harness puts 10.77.0.3 on host0; the role's address unit finds it there. (It cannot
# add a missing one here: the container runs without CAP_NET_ADMIN.)
ADDR_B = EXTRA_ADDRS[0]
CLIENT_CERT_PORT = 991
ALICE_PASSWORD = "ansible-test-pw"
CONFIG = "/etc/ftps-server/ftps-server.ini"
PLAYBOOK = ansible_support.ANSIBLE_DIR / "playbooks" / "site.yml"

pytestmark = pytest.mark.timeout(900)


def _log(msg: str) -> None:
    print(f"[ansible] {msg}", file=sys.stderr, flush=True)


def _pem_chain(leaf: Any) -> str:
    return "".join(p.bytes().decode() for p in leaf.cert_chain_pems)


def _empty_crl(ca: Any) -> str:
    """A current CRL from trustme CA `ca` that revokes nothing (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(hours=1))
        .next_update(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def _fingerprint(pem: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


@dataclass
class Deployment:
    """Everything the tests share: ansible, inventory, PKI, variables, run timings."""

    bin_dir: Path
    env: dict[str, str]
    work: Path
    inventory: Path
    server_ca: Any
    client_ca: Any
    variables: dict[str, Any]
    probe: Any
    timings: dict[str, float] = field(default_factory=dict)

    def write_vars(self) -> None:
        group_vars = self.work / "inventory" / "group_vars"
        group_vars.mkdir(parents=True, exist_ok=True)
        (group_vars / "ftps_servers.yml").write_text(json.dumps(self.variables, indent=1))

    def play(self, name: str, *args: str) -> ansible_support.PlaybookRun:
        self.write_vars()
        run = ansible_support.run_playbook(
            self.bin_dir, self.env, PLAYBOOK, self.inventory, args=args, cwd=self.work
        )
        self.timings[name] = run.seconds
        (self.work / f"{name}.log").write_text(run.output)
        _log(f"{name}: rc={run.returncode} in {run.seconds:.1f} s")
        return run

    def cert(self, name: str) -> dict[str, Any]:
        return next(c for c in self.variables["ftps_server_certificates"] if c["name"] == name)


def _served_fingerprint(address: str, port: int, ca_file: Path, starttls: bool = False) -> str:
    """The leaf certificate `address:port` serves, read with openssl s_client (verified)."""
    cmd = [
        "openssl",
        "s_client",
        "-connect",
        f"{address}:{port}",
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        "-verify_ip",
        address,
    ]
    if starttls:
        cmd += ["-starttls", "ftp"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"s_client {address}:{port}: {proc.stdout[-2000:]}{proc.stderr}"
    pem_start = proc.stdout.index("-----BEGIN CERTIFICATE-----")
    pem_end = proc.stdout.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return _fingerprint(proc.stdout[pem_start:pem_end] + "\n")


def _implicit_banner(
    address: str, port: int, ca_file: Path, client: tuple[Path, Path] | None = None
) -> str:
    """Connect with implicit TLS and read the 220 greeting; raise on a refused handshake."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=address) as tls,
    ):
        tls.settimeout(10)
        # TLS 1.3: the server checks the client certificate after the client's Finished, so a
        # refusal shows as an alert (or EOF) on the first read.
        data = tls.recv(4096)
        if not data:
            raise ConnectionError("closed without a greeting")
        return data.decode(errors="replace")


class _ControlSession:
    """An implicit-TLS FTP control connection, logged in; for 'sessions survive a reload'."""

    def __init__(self, address: str, ca_file: Path, user: str, password: str) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        raw = socket.create_connection((address, 990), timeout=15)
        self.tls = ctx.wrap_socket(raw, server_hostname=address)
        self.buffer = b""
        assert self.reply().startswith("220")
        assert self.command(f"USER {user}").startswith("331")
        assert self.command(f"PASS {password}").startswith("230")

    def reply(self) -> str:
        """One (possibly multi-line) reply."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.tls.recv(4096)
                if not chunk:
                    raise ConnectionError(f"control connection closed after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode(errors="replace")
            lines.append(text)
            if (
                len(text) >= 4
                and text[:3].isdigit()
                and text[3] == " "
                and (len(lines) == 1 or text[:3] == lines[0][:3])
            ):
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.tls.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()


def _ct_digest(ct: Container, *paths: str) -> str:
    out = ct.run(["sha256sum", *paths]).stdout
    return out


def _purge(ct: Container) -> None:
    """Remove the package and everything the role added, so the next suite starts fresh."""
    ct.run(
        "systemctl disable --now ftps-server-addresses.service >/dev/null 2>&1; "
        "rm -f /etc/systemd/system/ftps-server-addresses.service; "
        "rm -rf /etc/systemd/system/ftps-server.service.d /var/cache/ftps-server-deploy; "
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y ftps-server >/dev/null 2>&1; "
        "rm -rf /etc/ftps-server /srv/ftp; systemctl daemon-reload; systemctl reset-failed; true",
        timeout=300,
    )


@pytest.fixture(scope="module")
def deployment(
    container: Container, deb_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    ct = container
    bin_dir = ansible_support.ensure_venv()
    work = tmp_path_factory.mktemp("ansible-system")
    env = ansible_support.ansible_env(bin_dir, ansible_support.collections_dir(work))
    (work / "inventory").mkdir()
    inventory = work / "inventory" / "hosts.ini"
    inventory.write_text(
        "[ftps_servers]\n"
        f"{HOST} ansible_host={CT_ADDR} ansible_user=root ansible_become=false "
        "ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_private_key_file={ct.ssh_key_path} "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n"
    )
    server_ca, client_ca = trustme.CA(), trustme.CA()
    (work / "server-ca.pem").write_bytes(server_ca.cert_pem.bytes())
    leaf_a = server_ca.issue_cert(ADDR_A, "a.ftps-test.example")
    leaf_b = server_ca.issue_cert(ADDR_B, "b.ftps-test.example")
    probe = client_ca.issue_cert("probe.ftps-test.example", common_name="ftps-server-check")
    probe_cert, probe_key = work / "probe.pem", work / "probe.key"
    probe_cert.write_bytes(probe.cert_chain_pems[0].bytes())
    probe_key.write_bytes(probe.private_key_pem.bytes())
    probe_key.chmod(0o600)
    # Key b comes from a file on the controller, key a from content (as from Vault).
    key_b = work / "b.key"
    key_b.write_bytes(leaf_b.private_key_pem.bytes())
    key_b.chmod(0o600)
    variables: dict[str, Any] = {
        # FTPS_TEST_ANSIBLE_DEB: try the role with another build (e.g. an older release).
        "ftps_server_deb_path": os.environ.get("FTPS_TEST_ANSIBLE_DEB") or str(deb_path),
        "ftps_server_addresses": [ADDR_A, ADDR_B],
        "ftps_server_manage_addresses": True,
        "ftps_server_interface": "host0",
        "ftps_server_interface_prefix": 24,
        "ftps_server_passive_ports": "60100-60119",
        "ftps_server_port_client_cert_implicit": CLIENT_CERT_PORT,
        "ftps_server_client_ca_content": client_ca.cert_pem.bytes().decode(),
        "ftps_server_crl_content": _empty_crl(client_ca),
        "ftps_server_tls_purge": True,
        # The config's diff would show alice's password hash: keep it out of the output.
        "ftps_server_config_diff": False,
        "ftps_server_certificates": [
            {
                "name": "site-a",
                "cert_content": _pem_chain(leaf_a),
                "key_content": leaf_a.private_key_pem.bytes().decode(),
                "addresses": [ADDR_A],
                "default": True,
            },
            {
                "name": "site-b",
                "cert_content": _pem_chain(leaf_b),
                "key_src": str(key_b),
                "addresses": [ADDR_B],
                "server_names": ["b.ftps-test.example"],
            },
        ],
        "ftps_server_users": [
            {
                "name": "alice",
                "permissions": "elradfmw",
                "auth": "password",
                "password": hash_password(ALICE_PASSWORD),
            },
            {"name": "probe", "auth": "certificate", "certificate_cn": "ftps-server-check"},
        ],
        "ftps_server_alerts_email_to": ["ops@ftps-test.example"],
        "ftps_server_alerts_transport": "smtp",
        "ftps_server_alerts_smtp_security": "none",
        "ftps_server_check_client_cert_content": probe.cert_chain_pems[0].bytes().decode(),
        "ftps_server_check_client_key_content": probe.private_key_pem.bytes().decode(),
        "ftps_server_check_ca_content": server_ca.cert_pem.bytes().decode(),
    }
    dep = Deployment(bin_dir, env, work, inventory, server_ca, client_ca, variables, probe)
    _purge(ct)  # a fresh container, whatever ran before
    try:
        yield dep
    finally:
        _log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in dep.timings.items()))
        ansible_support.close_ssh_masters(dep.env)
        _purge(ct)


def _secrets(dep: Deployment) -> list[str]:
    """Slices of every private key the role handles, and the password hashes; none may appear
    in any output."""
    keys = [
        dep.cert("site-a")["key_content"],
        Path(dep.cert("site-b")["key_src"]).read_text(),
        dep.variables["ftps_server_check_client_key_content"],
    ]
    hashes = [u["password"] for u in dep.variables["ftps_server_users"] if u.get("password")]
    return [key.splitlines()[2][:40] for key in keys] + hashes


def _assert_no_secrets(dep: Deployment, run: ansible_support.PlaybookRun) -> None:
    for secret in _secrets(dep):
        assert secret not in run.output, "a private key or hash appeared in the ansible output"


def test_first_run_deploys_two_certificates(deployment: Deployment, container: Container) -> None:
    dep, ct = deployment, container
    assert ct.run(["dpkg-query", "-W", "ftps-server"], check=False).returncode != 0
    run = dep.play("first-run", "--diff")
    assert run.returncode == 0, run.tail()
    recap = run.recap(HOST)
    assert recap["changed"] > 0 and recap["failed"] == 0
    _assert_no_secrets(dep, run)
    assert "RUNNING HANDLER [ftps_server.ftps.ftps_server : Restart ftps-server]" in run.output
    assert "ftps-server check (exit 0)" in run.output, run.tail()

    # Package, service, timer; file modes and owners.
    assert (
        ct.run(["dpkg-query", "-W", "-f", "${Status}", "ftps-server"]).stdout
        == "install ok installed"
    )
    assert ct.systemctl_show("ftps-server", "ActiveState") == "active"
    assert ct.run(["systemctl", "is-active", "ftps-server-remind.timer"]).stdout.strip() == "active"
    assert (
        ct.run(["systemctl", "is-enabled", "ftps-server-remind.timer"]).stdout.strip() == "enabled"
    )
    stat = ct.run(
        [
            "stat",
            "-c",
            "%n %U:%G %a",
            CONFIG,
            "/etc/ftps-server/tls/site-a.key",
            "/etc/ftps-server/tls/site-b.key",
            "/etc/ftps-server/tls/site-a.pem",
        ]
    ).stdout.split("\n")
    assert stat[:4] == [
        f"{CONFIG} root:ftps-server 640",
        "/etc/ftps-server/tls/site-a.key root:ftps-server 640",
        "/etc/ftps-server/tls/site-b.key root:ftps-server 640",
        "/etc/ftps-server/tls/site-a.pem root:ftps-server 644",
    ]
    config = ct.path(CONFIG).read_text()
    assert "client_ca = /etc/ftps-server/tls/client-ca.pem" in config
    assert "crl = /etc/ftps-server/tls/crl.pem" in config
    crl = ct.path("/etc/ftps-server/tls/crl.pem").read_text()
    assert crl == dep.variables["ftps_server_crl_content"]
    assert (
        ct.run(["stat", "-c", "%U:%G %a", "/srv/ftp/alice"]).stdout.strip()
        == "ftps-server:ftps-server 750"
    )
    # The address the role added, now and at boot.
    assert f"inet {ADDR_B}/24" in ct.run(["ip", "-o", "address", "show", "dev", "host0"]).stdout
    assert (
        ct.run(["systemctl", "is-enabled", "ftps-server-addresses.service"]).stdout.strip()
        == "enabled"
    )

    # Each address serves its own certificate, implicit and explicit (from the machine side).
    ca = dep.work / "server-ca.pem"
    fp_a = _fingerprint(dep.cert("site-a")["cert_content"])
    fp_b = _fingerprint(dep.cert("site-b")["cert_content"])
    assert _served_fingerprint(ADDR_A, 990, ca) == fp_a
    assert _served_fingerprint(ADDR_B, 990, ca) == fp_b
    assert _served_fingerprint(ADDR_A, 21, ca, starttls=True) == fp_a
    assert _served_fingerprint(ADDR_B, 21, ca, starttls=True) == fp_b

    # The client-certificate port refuses a client without a certificate, admits the probe.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _implicit_banner(ADDR_A, CLIENT_CERT_PORT, ca)
    banner = _implicit_banner(
        ADDR_A, CLIENT_CERT_PORT, ca, client=(dep.work / "probe.pem", dep.work / "probe.key")
    )
    assert banner.startswith("220")

    # The check passes on the host as the role saw it.
    check = ct.run(["ftps-server", "check", "--config", CONFIG], check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    run = deployment.play("second-run")
    assert run.returncode == 0, run.tail()
    assert run.recap(HOST)["changed"] == 0, run.changed_tasks()
    assert "RUNNING HANDLER" not in run.output
    _assert_no_secrets(deployment, run)


def test_check_diff_changes_nothing(deployment: Deployment, container: Container) -> None:
    before = _ct_digest(container, CONFIG, "/etc/ftps-server/tls/site-a.pem")
    pid = container.systemctl_show("ftps-server", "MainPID")
    run = deployment.play("check-diff", "--check", "--diff")
    assert run.returncode == 0, run.tail()
    assert run.recap(HOST)["changed"] == 0, run.changed_tasks()
    assert _ct_digest(container, CONFIG, "/etc/ftps-server/tls/site-a.pem") == before
    assert container.systemctl_show("ftps-server", "MainPID") == pid
    _assert_no_secrets(deployment, run)


def test_rotating_one_certificate_only_reloads(
    deployment: Deployment, container: Container
) -> None:
    dep, ct = deployment, container
    ca = dep.work / "server-ca.pem"
    fp_a = _served_fingerprint(ADDR_A, 990, ca)
    old_b = _served_fingerprint(ADDR_B, 990, ca)
    pid = ct.systemctl_show("ftps-server", "MainPID")
    start = ct.systemctl_show("ftps-server", "ExecMainStartTimestampMonotonic")

    # A logged-in session on the address whose certificate changes.
    session = _ControlSession(ADDR_B, ca, "alice", ALICE_PASSWORD)

    new_b = dep.server_ca.issue_cert(ADDR_B, "b.ftps-test.example")
    key_file = Path(dep.cert("site-b")["key_src"])
    key_file.write_bytes(new_b.private_key_pem.bytes())
    dep.cert("site-b")["cert_content"] = _pem_chain(new_b)
    run = dep.play("rotate")
    assert run.returncode == 0, run.tail()
    _assert_no_secrets(dep, run)
    assert set(run.changed_tasks()) == {
        "ftps_server.ftps.ftps_server : Install the certificate chains",
        "ftps_server.ftps.ftps_server : Install the private keys",
        "ftps_server.ftps.ftps_server : Reload ftps-server",
    }, run.changed_tasks()
    assert "Restart ftps-server]" not in run.output
    assert "ftps-server check (exit 0)" in run.output, run.tail()

    # Same process (a reload, not a restart); new certificate on B; A untouched.
    assert ct.systemctl_show("ftps-server", "MainPID") == pid
    assert ct.systemctl_show("ftps-server", "ExecMainStartTimestampMonotonic") == start
    new_fp = _fingerprint(_pem_chain(new_b))
    assert new_fp != old_b
    assert _served_fingerprint(ADDR_B, 990, ca) == new_fp
    assert _served_fingerprint(ADDR_B, 21, ca, starttls=True) == new_fp
    assert _served_fingerprint(ADDR_A, 990, ca) == fp_a
    # The session opened before the reload goes on.
    try:
        assert session.command("NOOP").startswith("200")
        assert session.command("PWD").startswith("257")
    finally:
        session.close()


def test_certificate_without_key_fails_before_any_change(
    deployment: Deployment, container: Container
) -> None:
    dep, ct = deployment, container
    watched = (CONFIG, "/etc/ftps-server/tls/site-a.pem", "/etc/ftps-server/tls/site-b.key")
    before = _ct_digest(ct, *watched)
    pid = ct.systemctl_show("ftps-server", "MainPID")
    saved = json.loads(json.dumps(dep.variables))
    broken = dep.cert("site-b")
    del broken["key_src"]
    broken["addresses"] = ["10.77.0.4"]
    try:
        run = dep.play("missing-key")
    finally:
        dep.variables = saved
    assert run.returncode != 0
    assert "Validating arguments against arg spec 'main'" in run.output
    assert (
        "one of the following is required: key_content, key_src found in "
        "ftps_server_certificates" in run.output
    ), run.tail()
    assert run.recap(HOST)["changed"] == 0
    _assert_no_secrets(dep, run)
    # Validation is the first task: nothing else ran, nothing changed on the host.
    assert "TASK [ftps_server.ftps.ftps_server : Install" not in run.output
    assert _ct_digest(ct, *watched) == before
    assert ct.systemctl_show("ftps-server", "MainPID") == pid


def _journal_cursor(ct: Container) -> str:
    out = ct.run(["journalctl", "--no-pager", "-n", "0", "--show-cursor"]).stdout
    return out.strip().rsplit("-- cursor: ", 1)[-1]


def _reloads_since(ct: Container, cursor: str) -> list[str]:
    """systemd's "Reloading"/"Reloaded" lines for ftps-server.service after `cursor`."""
    out = ct.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", "ftps-server", f"--after-cursor={cursor}"],
        check=False,
    ).stdout
    return [line for line in out.splitlines() if "Reload" in line]


def test_broken_certificate_never_goes_live(deployment: Deployment, container: Container) -> None:
    """issue 13.1: an expired pair, a mismatched key and a key with a wrong mode each fail the
    play in staging, with the reason; the live files, the served certificate and the process
    stay as they were, and no reload happens."""
    dep, ct = deployment, container
    ca = dep.work / "server-ca.pem"
    served_b = _served_fingerprint(ADDR_B, 990, ca)
    watched = (CONFIG, "/etc/ftps-server/tls/site-b.pem", "/etc/ftps-server/tls/site-b.key")
    before = _ct_digest(ct, *watched)
    pid = ct.systemctl_show("ftps-server", "MainPID")
    key_file = Path(dep.cert("site-b")["key_src"])
    saved_vars, saved_key = json.loads(json.dumps(dep.variables)), key_file.read_bytes()
    now = datetime.datetime.now(datetime.UTC)
    expired = dep.server_ca.issue_cert(
        ADDR_B,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    fresh, stranger = (dep.server_ca.issue_cert(ADDR_B) for _ in range(2))
    cases: list[tuple[str, Any, Any, dict[str, Any], str]] = [
        ("expired", expired, expired, {}, "staged site-b.pem expired on"),
        ("mismatch", fresh, stranger, {}, "does not match certificate (key mismatch)"),
        ("key-mode", fresh, fresh, {"ftps_server_key_mode": "0644"}, "accessible by others"),
    ]
    try:
        for name, leaf, key, extra, reason in cases:
            dep.variables = json.loads(json.dumps(saved_vars))
            dep.variables.update(extra)
            dep.cert("site-b")["cert_content"] = _pem_chain(leaf)
            key_file.write_bytes(key.private_key_pem.bytes())
            cursor = _journal_cursor(ct)
            run = dep.play(f"broken-{name}")
            assert run.returncode != 0, f"{name}: {run.tail()}"
            assert "nothing live was changed" in run.output and reason in run.output, run.tail()
            assert run.recap(HOST)["changed"] == 0, (name, run.changed_tasks())
            assert "RUNNING HANDLER" not in run.output
            _assert_no_secrets(dep, run)
            assert _ct_digest(ct, *watched) == before, name
            assert _served_fingerprint(ADDR_B, 990, ca) == served_b, name
            assert _served_fingerprint(ADDR_B, 21, ca, starttls=True) == served_b, name
            assert ct.systemctl_show("ftps-server", "MainPID") == pid
            assert _reloads_since(ct, cursor) == [], name
            assert not ct.run("ls -d /tmp/ftps-server-staging.* 2>/dev/null || true").stdout
    finally:
        dep.variables = saved_vars
        key_file.write_bytes(saved_key)


def test_critical_check_fails_the_play_unless_switched_off(
    deployment: Deployment, container: Container
) -> None:
    """A valid certificate from a CA the check does not trust passes staging, goes live, and
    the check (CRITICAL) fails the play with its summary line; with
    ftps_server_check_fail_on_critical: false the same state passes (and shows the line)."""
    dep = deployment
    untrusted = trustme.CA().issue_cert(ADDR_B)
    Path(dep.cert("site-b")["key_src"]).write_bytes(untrusted.private_key_pem.bytes())
    dep.cert("site-b")["cert_content"] = _pem_chain(untrusted)
    run = dep.play("critical")
    assert run.returncode != 0
    assert "Reload ftps-server" in run.output  # the new state was applied, then judged
    assert "ftps-server check reported CRITICAL: FTPS CRITICAL" in run.output, run.tail()
    _assert_no_secrets(dep, run)

    dep.variables["ftps_server_check_fail_on_critical"] = False
    run = dep.play("critical-allowed")
    assert run.returncode == 0, run.tail()
    assert run.recap(HOST)["changed"] == 0
    assert "ftps-server check (exit 2): FTPS CRITICAL" in run.output, run.tail()


def test_package_upgrade_hands_over(
    deployment: Deployment, container: Container, tmp_path: Path
) -> None:
    """A new .deb: the package is upgraded and its postinst hands the listeners over to the new
    version (new PID); the role restarts nothing, which would cut transfers in progress."""
    dep, ct = deployment, container
    old_version = ct.run(["dpkg-query", "-W", "-f=${Version}", "ftps-server"]).stdout
    new_version = f"{old_version}+ansible1"
    deb = build_deb(tmp_path, new_version)
    pid = ct.systemctl_show("ftps-server", "MainPID")
    dep.variables["ftps_server_deb_path"] = str(deb)
    run = dep.play("upgrade")
    assert run.returncode == 0, run.tail()
    assert ct.run(["dpkg-query", "-W", "-f=${Version}", "ftps-server"]).stdout == new_version
    changed = run.changed_tasks()
    assert "ftps_server.ftps.ftps_server : Install the copied package" in changed
    assert "ftps_server.ftps.ftps_server : Restart ftps-server" not in changed
    assert ct.systemctl_show("ftps-server", "MainPID") != pid
    assert ct.systemctl_show("ftps-server", "ActiveState") == "active"
