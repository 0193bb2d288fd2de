"""The Ansible collection without a container: lint, syntax check, argument validation and
the rendered /etc/ftps-server/ftps-server.ini against the configuration contract (DESIGN §3).

Rendering runs the role's real template with a local ``ansible-playbook`` (``connection:
local``) into a temporary directory; the result is read back with the server's own loader
and checked with ``ftps-server check-config``.
"""

from __future__ import annotations

import configparser
import datetime
import grp
import json
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from ansible_local import (
    Ansible,
    ansible_support,
    local_ansible,
    template_play,
    validation_play,
    write_json,
)

from ftps_server.config.loader import load

ROLE = ansible_support.ANSIBLE_DIR / "roles" / "ftps_server"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    """(venv bin dir, environment, work dir) for running ansible locally."""
    return local_ansible(tmp_path_factory, "ansible")


def _local_run(
    ansible: Ansible,
    name: str,
    play: list[dict[str, Any]],
    args: tuple[str, ...] = (),
) -> ansible_support.PlaybookRun:
    bin_dir, env, work = ansible
    playbook = write_json(work / f"{name}.yml", play)
    inventory = work / "localhost.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    return ansible_support.run_playbook(bin_dir, env, playbook, inventory, args=args, cwd=work)


def _render(
    ansible: Ansible, name: str, variables: dict[str, Any], template: str = "ftps-server.ini.j2"
) -> str:
    """A role template rendered with the role's defaults, its vars and `variables`."""
    _, _, work = ansible
    var_file = write_json(work / f"{name}.vars.yml", variables)
    out = work / f"{name}.ini"
    play = template_play(
        "localhost",
        [ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml", var_file],
        ROLE / "templates" / template,
        str(out),
    )
    run = _local_run(ansible, f"render-{name}", [play])
    assert run.returncode == 0, run.tail()
    return out.read_text()


def _sections(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), strict=True, interpolation=None
    )
    parser.read_string(text)
    return {name: dict(parser.items(name)) for name in parser.sections()}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two server certificates, a client CA and a probe client certificate, as files."""
    trustme = pytest.importorskip("trustme")
    tls = tmp_path_factory.mktemp("tls")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    main = server_ca.issue_cert("192.0.2.10", "ftp.example.com")
    partners = server_ca.issue_cert("192.0.2.11")
    probe = client_ca.issue_cert("probe.example.com", common_name="ftps-server-check")

    def write(name: str, data: bytes, mode: int = 0o644) -> str:
        path = tls / name
        path.write_bytes(data)
        path.chmod(mode)
        return str(path)

    return {
        "dir": str(tls),
        "main_cert": b"".join(p.bytes() for p in main.cert_chain_pems).decode(),
        "main_key": main.private_key_pem.bytes().decode(),
        "files": {
            "main.pem": write("main.pem", b"".join(p.bytes() for p in main.cert_chain_pems)),
            "main.key": write("main.key", main.private_key_pem.bytes(), 0o600),
            "partners.pem": write(
                "partners.pem", b"".join(p.bytes() for p in partners.cert_chain_pems)
            ),
            "partners.key": write("partners.key", partners.private_key_pem.bytes(), 0o600),
            "client-ca.pem": write("client-ca.pem", client_ca.cert_pem.bytes()),
            "check-client.pem": write("check-client.pem", probe.cert_chain_pems[0].bytes()),
            "check-client.key": write("check-client.key", probe.private_key_pem.bytes(), 0o600),
            "check-ca.pem": write("check-ca.pem", server_ca.cert_pem.bytes()),
        },
    }


_HASH = (
    "$scrypt$ln=15,r=8,p=3$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g="
)
_FP = "sha256:" + ":".join(["AB"] * 32)


def _full_vars(tls_dir: str) -> dict[str, Any]:
    return {
        "ftps_server_tls_dir": tls_dir,
        "ftps_server_addresses": ["192.0.2.10", "192.0.2.11"],
        "ftps_server_passive_ports": "60000-60009",
        "ftps_server_nat": [
            {"network": "10.0.0.0/8", "address": "10.0.0.5"},
            {"network": "0.0.0.0/0", "address": "203.0.113.5"},
        ],
        "ftps_server_max_connections": 100,
        "ftps_server_max_connections_per_ip": 5,
        "ftps_server_idle_timeout": 120,
        "ftps_server_allow_plain_ftp": True,
        "ftps_server_state_dir": "/var/lib/ftps-server",
        "ftps_server_root": "/srv/ftp",
        "ftps_server_port_explicit": 2121,
        "ftps_server_port_implicit": 9990,
        "ftps_server_port_client_cert_explicit": 0,
        "ftps_server_port_client_cert_implicit": 9991,
        "ftps_server_tls_min_version": "TLSv1.3",
        "ftps_server_tls_ciphers": "ECDHE+AESGCM",
        "ftps_server_tls_require_data_protection": False,
        "ftps_server_tls_require_session_reuse": True,
        "ftps_server_tls_allow_ccc": True,
        "ftps_server_client_ca_content": "PEM",
        "ftps_server_certificates": [
            {
                "name": "main",
                "cert_content": "PEM",
                "key_content": "PEM",
                "addresses": ["192.0.2.10"],
                "default": True,
                "server_names": ["ftp.example.com"],
            },
            {
                "name": "partners",
                "cert_src": "partners.pem",
                "key_src": "partners.key",
                "addresses": ["192.0.2.11"],
            },
        ],
        "ftps_server_users": [
            {
                "name": "alice",
                "home": "/srv/ftp/alice",
                "permissions": "elradfmw",
                "auth": "certificate+password",
                "password": _HASH,
                "certificates": [_FP],
            },
            {"name": "reports", "auth": "certificate", "certificate_cn": "reports.example.com"},
        ],
        "ftps_server_alerts_email_to": ["ops@example.com", "pki@example.com"],
        "ftps_server_alerts_email_from": "ftps-server@example.com",
        "ftps_server_alerts_transport": "smtp",
        "ftps_server_alerts_smtp_host": "smtp.example.com",
        "ftps_server_alerts_smtp_port": 465,
        "ftps_server_alerts_smtp_security": "tls",
        "ftps_server_alerts_smtp_user": "ftps",
        "ftps_server_alerts_smtp_password": "not-in-the-ini",
        "ftps_server_alerts_warn_days": [14, 7, 1],
        "ftps_server_check_client_cert_content": "PEM",
        "ftps_server_check_client_key_content": "PEM",
        "ftps_server_check_ca_content": "PEM",
        "ftps_server_extra_settings": {"server": {"handshake_timeout": 20}},
    }


def test_ansible_lint_production_profile(ansible: Ansible) -> None:
    bin_dir, env, _ = ansible
    proc = subprocess.run(
        [str(bin_dir / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ansible_support.ANSIBLE_DIR,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_example_playbook_syntax(ansible: Ansible) -> None:
    bin_dir, env, _ = ansible
    proc = subprocess.run(
        [
            str(bin_dir / "ansible-playbook"),
            "--syntax-check",
            "-i",
            "examples/inventory/hosts.yml",
            "playbooks/site.yml",
        ],
        cwd=ansible_support.ANSIBLE_DIR,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_full_config_follows_the_contract(ansible: Ansible) -> None:
    text = _render(ansible, "full", _full_vars("/etc/ftps-server/tls"))
    assert "not-in-the-ini" not in text
    tls = "/etc/ftps-server/tls"
    assert _sections(text) == {
        "server": {
            "addresses": "192.0.2.10, 192.0.2.11",
            "passive_ports": "60000-60009",
            "nat": "10.0.0.0/8 -> 10.0.0.5, 0.0.0.0/0 -> 203.0.113.5",
            "max_connections": "100",
            "max_connections_per_ip": "5",
            "idle_timeout": "120",
            "allow_plain_ftp": "yes",
            "state_dir": "/var/lib/ftps-server",
            "root": "/srv/ftp",
            "handshake_timeout": "20",
        },
        "ports": {
            "explicit": "2121",
            "implicit": "9990",
            "client_cert_explicit": "0",
            "client_cert_implicit": "9991",
        },
        "tls": {
            "min_version": "TLSv1.3",
            "ciphers": "ECDHE+AESGCM",
            "client_ca": f"{tls}/client-ca.pem",
            "require_data_protection": "no",
            "require_session_reuse": "yes",
            "allow_ccc": "yes",
        },
        "certificate:main": {
            "cert": f"{tls}/main.pem",
            "key": f"{tls}/main.key",
            "addresses": "192.0.2.10",
            "default": "yes",
            "server_names": "ftp.example.com",
        },
        "certificate:partners": {
            "cert": f"{tls}/partners.pem",
            "key": f"{tls}/partners.key",
            "addresses": "192.0.2.11",
            "default": "no",
        },
        "user:alice": {
            "home": "/srv/ftp/alice",
            "permissions": "elradfmw",
            "auth": "certificate+password",
            "password": _HASH,
            "certificates": _FP,
        },
        "user:reports": {"auth": "certificate", "certificate_cn": "reports.example.com"},
        "alerts": {
            "email_to": "ops@example.com, pki@example.com",
            "email_from": "ftps-server@example.com",
            "transport": "smtp",
            "smtp_host": "smtp.example.com",
            "smtp_port": "465",
            "smtp_security": "tls",
            "smtp_user": "ftps",
            "smtp_password_file": "/etc/ftps-server/smtp-password",
            "warn_days": "14, 7, 1",
        },
        "check": {
            "client_cert": f"{tls}/check-client.pem",
            "client_key": f"{tls}/check-client.key",
            "ca_file": f"{tls}/check-ca.pem",
        },
    }


def test_minimal_config_omits_empty_keys(ansible: Ansible) -> None:
    text = _render(ansible, "minimal", {})
    assert _sections(text) == {
        "server": {
            "addresses": "*",
            "passive_ports": "60000-60099",
            "max_connections": "512",
            "max_connections_per_ip": "20",
            "idle_timeout": "300",
            "allow_plain_ftp": "no",
            "state_dir": "/var/lib/ftps-server",
            "root": "/srv/ftp",
        },
        "ports": {
            "explicit": "21",
            "implicit": "990",
            "client_cert_explicit": "0",
            "client_cert_implicit": "0",
        },
        "tls": {
            "min_version": "TLSv1.2",
            "require_data_protection": "yes",
            "require_session_reuse": "yes",
            "allow_ccc": "no",
        },
        "alerts": {
            "transport": "sendmail",
            "smtp_host": "localhost",
            "smtp_port": "25",
            "smtp_security": "starttls",
            "warn_days": "14",
        },
    }
    assert text.startswith("; Ansible managed\n")


def test_rendered_config_passes_the_servers_loader(ansible: Ansible, pki: dict[str, Any]) -> None:
    """The server's own `config.loader.load` and `ftps-server check-config` accept the output."""
    text = _render(ansible, "loadable", _full_vars(pki["dir"]))
    path = Path(pki["dir"]) / "ftps-server.ini"
    path.write_text(text)
    path.chmod(0o600)
    config = load(path)
    assert [c.name for c in config.certificates] == ["main", "partners"]
    assert config.resolver.for_address("192.0.2.11").name == "partners"
    assert config.resolver.for_address("192.0.2.99").name == "main"
    assert [n.address for n in config.server.nat] == ["10.0.0.5", "203.0.113.5"]
    assert config.ports.client_cert_implicit == 9991
    assert config.alerts.warn_days == (14, 7, 1)
    assert [u.name for u in config.users] == ["alice", "reports"]
    assert str(config.check.client_cert).endswith("check-client.pem")

    proc = subprocess.run(
        [sys.executable, "-m", "ftps_server", "check-config", str(path)],
        cwd=ansible_support.REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


_ARGSPEC = (
    "{{ (lookup('ansible.builtin.file', '%s') | from_yaml).argument_specs.main.options }}"
    % (ROLE / "meta" / "argument_specs.yml")
)


def _validate(
    ansible: Ansible, name: str, variables: dict[str, Any]
) -> ansible_support.PlaybookRun:
    play = [
        {
            "name": "Validate role variables against meta/argument_specs.yml",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}", **variables},
            "tasks": [{"ansible.builtin.validate_argument_spec": {"argument_spec": _ARGSPEC}}],
        }
    ]
    return _local_run(ansible, f"validate-{name}", play)


