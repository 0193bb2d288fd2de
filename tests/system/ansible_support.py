"""Ansible for the role's tests: a cached venv, the collection on a path, playbook runs.

Used by ``tests/integration/test_ansible_template.py`` (no container: lint, syntax check,
rendering the config template on localhost) and ``tests/system/test_ansible.py`` (real
``ansible-playbook`` runs over ssh into the booted container).

The venv is made with Debian's ``/usr/bin/python3`` (not a pyenv interpreter first on PATH)
and cached under :data:`CACHE_DIR`, keyed by the pinned requirements, so it is built once
per machine (~10 s) and reused by every later run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ANSIBLE_DIR",
    "CACHE_DIR",
    "REPO",
    "REQUIREMENTS",
    "PlaybookRun",
    "ansible_env",
    "close_ssh_masters",
    "collections_dir",
    "ensure_venv",
    "run_playbook",
]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
CACHE_DIR = Path(os.environ.get("FTPS_TEST_CACHE", "/var/cache/ftps-server-tests"))
#: Pinned so that a lint or behaviour change upstream cannot break CI overnight. ansible-core
#: 2.19 is the newest line that runs on Debian 12's Python 3.11 (the machine's /usr/bin/python3).
REQUIREMENTS = ("ansible-core==2.19.14", "ansible-lint==26.10.1")
_SYSTEM_PYTHON = "/usr/bin/python3"
_RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.M,
)


def _cache_dir() -> Path:
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(CACHE_DIR, os.W_OK):
            return CACHE_DIR
    except OSError:
        pass
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftps-server-tests"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_venv() -> Path:
    """The bin/ directory of a venv holding ansible-core and ansible-lint (built once, cached)."""
    cache = _cache_dir()
    digest = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()[:12]
    venv = cache / f"ansible-venv-{digest}"
    bin_dir = venv / "bin"
    stamp = venv / ".complete"
    with _lock(cache / "ansible-venv.lock"):
        if stamp.exists():
            return bin_dir
        python = _SYSTEM_PYTHON if Path(_SYSTEM_PYTHON).exists() else shutil.which("python3")
        if python is None:
            raise RuntimeError("no python3 to build the Ansible venv with")
        # Scripts carry the venv path in their shebang, so it is built in place; the stamp
        # file marks a finished build (a half-built one is removed and built again).
        shutil.rmtree(venv, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run([python, "-m", "venv", str(venv)], check=True, env=env)
        subprocess.run(
            [
                str(bin_dir / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *REQUIREMENTS,
            ],
            check=True,
            env=env,
            timeout=900,
        )
        stamp.write_text("\n".join(REQUIREMENTS) + "\n")
        return bin_dir


def collections_dir(base: Path) -> Path:
    """A collections path under `base` where ftps_server.ftps is this repo's ansible/."""
    root = base / "collections"
    namespace = root / "ansible_collections" / "ftps_server"
    namespace.mkdir(parents=True, exist_ok=True)
    link = namespace / "ftps"
    if not link.exists():
        link.symlink_to(ANSIBLE_DIR)
    return root


def ansible_env(
    bin_dir: Path, collections: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for ansible-playbook / ansible-lint: venv first on PATH, our collection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env.update(
        PATH=f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_ROLES_PATH=str(collections),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_PIPELINING="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCAL_TEMP=str(collections.parent / "ansible-local-tmp"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(collections.parent / "cp"),
        # Keep the ssh master short-lived so nothing lingers after the container stops.
        ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=15s",
        ANSIBLE_DEPRECATION_WARNINGS="1",
        # Timestamped log of every run, for finding slow tasks.
        ANSIBLE_LOG_PATH=str(collections.parent / "ansible.log"),
        ANSIBLE_COLLECTIONS_ON_ANSIBLE_VERSION_MISMATCH="ignore",
    )
    if extra:
        env.update(extra)
    return env


def close_ssh_masters(env: Mapping[str, str]) -> None:
    """Stop the ssh ControlMaster processes our runs left (they would linger ControlPersist)."""
    control_dir = Path(env["ANSIBLE_SSH_CONTROL_PATH_DIR"])
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "ftps-test"],
            capture_output=True,
            timeout=10,
            check=False,
        )


@dataclass(frozen=True)
class PlaybookRun:
    """One finished ansible-playbook run."""

    args: tuple[str, ...]
    returncode: int
    output: str
    seconds: float

    def recap(self, host: str) -> dict[str, int]:
        """The PLAY RECAP counters of `host` (ok, changed, unreachable, failed)."""
        for match in _RECAP_RE.finditer(self.output):
            if match["host"] == host:
                return {k: int(match[k]) for k in ("ok", "changed", "unreachable", "failed")}
        raise AssertionError(f"no PLAY RECAP line for {host}:\n{self.tail()}")

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (from the default callback's output)."""
        names: list[str] = []
        current = ""
        for line in self.output.splitlines():
            head = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \**$", line)
            if head:
                current = head[1]
            elif line.startswith("changed:") and (not names or names[-1] != current):
                names.append(current)
        return names

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def run_playbook(
    bin_dir: Path,
    env: Mapping[str, str],
    playbook: Path,
    inventory: Path,
    args: Sequence[str] = (),
    cwd: Path | None = None,
    timeout: float = 600,
) -> PlaybookRun:
    """Run ansible-playbook; output (stdout and stderr) is kept for assertions."""
    argv = [str(bin_dir / "ansible-playbook"), "-i", str(inventory), *args, str(playbook)]
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        env=dict(env),
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return PlaybookRun(tuple(argv), proc.returncode, proc.stdout, time.monotonic() - started)
