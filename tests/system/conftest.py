"""Fixtures for the system tests: one booted Debian stable container per pytest session.

The tests run only as root with systemd-nspawn, mmdebstrap and friends installed (see
``.ci/apt-packages-system.txt``); otherwise every test here is skipped with the reason
printed. Fixtures:

- ``container``: the booted :class:`container.Container` (session scope; torn down at the
  end whatever happens). Other suites (e.g. the Ansible role's) use it over ssh:
  ``container.ssh_key_path``, ``container.addr`` (10.77.0.2), ``container.ansible_inventory(path)``.
- ``deb_path``: the .deb built from this tree with ``packaging/build-deb`` (session scope).
- ``installed``: the package installed with ``apt install ./ftps-server_*.deb``; its value is
  the apt output (postinst's check output included).
- ``site``: a user and two certificates on 10.77.0.2 and 10.77.0.3, reloaded into the server.

Tests marked ``system_last`` (purge) run after all other system tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# The tests import ftps_server (message ids) from this tree, installed or not.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import helpers
from container import CT_ADDR, EXTRA_ADDRS, Container, ContainerError, missing_prerequisites

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3")
SYSTEM_TEST_TIMEOUT = 900


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system_last: run after every other system test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable sort: tests that destroy the shared container state (purge) go last.
    items.sort(key=lambda item: item.get_closest_marker("system_last") is not None)
    has_timeout = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.system)
            if has_timeout and item.get_closest_marker("timeout") is None:
                # The first test's setup may build the root file system (network, ~1 min)
                # and the .deb, and wait for another session's container.
                item.add_marker(pytest.mark.timeout(SYSTEM_TEST_TIMEOUT))


_SKIP_REASON: str | None = None


def _skip_reason() -> str | None:
    global _SKIP_REASON
    if _SKIP_REASON is None:
        _SKIP_REASON = missing_prerequisites() or ""
        if _SKIP_REASON:
            # Printed even without -s, so CI logs say why the system tests did not run.
            print(
                f"\n[system] SKIPPING system tests: {_SKIP_REASON}", file=sys.__stderr__, flush=True
            )
    return _SKIP_REASON or None


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    """The booted container; teardown always runs."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    ct = Container()
    try:
        ct.start()
    except ContainerError as exc:
        pytest.fail(f"container did not start: {exc}")
    try:
        yield ct
    finally:
        ct.stop()


def build_deb(out_dir: Path, version: str | None = None) -> Path:
    """Build the package with packaging/build-deb into `out_dir`; return the .deb path."""
    missing = [tool for tool in BUILD_TOOLS if not _which(tool)]
    if missing:
        pytest.skip("Debian build tools missing: " + ", ".join(missing))
    env = dict(os.environ, DIST_DIR=str(out_dir))
    if version:
        env["DEB_VERSION"] = version
    started = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "packaging" / "build-deb")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"packaging/build-deb failed:\n{proc.stdout}\n{proc.stderr[-5000:]}")
    deb = Path(proc.stdout.strip().splitlines()[-1])
    print(f"[system] built {deb.name} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return deb


def _which(tool: str) -> bool:
    return any((Path(d) / tool).exists() for d in ("/usr/bin", "/usr/sbin", "/bin"))


@pytest.fixture(scope="session")
def deb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("debs")


@pytest.fixture(scope="session")
def deb_path(deb_dir: Path) -> Path:
    """The .deb of this tree, version from pyproject.toml."""
    if _skip_reason():
        pytest.skip(_skip_reason() or "")
    return build_deb(deb_dir)


@pytest.fixture(scope="session")
def installed(container: Container, deb_path: Path) -> str:
    """Install the .deb with apt; return apt's output (including postinst's check)."""
    # --reinstall so that postinst (and its check) runs even if an earlier suite installed it.
    inside = container.copy_in(deb_path, f"/root/debs/{deb_path.name}")
    proc = container.run(
        [
            "apt-get",
            "install",
            "-y",
            "--reinstall",
            "-o",
            "Dpkg::Options::=--force-confold",
            inside,
        ],
        check=False,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"apt install of {deb_path.name} failed ({proc.returncode}):\n{output[-5000:]}")
    return output


@pytest.fixture(scope="session")
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Machine-side scratch directory (certificate copies, downloads)."""
    return tmp_path_factory.mktemp("machine")


def wait_active(ct: Container, unit: str = "ftps-server", timeout: float = 30) -> str:
    """Wait until a unit is active; return its state (fails the test otherwise)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = ct.run(["systemctl", "is-active", unit], check=False).stdout.strip()
        if state == "active":
            return state
        time.sleep(0.3)
    status = ct.run(["systemctl", "status", "--no-pager", "-n", "30", unit], check=False).stdout
    pytest.fail(f"{unit} is {state!r}, not active:\n{status}")


@pytest.fixture(scope="session")
def site(container: Container, installed: str, host_dir: Path) -> helpers.Site:
    """A user with a home, two certificates on two addresses, reloaded into the server."""
    ct = container
    password = "system-test-pw-7Yq"
    site = helpers.Site(
        user="alice",
        password=password,
        password_hash=helpers.hash_password(ct, password),
        home="/srv/ftp/alice",
    )
    ct.run(
        "install -d -m 0755 /srv/ftp && "
        f"install -d -m 0750 -o ftps-server -g ftps-server {site.home}"
    )
    site.certs["site-a"] = helpers.make_cert(ct, "site-a", CT_ADDR, 365, host_dir)
    site.certs["site-b"] = helpers.make_cert(ct, "site-b", EXTRA_ADDRS[0], 365, host_dir)
    site.check_ca = helpers.write_check_ca(ct, list(site.certs.values()))
    helpers.write_config(ct, site.config())
    ct.run(["ftps-server", "check-config", helpers.CONFIG])
    wait_active(ct)
    ct.run(["systemctl", "reload", "ftps-server"])
    wait_active(ct)
    return site
