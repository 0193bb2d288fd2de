"""The `ftps_server` role's fleet variables, without a container: per-node passive ranges
computed from one inventory (the same as the `balancer` role's frontends), `proxy_protocol` /
`proxy_from` / `shared_state_dir` in the rendered INI (read back by the server's loader), and
validate.yml refusing bad values on the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible_local import (
    Ansible,
    ansible_support,
    inventory,
    local_ansible,
    template_play,
    validation_play,
    write_json,
)

from ftps_server.config.loader import load

ROLE = ansible_support.ANSIBLE_DIR / "roles" / "ftps_server"
BALANCER = ansible_support.ANSIBLE_DIR / "roles" / "balancer"

pytestmark = pytest.mark.timeout(600)

NODES: dict[str, dict[str, Any]] = {
    "ftp-b": {},
    "ftp-a": {},
    "ftp-c": {"balancer_node_index": 7},
}
FLEET = {
    "ftps_server_fleet_group": "ftps_servers",
    "ftps_server_fleet_passive_first": 40000,
    "ftps_server_fleet_passive_size": 100,
    "ftps_server_proxy_protocol": True,
    "ftps_server_proxy_from": ["10.78.0.1", "10.78.1.0/29"],
    "ftps_server_alerts_shared_state_dir": "/srv/ftp/.ftps-server-fleet",
    "ftps_server_passive_ports": "1-2",  # ignored for a fleet node
}


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    return local_ansible(tmp_path_factory, "ansible-fleet")


def _run(
    ansible: Ansible, name: str, nodes: dict[str, dict[str, Any]], plays: list[dict[str, Any]]
) -> ansible_support.PlaybookRun:
    bin_dir, env, work = ansible
    playbook = write_json(work / f"{name}.yml", plays)
    return ansible_support.run_playbook(
        bin_dir, env, playbook, inventory(work, name, nodes), cwd=work
    )


def _render_nodes(ansible: Ansible, name: str, variables: dict[str, Any]) -> dict[str, str]:
    """Each node's rendered ftps-server.ini, by host name."""
    work = ansible[2]
    var_file = write_json(work / f"{name}.vars.yml", variables)
    play = template_play(
        "ftps_servers",
        [ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml", var_file],
        ROLE / "templates" / "ftps-server.ini.j2",
        str(work / name) + "-{{ inventory_hostname }}.ini",
    )
    run = _run(ansible, name, NODES, [play])
    assert run.returncode == 0, run.tail()
    return {h: (work / f"{name}-{h}.ini").read_text() for h in NODES}


def _balancer_ranges(ansible: Ansible, first: int = 40000) -> dict[str, str]:
    """passive range per node in the balancer role's haproxy.cfg for the same inventory."""
    work = ansible[2]
    out = work / "fleet-haproxy.cfg"
    var_file = write_json(
        work / "fleet-balancer.vars.yml",
        {
            "balancer_vips": ["198.51.100.10"],
            "balancer_passive_first": first,
            "balancer_passive_size": 100,
        },
    )
    play = template_play(
        "localhost",
        [BALANCER / "defaults" / "main.yml", var_file],
        BALANCER / "templates" / "haproxy.cfg.j2",
        str(out),
    )
    run = _run(ansible, f"fleet-balancer-{first}", NODES, [play])
    assert run.returncode == 0, run.tail()
    ranges, current = {}, ""
    for line in out.read_text().splitlines():
        if line.startswith("frontend passive_"):
            current = line.split("passive_", 1)[1].strip()
        elif current and line.strip().startswith("bind "):
            ranges[current] = line.split(":", 1)[1].strip()
            current = ""
    return ranges


def test_ranges_computed_like_the_balancer_and_keys_rendered(
    ansible: Ansible, tmp_path: Path
) -> None:
    rendered = _render_nodes(ansible, "fleet", FLEET)
    ranges = {}
    for host, text in rendered.items():
        path = tmp_path / f"{host}.ini"
        path.write_text(text)
        config = load(path)  # the server's own loader accepts what the role wrote
        assert config.server.proxy_protocol
        assert [str(n) for n in config.server.proxy_from] == ["10.78.0.1/32", "10.78.1.0/29"]
        assert config.alerts.shared_state_dir == Path("/srv/ftp/.ftps-server-fleet")
        assert config.server.passive_ports is not None
        first, last = config.server.passive_ports
        ranges[host] = f"{first}-{last}"
    assert ranges == {"ftp-a": "40000-40099", "ftp-b": "40100-40199", "ftp-c": "40700-40799"}
    assert ranges == _balancer_ranges(ansible)


def test_without_a_fleet_nothing_changes(ansible: Ansible) -> None:
    rendered = _render_nodes(ansible, "single", {"ftps_server_passive_ports": "50000-50009"})
    for text in rendered.values():
        assert "passive_ports = 50000-50009" in text
        assert "proxy_" not in text and "shared_state_dir" not in text


def _validate(ansible: Ansible, name: str, variables: dict[str, Any]) -> str:
    """validate.yml on every node; the output of a run that must fail."""
    run = _run(ansible, name, NODES, [validation_play("ftps_servers", variables)])
    assert run.returncode != 0, run.tail()
    return run.output


def test_valid_fleet_values_pass_validation(ansible: Ansible) -> None:
    run = _run(ansible, "valid", NODES, [validation_play("ftps_servers", FLEET)])
    assert run.returncode == 0, run.tail()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"ftps_server_proxy_from": []}, "ftps_server_proxy_protocol needs ftps_server_proxy_from"),
        ({"ftps_server_proxy_from": ["balancer.example"]}, "CIDR notation"),
        ({"ftps_server_proxy_from": ["10.0.0.5\n[user:x]"]}, "control character"),
        ({"ftps_server_fleet_group": "no_such_group"}, "this\nhost must be in that group"),
        ({"ftps_server_fleet_passive_first": 65400}, "within\n1024-65535"),
        ({"ftps_server_fleet_passive_size": 0}, "size >= 1"),
        ({"ftps_server_alerts_shared_state_dir": "fleet"}, "must be an absolute path"),
        ({"ftps_server_alerts_shared_state_dir": "/var/lib/ftps-server/"}, "other than"),
    ],
)
def test_bad_fleet_values_are_refused(ansible: Ansible, change: dict[str, Any], words: str) -> None:
    name = "bad-" + "-".join(f"{k}" for k in change)[-40:] + str(abs(hash(str(change))) % 1000)
    output = _validate(ansible, name, {**FLEET, **change})
    assert " ".join(words.split()) in " ".join(output.split())


