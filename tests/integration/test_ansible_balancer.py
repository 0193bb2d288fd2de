"""The collection's `balancer` role without a container: its HAProxy template rendered by a
real `ansible-playbook` on localhost, checked by the real `haproxy -c`, and then run as the
balancer of two real ftps-server nodes on loopback (health checks, per-node passive ranges,
shared storage, a node stopping).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from ansible_local import (
    Ansible,
    ansible_support,
    inventory,
    local_ansible,
    template_play,
    write_json,
)
from haproxy_support import need_haproxy

from ftps_server.journal import message_ids
from ftps_server.pki.passwords import HashParams, hash_password

ROLE = ansible_support.ANSIBLE_DIR / "roles" / "balancer"
PASSWORD = "Balanced-Horse-Battery-16"
FAST_HASH = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))
BALANCER, VIP4, VIP5 = "127.0.0.2", "127.0.0.4", "127.0.0.5"
NODES = {"node-a": "127.0.0.3", "node-b": "127.0.0.10"}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    return local_ansible(tmp_path_factory, "ansible-balancer")


def _render(ansible: Ansible, name: str, nodes: dict[str, Any], variables: dict[str, Any]) -> str:
    """The balancer's haproxy.cfg for `nodes`, rendered with the role's defaults and `variables`."""
    bin_dir, env, work = ansible
    var_file = write_json(work / f"{name}.vars.yml", variables)
    out = work / f"{name}.cfg"
    play = template_play(
        "localhost",
        [ROLE / "defaults" / "main.yml", var_file],
        ROLE / "templates" / "haproxy.cfg.j2",
        str(out),
    )
    playbook = write_json(work / f"{name}.yml", [play])
    run = ansible_support.run_playbook(
        bin_dir, env, playbook, inventory(work, name, nodes), cwd=work
    )
    assert run.returncode == 0, run.tail()
    return out.read_text()


def _haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )


def _blocks(text: str) -> dict[str, list[str]]:
    """'frontend NAME' / 'backend NAME' -> its lines, stripped."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            current = blocks.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return blocks


# --- the template -------------------------------------------------------------------------


def test_template_renders_per_vip_and_per_node_and_passes_haproxy_check(ansible: Ansible) -> None:
    nodes = {
        "ftp-b.example.com": {"ansible_host": "192.0.2.22"},
        "ftp-a.example.com": {"ansible_host": "192.0.2.21"},
        "ftp-c.example.com": {"balancer_node_address": "2001:db8::23", "ansible_host": "x"},
    }
    text = _render(
        ansible,
        "three",
        nodes,
        {
            "balancer_vips": ["198.51.100.10", "2001:db8:1::10"],
            "balancer_ports": [{"port": 21, "tls": "explicit"}, {"port": 990, "tls": "implicit"}],
            "balancer_passive_first": 50000,
            "balancer_passive_size": 50,
            "balancer_source_address": "192.0.2.5",
        },
    )
    path = Path(ansible[2]) / "three.cfg"
    check = _haproxy_check(path)
    assert check.returncode == 0, check.stdout + check.stderr + text
    blocks = _blocks(text)
    assert blocks["frontend ftp_198_51_100_10"] == [
        "bind 198.51.100.10:21",
        "bind 198.51.100.10:990",
        "use_backend control_21 if { dst_port 21 }",
        "use_backend control_990 if { dst_port 990 }",
    ]
    assert "bind [2001:db8:1::10]:990" in blocks["frontend ftp_2001_db8_1__10"]
    # ranges by sorted name: a, b, c -> 0, 1, 2
    assert blocks["frontend passive_ftp-a.example.com"][:2] == [
        "bind 198.51.100.10:50000-50049",
        "bind [2001:db8:1::10]:50000-50049",
    ]
    assert "bind 198.51.100.10:50050-50099" in blocks["frontend passive_ftp-b.example.com"]
    assert "bind 198.51.100.10:50100-50149" in blocks["frontend passive_ftp-c.example.com"]
    assert blocks["backend passive_ftp-c.example.com"] == [
        "server ftp-c.example.com [2001:db8::23] send-proxy-v2 "
        "track control_21/ftp-c.example.com source 192.0.2.5"
    ]
    explicit, implicit = blocks["backend control_21"], blocks["backend control_990"]
    assert "tcp-check connect ssl send-proxy" in implicit
    assert "tcp-check connect send-proxy" in explicit
    assert 'tcp-check expect string "AUTH TLS"' in explicit
    for lines in (explicit, implicit):
        servers = [line for line in lines if line.startswith("server ")]
        assert len(servers) == 3
        assert all("send-proxy-v2 check check-send-proxy" in s for s in servers)
        assert all(s.endswith("source 192.0.2.5") for s in servers)
    assert "server ftp-a.example.com 192.0.2.21:990 send-proxy-v2" in " ".join(implicit)
    assert "verify none" in " ".join(implicit) and "verify none" not in " ".join(explicit)