def _run_validate_tasks(
    ansible: Ansible, name: str, variables: dict[str, Any]
) -> ansible_support.PlaybookRun:
    """The role's validate.yml (the first tasks of tasks/main.yml) with `variables`."""
    return _local_run(ansible, f"checks-{name}", [validation_play("localhost", variables)])


def test_argument_spec_accepts_the_full_example(ansible: Ansible) -> None:
    run = _validate(ansible, "full", _full_vars("/etc/ftps-server/tls"))
    assert run.returncode == 0, run.tail()


def test_certificate_without_key_fails_validation(
    ansible: Ansible,
) -> None:
    run = _validate(
        ansible,
        "nokey",
        {
            "ftps_server_certificates": [
                {"name": "main", "cert_content": "PEM", "addresses": ["192.0.2.10"]}
            ]
        },
    )
    assert run.returncode != 0
    assert "one of the following is required: key_content, key_src" in run.output


def test_wrong_type_fails_validation(ansible: Ansible) -> None:
    run = _validate(ansible, "type", {"ftps_server_port_implicit": "nine-ninety"})
    assert run.returncode != 0
    assert "ftps_server_port_implicit" in run.output
    assert "int" in run.output


def test_cross_variable_checks_fail_on_the_controller(
    ansible: Ansible,
) -> None:
    """validate.yml (the role's first tasks) rejects two default certificates."""
    run = _run_validate_tasks(
        ansible,
        "cross",
        {
            "ftps_server_certificates": [
                {"name": "a", "cert_content": "x", "key_content": "y", "default": True},
                {"name": "b", "cert_content": "x", "key_content": "y", "default": True},
            ],
        },
    )
    assert run.returncode != 0
    assert "At most one entry of ftps_server_certificates may have default true" in run.output