def test_duplicate_node_indexes_are_refused(ansible: Ansible) -> None:
    # ftp-b is 1 by its place; pinning ftp-c to 1 as well would give two nodes one range
    nodes = {**NODES, "ftp-c": {"balancer_node_index": 1}}
    run = _run(ansible, "dup", nodes, [validation_play("ftps_servers", FLEET)])
    assert run.returncode != 0
    assert "indexes (balancer_node_index or the place by name) distinct" in " ".join(
        run.output.split()
    )


def _docs_all_yml() -> str:
    """The `group_vars/all.yml` block of docs/fleet.md."""
    text = (ansible_support.REPO / "docs" / "fleet.md").read_text()
    block = text.split("Set the numbers once", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert "ftps_server_fleet_group" in block
    return block


def test_documented_group_vars_give_the_balancers_ranges(ansible: Ansible) -> None:
    """docs/fleet.md's group_vars/all.yml, as an inventory's, through the role's own defaults,
    vars and validation: the nodes' ranges equal the balancer role's frontends."""
    bin_dir, env, work = ansible
    inv_dir = work / "docs-inv"
    (inv_dir / "group_vars").mkdir(parents=True)
    (inv_dir / "group_vars" / "all.yml").write_text(_docs_all_yml())
    docs_inventory = inventory(inv_dir, "docs", NODES)
    play = {
        "hosts": "ftps_servers",
        "gather_facts": False,
        "tasks": [
            {
                "ansible.builtin.import_role": {
                    "name": "ftps_server.ftps.ftps_server",
                    "tasks_from": "validate.yml",
                }
            },
            {
                "ansible.builtin.copy": {
                    "content": "{{ ftps_server_effective_passive_ports }}",
                    "dest": str(work / "docs") + "-{{ inventory_hostname }}.txt",
                    "mode": "0600",
                }
            },
        ],
    }
    playbook = write_json(work / "docs.yml", [play])
    run = ansible_support.run_playbook(bin_dir, env, playbook, docs_inventory, cwd=work)
    assert run.returncode == 0, run.tail()
    ranges = {h: (work / f"docs-{h}.txt").read_text().strip() for h in NODES}
    assert ranges == _balancer_ranges(ansible, 60000)
    assert ranges["ftp-a"] == "60000-60099" and ranges["ftp-c"] == "60700-60799"