def test_node_index_keeps_a_range_stable(ansible: Ansible) -> None:
    nodes = {"a": {"ansible_host": "192.0.2.1"}, "b": {"ansible_host": "192.0.2.2"}}
    nodes["a"]["balancer_node_index"] = 5  # type: ignore[index]
    text = _render(ansible, "index", nodes, {"balancer_vips": ["198.51.100.10"]})
    blocks = _blocks(text)
    assert blocks["frontend passive_a"] == [
        "bind 198.51.100.10:60500-60599",
        "default_backend passive_a",
    ]
    assert blocks["frontend passive_b"][0] == "bind 198.51.100.10:60100-60199"


# docs/fleet.md's group_vars: tests/integration/test_ansible_fleet_vars.py


def test_a_broken_template_value_is_refused_by_haproxy_check(ansible: Ansible) -> None:
    # the role's `validate: haproxy -c -f %s` must be able to fail: a bad interval is refused
    nodes = {"a": {"ansible_host": "192.0.2.1"}}
    _render(
        ansible,
        "bad",
        nodes,
        {"balancer_vips": ["198.51.100.10"], "balancer_check_interval": "soon"},
    )
    check = _haproxy_check(Path(ansible[2]) / "bad.cfg")
    assert check.returncode != 0 and "unexpected character 's'" in check.stderr


def test_argument_spec_needs_vips(ansible: Ansible) -> None:
    bin_dir, env, work = ansible
    play = [{"hosts": "localhost", "gather_facts": False, "roles": ["ftps_server.ftps.balancer"]}]
    playbook = write_json(work / "no-vips.yml", play)
    nodes = inventory(work, "no-vips", {"a": {"ansible_host": "192.0.2.1"}})
    run = ansible_support.run_playbook(bin_dir, env, playbook, nodes, cwd=work)
    assert run.returncode != 0
    assert "missing required arguments: balancer_vips" in run.output


# --- the rendered configuration in front of two real nodes --------------------------------


def _stats(sock_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}