def test_address_unit_and_dropin(ansible: Ansible) -> None:
    """The address unit adds only missing addresses; the drop-in lists only extra paths."""
    variables = {
        "ftps_server_addresses": ["192.0.2.10", "*"],
        "ftps_server_certificates": [
            {"name": "v6", "cert_content": "x", "key_content": "y", "addresses": ["2001:db8::1"]},
            {"name": "main", "cert_content": "x", "key_content": "y", "addresses": ["192.0.2.10"]},
        ],
        "ftps_server_manage_addresses": True,
        "ftps_server_interface": "eth0",
        "ftps_server_interface_prefix": 24,
        "ftps_server_users": [
            {"name": "alice", "password": _HASH},
            {"name": "bob", "home": "/data/ftp/bob", "password": _HASH},
            {"name": "carol", "home": "/srv/ftp/carol", "password": _HASH},
        ],
    }
    unit = _render(ansible, "unit", variables, "ftps-server-addresses.service.j2")
    starts = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert starts == [
        "ExecStart=/bin/sh -c 'ip -o address show dev eth0 to 192.0.2.10 | grep -q . "
        "|| exec ip address add 192.0.2.10/24 dev eth0'",
        "ExecStart=/bin/sh -c 'ip -o address show dev eth0 to 2001:db8::1 | grep -q . "
        "|| exec ip address add 2001:db8::1/128 dev eth0'",
    ]
    assert "Before=ftps-server.service" in unit
    dropin = _render(ansible, "dropin", variables, "ftps-server-dropin.conf.j2")
    assert [line for line in dropin.splitlines() if not line.startswith("#")] == [
        "[Service]",
        "ReadWritePaths=-/data/ftp/bob",
    ]
    moved = _render(
        ansible,
        "dropin-moved",
        {**variables, "ftps_server_root": "/data/ftp", "ftps_server_state_dir": "/data/state"},
        "ftps-server-dropin.conf.j2",
    )
    assert [line for line in moved.splitlines() if line.startswith("ReadWritePaths")] == [
        "ReadWritePaths=-/data/ftp",
        "ReadWritePaths=-/data/state",
    ]  # /srv/ftp/carol: already writable by the package's unit


