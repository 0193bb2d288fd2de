"""Ansible on this machine for the role tests of this folder (no container): the cached venv and
collection path of tests/system/ansible_support.py, and the inventories and plays the tests
write, as JSON (which is YAML).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# loaded by path: tests/system is not a package and its conftest wants a booted container
_SUPPORT = Path(__file__).resolve().parents[1] / "system" / "ansible_support.py"
_spec = importlib.util.spec_from_file_location("ansible_support", _SUPPORT)
assert _spec is not None and _spec.loader is not None
ansible_support = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ansible_support", ansible_support)
_spec.loader.exec_module(ansible_support)

#: (venv bin dir, environment, work dir)
Ansible = tuple[Path, dict[str, str], Path]
#: every host, localhost or "remote", runs the venv's own Python
PLAYBOOK_PYTHON = {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}


def local_ansible(tmp_path_factory: pytest.TempPathFactory, name: str) -> Ansible:
    """The venv (built once, cached), its environment and a fresh work dir called `name`."""
    try:
        bin_dir = ansible_support.ensure_venv()
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:  # no PyPI, no venv
        pytest.fail(f"cannot build the Ansible venv: {exc}")
    work = tmp_path_factory.mktemp(name)
    env = ansible_support.ansible_env(bin_dir, ansible_support.collections_dir(work))
    return bin_dir, env, work


def write_json(path: Path, data: Any) -> Path:
    """`data` written to `path` as JSON: a playbook, an inventory or a vars file."""
    path.write_text(json.dumps(data))
    return path


def inventory(work: Path, name: str, nodes: dict[str, dict[str, Any]]) -> Path:
    """localhost plus `nodes` (host -> host vars) in the group ftps_servers, all run locally."""
    local = {"ansible_connection": "local", **PLAYBOOK_PYTHON}
    hosts = {host: {**local, **host_vars} for host, host_vars in nodes.items()}
    data = {"all": {"hosts": {"localhost": local}, "children": {"ftps_servers": {"hosts": hosts}}}}
    return write_json(work / f"{name}.inventory.yml", data)


def template_play(hosts: str, var_files: list[Path], src: Path, dest: str) -> dict[str, Any]:
    """A play rendering the role template `src` to `dest` on `hosts`, with only the variables
    of `var_files` (in that order): the role's own tasks do not run."""
    return {
        "hosts": hosts,
        "gather_facts": False,
        "vars": PLAYBOOK_PYTHON,
        "tasks": [
            *({"ansible.builtin.include_vars": str(path)} for path in var_files),
            {"ansible.builtin.template": {"src": str(src), "dest": dest, "mode": "0600"}},
        ],
    }


def validation_play(hosts: str, variables: dict[str, Any]) -> dict[str, Any]:
    """A play running the ftps_server role's own variable checks (validate.yml) on `hosts`."""
    role = {"name": "ftps_server.ftps.ftps_server", "tasks_from": "validate.yml"}
    return {
        "hosts": hosts,
        "gather_facts": False,
        "vars": {**PLAYBOOK_PYTHON, **variables},
        "tasks": [{"ansible.builtin.include_role": role}],
    }