def _wait_status(
    sock_path: Path, backend: str, server: str, status: str, timeout: float = 30
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            row = _stats(sock_path).get((backend, server), {})
        except (FileNotFoundError, ConnectionRefusedError):  # haproxy still starting
            time.sleep(0.1)
            continue
        if row.get("status") == status:
            return row
        time.sleep(0.2)
    raise AssertionError(f"{backend}/{server} not {status}: {row}")


class Cluster:
    def __init__(self, root: Path, stats: Path, explicit: int, implicit: int) -> None:
        self.root, self.stats, self.explicit, self.implicit = root, stats, explicit, implicit
        self.servers: dict[str, support.ServerProcess] = {}
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.haproxy_log: Path | None = None


@pytest.fixture
def cluster(
    ansible: Ansible, pki: support.Pki, tmp_path: Path, start_server: Any
) -> Iterator[Cluster]:
    binary = need_haproxy()
    if not Path("/var/lib/haproxy").is_dir():
        pytest.skip("haproxy's chroot /var/lib/haproxy is missing (Debian package haproxy)")
    explicit = support.free_port(VIP4)
    implicit = support.free_port(VIP4)
    size = 4
    first = support.free_port_range(size * 2, (VIP4, VIP5, *NODES.values()))
    stats = tmp_path / "haproxy.sock"
    nodes = {name: {"balancer_node_address": address} for name, address in NODES.items()}
    text = _render(
        ansible,
        "cluster",
        nodes,
        {
            "balancer_vips": [VIP4, VIP5],
            "balancer_ports": [
                {"port": explicit, "tls": "explicit"},
                {"port": implicit, "tls": "implicit"},
            ],
            "balancer_passive_first": first,
            "balancer_passive_size": size,
            "balancer_source_address": BALANCER,
            "balancer_check_interval": "300ms",
            "balancer_stats_socket": str(stats),
            "balancer_log_target": "stderr",
        },
    )
    certs = {vip: pki.server(f"vip{vip[-1]}", vip) for vip in (VIP4, VIP5)}
    vip4 = support.certificate_section("vip4", certs[VIP4].cert, certs[VIP4].key, addresses=VIP4)
    vip5 = support.certificate_section("vip5", certs[VIP5].cert, certs[VIP5].key, addresses=VIP5)
    root = tmp_path / "shared"  # the storage both nodes serve
    (root / "alice").mkdir(parents=True)
    result = Cluster(root, stats, explicit, implicit)
    for index, (name, address) in enumerate(sorted(NODES.items())):
        low = first + index * size  # the role's formula, as the nodes' group_vars compute it
        config = support.write_config(
            tmp_path / f"{name}.ini",
            f"""
            [server]
            addresses = {address}
            passive_ports = {low}-{low + size - 1}
            state_dir = {tmp_path}/state-{name}
            root = {root}
            handshake_timeout = 5
            proxy_protocol = yes
            proxy_from = {BALANCER}
            [ports]
            explicit = {explicit}
            implicit = {implicit}
            {vip4}
            ; the health checks (PROXY LOCAL) reach the node's own address
            default = yes
            {vip5}
            [user:alice]
            home = {root}/alice
            permissions = elradfmw
            password = {FAST_HASH}
            """,
        )
        result.servers[name] = start_server(config)
    result.haproxy_log = tmp_path / "haproxy.log"
    with result.haproxy_log.open("wb") as log:
        result.haproxy = subprocess.Popen(
            [binary, "-db", "-f", str(Path(ansible[2]) / "cluster.cfg")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for port in (explicit, implicit):
            for name in NODES:
                row = _wait_status(stats, f"control_{port}", name, "UP")
                assert row["check_status"] == "L7OK", (row, text)
        yield result
    finally:
        support.stop_process(result.haproxy)


def _curl(
    cluster: Cluster, pki: support.Pki, url: str, *args: str
) -> subprocess.CompletedProcess[bytes]:
    cmd = ["curl", "-sS", "--max-time", "30", "--cacert", str(pki.ca_file)]
    cmd += ["--interface", "127.0.0.6", "--user", f"alice:{PASSWORD}", *args, url]
    return subprocess.run(cmd, capture_output=True, timeout=60)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_two_nodes_behind_the_rendered_balancer(
    cluster: Cluster, pki: support.Pki, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    (cluster.root / "alice" / "shared.bin").write_bytes(data)
    # leastconn over idle nodes takes turns: 8 sessions reach both, each with passive data
    # through its own node's range, on both VIPs and both kinds of port
    for i in range(8):
        vip = (VIP4, VIP5)[i % 2]
        if i % 4 < 2:
            url, extra = f"ftp://{vip}:{cluster.explicit}/shared.bin", ["--ssl-reqd"]
        else:
            url, extra = f"ftps://{vip}:{cluster.implicit}/shared.bin", []
        out = tmp_path / f"out{i}.bin"
        r = _curl(cluster, pki, url, *extra, "-o", str(out))
        assert r.returncode == 0, (r.stderr, cluster.haproxy_log.read_text()[-2000:])  # type: ignore[union-attr]
        assert out.read_bytes() == data
    for name, server in cluster.servers.items():
        assert server.wait_log("user alice logged in from 127.0.0.6"), name
        assert "RETR" in server.log(), name
    # the balancer's health checks (PROXY v2 LOCAL) are sessions of the balancer itself: their
    # connect events name it (session events, issue 14), no other line may (refusal, failure)
    noisy = [
        line
        for s in cluster.servers.values()
        for line in s.log().splitlines()
        if f"from {BALANCER} " in line and f"MESSAGE_ID={message_ids.SESSION_CONNECT}" not in line
    ]
    assert noisy == []

    # one node stops: the checks take it out, new sessions go to the other
    node_b = cluster.servers["node-b"].proc  # the fixture's finaliser closes the rest
    node_b.terminate()
    node_b.wait(10)
    _wait_status(cluster.stats, f"control_{cluster.explicit}", "node-b", "DOWN")
    _wait_status(cluster.stats, "passive_node-b", "node-b", "DOWN")
    for i in range(4):
        out = tmp_path / f"after{i}.bin"
        url = f"ftp://{(VIP4, VIP5)[i % 2]}:{cluster.explicit}/shared.bin"
        r = _curl(cluster, pki, url, "--ssl-reqd", "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == data