def test_probe_certificate_without_key_is_refused(ansible: Ansible) -> None:
    run = _run_validate_tasks(ansible, "probe", {"ftps_server_check_client_cert_content": "PEM"})
    assert run.returncode != 0
    assert "Set both the probe certificate" in run.output


_SPEC_VS_DEFAULTS = """
import json, sys, yaml
role = sys.argv[1]
spec = yaml.safe_load(open(role + "/meta/argument_specs.yml"))["argument_specs"]["main"]["options"]
defaults = yaml.safe_load(open(role + "/defaults/main.yml"))
problems = []
for name, option in spec.items():
    for key in ("type", "description", "default"):
        if key not in option:
            problems.append(f"{name}: no {key}")
    if name not in defaults:
        problems.append(f"{name}: not in defaults/main.yml")
    elif option.get("default") != defaults[name]:
        problems.append(f"{name}: spec default {option.get('default')!r} != {defaults[name]!r}")
    for sub, suboption in (option.get("options") or {}).items():
        for key in ("type", "description"):
            if key not in suboption:
                problems.append(f"{name}.{sub}: no {key}")
problems += [f"{name}: in defaults but not in the spec" for name in defaults if name not in spec]
print(json.dumps(problems))
"""


def test_argument_spec_and_defaults_agree(ansible: Ansible) -> None:
    """Every variable is typed, described and defaulted, with the same default in both files."""
    bin_dir, _, _ = ansible
    proc = subprocess.run(
        [str(bin_dir / "python"), "-c", _SPEC_VS_DEFAULTS, str(ROLE)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout) == []


def test_tls_purge_removes_only_unnamed_files(ansible: Ansible) -> None:
    """tasks/purge.yml (ftps_server_tls_purge) on a local directory, run twice."""
    _, _, work = ansible
    tls = work / "purge-tls"
    tls.mkdir()
    for name in ("a.pem", "a.key", "old.pem", "old.key", "client-ca.pem", "notes.txt"):
        (tls / name).write_text(name)
    play = [
        {
            "name": "Purge the TLS directory",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "ftps_server_certificates": [
                    {"name": "a", "cert_content": "x", "key_content": "y"}
                ],
                "ftps_server_client_ca_content": "x",
            },
            "tasks": [
                {
                    "ansible.builtin.include_role": {
                        "name": "ftps_server.ftps.ftps_server",
                        "tasks_from": "purge.yml",
                    }
                }
            ],
        }
    ]
    # Role vars (the TLS directory) yield only to extra vars.
    extra = ("-e", json.dumps({"ftps_server_tls_dir": str(tls)}))
    first = _local_run(ansible, "purge", play, args=extra)
    assert first.returncode == 0, first.tail()
    assert sorted(p.name for p in tls.iterdir()) == ["a.key", "a.pem", "client-ca.pem", "notes.txt"]
    assert first.recap("localhost")["changed"] == 1
    second = _local_run(ansible, "purge", play, args=extra)
    assert second.returncode == 0 and second.recap("localhost")["changed"] == 0


