"""Issue 16: a fleet of three booted containers deployed by ONE run of ansible/playbooks/fleet.yml:
`fleet-lb` (HAProxy, the `balancer` role) and `fleet-n1`, `fleet-n2` (ftps-server, the
`ftps_server` role) sharing one bind-mounted directory as /srv/ftp.

Network: a bridge `br-fleet` on the machine (10.78.0.1 and 10.78.0.2, the clients), the
balancer 10.78.0.10 with the VIPs 10.78.0.20 and 10.78.0.21, the nodes 10.78.0.11 and
10.78.0.12; each container in its own network namespace. Nothing here touches the harness's
`ftpstest` container or 10.77.0.0/24; these containers have their own names, locks and PID
files (container.py), so they can run beside it.

Which node served a session is told by its passive port: each node has its own range.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import ftplib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_support
import pytest
from conftest import _skip_reason
from container import Container, ContainerError

trustme = pytest.importorskip("trustme")
aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support.py
from support import ReusingFTP_TLS  # noqa: E402

from ftps_server.journal import message_ids  # noqa: E402
from ftps_server.pki.passwords import HashParams, hash_password  # noqa: E402

pytestmark = pytest.mark.timeout(900)

BRIDGE = "br-fleet"
CLIENT = "10.78.0.1"  # the machine: clients, SMTP
CLIENT2 = "10.78.0.2"  # a second client address on the machine
LB = "10.78.0.10"
VIP_A, VIP_B = "10.78.0.20", "10.78.0.21"
NODES = {"fleet-n1": "10.78.0.11", "fleet-n2": "10.78.0.12"}
PASSIVE_FIRST, PASSIVE_SIZE = 60000, 20
SMTP_PORT = 2526
PASSWORD = "fleet-test-pw-4Kd"
SHARED_STATE = "/srv/ftp/.ftps-server-fleet"
PLAYBOOK = ansible_support.ANSIBLE_DIR / "playbooks" / "fleet.yml"


def _log(msg: str) -> None:
    print(f"[fleet] {msg}", file=sys.stderr, flush=True)


def _host(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=60)


@dataclass
class Sink:
    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 2.0.0 queued"

    def about(self, subject: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if m["X-FTPS-Server-Subject"] == subject]


@dataclass
class Fleet:
    lb: Container
    nodes: dict[str, Container]
    ca_file: Path
    fingerprints: dict[str, str]  # certificate name -> SHA-256 hex of the DER
    sink: Sink
    work: Path
    storage: Path
    timings: dict[str, float] = field(default_factory=dict)

    def node_of_port(self, port: int) -> str:
        index = (port - PASSIVE_FIRST) // PASSIVE_SIZE
        names = sorted(self.nodes)
        assert 0 <= index < len(names), f"passive port {port} is in no node's range"
        return names[index]


# --- set-up -----------------------------------------------------------------------------------


def _bridge_up() -> None:
    _host("ip", "link", "del", BRIDGE, check=False)  # left by a run killed hard; ours by name
    _host("ip", "link", "add", BRIDGE, "type", "bridge")
    for address in (CLIENT, CLIENT2):
        _host("ip", "addr", "add", f"{address}/24", "dev", BRIDGE)
    _host("ip", "link", "set", BRIDGE, "up")


def _pem_chain(leaf: Any) -> str:
    return "".join(p.bytes().decode() for p in leaf.cert_chain_pems)


def _der_sha256(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def _inventory(work: Path, key: Path, deb: Path, variables: dict[str, Any]) -> Path:
    inv = work / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "group_vars" / "all.yml").write_text(json.dumps(variables, indent=1))
    common = (
        "ansible_user=root ansible_become=false ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_private_key_file={key} "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"
    )
    lines = ["[ftps_servers]"]
    for name, address in NODES.items():
        addresses = f"ftps_server_addresses='[\"{address}\"]'"
        lines.append(f"{name} ansible_host={address} {addresses} {common}")
    lines += ["", "[ftps_balancers]", f"fleet-lb ansible_host={LB} {common}", ""]
    path = inv / "hosts.ini"
    path.write_text("\n".join(lines))
    return path


def _variables(deb: Path, ca: Any, leaves: dict[str, Any]) -> dict[str, Any]:
    """group_vars/all.yml: docs/fleet.md's fleet block plus this test's site."""
    certificates = [
        {
            "name": name,
            "cert_content": _pem_chain(leaf),
            "key_content": leaf.private_key_pem.bytes().decode(),
            "addresses": addresses,
            **({"default": True} if name == "node" else {}),
        }
        for name, (leaf, addresses) in leaves.items()
    ]
    return {
        # the balancer
        "balancer_vips": [VIP_A, VIP_B],
        "balancer_passive_first": PASSIVE_FIRST,
        "balancer_passive_size": PASSIVE_SIZE,
        "balancer_source_address": LB,
        "balancer_check_interval": "1s",
        "balancer_apt_cache_valid_time": 0,  # no mirror inside: haproxy is in the rootfs
        # the nodes, as docs/fleet.md writes them
        "ftps_server_fleet_group": "ftps_servers",
        "ftps_server_fleet_passive_first": "{{ balancer_passive_first }}",
        "ftps_server_fleet_passive_size": "{{ balancer_passive_size }}",
        "ftps_server_proxy_protocol": True,
        "ftps_server_proxy_from": ["{{ balancer_source_address }}"],
        "ftps_server_alerts_shared_state_dir": SHARED_STATE,
        # this site
        "ftps_server_deb_path": str(deb),
        "ftps_server_config_diff": False,
        "ftps_server_certificates": certificates,
        "ftps_server_check_ca_content": ca.cert_pem.bytes().decode(),
        "ftps_server_users": [
            {
                "name": "alice",
                "password": hash_password(PASSWORD, HashParams(ln=10, r=8, p=1)),
                "permissions": "elradfmw",
            }
        ],
        "ftps_server_alerts_email_to": ["ops@example.org"],
        "ftps_server_alerts_email_from": "ftps-server@fleet.example.org",
        "ftps_server_alerts_transport": "smtp",
        "ftps_server_alerts_smtp_host": CLIENT,
        "ftps_server_alerts_smtp_port": SMTP_PORT,
        "ftps_server_alerts_smtp_security": "none",
        "ftps_server_alerts_warn_days": [14, 3],
        "ftps_server_extra_settings": {"server": {"max_login_failures": 3, "ban_time": 300}},
    }


@pytest.fixture(scope="module")
def fleet(deb_path: Path) -> Iterator[Fleet]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="ftps-fleet-", dir="/var/tmp"))
    storage = base / "storage"
    storage.mkdir(mode=0o755)
    work = base / "work"
    work.mkdir()
    sink = Sink()
    containers: list[Container] = []
    smtp = None
    try:
        _bridge_up()
        smtp = aiosmtpd_controller.Controller(sink, hostname=CLIENT, port=SMTP_PORT)
        smtp.start()
        lb = Container("fleet-lb", addr=LB, extra_addrs=(VIP_A, VIP_B), bridge=BRIDGE)
        nodes = {
            name: Container(
                name,
                addr=address,
                extra_addrs=(),
                bridge=BRIDGE,
                binds=[(str(storage), "/srv/ftp")],
            )
            for name, address in NODES.items()
        }
        for ct in (lb, *nodes.values()):
            containers.append(ct)
            ct.start()
        boot = time.monotonic() - started
        _log(f"three containers booted in {boot:.1f} s")

        ca = trustme.CA()
        now = dt.datetime.now(dt.UTC)
        leaves = {
            "vip-a": (ca.issue_cert(VIP_A, "a.fleet.example"), [VIP_A]),
            # expiring: 5 days left, inside warn_days 14 (the fleet's one email)
            "vip-b": (
                ca.issue_cert(
                    VIP_B,
                    "b.fleet.example",
                    not_before=now - dt.timedelta(days=60),
                    not_after=now + dt.timedelta(days=5, hours=1),
                ),
                [VIP_B],
            ),
            # the nodes' own addresses and the health checks
            "node": (ca.issue_cert(*NODES.values()), []),
        }
        ca_file = work / "ca.pem"
        ca_file.write_bytes(ca.cert_pem.bytes())
        fingerprints = {
            name: _der_sha256(leaf.cert_chain_pems[0].bytes().decode())
            for name, (leaf, _) in leaves.items()
        }
        bin_dir = ansible_support.ensure_venv()
        env = ansible_support.ansible_env(bin_dir, ansible_support.collections_dir(work))
        inventory = _inventory(work, lb.ssh_key_path, deb_path, _variables(deb_path, ca, leaves))
        run = ansible_support.run_playbook(
            bin_dir, env, PLAYBOOK, inventory, args=("--forks", "3"), cwd=work
        )
        (work / "fleet-playbook.log").write_text(run.output)
        _log(f"fleet.yml: rc={run.returncode} in {run.seconds:.1f} s")
        assert run.returncode == 0, run.tail()
        fleet = Fleet(lb, nodes, ca_file, fingerprints, sink, work, storage)
        fleet.timings.update(boot=boot, playbook=run.seconds)
        _wait_backends_up(fleet)
        yield fleet
        _log(f"timings: {fleet.timings}, whole module {time.monotonic() - started:.0f} s")
    finally:
        with contextlib.suppress(Exception):
            ansible_support.close_ssh_masters(
                ansible_support.ansible_env(
                    ansible_support.ensure_venv(), ansible_support.collections_dir(work)
                )
            )
        for ct in reversed(containers):
            with contextlib.suppress(ContainerError, OSError, subprocess.SubprocessError):
                ct.stop()
        if smtp is not None:
            smtp.stop()
        _host("ip", "link", "del", BRIDGE, check=False)
        if os.environ.get("FTPS_TEST_KEEP_ROOTFS"):
            _log(f"keeping {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _haproxy_stats(fleet: Fleet) -> dict[tuple[str, str], str]:
    """(proxy, server) -> status, from the balancer's admin socket (python3 inside)."""
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
        "s.sendall(b'show stat\\n'); d = b''\n"
        "while True:\n c = s.recv(65536)\n if not c: break\n d += c\n"
        "print(d.decode())"
    )
    out = fleet.lb.run(["python3", "-c", script]).stdout
    rows = [line.split(",") for line in out.splitlines() if line and not line.startswith("#")]
    return {(r[0], r[1]): r[17] for r in rows if len(r) > 17}


