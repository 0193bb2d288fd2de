"""`[metrics] listen` of the real server, scraped and parsed by prometheus_client (issue 14.3).

Every figure is checked before and after the event that must move it: a login, a failed login,
a ban, an upload and a download, a failed TLS handshake, a session opening and closing; the
certificate and listener figures against the certificates made for the test.
"""

from __future__ import annotations

import datetime as dt
import ftplib
import io
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared support
import support

from ftps_server.pki.passwords import HashParams, hash_password

prometheus_parser = pytest.importorskip("prometheus_client.parser")
pytestmark = pytest.mark.timeout(120)

GOOD, BAD = "127.0.0.2", "127.0.0.3"
FAST = HashParams(ln=4, r=8, p=1)
RIGHT = "right horse battery"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Site:
    server: support.ServerProcess
    pki: support.Pki
    ports: dict[str, int]
    metrics_url: str
    good: support.CertFiles
    expired: support.CertFiles
    config: Path


def start_site(base: Path) -> Site:
    """The real server on GOOD (valid certificate) and BAD (expired), metrics on GOOD."""
    for sub in ("state", "root/bob"):
        (base / sub).mkdir(parents=True)
    pki = support.Pki(base / "pki")
    good = pki.server("good", GOOD, days=50)
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = pki.server("expired", BAD, days=-3, not_before=old)
    ports = {"explicit": support.free_port(GOOD), "implicit": support.free_port(GOOD)}
    metrics_port = support.free_port(GOOD)
    config = support.node_config(
        base / "ftps-server.ini",
        None,
        support.certificate_section("good", good.cert, good.key, addresses=GOOD),
        support.certificate_section("expired", expired.cert, expired.key, addresses=BAD),
        support.section("user:bob", password=hash_password(RIGHT, FAST), permissions="elradfmw"),
        support.section("metrics", listen=f"{GOOD}:{metrics_port}"),
        addresses=f"{GOOD}, {BAD}",
        server="key_group = root\nmax_login_failures = 2\nban_time = 60",
        root=base / "root",
        **ports,
    )
    server = support.ServerProcess(config, base)
    url = f"http://{GOOD}:{metrics_port}/metrics"
    return Site(server, pki, ports, url, good, expired, config)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    started = start_site(tmp_path_factory.mktemp("metrics"))
    try:
        yield started
    finally:
        started.server.stop()


