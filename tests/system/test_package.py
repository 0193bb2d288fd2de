"""Issue 7: the Debian package, installed with apt in a booted Debian stable container."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import helpers
import pytest
from conftest import REPO, build_deb, wait_active
from container import CT_ADDR, EXTRA_ADDRS, Container

import ftps_server.journal.message_ids as message_ids


def test_lintian_clean(deb_path: Path) -> None:
    """lintian reports no errors and no warnings (overrides, if any, carry their reason)."""
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed")
    proc = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--no-tag-display-limit", str(deb_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert proc.returncode == 0 and not tags, proc.stdout + proc.stderr


def test_install_gives_running_service(container: Container, installed: str) -> None:
    """apt install ./x.deb: service active, timer listed, oneshot static, check output shown."""
    ct = container
    wait_active(ct)
    # issue 13.5: a short summary (the hint on a fresh install, else the check's first line,
    # which follows the monitoring-plugin convention), the details one command away.
    summary = r"^ftps-server: (no certificate configured yet|FTPS (OK|WARNING|CRITICAL|UNKNOWN)\b)"
    assert re.search(summary, installed, re.M), installed[-3000:]
    ours = [line for line in installed.splitlines() if line.startswith("ftps-server: ")]
    assert len(ours) <= 3, installed[-3000:]
    assert "LISTENER " not in installed  # no check table in apt's output
    assert ct.run(["systemctl", "is-enabled", "ftps-server"]).stdout.strip() == "enabled"
    assert (
        ct.run(["systemctl", "is-enabled", "ftps-server-remind.timer"]).stdout.strip() == "enabled"
    )
    assert ct.run(["systemctl", "is-active", "ftps-server-remind.timer"]).stdout.strip() == "active"
    remind = ct.run(["systemctl", "is-enabled", "ftps-server-remind.service"], check=False)
    assert remind.stdout.strip() == "static"
    timers = ct.run(["systemctl", "list-timers", "--all", "--no-pager"]).stdout
    assert "ftps-server-remind.timer" in timers
    # The system user and its state directory.
    assert ct.run(["getent", "passwd", "ftps-server"]).stdout.strip()
    stat = ct.run(["stat", "-c", "%U:%G %a", "/var/lib/ftps-server"]).stdout.strip()
    assert stat == "ftps-server:ftps-server 750"
    stat = ct.run(["stat", "-c", "%U:%G %a", helpers.CONFIG]).stdout.strip()
    assert stat == "root:ftps-server 640"
    # The catalog is where journalctl finds it.
    catalog = ct.run(["journalctl", "--list-catalog", "--no-pager"]).stdout
    assert message_ids.CERT_EXPIRING in catalog
    assert message_ids.LISTENER_NO_CERT in catalog


def test_default_config_reports_missing_certificate(container: Container, installed: str) -> None:
    """Shipped config (no certificate): status and journal say so; the reminder says how to fix."""
    ct = container
    # Skip if an earlier test already configured certificates.
    if re.search(r"^\[certificate:", ct.path(helpers.CONFIG).read_text(), re.M):
        pytest.skip("config already has certificates")
    wait_active(ct)
    status = ct.systemctl_show("ftps-server", "StatusText")
    assert "certificate" in status, status
    # issue 13.5: this start logged one clear line saying what to do, and nothing critical.
    invocation = ct.systemctl_show("ftps-server", "InvocationID")
    entries = ct.journal_json(extra=[f"_SYSTEMD_INVOCATION_ID={invocation}"])
    hints = [e for e in entries if e.get("MESSAGE_ID") == message_ids.LISTENER_NO_CERT]
    assert len(hints) == 1, entries
    assert "[certificate:NAME]" in str(hints[0]["MESSAGE"])
    assert "systemctl reload ftps-server" in str(hints[0]["MESSAGE"])
    assert [e["MESSAGE"] for e in entries if int(str(e.get("PRIORITY", 6))) <= 2] == []
    dry = ct.run(["ftps-server", "remind", "--config", helpers.CONFIG, "--dry-run"], check=False)
    text = dry.stdout + dry.stderr
    assert "[certificate:" in text or "cert =" in text, text


def test_autopkgtest_service_check(container: Container, installed: str) -> None:
    """issue 15.6: debian/tests/service-check (the autopkgtest) passes on the installed
    package: the service starts, serves a certificate made there, `ftps-server check` is OK,
    and the shipped configuration is put back."""
    ct = container
    control = (REPO / "packaging" / "debian" / "tests" / "control").read_text()
    assert "Tests: service-check" in control and "Depends: @" in control
    # As on a fresh install: the shipped configuration (whatever an earlier suite left).
    saved = ct.path(helpers.CONFIG).read_bytes()
    shipped = (REPO / "packaging" / "debian" / "ftps-server.ini").read_bytes()
    helpers.write_config(ct, shipped.decode())
    before = _config_digest(ct)
    script = ct.copy_in(REPO / "packaging" / "debian" / "tests" / "service-check", mode=0o755)
    proc = ct.run([script], check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ftps-server: check OK" in proc.stdout
    assert re.search(r"^FTPS OK\b", proc.stdout, re.M), proc.stdout
    assert _config_digest(ct) == before
    helpers.write_config(ct, saved.decode())
    ct.run(["systemctl", "restart", "ftps-server"])
    wait_active(ct)


def test_two_certificates_after_reload(
    container: Container, site: helpers.Site, host_dir: Path
) -> None:
    """Two certificates on two addresses: each address serves its own over FTPS."""
    for name, address in (("site-a", CT_ADDR), ("site-b", EXTRA_ADDRS[0])):
        cert = site.certs[name]
        for kind in ("explicit", "implicit"):
            listing = helpers.curl(
                [*helpers.ftps_args(cert, site), "--list-only", helpers.ftps_url(kind, address)]
            )
            assert listing.returncode == 0
        # The other address's certificate does not verify here: the served one differs.
        other = site.certs["site-b" if name == "site-a" else "site-a"]
        wrong = helpers.curl(
            [*helpers.ftps_args(other, site), "--list-only", helpers.ftps_url("implicit", address)],
            check=False,
        )
        assert wrong.returncode != 0


def test_source_builds_by_the_book_with_unit_tests(container: Container) -> None:
    """issue 15.6: a copy of the source tree builds as is with `dpkg-buildpackage -us -uc -b`
    inside the container, whose Debian python3-* packages run the unit tests at build time;
    with DEB_BUILD_OPTIONS=nocheck they are skipped."""
    ct = container
    # Straight into the container's tree: the sources hold test keys, which the secret scan
    # of the test's own temporary files would rightly flag.
    ct.run(["rm", "-rf", "/root/build"])
    ct.path("/root/build").mkdir(parents=True)
    tarball = ct.path("/root/build/src.tar")
    subprocess.run(
        [
            "tar", "-C", str(REPO), "--exclude=./.git", "--exclude=./dist", "--exclude=./build",
            "--exclude=*.egg-info", "--exclude=__pycache__", "--exclude=./.pybuild",
            "--exclude=./.venv", "--exclude=./.mypy_cache", "--exclude=./.ruff_cache",
            "--exclude=./.pytest_cache", "--exclude=./packaging/debian/.debhelper",
            "-cf", str(tarball), ".",
        ],
        check=True,
    )  # fmt: skip
    inside = "/root/build/src.tar"
    ct.run(
        f"rm -rf /root/build/src && mkdir /root/build/src && tar -C /root/build/src -xf {inside}"
    )
    # The unit tests' helpers need trustme >= 1.0 (Build-Depends); Debian 12 has 0.9: there
    # the package builds with nocheck only (the same .deb serves both releases anyway).
    trustme_ok = ct.run(
        "dpkg --compare-versions $(dpkg-query -W -f='${Version}' python3-trustme) ge 1.0",
        check=False,
    )
    if trustme_ok.returncode == 0:
        build = ct.run(
            "cd /root/build/src && dpkg-buildpackage -us -uc -b 2>&1",
            check=False,
            timeout=900,
        )
        log = build.stdout
        assert build.returncode == 0, log[-5000:]
        assert "python3 -m pytest" in log and re.search(r"\d+ passed", log), log[-5000:]
        assert "ftps-server_" in ct.run("ls /root/build").stdout
        ct.run("rm -f /root/build/*.deb")
    nocheck = ct.run(
        "cd /root/build/src && DEB_BUILD_OPTIONS=nocheck "
        "dpkg-buildpackage -us -uc -b -Pnocheck 2>&1",
        check=False,
        timeout=900,
    )
    assert nocheck.returncode == 0, nocheck.stdout[-5000:]
    assert "python3 -m pytest" not in nocheck.stdout
    assert "ftps-server_" in ct.run("ls /root/build").stdout
    ct.run("rm -rf /root/build")


def _served_fingerprint(address: str, port: int = 990) -> str:
    """SHA-256 of the leaf `address:port` serves (implicit TLS; not verified: just read)."""
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:{port}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    der = subprocess.run(
        ["openssl", "x509", "-outform", "DER"], input=proc.stdout, capture_output=True, check=True
    ).stdout
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def _reloads(ct: Container, cursor: str) -> list[str]:
    out = ct.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", "ftps-server", f"--after-cursor={cursor}"],
        check=False,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("Reload")]


def _cursor(ct: Container) -> str:
    out = ct.run(["journalctl", "--no-pager", "-n", "0", "--show-cursor"]).stdout
    return out.strip().rsplit("-- cursor: ", 1)[-1]


def test_certbot_deploy_hook(container: Container, site: helpers.Site) -> None:
    """issue 13.8: the shipped hook installs a fake renewed lineage (made now) into
    [certificate:site-a] with owner and mode and reloads; a broken renewal (mismatched key)
    leaves the old files, the served certificate and the process alone."""
    trustme = pytest.importorskip("trustme")
    ct = container
    hook = "/usr/share/ftps-server/certbot-deploy-hook"
    assert ct.run(["test", "-x", hook], check=False).returncode == 0
    cert = site.certs["site-a"]
    saved = {p: ct.path(p).read_bytes() for p in (cert.cert, cert.key)}
    assert _served_fingerprint(CT_ADDR) == cert.fingerprint
    ca = trustme.CA()
    renewed, stranger = ca.issue_cert(CT_ADDR), ca.issue_cert(CT_ADDR)
    lineage = "/etc/letsencrypt/live/site-a"

    def make_lineage(leaf: object, key_of: object) -> None:
        chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)  # type: ignore[attr-defined]
        ct.write_file(f"{lineage}/fullchain.pem", chain)
        ct.write_file(f"{lineage}/privkey.pem", key_of.private_key_pem.bytes(), mode=0o600)  # type: ignore[attr-defined]

    env = ["env", f"RENEWED_LINEAGE={lineage}", hook]
    pid = ct.systemctl_show("ftps-server", "MainPID")
    try:
        # A broken renewal first: nothing changes, nothing reloads.
        make_lineage(renewed, stranger)
        cursor = _cursor(ct)
        proc = ct.run(env, check=False)
        assert proc.returncode != 0 and "does not match certificate" in proc.stderr, proc.stderr
        assert {p: ct.path(p).read_bytes() for p in saved} == saved
        assert _served_fingerprint(CT_ADDR) == cert.fingerprint
        assert _reloads(ct, cursor) == []

        # The good renewal: installed with owner and mode, reloaded, served.
        make_lineage(renewed, renewed)
        cursor = _cursor(ct)
        proc = ct.run(env, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stat = ct.run(["stat", "-c", "%U:%G %a", cert.key, cert.cert]).stdout.split("\n")
        assert stat[:2] == ["root:ftps-server 640", "root:ftps-server 644"]
        wait_active(ct)
        assert _reloads(ct, cursor), "no reload"
        leaf_der = subprocess.run(
            ["openssl", "x509", "-outform", "DER"],
            input=renewed.cert_chain_pems[0].bytes(),
            capture_output=True,
            check=True,
        ).stdout
        digest = hashlib.sha256(leaf_der).hexdigest().upper()
        assert _served_fingerprint(CT_ADDR) == ":".join(digest[i : i + 2] for i in range(0, 64, 2))
        assert ct.systemctl_show("ftps-server", "MainPID") == pid
    finally:
        for path, data in saved.items():
            ct.write_file(
                path, data, mode=0o640 if path.endswith(".key") else 0o644, owner="root:ftps-server"
            )
        ct.run(["rm", "-rf", "/etc/letsencrypt"])
        ct.run(["systemctl", "reload", "ftps-server"])
        wait_active(ct)


def _config_digest(ct: Container) -> str:
    return ct.run(["sha256sum", helpers.CONFIG]).stdout.split()[0]


def test_upgrade_keeps_config_and_restarts(
    container: Container, site: helpers.Site, deb_dir: Path, deb_path: Path
) -> None:
    """A rebuilt higher version: edited config kept, service restarted, check runs again."""
    ct = container
    before_digest = _config_digest(ct)
    before_pid = ct.systemctl_show("ftps-server", "MainPID")
    old_version = ct.run(["dpkg-query", "-W", "-f=${Version}", "ftps-server"]).stdout
    new_deb = build_deb(deb_dir / "upgrade", version=f"{old_version}+systest1")
    proc = ct.install_deb(new_deb)
    output = proc.stdout + proc.stderr
    assert (
        ct.run(["dpkg-query", "-W", "-f=${Version}", "ftps-server"]).stdout
        == f"{old_version}+systest1"
    )
    # Two listeners per address, each serving its own certificate: the check's summary is OK.
    assert re.search(r"^ftps-server: FTPS OK\b", output, re.M), output[-3000:]
    assert "ftps-server: details:" not in output, output[-3000:]
    assert _config_digest(ct) == before_digest, "upgrade changed the edited config"
    assert not ct.path(helpers.CONFIG + ".dpkg-dist").exists()
    wait_active(ct)
    assert ct.systemctl_show("ftps-server", "MainPID") != before_pid, "service was not restarted"
    cert = site.certs["site-a"]
    helpers.curl(
        [*helpers.ftps_args(cert, site), "--list-only", helpers.ftps_url("explicit", CT_ADDR)]
    )


@pytest.mark.system_last
def test_purge_leaves_nothing(container: Container, installed: str) -> None:
    """apt purge: no file of the package, no state, no running process."""
    ct = container
    files = ct.run(["dpkg-query", "-L", "ftps-server"]).stdout.split()
    ct.run(["apt-get", "purge", "-y", "ftps-server"], timeout=300)
    assert (
        ct.run(["dpkg-query", "-W", "ftps-server"], check=False).returncode != 0
        or "not-installed"
        in ct.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "ftps-server"], check=False).stdout
    )
    leftovers = [f for f in files if ct.path(f).exists() and not ct.path(f).is_dir()]
    assert not leftovers, leftovers
    for gone in (
        "/var/lib/ftps-server",
        "/var/log/ftps-server",
        helpers.CONFIG,
        "/etc/systemd/system/multi-user.target.wants/ftps-server.service",
        "/etc/systemd/system/timers.target.wants/ftps-server-remind.timer",
    ):
        assert not ct.path(gone).exists(), gone
    # Whatever is left in /etc/ftps-server is the tests' own key material, not the package's.
    etc = ct.path("/etc/ftps-server")
    if etc.exists():
        assert {p.name for p in etc.iterdir()} <= {"tls"}
    procs = ct.run(["pgrep", "-a", "-u", "ftps-server"], check=False)
    assert procs.returncode == 1, procs.stdout
    procs = ct.run(["pgrep", "-af", "ftps-server (serve|remind)"], check=False)
    assert procs.returncode == 1, procs.stdout
    state = ct.run(["systemctl", "is-active", "ftps-server"], check=False).stdout.strip()
    journal = ct.run(["journalctl", "-u", "ftps-server", "-n", "30", "--no-pager"], check=False)
    assert state in ("inactive", "unknown"), (state, journal.stdout[-4000:])