def _wait_backends_up(fleet: Fleet, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    stats: dict[tuple[str, str], str] = {}
    while time.monotonic() < deadline:
        stats = _haproxy_stats(fleet)
        servers = {k: v for k, v in stats.items() if k[1] in NODES}
        if servers and all(v == "UP" for v in servers.values()):
            return
        time.sleep(0.5)
    pytest.fail(f"balancer backends not all UP: {stats}")


# --- clients ------------------------------------------------------------------------------


class Session:
    """An explicit FTPS session through a VIP (ftplib, data connections resume the session)."""

    def __init__(self, fleet: Fleet, vip: str, source: str = CLIENT) -> None:
        context = ssl.create_default_context(cafile=str(fleet.ca_file))
        self.fleet = fleet
        self.vip = vip
        self.ftp = ReusingFTP_TLS(context=context, timeout=20)
        self.ftp.connect(vip, 21, source_address=(source, 0))
        self.ftp.auth()
        self.ftp.login("alice", PASSWORD)
        self.ftp.prot_p()

    def node(self) -> str:
        """The node serving this session, by its PASV reply (which must name the VIP)."""
        host, port = self.ftp.makepasv()
        assert host == self.vip, f"PASV named {host}, not the VIP {self.vip}"
        # a PASV without a transfer: the node drops the listener at the next PASV or QUIT
        return self.fleet.node_of_port(port)

    def close(self) -> None:
        with contextlib.suppress(OSError, ftplib.Error, EOFError):
            self.ftp.quit()
        with contextlib.suppress(OSError):
            self.ftp.close()


def _sessions_on_every_node(fleet: Fleet, vip: str, tries: int = 10) -> dict[str, Session]:
    """Open sessions (held, so leastconn spreads them) until one is on each node."""
    held: list[Session] = []
    found: dict[str, Session] = {}
    for _ in range(tries):
        session = Session(fleet, vip)
        node = session.node()
        if node in found:
            held.append(session)
        else:
            found[node] = session
        if len(found) == len(NODES):
            break
    for session in held:
        session.close()
    assert set(found) == set(NODES), f"sessions reached only {sorted(found)} in {tries} tries"
    return found


def _served_sha256(address: str, port: int, ca_file: Path, starttls: bool) -> str:
    cmd = ["openssl", "s_client", "-connect", f"{address}:{port}", "-CAfile", str(ca_file)]
    cmd += ["-verify_return_error", "-verify_ip", address]
    if starttls:
        cmd += ["-starttls", "ftp"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"s_client {address}:{port}: {proc.stdout[-1500:]}{proc.stderr}"
    start = proc.stdout.index("-----BEGIN CERTIFICATE-----")
    end = proc.stdout.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return _der_sha256(proc.stdout[start:end] + "\n")


# --- the tests, in file order ------------------------------------------------------------------


def test_each_vip_serves_its_own_certificate(fleet: Fleet) -> None:
    for _ in range(2):  # twice: leastconn takes each port's sessions to both nodes
        for vip, name in ((VIP_A, "vip-a"), (VIP_B, "vip-b")):
            want = fleet.fingerprints[name]
            assert _served_sha256(vip, 990, fleet.ca_file, starttls=False) == want
            assert _served_sha256(vip, 21, fleet.ca_file, starttls=True) == want


def test_one_reminder_email_for_the_fleet(fleet: Fleet) -> None:
    """Both nodes ran the reminders when they started and both timers' units run now: one
    email about the expiring certificate, not one per node."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not fleet.sink.about("certificate:vip-b"):
        time.sleep(0.5)
    for ct in fleet.nodes.values():
        ct.run(["systemctl", "start", "ftps-server-remind.service"], timeout=120)
    emails = fleet.sink.about("certificate:vip-b")
    assert len(emails) == 1, [str(m["Subject"]) for m in fleet.sink.messages]
    assert str(emails[0]["Subject"]).startswith("[ftps-server] EXPIRING")
    assert "shared_state_dir was not usable" not in emails[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (fleet.storage / ".ftps-server-fleet" / "reminders.json").is_file()
    # a node going down silences nothing: three days on, node 2 alone crosses warn_days 3
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).date().isoformat()
    fleet.nodes["fleet-n2"].run(["ftps-server", "remind", "--at", later], timeout=120)
    fleet.nodes["fleet-n1"].run(["ftps-server", "remind", "--at", later], timeout=120)
    emails = fleet.sink.about("certificate:vip-b")
    assert len(emails) == 2, [str(m["Subject"]) for m in emails]


def test_upload_through_one_node_download_through_the_other(fleet: Fleet) -> None:
    sessions = _sessions_on_every_node(fleet, VIP_A)
    try:
        one, other = (sessions[name] for name in sorted(sessions))
        data = os.urandom(1_500_000)
        one.ftp.storbinary("STOR cross-node.bin", _Reader(data))
        chunks: list[bytes] = []
        other.ftp.retrbinary("RETR cross-node.bin", chunks.append)
        assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        for session in sessions.values():
            session.close()
    assert (fleet.storage / "alice" / "cross-node.bin").read_bytes() == data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_curl_and_lftp_passive_through_the_balancer(fleet: Fleet) -> None:
    src = fleet.work / "payload.bin"
    data = os.urandom(700_000)
    src.write_bytes(data)
    curl = ["curl", "-sS", "--noproxy", "*", "--connect-timeout", "10", "--max-time", "60"]
    curl += ["--cacert", str(fleet.ca_file), "--user", f"alice:{PASSWORD}"]
    for i in range(4):  # consecutive sessions: leastconn and both nodes' passive ranges
        for vip, url, extra in (
            (VIP_B, f"ftps://{VIP_B}:990/curl-{i}.bin", []),
            (VIP_A, f"ftp://{VIP_A}:21/curl-{i}.bin", ["--ssl-reqd"]),
        ):
            up = subprocess.run(
                [*curl, *extra, "-T", str(src), url], capture_output=True, timeout=90
            )
            assert up.returncode == 0, f"curl upload via {vip}: {up.stderr.decode()[-800:]}"
            down = subprocess.run([*curl, *extra, url], capture_output=True, timeout=90)
            assert down.returncode == 0, f"curl download via {vip}: {down.stderr.decode()[-800:]}"
            assert down.stdout == data
    if shutil.which("lftp") is None:
        pytest.skip("lftp not installed on the machine")
    for i in range(3):
        got = fleet.work / f"lftp-{i}.bin"
        script = (
            f"set ssl:ca-file {fleet.ca_file}; set ftp:ssl-force true; "
            "set ftp:ssl-protect-data true; set ftp:passive-mode true; set net:max-retries 1; "
            f"set net:timeout 15; open -u alice,{PASSWORD} ftp://{VIP_A}:21; "
            f"put {src} -o lftp-{i}.bin; get lftp-{i}.bin -o {got}; bye"
        )
        proc = subprocess.run(["lftp", "-c", script], capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-1500:]
        assert got.read_bytes() == data


def _ban_entries(fleet: Fleet) -> list[dict[str, object]]:
    return [
        entry
        for ct in fleet.nodes.values()
        for entry in ct.journal_json(message_id=message_ids.ADDRESS_BANNED)
    ]


def test_ban_hits_the_real_client_not_the_balancer(fleet: Fleet) -> None:
    assert _ban_entries(fleet) == []
    context = ssl.create_default_context(cafile=str(fleet.ca_file))
    ftp = ReusingFTP_TLS(context=context, timeout=30)
    ftp.connect(VIP_A, 21, source_address=(CLIENT, 0))
    ftp.auth()
    for _ in range(3):  # on one connection, so on one node: max_login_failures = 3
        with contextlib.suppress(ftplib.error_perm, ftplib.error_temp):
            ftp.login("alice", "wrong password")
    with contextlib.suppress(OSError, ftplib.Error, EOFError):
        ftp.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _ban_entries(fleet):
        time.sleep(0.5)
    bans = _ban_entries(fleet)
    assert [b.get("REMOTE_ADDR") for b in bans] == [CLIENT], bans
    # the banned client is refused by that node (421) and still served by the other one;
    # another client, and the balancer's health checks, pass everywhere
    replies = []
    for _ in range(6):
        with socket.create_connection((VIP_A, 21), timeout=10, source_address=(CLIENT, 0)) as s:
            replies.append(s.makefile("rb").readline().decode()[:3])
    assert "421" in replies and "220" in replies, replies
    nodes = set()
    for _ in range(8):
        session = Session(fleet, VIP_A, source=CLIENT2)
        nodes.add(session.node())
        session.close()
        if nodes == set(NODES):
            break
    assert nodes == set(NODES)
    assert all(v == "UP" for k, v in _haproxy_stats(fleet).items() if k[1] in NODES)


def test_stopping_a_node_sends_new_sessions_to_the_other(fleet: Fleet) -> None:
    session = Session(fleet, VIP_A, source=CLIENT2)
    stopped = session.node()
    survivor = next(n for n in NODES if n != stopped)
    fleet.nodes[stopped].run(["systemctl", "stop", "ftps-server"], timeout=60)
    reconnects = 0
    try:
        session.ftp.nlst()
    except (OSError, EOFError, ftplib.Error):
        reconnects += 1  # the session on the stopped node ended: the client reconnects once
        session.close()
        session = Session(fleet, VIP_A, source=CLIENT2)
    assert reconnects == 1
    assert session.node() == survivor
    session.close()
    # at once, before the health checks could mark it down: redispatched, no client error
    for _ in range(6):
        session = Session(fleet, VIP_A, source=CLIENT2)
        assert session.node() == survivor
        assert "cross-node.bin" in session.ftp.nlst()
        session.close()