def test_validation_runs_before_anything_changes() -> None:
    """validate.yml is the role's first task: a refused value changes nothing on the host."""
    yaml = pytest.importorskip("yaml")
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    assert tasks[0]["ansible.builtin.import_tasks"] == "validate.yml"


def test_valid_values_pass_the_injection_checks(ansible: Ansible) -> None:
    run = _run_validate_tasks(ansible, "valid", _full_vars("/etc/ftps-server/tls"))
    assert run.returncode == 0, run.tail()


_EVE = "eve\npermissions = elradfmwMT\nhome = /"
_CLEAR = "hunter2-clear-password"


def _user(**fields: Any) -> dict[str, Any]:
    return {"ftps_server_users": [{"name": "bob", "password": _HASH, **fields}]}


# (case, variables, text the failure message must contain)
_INJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    (
        "certificate_cn-newline",
        _user(auth="certificate", password="", certificate_cn=_EVE),
        "no value may hold a control character",
    ),
    ("home-relative", _user(home="srv/ftp/bob"), "home must be an absolute path"),
    ("home-newline", _user(home="/srv/ftp/bob\n[user:eve]"), "control character"),
    ("permissions-letters", _user(permissions="elradfmwX"), "elradfmwMT"),
    ("permissions-newline", _user(permissions="elr\nhome = /"), "elradfmwMT"),
    ("password-clear", _user(password=_CLEAR), "never the clear password"),
    ("password-hash-newline", _user(password=_HASH + "\n[user:eve]"), "control character"),
    ("password-carriage-return", _user(password=_HASH + "\r"), "control character"),
    ("user-certificates-newline", _user(certificates=[_FP + "\nhome = /"]), "control character"),
    (
        "certificate-server-name",
        {
            "ftps_server_certificates": [
                {"name": "m", "cert_content": "x", "key_content": "y", "server_names": ["a\nb"]}
            ]
        },
        "server name holds a control character",
    ),
    (
        "address-newline",
        {"ftps_server_addresses": ["192.0.2.1\nroot = /"]},
        "ftps_server_addresses",
    ),
    ("address-shell", {"ftps_server_addresses": ["192.0.2.1';reboot;'"]}, "IP addresses"),
    (
        "nat-newline",
        {"ftps_server_nat": [{"network": "0.0.0.0/0", "address": "1.2.3.4\nx=y"}]},
        "ftps_server_nat",
    ),
    ("root-relative", {"ftps_server_root": "srv"}, "must be absolute paths"),
    (
        "email-from-c1",
        {"ftps_server_alerts_email_from": "a@example.com\x85x"},
        "ftps_server_alerts_email_from",
    ),
    (
        "extra-setting-value",
        {"ftps_server_extra_settings": {"server": {"banner": "hi\n[user:eve]"}}},
        "ftps_server_extra_settings",
    ),
    (
        "extra-setting-key",
        {"ftps_server_extra_settings": {"server": {"a\nhome": "/"}}},
        "ftps_server_extra_settings",
    ),
]


