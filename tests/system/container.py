"""A booted Debian stable container (systemd-nspawn) for the system tests.

Usage from a test (the session fixture ``container`` in ``conftest.py`` yields a
:class:`Container` that is already booted)::

    def test_x(container):
        container.install_deb(deb_path)
        container.run("systemctl is-active ftps-server")
        entries = container.journal_json(message_id=message_ids.LOGIN_OK)

Network: the container has its own network namespace joined to the machine by a veth
pair. The machine side is :data:`HOST_ADDR` (``10.77.0.1``), the container has
:data:`CT_ADDR` (``10.77.0.2``) and the extra addresses :data:`EXTRA_ADDRS`
(``10.77.0.3``, ``10.77.0.4``), so FTPS clients on the machine reach the server at
those addresses, and a server on the machine (e.g. aiosmtpd) is reachable from inside
at ``10.77.0.1``.

Ansible over ssh (for the role's tests): root can log in with the key at
:attr:`Container.ssh_key_path`::

    [ftps]
    ftps-test ansible_host=10.77.0.2 ansible_user=root
        ansible_python_interpreter=/usr/bin/python3
        ansible_ssh_private_key_file=<container.ssh_key_path>
        ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'

(or use :meth:`Container.ansible_inventory` which writes exactly that file).

Only one container session runs on a machine at a time (a lock file serialises
concurrent pytest sessions, since the names and addresses are fixed). Everything is
torn down by :meth:`Container.stop`: the nspawn process is stopped by its PID, the veth
and the network namespace are deleted, the cgroup directories and the unpacked root file
system are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "CACHE_DIR",
    "CT_ADDR",
    "EXTRA_ADDRS",
    "HOST_ADDR",
    "ROOTFS_PACKAGES",
    "Container",
    "ContainerError",
    "missing_prerequisites",
]

CACHE_DIR = Path(os.environ.get("FTPS_TEST_CACHE", "/var/cache/ftps-server-tests"))
NAME = "ftpstest"
HOST_ADDR = "10.77.0.1"
CT_ADDR = "10.77.0.2"
EXTRA_ADDRS = ("10.77.0.3", "10.77.0.4")
# Debian release booted: "stable" (Debian 13, trixie, today) or e.g. "bookworm" (Debian 12);
# scripts/test runs the package suite on both.
SUITE = os.environ.get("FTPS_TEST_SUITE", "stable")
MIRROR = os.environ.get("FTPS_TEST_MIRROR", "http://deb.debian.org/debian")

#: Everything the package and the tests need inside; the container has no network.
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "python3",
    "python3-pyftpdlib",
    "python3-cryptography",
    "python3-jinja2",
    "python3-systemd",
    "python3-apt",  # Ansible's apt module
    "openssh-server",
    "iproute2",
    "openssl",
    "procps",
    "curl",
    "ca-certificates",
    "man-db",  # systemd-analyze verify checks the units' Documentation=man: pages
    "postfix",  # a real MTA behind /usr/sbin/sendmail, the reminders' default transport
    # dpkg-buildpackage by the book, unit tests at build time (debian/control Build-Depends)
    "build-essential",
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
    "python3-aiosmtpd",
    "python3-jsonschema",
    "python3-pytest",
    "python3-pytest-timeout",
    "python3-trustme",
    "haproxy",  # the fleet test's balancer (tests/system/test_fleet.py)
)
# Bump when the hooks below change, so that the cached root file system is rebuilt.
_ROOTFS_RECIPE = "5"

_SYSTEMD_EXE = "/usr/lib/systemd/systemd"
_CGROUP_HIERARCHIES = ("unified", "systemd")
_REQUIRED_TOOLS = ("systemd-nspawn", "mmdebstrap", "nsenter", "ip", "ssh-keygen", "zstd", "tar")


class ContainerError(RuntimeError):
    """The container could not be built, booted or driven."""


def missing_prerequisites() -> str | None:
    """Why the system tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "system tests need root (systemd-nspawn, network namespaces)"
    missing = [tool for tool in _REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing tools for system tests: " + ", ".join(missing)
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    return None


def _log(msg: str) -> None:
    # Shown with pytest -s, and in the captured output of a failing test.
    print(f"[system] {msg}", file=sys.stderr, flush=True)


def _host(
    cmd: Sequence[str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, text=True, capture_output=True, timeout=timeout)


def ensure_ssh_key() -> Path:
    """The ed25519 key whose public half is root's authorized key in the rootfs."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = CACHE_DIR / "id_ed25519"
    if not key.exists():
        _host(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "ftps-server-tests",
                "-f",
                str(key),
            ]
        )
    key.chmod(0o600)
    return key


def _rootfs_tarball(pubkey: str) -> Path:
    digest = hashlib.sha256(
        "\n".join([_ROOTFS_RECIPE, SUITE, MIRROR, pubkey, *ROOTFS_PACKAGES]).encode()
    ).hexdigest()[:16]
    return CACHE_DIR / f"rootfs-{SUITE}-{digest}.tar.zst"


def ensure_rootfs() -> Path:
    """Build (once, cached) the Debian stable root file system tarball; return its path."""
    key = ensure_ssh_key()
    pubkey = key.with_suffix(".pub").read_text().strip()
    tarball = _rootfs_tarball(pubkey)
    if tarball.exists():
        return tarball
    _log(f"building Debian {SUITE} root file system with mmdebstrap (cached as {tarball})")
    tmp = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial.tar.zst")
    hooks = [
        'echo ftps-test > "$1/etc/hostname"',
        ': > "$1/etc/machine-id"',
        'mkdir -p "$1/var/log/journal"',
        'install -d -m 0700 "$1/root/.ssh" && '
        f'echo {shlex.quote(pubkey)} > "$1/root/.ssh/authorized_keys"'
        ' && chmod 0600 "$1/root/.ssh/authorized_keys"',
        # No getty on a pipe console; nothing else in the container needs the console.
        'ln -sf /dev/null "$1/etc/systemd/system/console-getty.service"',
        # Tests upload large files: keep the journal small and boot quick.
        'mkdir -p "$1/etc/systemd/journald.conf.d" && printf "[Journal]\\nSystemMaxUse=64M\\n"'
        ' > "$1/etc/systemd/journald.conf.d/test.conf"',
    ]
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--include=" + ",".join(ROOTFS_PACKAGES),
        *[f"--customize-hook={hook}" for hook in hooks],
        SUITE,
        str(tmp),
        MIRROR,
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, text=True, capture_output=True, timeout=900)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ContainerError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    tmp.rename(tarball)
    _log(f"root file system built in {time.monotonic() - started:.0f} s")
    return tarball


@contextlib.contextmanager
def _machine_lock(lock_name: str = "container.lock", timeout: float = 1800) -> Iterator[None]:
    """Serialise container sessions: name, veth and addresses are fixed."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / lock_name, "w") as fh:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    _log("another system-test session holds the container; waiting")
                    announced = True
                if time.monotonic() > deadline:
                    raise ContainerError("timed out waiting for the container lock") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Container:
    """One booted container; see the module docstring."""

    def __init__(
        self,
        name: str = NAME,
        *,
        host_addr: str | None = HOST_ADDR,
        addr: str = CT_ADDR,
        extra_addrs: Sequence[str] = EXTRA_ADDRS,
        bridge: str | None = None,
        binds: Sequence[tuple[str, str]] = (),
    ) -> None:
        """The defaults are the harness's one container (`ftpstest`, 10.77.0.0/24). Another
        `name` gets its own lock and PID file, so it can run beside that one; with `bridge`
        the veth joins that (existing) bridge instead of carrying `host_addr`. `binds`:
        (host dir, inside dir) pairs bind-mounted read-write (shared storage)."""
        self.name = name
        self.veth = f"ve-{name}"
        self.host_addr = host_addr
        self.addr = addr
        self.extra_addrs = tuple(extra_addrs)
        self.bridge = bridge
        self.binds = tuple(binds)
        suffix = "" if name == NAME else f"-{name}"
        # "<nspawn PID> <work dir>" of the running container, so that a run killed hard can
        # be cleaned up by the next one (by that PID only).
        self._pidfile = CACHE_DIR / f"container{suffix}.pid"
        self._lock_name = f"container{suffix}.lock"
        self.ssh_key_path: Path = ensure_ssh_key()
        self.workdir = Path(tempfile.mkdtemp(prefix="ftps-ct-", dir="/var/tmp"))
        self.rootfs = self.workdir / "rootfs"
        self.console_log = self.workdir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self._lock: contextlib.AbstractContextManager[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Container:
        """Build or reuse the rootfs, set up the network and boot; raises ContainerError."""
        tarball = ensure_rootfs()
        self._lock = _machine_lock(self._lock_name)
        self._lock.__enter__()
        try:
            self._cleanup_stale()
            started = time.monotonic()
            self.rootfs.mkdir()
            _host(
                ["tar", "--zstd", "-xpf", str(tarball), "-C", str(self.rootfs), "--numeric-owner"]
            )
            self._setup_network()
            self._boot()
            _log(f"container booted in {time.monotonic() - started:.1f} s (PID 1 = {self.pid1})")
        except BaseException:
            self.stop()
            raise
        return self

    def _cleanup_stale(self) -> None:
        # Left over by a run that was killed hard; ours by name, and we hold the lock.
        self._stop_stale_nspawn()
        _host(["ip", "link", "del", self.veth], check=False)
        _host(["ip", "netns", "del", self.name], check=False)
        self._remove_cgroups()

    def _setup_network(self) -> None:
        name, veth = self.name, self.veth
        _host(["ip", "netns", "add", name])
        _host(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", name])
        if self.bridge:
            _host(["ip", "link", "set", veth, "master", self.bridge])
        elif self.host_addr:
            _host(["ip", "addr", "add", f"{self.host_addr}/24", "dev", veth])
        _host(["ip", "link", "set", veth, "up"])
        for addr in (self.addr, *self.extra_addrs):
            _host(["ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "host0"])
        _host(["ip", "-n", name, "link", "set", "lo", "up"])
        _host(["ip", "-n", name, "link", "set", "host0", "up"])

    def _stop_stale_nspawn(self) -> None:
        """Stop the nspawn a killed run left (by the PID it recorded), remove its tree."""
        try:
            pid_text, workdir = self._pidfile.read_text().split(maxsplit=1)
        except (OSError, ValueError):
            return
        pid, workdir = int(pid_text), workdir.strip()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        # Only that very process: systemd-nspawn booting the recorded work directory.
        if (
            cmdline
            and cmdline[0].endswith(b"systemd-nspawn")
            and workdir.encode() in b" ".join(cmdline)
        ):
            _log(f"stopping systemd-nspawn PID {pid} left by an earlier run")
            for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    time.sleep(0.2)
                if not Path(f"/proc/{pid}").exists():
                    break
        if workdir.startswith("/var/tmp/ftps-ct-"):
            shutil.rmtree(workdir, ignore_errors=True)
        self._pidfile.unlink(missing_ok=True)

    def _boot(self) -> None:
        cgroups = " ".join(f"/sys/fs/cgroup/{h}/ct-{self.name}" for h in _CGROUP_HIERARCHIES)
        binds = "".join(f" --bind={shlex.quote(f'{src}:{dst}')}" for src, dst in self.binds)
        script = (
            f'for d in {cgroups}; do mkdir -p "$d" && echo $$ > "$d/cgroup.procs"; done; '
            f"exec systemd-nspawn -q -D {shlex.quote(str(self.rootfs))} -M {self.name} -b "
            "--register=no --keep-unit --console=pipe "
            f"--network-namespace-path=/run/netns/{self.name}{binds}"
        )
        with open(self.console_log, "wb") as log:
            self.nspawn = subprocess.Popen(
                ["bash", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._pidfile.write_text(f"{self.nspawn.pid} {self.workdir}\n")
        self.pid1 = self._wait_pid1()
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.3)
        else:
            raise ContainerError(f"container did not finish booting (state {state!r})")
        if state == "degraded":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
            _log(f"container is degraded; failed units:\n{failed}")

    def _wait_pid1(self) -> int:
        assert self.nspawn is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited early:\n{self.console_tail()}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/exe") == _SYSTEMD_EXE:
                            return int(pid)
            time.sleep(0.1)
        raise ContainerError(f"no systemd PID 1 in the container:\n{self.console_tail()}")

    def console_tail(self, n: int = 40) -> str:
        """The last lines of the container's console, for error messages."""
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Tear everything down; safe to call more than once and after a failed start."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                # TERM to nspawn halts the container cleanly; a second TERM forces it.
                for sig, wait in ((signal.SIGTERM, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                    with contextlib.suppress(ProcessLookupError):
                        self.nspawn.send_signal(sig)
                    try:
                        self.nspawn.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            self.nspawn = None
            self._pidfile.unlink(missing_ok=True)
            self.pid1 = None
            _host(["ip", "link", "del", self.veth], check=False)
            _host(["ip", "netns", "del", self.name], check=False)
            self._remove_cgroups()
            if os.environ.get("FTPS_TEST_KEEP_ROOTFS"):
                _log(f"keeping {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                lock.__exit__(None, None, None)

    def _remove_cgroups(self) -> None:
        for hierarchy in _CGROUP_HIERARCHIES:
            top = Path(f"/sys/fs/cgroup/{hierarchy}/ct-{self.name}")
            if top.is_dir():
                # Deepest first; cgroup directories are removed with rmdir only.
                _host(
                    ["find", str(top), "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"],
                    check=False,
                )

    # -- driving -----------------------------------------------------------------------
    def run(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (a string goes through ``sh -c``); stdout/stderr captured."""
        if self.pid1 is None:
            raise ContainerError("container is not running")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid1),
                "-a",
                "--",
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                "DEBIAN_FRONTEND=noninteractive",
                *argv,
            ],
            text=True,
            capture_output=True,
            input=input,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ContainerError(
                f"in container: {argv!r} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc

    def path(self, inside: str) -> Path:
        """The host path of a path inside the container."""
        return self.rootfs / inside.lstrip("/")

    def copy_in(
        self, src: str | os.PathLike[str], dest: str | None = None, mode: int | None = None
    ) -> str:
        """Copy a host file into the container (default: /root/<name>); return the inside path."""
        src = Path(src)
        inside = dest or f"/root/{src.name}"
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        if mode is not None:
            target.chmod(mode)
        return inside

    def write_file(
        self, inside: str, text: str | bytes, mode: int = 0o644, owner: str = "root:root"
    ) -> None:
        """Write a file inside the container with the given mode and owner (names as inside)."""
        data = text.encode() if isinstance(text, str) else text
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # Owner names are resolved inside (the ftps-server group exists only there).
        self.run(["chown", owner, inside])
        self.run(["chmod", f"{mode:o}", inside])

    def install_deb(self, deb: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        """``apt install ./x.deb`` inside (dependencies come from the rootfs; no network)."""
        inside = self.copy_in(deb, f"/root/debs/{Path(deb).name}")
        return self.run(
            ["apt-get", "install", "-y", "-o", "Dpkg::Options::=--force-confold", inside],
            timeout=300,
        )

    def journal_json(
        self, message_id: str | None = None, unit: str | None = None, extra: Sequence[str] = ()
    ) -> list[dict[str, object]]:
        """Journal entries (``journalctl -o json``), filtered by MESSAGE_ID and/or unit."""
        args = ["journalctl", "--no-pager", "-o", "json"]
        if message_id:
            args.append(f"MESSAGE_ID={message_id}")
        if unit:
            args += ["-u", unit]
        args += list(extra)
        out = self.run(args, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def systemctl_show(self, unit: str, prop: str) -> str:
        """One property of a unit, e.g. ``systemctl_show('ftps-server', 'MainPID')``."""
        return self.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

    def ansible_inventory(self, path: str | os.PathLike[str]) -> Path:
        """Write an INI inventory that reaches this container as root over ssh."""
        path = Path(path)
        path.write_text(
            "[ftps]\n"
            f"ftps-test ansible_host={self.addr} ansible_user=root "
            "ansible_python_interpreter=/usr/bin/python3 "
            f"ansible_ssh_private_key_file={self.ssh_key_path} "
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null'\n"
        )
        return path