def scrape(site: Site) -> Samples:
    """One scrape, parsed by prometheus_client's own text-format parser."""
    with urllib.request.urlopen(site.metrics_url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out: Samples = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def wait_for(site: Site, name: str, want: float, **labels: str) -> Samples:
    """Scrape until `name` reaches `want` (the server counts after it replies), at most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(site)
        if value(samples, name, **labels) == want or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def not_after(files: support.CertFiles) -> float:
    return x509.load_pem_x509_certificate(files.pem).not_valid_after_utc.timestamp()


def listener(address: str, port: int, kind: str) -> str:
    return f"{address}:{port} {kind}"


def client(site: Site, source: str = "127.0.0.1") -> support.ReusingFTP_TLS:
    ftp = support.ReusingFTP_TLS(context=support.client_context(site.pki), timeout=10)
    ftp.connect(GOOD, site.ports["explicit"], source_address=(source, 0))
    ftp.auth()
    ftp.prot_p()
    return ftp


def test_listeners_and_certificates(site: Site) -> None:
    samples = scrape(site)
    for kind, port in site.ports.items():
        assert (
            value(
                samples, "ftps_server_listener_up", listener=listener(GOOD, port, kind), kind=kind
            )
            == 1
        )
        assert (
            value(samples, "ftps_server_listener_up", listener=listener(BAD, port, kind), kind=kind)
            == 0
        )
        good = {"section": "good", "listener": listener(GOOD, port, kind)}
        bad = {"section": "expired", "listener": listener(BAD, port, kind)}
        assert value(samples, "ftps_server_certificate_served", **good) == 1
        assert value(samples, "ftps_server_certificate_served", **bad) == 0
        assert value(samples, "ftps_server_certificate_not_after_seconds", **good) == (
            not_after(site.good)
        )
        assert value(samples, "ftps_server_certificate_not_after_seconds", **bad) == (
            not_after(site.expired)
        )


def test_sessions_logins_and_bytes_move_with_the_events(site: Site) -> None:
    before = scrape(site)
    ok = {"result": "ok", "method": "password"}
    failed = {"result": "failed", "method": "password"}
    ftp = client(site)
    during = wait_for(
        site,
        "ftps_server_sessions_open",
        value(
            before,
            "ftps_server_sessions_open",
        )
        + 1,
    )
    assert (
        value(during, "ftps_server_sessions_open") == value(before, "ftps_server_sessions_open") + 1
    )
    ftp.login("bob", RIGHT)
    data = b"x" * 300_000
    ftp.storbinary("STOR blob.bin", io.BytesIO(data))
    got = io.BytesIO()
    ftp.retrbinary("RETR blob.bin", got.write)
    assert got.getvalue() == data
    after = wait_for(
        site,
        "ftps_server_transfer_bytes_total",
        value(before, "ftps_server_transfer_bytes_total", direction="download") + len(data),
        direction="download",
    )
    assert (
        value(after, "ftps_server_logins_total", **ok)
        == value(before, "ftps_server_logins_total", **ok) + 1
    )
    for direction in ("upload", "download"):
        assert value(after, "ftps_server_transfer_bytes_total", direction=direction) == (
            value(before, "ftps_server_transfer_bytes_total", direction=direction) + len(data)
        )
    ftp.quit()
    closed = wait_for(site, "ftps_server_sessions_open", value(before, "ftps_server_sessions_open"))
    assert value(closed, "ftps_server_sessions_open") == value(before, "ftps_server_sessions_open")
    # a wrong password, then the second one from the same address: a ban
    for _ in range(2):
        bad = client(site, source="127.0.0.9")
        with pytest.raises(ftplib.error_perm):
            bad.login("bob", "wrong")
        bad.close()
    banned = wait_for(site, "ftps_server_bans_total", value(before, "ftps_server_bans_total") + 1)
    assert value(banned, "ftps_server_logins_total", **failed) == (
        value(before, "ftps_server_logins_total", **failed) + 2
    )
    assert value(banned, "ftps_server_bans_total") == value(before, "ftps_server_bans_total") + 1
    assert value(banned, "ftps_server_banned_addresses") >= 1


def handshake_failures(site: Site, reason: str) -> float:
    key = (
        "ftps_server_tls_handshake_failures_total",
        frozenset({"reason": reason, "connection": "control"}.items()),
    )
    return scrape(site).get(key, 0.0)


def wait_count(site: Site, reason: str, want: float) -> float:
    deadline = time.monotonic() + 10
    while (now := handshake_failures(site, reason)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_failed_tls_handshakes_are_counted_by_reason(site: Site) -> None:
    before = handshake_failures(site, "http request")
    with socket.create_connection((GOOD, site.ports["implicit"]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        sock.settimeout(10)
        while sock.recv(4096):
            pass
    assert wait_count(site, "http request", before + 1) == before + 1
    # a client that does not trust the server's certificate aborts with an alert
    before = handshake_failures(site, "tlsv1 alert unknown ca")
    ctx = ssl.create_default_context()  # the system store: the test CA is not in it
    sock = socket.create_connection((GOOD, site.ports["implicit"]), timeout=10)
    with sock, pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(sock, server_hostname=GOOD)
    assert wait_count(site, "tlsv1 alert unknown ca", before + 1) == before + 1


def test_reload_renews_certificate_figures_and_moves_the_endpoint(tmp_path: Path) -> None:
    site = start_site(tmp_path)
    try:
        port = site.ports["implicit"]
        bad = {"section": "expired", "listener": listener(BAD, port, "implicit")}
        up = {"listener": listener(BAD, port, "implicit"), "kind": "implicit"}
        before = scrape(site)
        assert value(before, "ftps_server_certificate_served", **bad) == 0
        assert value(before, "ftps_server_listener_up", **up) == 0
        renewed = site.pki.server("expired", BAD, days=20)  # same paths, like a renewal
        new_port = support.free_port(GOOD)
        old_url = site.metrics_url
        text = site.config.read_text().replace(old_url.split("/")[2], f"{GOOD}:{new_port}")
        site.config.write_text(text)
        site.server.reload()
        site.metrics_url = f"http://{GOOD}:{new_port}/metrics"
        after = scrape(site)
        assert value(after, "ftps_server_certificate_served", **bad) == 1
        assert value(after, "ftps_server_listener_up", **up) == 1
        assert value(after, "ftps_server_certificate_not_after_seconds", **bad) == (
            not_after(renewed)
        )
        with pytest.raises(OSError):  # the old address is closed
            urllib.request.urlopen(old_url, timeout=5)
    finally:
        site.server.stop()


def test_busy_metrics_port_leaves_the_ftps_service_up(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind((GOOD, 0))
    busy.listen()
    with busy:
        taken = busy.getsockname()[1]
        site = start_site(tmp_path)  # with a free port, then the busy one by reload
        try:
            text = site.config.read_text().replace(
                site.metrics_url.split("/")[2], f"{GOOD}:{taken}"
            )
            site.config.write_text(text)
            site.server.reload()
            assert site.server.wait_log(f"cannot serve metrics on {GOOD}:{taken}")
            ftp = client(site)  # FTPS still answers
            ftp.login("bob", RIGHT)
            ftp.quit()
        finally:
            site.server.stop()