@pytest.mark.parametrize(
    ("variables", "message"),
    [pytest.param(v, m, id=case) for case, v, m in _INJECTIONS],
)
def test_injected_value_is_refused_by_the_role(
    ansible: Ansible, request: pytest.FixtureRequest, variables: dict[str, Any], message: str
) -> None:
    """issue 12.10: each bad value fails the role's validation, and no secret is echoed."""
    run = _run_validate_tasks(ansible, request.node.callspec.id, variables)
    assert run.returncode != 0, run.tail()
    assert message in run.output, run.tail()
    assert _CLEAR not in run.output
    assert _HASH not in run.output


@pytest.fixture(scope="module")
def check_config_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bin/ directory whose `ftps-server` is this tree's CLI (the role calls it by name)."""
    bin_dir = tmp_path_factory.mktemp("shim")
    shim = bin_dir / "ftps-server"
    shim.write_text(
        f'#!/bin/sh\nPYTHONPATH={ansible_support.REPO} exec {sys.executable} -m ftps_server "$@"\n'
    )
    shim.chmod(0o755)
    return bin_dir


def _stage(
    ansible: Ansible, shim: Path, name: str, certificates: list[dict[str, Any]], **extra: Any
) -> ansible_support.PlaybookRun:
    """The role's stage.yml on this machine (root-owned files, group root)."""
    bin_dir, env, work = ansible
    play = [
        {
            "name": "Stage and validate",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "ftps_server_tls_group": grp.getgrgid(os.getgid()).gr_name,
                "ftps_server_tls_owner": pwd.getpwuid(os.getuid()).pw_name,
                "ftps_server_certificates": certificates,
                "ftps_server_state_dir": str(work / "state"),
                "ftps_server_root": str(work / "root"),
                "ftps_server_users": [],
                **extra,
            },
            "tasks": [
                {
                    "ansible.builtin.include_role": {
                        "name": "ftps_server.ftps.ftps_server",
                        "tasks_from": "stage.yml",
                    }
                }
            ],
        }
    ]
    with_shim = {**env, "PATH": f"{shim}:{env['PATH']}"}
    return _local_run((bin_dir, with_shim, work), f"stage-{name}", play)


def _cert_entry(name: str, leaf: Any, key: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "cert_content": b"".join(p.bytes() for p in leaf.cert_chain_pems).decode(),
        "key_content": (key or leaf).private_key_pem.bytes().decode(),
        "default": True,
    }


def test_staging_refuses_broken_certificates(ansible: Ansible, check_config_shim: Path) -> None:
    """issue 13.1 (controller side): the staged set is judged by check-config --certificates;
    an expired pair, a mismatched key or a key readable by others fail with the reason."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    good, other = ca.issue_cert("192.0.2.10"), ca.issue_cert("192.0.2.11")
    expired = ca.issue_cert(
        "192.0.2.10",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    run = _stage(ansible, check_config_shim, "good", [_cert_entry("main", good)])
    assert run.returncode == 0, run.tail()
    assert run.recap("localhost")["changed"] == 0

    cases = [
        ("expired", [_cert_entry("main", expired)], {}, "staged main.pem expired on"),
        ("mismatch", [_cert_entry("main", good, other)], {}, "does not match certificate"),
        (
            "mode",
            [_cert_entry("main", good)],
            {"ftps_server_key_mode": "0644"},
            "accessible by others",
        ),
    ]
    for name, certificates, extra, reason in cases:
        run = _stage(ansible, check_config_shim, name, certificates, **extra)
        assert run.returncode != 0, f"{name}: {run.tail()}"
        assert "nothing live was changed" in run.output, run.tail()
        assert reason in run.output, f"{name}: {run.tail()}"
        assert good.private_key_pem.bytes().decode().splitlines()[2] not in run.output
    # The staging directory is gone after each run, failed or not.
    assert not list(Path(tempfile.gettempdir()).glob("ftps-server-staging.*"))
