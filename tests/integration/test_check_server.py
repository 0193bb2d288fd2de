"""`ftps-server check` against a real running ftps-server (issue 5, "Must show").

The server is `ftps-server serve` started by tests/support.py on 127.0.0.2; the check runs as
its own process through the real CLI. The broken listeners the server itself would never be
(a client-cert port that lets anyone in, a port that accepts TCP and never answers) are small
loopback servers from check_fakes, on addresses the real server does not use.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared support
import support
from check_fakes import (
    FakeFtps,
    dripping_listener,
    empty_line_flood,
    scripted_listener,
    silent_listener,
)

SCHEMA = json.loads((support.ROOT / "docs" / "check.schema.json").read_text())
KINDS = ("explicit", "implicit", "client_cert_explicit", "client_cert_implicit")
PLUGIN_LINE = re.compile(
    r"^FTPS (OK|WARNING|CRITICAL|UNKNOWN) - [^|]*"
    r"( \| (days_left=-?\d+;\d+;\d+ )?time=\d+\.\d{3}s)?$"
)

pytestmark = pytest.mark.timeout(120)


@dataclass
class Result:
    status: int
    out: str
    err: str
    elapsed: float

    @property
    def first_line(self) -> str:
        return self.out.splitlines()[0]

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.out)
        jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
        return doc


def run_check(config: Path, *args: str, timeout: float = 10) -> Result:
    """`ftps-server check --config CONFIG ARGS` as a separate process, like monitoring runs it."""
    env = dict(os.environ, PYTHONPATH=str(support.ROOT))
    cmd = [sys.executable, "-m", "ftps_server", "check", "--config", str(config)]
    cmd += ["--timeout", str(timeout), *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 30)
    result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    if "--json" not in args:
        assert PLUGIN_LINE.match(result.first_line), result.out
    return result


def config_text(
    base: Path,
    pki: support.Pki,
    address: str,
    ports: dict[str, int],
    cert: support.CertFiles,
    probe: support.CertFiles | None = None,
) -> str:
    """An INI for one address: the given port kinds on, the others off."""
    port_lines = "\n".join(f"{k} = {ports.get(k, 0)}" for k in KINDS)
    probe_lines = f"client_cert = {probe.cert}\nclient_key = {probe.key}" if probe else ""
    return f"""
[server]
addresses = {address}
state_dir = {base}/state
root = {base}/root
key_group = root
[ports]
{port_lines}
[tls]
client_ca = {pki.ca_file}
[certificate:main]
cert = {cert.cert}
key = {cert.key}
addresses = {address}
server_names = ftp.example.com
[check]
ca_file = {pki.ca_file}
{probe_lines}
"""


@dataclass
class Site:
    """A config, the PKI behind it and (when started) the real server serving it."""

    base: Path
    pki: support.Pki
    config: Path
    ports: dict[str, int]
    cert: support.CertFiles
    probe: support.CertFiles | None
    server: support.ServerProcess | None = None


def make_site(
    base: Path, address: str, kinds: tuple[str, ...], days: int, probe: bool = False
) -> Site:
    for sub in ("state", "root"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    pki = support.Pki(base / "pki")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    cert = pki.server("main", address, "ftp.example.com", days=days, not_before=since)
    client = pki.client("probe") if probe else None
    ports = {k: support.free_port(address) for k in kinds}
    text = config_text(base, pki, address, ports, cert, client)
    config = support.write_config(base / "ftps-server.ini", text)
    return Site(base, pki, config, ports, cert, client)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start the real server for a Site; every server started is stopped at the end."""
    started: list[support.ServerProcess] = []

    def start(site: Site) -> Site:
        site.server = support.ServerProcess(site.config, site.base)
        started.append(site.server)
        return site

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def good_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """All four listener kinds on 127.0.0.2 with a good certificate and a probe certificate."""
    site = make_site(tmp_path_factory.mktemp("good"), "127.0.0.2", KINDS, days=41, probe=True)
    site.server = support.ServerProcess(site.config, site.base)
    yield site
    site.server.stop()


# --- all good -------------------------------------------------------------------------------


def test_all_listeners_good_exit_0_and_every_listener_listed(good_site: Site) -> None:
    result = run_check(good_site.config)
    assert result.status == 0, result.out + result.err
    assert re.fullmatch(
        r"FTPS OK - 4 listeners, nearest expiry (40|41) days \| days_left=(40|41);14;0 "
        r"time=\d\.\d{3}s",
        result.first_line,
    )
    for kind, port in good_site.ports.items():
        assert f"127.0.0.2:{port} {kind} (bind 127.0.0.2): OK" in result.out
    assert result.out.count("client cert  no certificate: refused") == 2
    assert result.out.count("[check] client_cert: let in") == 2


def test_json_output_validates_and_says_everything(good_site: Site) -> None:
    doc = run_check(good_site.config, "--json").json()
    assert doc["status"] == "OK" and doc["exit_status"] == 0
    assert doc["summary"].startswith("FTPS OK - 4 listeners")
    assert {(x["kind"], x["port"]) for x in doc["listeners"]} == set(good_site.ports.items())
    for listener in doc["listeners"]:
        assert listener["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
        assert listener["certificate"]["key_type"].startswith("EC")
        assert listener["configured"]["matches"] is True
        assert listener["chain"]["verified"] is True
        assert listener["names"]["matched"] == ["127.0.0.2", "ftp.example.com"]
        if listener["kind"].startswith("client_cert"):
            assert listener["client_certificate"]["anonymous"]["refused"] is True
            assert listener["client_certificate"]["probe"]["admitted"] is True


def test_address_filter(good_site: Site) -> None:
    doc = run_check(good_site.config, "--json", "--address", "127.0.0.2").json()
    assert len(doc["listeners"]) == 4
    result = run_check(good_site.config, "--address", "127.0.0.9")
    assert result.status == 3
    assert result.first_line == "FTPS UNKNOWN - no enabled listener on 127.0.0.9"


def openssl_fingerprint(port: int, explicit: bool, probe: support.CertFiles | None) -> str:
    """The SHA-256 fingerprint of the leaf `openssl s_client` receives on 127.0.0.2:port."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.2:{port}", "-noservername"]
    cmd += ["-starttls", "ftp"] if explicit else []
    cmd += ["-cert", str(probe.cert), "-key", str(probe.key)] if probe else []
    shown = subprocess.run(cmd, input=b"", capture_output=True, timeout=20).stdout
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", shown, re.S)
    assert pem, shown.decode(errors="replace")
    x509 = ["openssl", "x509", "-noout", "-fingerprint", "-sha256"]
    line = subprocess.run(x509, input=pem[0], capture_output=True, check=True).stdout.decode()
    return line.strip().split("=", 1)[1]


def test_fingerprints_equal_what_openssl_s_client_sees(good_site: Site) -> None:
    doc = run_check(good_site.config, "--json").json()
    for listener in doc["listeners"]:
        kind = listener["kind"]
        theirs = openssl_fingerprint(
            listener["port"],
            explicit=not kind.endswith("implicit"),
            probe=good_site.probe if kind.startswith("client_cert") else None,
        )
        assert listener["certificate"]["fingerprint_sha256"] == theirs, kind


def test_each_address_is_judged_against_its_own_certificate(tmp_path: Path, serve: Any) -> None:
    site = make_site(tmp_path, "127.0.0.2", ("explicit", "implicit"), 60)
    other = site.pki.server("other", "127.0.0.3", days=30)
    # [server] comes first: its addresses line is the first one
    text = site.config.read_text().replace(
        "addresses = 127.0.0.2\n", "addresses = 127.0.0.2, 127.0.0.3\n", 1
    )
    text += f"[certificate:other]\ncert = {other.cert}\nkey = {other.key}\ndefault = yes\n"
    site.config.write_text(text)
    serve(site)
    doc = run_check(site.config, "--json").json()
    assert doc["status"] == "OK", doc
    assert doc["nearest_expiry_days"] in (29, 30)
    served = {
        (x["address"], x["kind"], x["server_name"]): x["certificate"]["fingerprint_sha256"]
        for x in doc["listeners"]
    }
    assert served == {
        ("127.0.0.2", "explicit", None): site.cert.fingerprint,
        ("127.0.0.2", "implicit", None): site.cert.fingerprint,
        ("127.0.0.3", "explicit", None): other.fingerprint,
        ("127.0.0.3", "implicit", None): other.fingerprint,
        # [certificate:main] also has server_names: a client naming it on .3 gets main's
        ("127.0.0.3", "explicit", "ftp.example.com"): site.cert.fingerprint,
        ("127.0.0.3", "implicit", "ftp.example.com"): site.cert.fingerprint,
    }
    assert {x["configured"]["section"] for x in doc["listeners"]} == {"main", "other"}


def test_sni_sections_are_probed_by_name(tmp_path: Path, serve: Any) -> None:
    site = make_site(tmp_path, "127.0.0.2", ("explicit", "implicit"), 60)
    sni = site.pki.server("sni", "sni.example.com", days=50)
    text = site.config.read_text()
    text += (
        f"[certificate:sni]\ncert = {sni.cert}\nkey = {sni.key}\nserver_names = sni.example.com\n"
    )
    site.config.write_text(text)
    serve(site)
    result = run_check(site.config)
    assert result.status == 0, result.out
    assert result.first_line.startswith("FTPS OK - 2 listeners, 2 SNI probes, nearest expiry")
    doc = run_check(site.config, "--json").json()
    by_name = {(x["kind"], x["server_name"]): x for x in doc["listeners"]}
    for kind in ("explicit", "implicit"):
        assert by_name[kind, None]["certificate"]["fingerprint_sha256"] == site.cert.fingerprint
        named = by_name[kind, "sni.example.com"]
        assert named["certificate"]["fingerprint_sha256"] == sni.fingerprint
        assert named["configured"]["section"] == "sni" and named["configured"]["matches"]
        assert named["names"]["matched"] == ["sni.example.com"]
    # an expired certificate is not served: the server falls back to the address's own one
    site.pki.server(
        "sni", "sni.example.com", days=-1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    assert site.server is not None
    site.server.reload()
    result = run_check(site.config)
    assert result.status == 2, result.out
    assert (
        result.out.count("CRITICAL: served certificate differs from configured [certificate:sni]")
        == 2
    )
    assert (
        "configured certificate [certificate:sni] (not served): certificate expired" in result.out
    )


# --- dates ----------------------------------------------------------------------------------


def test_expiring_in_10_days_is_warning(tmp_path: Path, serve: Any) -> None:
    site = serve(make_site(tmp_path, "127.0.0.2", ("explicit", "implicit"), days=10))
    result = run_check(site.config)
    assert result.status == 1, result.out
    assert re.fullmatch(
        r"FTPS WARNING - 2 listeners \(2 warning\), nearest expiry (9|10) days: .*"
        r"certificate expires in (9|10) days .* \| days_left=(9|10);14;0 time=\S+",
        result.first_line,
    )
    assert run_check(site.config, "--warn-days", "7").status == 0


def test_expired_certificate_is_critical(tmp_path: Path, serve: Any) -> None:
    site = serve(make_site(tmp_path, "127.0.0.2", ("explicit", "implicit"), days=-2))
    result = run_check(site.config)
    assert result.status == 2, result.out
    assert result.first_line.startswith("FTPS CRITICAL - 2 listeners (2 critical)")
    # the server refuses to serve an expired certificate; the check says so and why
    assert "certificate expired 2 days ago" in result.out
    doc = run_check(site.config, "--json").json()
    assert all(x["status"] == "CRITICAL" for x in doc["listeners"])


# --- reload ---------------------------------------------------------------------------------


def test_replaced_on_disk_without_reload_then_sighup(tmp_path: Path, serve: Any) -> None:
    site = serve(make_site(tmp_path, "127.0.0.2", KINDS, days=60, probe=True))
    assert run_check(site.config).status == 0
    new = site.pki.server("main", "127.0.0.2", "ftp.example.com", days=90)  # same paths
    result = run_check(site.config)
    assert result.status == 2, result.out
    assert "served certificate differs from configured" in result.first_line
    assert result.out.count("CRITICAL: served certificate differs from configured") == 4
    site.server.reload()
    doc = run_check(site.config, "--json").json()
    assert doc["status"] == "OK", doc
    assert {x["certificate"]["fingerprint_sha256"] for x in doc["listeners"]} == {new.fingerprint}


# --- unreachable ----------------------------------------------------------------------------


def test_closed_silent_and_dripping_ports_are_critical_within_timeout(tmp_path: Path) -> None:
    site = make_site(tmp_path, "127.0.0.3", (), days=60)
    closed = support.free_port("127.0.0.3")
    with (
        silent_listener("127.0.0.3") as silent,
        silent_listener("127.0.0.3") as silent2,
        dripping_listener("127.0.0.3") as drip,
    ):
        ports = {
            "explicit": drip,  # a banner that never ends
            "implicit": silent,  # TCP accepted, no TLS handshake ever
            "client_cert_explicit": silent2,  # TCP accepted, no banner ever
            "client_cert_implicit": closed,
        }
        text = config_text(tmp_path, site.pki, "127.0.0.3", ports, site.cert)
        config = support.write_config(tmp_path / "down.ini", text)
        result = run_check(config, timeout=2)
    assert result.status == 2, result.out
    assert result.elapsed < 2 + 3, result.elapsed  # + interpreter start-up
    assert "4 listeners (4 critical)" in result.first_line
    expected = {
        f"{drip} explicit": "CRITICAL: timed out waiting for the 220 banner",
        f"{silent} implicit": "CRITICAL: timed out waiting for the TLS handshake",
        f"{silent2} client_cert_explicit": "CRITICAL: timed out waiting for the 220 banner",
        f"{closed} client_cert_implicit": "CRITICAL: cannot connect: Connection refused",
    }
    blocks = result.out.split("\n\n")
    for listener, reason in expected.items():
        block = next(b for b in blocks if b.startswith(f"127.0.0.3:{listener} (bind"))
        assert block.splitlines()[0].endswith("CRITICAL")
        assert reason in block, block


# --- hostile listeners (issue 19.6) ---------------------------------------------------------

HOSTILE_BANNER = (
    b"220-\x1b]0;pwned\x07\r\x1b[2J hi\r\n220 \x1b[31mred\x1b[0m\rover \xe2\x80\xae\r\n"
)
HOSTILE_AUTH = b"534 \x1b]0;owned\x07 no TLS\x1b[8m\r\n"
RAW = ("\x1b", "\x07", "\r", "\u202e")


def test_hostile_listener_control_characters_are_escaped(tmp_path: Path) -> None:
    site = make_site(tmp_path, "127.0.0.3", (), days=60)
    with (
        scripted_listener("127.0.0.3", HOSTILE_BANNER, auth_reply=HOSTILE_AUTH) as hostile,
        scripted_listener("127.0.0.3", b"\x1b[2J\x1b]0;x\x07 not ftp\r\n") as not_ftp,
        scripted_listener("127.0.0.3", b"220 \x1b[2Jhello\r\n") as bad_banner_cc,
    ):
        ports = {"explicit": hostile, "implicit": not_ftp, "client_cert_explicit": bad_banner_cc}
        text = config_text(tmp_path, site.pki, "127.0.0.3", ports, site.cert)
        config = support.write_config(tmp_path / "hostile.ini", text)
        plain = run_check(config, timeout=5)
        as_json = run_check(config, "--json", timeout=5)
    assert plain.status == 2, plain.out
    for out in (plain.out, as_json.out):
        assert not any(c in out for c in RAW), repr(out)
    assert "AUTH TLS refused: 534 \\x1b]0;owned\\x07 no TLS\\x1b[8m" in plain.out
    doc = as_json.json()
    texts = [f["text"] for li in doc["listeners"] for f in li["findings"]]
    strings = json.dumps(doc, ensure_ascii=False)
    assert not any(c in strings for c in RAW)
    assert any("534 \\x1b]0;owned" in t for t in texts), texts


def test_endless_banner_of_empty_lines_stops_at_the_reply_cap(tmp_path: Path) -> None:
    site = make_site(tmp_path, "127.0.0.3", (), days=60)
    with empty_line_flood("127.0.0.3") as flood:
        text = config_text(tmp_path, site.pki, "127.0.0.3", {"explicit": flood}, site.cert)
        config = support.write_config(tmp_path / "flood.ini", text)
        result = run_check(config, "--json", timeout=20)
    (listener,) = result.json()["listeners"]
    reasons = " ".join(f["text"] for f in listener["findings"])
    # the cap ended it, not the run's deadline
    assert "no end of reply after 100 lines" in reasons, reasons
    assert "timed out" not in reasons


# --- client-certificate ports ---------------------------------------------------------------


def server_context(site: Site, *, require_client_cert: bool, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(site.cert.cert), str(site.cert.key))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(site.pki.ca_file))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_client_cert_port_open_to_anyone_is_critical(tmp_path: Path) -> None:
    # deliberately misconfigured: TLS without asking for a client certificate on both kinds
    site = make_site(tmp_path, "127.0.0.4", ("client_cert_explicit", "client_cert_implicit"), 60)
    ctx = server_context(site, require_client_cert=False)
    ports = site.ports
    with (
        FakeFtps("127.0.0.4", ports["client_cert_explicit"], ctx, implicit=False),
        FakeFtps("127.0.0.4", ports["client_cert_implicit"], ctx, implicit=True),
    ):
        result = run_check(site.config)
        doc = run_check(site.config, "--json").json()
    assert result.status == 2, result.out
    assert "client-cert port lets a client without a certificate in" in result.first_line
    assert result.out.count("CRITICAL: client-cert port lets a client without a certificate") == 2
    for listener in doc["listeners"]:
        assert listener["client_certificate"]["anonymous"]["refused"] is False


def test_client_cert_port_refusing_in_tls12_handshake(tmp_path: Path) -> None:
    # TLS 1.2 refuses in the handshake itself: OK with a probe certificate to see the server's
    site = make_site(tmp_path, "127.0.0.5", ("client_cert_implicit",), 60, probe=True)
    ctx = server_context(site, require_client_cert=True, tls12=True)
    with FakeFtps("127.0.0.5", site.ports["client_cert_implicit"], ctx, implicit=True):
        doc = run_check(site.config, "--json").json()
    assert doc["status"] == "OK", doc
    listener = doc["listeners"][0]
    assert listener["tls"]["version"] == "TLSv1.2"
    assert listener["client_certificate"]["anonymous"]["refused"] is True
    assert "in the handshake" in listener["client_certificate"]["anonymous"]["detail"]
    assert listener["client_certificate"]["probe"]["admitted"] is True


def test_probe_certificate_the_server_does_not_trust_is_critical(
    tmp_path: Path, serve: Any
) -> None:
    site = make_site(tmp_path, "127.0.0.2", ("client_cert_implicit",), 60)
    stranger = support.Pki(tmp_path / "other").client("stranger")
    text = site.config.read_text() + f"client_cert = {stranger.cert}\nclient_key = {stranger.key}\n"
    site.config.write_text(text)
    serve(site)
    result = run_check(site.config)
    assert result.status == 2, result.out
    assert "CRITICAL: with the [check] client certificate: " in result.out
    assert "[check] client_cert: NOT let in" in result.out
    assert "no certificate: refused" in result.out


# --- configuration --------------------------------------------------------------------------


def test_unreadable_config_is_unknown(tmp_path: Path) -> None:
    missing = run_check(tmp_path / "nope.ini")
    assert missing.status == 3
    assert missing.first_line.startswith("FTPS UNKNOWN - cannot use the configuration: ")
    garbage = support.write_config(tmp_path / "bad.ini", "[ports]\nexplicit = twenty-one\n")
    doc = run_check(garbage, "--json").json()
    assert doc["status"] == "UNKNOWN" and doc["exit_status"] == 3
    assert "explicit" in doc["error"]
    if os.geteuid() != 0:  # root reads any file; the permission case only means something else
        locked = support.write_config(tmp_path / "locked.ini", "[server]\n")
        locked.chmod(0)
        assert run_check(locked).status == 3


# --- no keys, no privileges -----------------------------------------------------------------

# Imports everything the check needs, then drops to nobody and runs it: this interpreter lives
# under /root here, so `runuser` could not even start it as another user.
_AS_NOBODY = """
import argparse, encodings.idna, os, sys
import ftps_server.check.run as check
os.setgroups([]); os.setgid(65534); os.setuid(65534)
parser = argparse.ArgumentParser(); check.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))
"""


def test_needs_no_private_key_and_no_privileges(good_site: Site) -> None:
    # a copy of the config whose key paths lead nowhere, in a directory anyone may read
    public = Path(tempfile.mkdtemp(prefix="ftps-check-"))
    try:
        public.chmod(0o755)
        text = good_site.config.read_text().replace(str(good_site.cert.key), "/nonexistent.key")
        text = re.sub(r"(?m)^client_(cert|key) = .*$", "", text)  # the probe key is private too
        (public / "pki").mkdir(mode=0o755)
        for pem in good_site.pki.dir.glob("*.pem"):  # certificates and CA only, no key
            shutil.copy(pem, public / "pki" / pem.name)
            (public / "pki" / pem.name).chmod(0o644)
        text = text.replace(str(good_site.pki.dir), str(public / "pki"))
        config = support.write_config(public / "check.ini", text)
        config.chmod(0o644)
        assert run_check(config).status == 0
        if os.geteuid() != 0:
            return
        cmd = [sys.executable, "-c", _AS_NOBODY, "check", "--config", str(config)]
        env = dict(os.environ, PYTHONPATH=str(support.ROOT))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("FTPS OK - 4 listeners")
    finally:
        shutil.rmtree(public)


# --- as a monitoring plugin (issue 14.5) ----------------------------------------------------

# Nagios plugin guidelines: `TEXT | 'label'=value[UOM];[warn];[crit];[min];[max] ...`, UOM one
# of s ms us % B KB MB TB c (or none); Icinga 2 parses the same form
_PERF_ITEM = re.compile(
    r"^(?P<label>'[^'=]+'|[^'= ]+)=(?P<value>-?\d+(\.\d+)?)(?P<uom>s|ms|us|%|B|KB|MB|TB|c)?"
    r"(;(?P<warn>[-@~:\d.]*))?(;(?P<crit>[-@~:\d.]*))?(;[-\d.]*)?(;[-\d.]*)?$"
)
_STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def plugin_result(result: Result) -> tuple[str, dict[str, re.Match[str]]]:
    """What a Nagios/Icinga core takes from a plugin run: the state from the exit status (it
    must agree with the text), the first line's text and its perfdata, item by item."""
    assert result.status in _STATES, result.status
    text, bar, perf = result.first_line.partition(" | ")
    assert text.startswith(f"FTPS {_STATES[result.status]} - "), (result.status, text)
    assert "|" not in text and "|" not in perf
    items = {}
    for item in perf.split() if bar else []:
        match = _PERF_ITEM.match(item)
        assert match, f"perfdata item {item!r} is not in plugin form"
        items[match["label"]] = match
    return text, items


def run_host(*args: str, timeout: float = 10, wrap: list[str] | None = None) -> Result:
    """`ftps-server check -H ...`: no configuration at all, as from a monitoring host."""
    env = dict(os.environ, PYTHONPATH=str(support.ROOT))
    cmd = [*(wrap or []), sys.executable, "-m", "ftps_server", "check", "-t", str(timeout), *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 30)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def test_host_mode_checks_every_kind_of_listener_without_a_config(good_site: Site) -> None:
    for kind, port in good_site.ports.items():
        args = ["-H", "127.0.0.2", "-p", str(port), "--kind", kind]
        args += ["--ca-file", str(good_site.pki.ca_file), "-w", "30", "-c", "7"]
        if kind.startswith("client_cert"):
            assert good_site.probe is not None
            args += ["--client-cert", str(good_site.probe.cert)]
            args += ["--client-key", str(good_site.probe.key)]
        result = run_host(*args)
        assert result.status == 0, result.out + result.err
        text, perf = plugin_result(result)
        assert re.fullmatch(r"FTPS OK - 1 listener, nearest expiry (40|41) days", text), text
        assert (perf["days_left"]["warn"], perf["days_left"]["crit"]) == ("30", "7")
        assert perf["time"]["uom"] == "s" and 0 < float(perf["time"]["value"]) < 10
        assert f"127.0.0.2:{port} {kind} (bind 127.0.0.2): OK" in result.out
        assert "configured   not compared" in result.out
        doc = run_host(*args, "--json").json()
        assert doc["mode"] == "host" and doc["config"] is None and doc["crit_days"] == 7
        (listener,) = doc["listeners"]
        assert listener["certificate"]["fingerprint_sha256"] == good_site.cert.fingerprint
        assert listener["chain"]["verified"] is True and listener["configured"] is None
        if kind.startswith("client_cert"):
            assert listener["client_certificate"]["anonymous"]["refused"] is True
            assert listener["client_certificate"]["probe"]["admitted"] is True


def test_host_mode_sends_sni_and_checks_that_name(good_site: Site) -> None:
    port = good_site.ports["implicit"]
    base = ["-H", "127.0.0.2", "-p", str(port), "--kind", "implicit"]
    base += ["--ca-file", str(good_site.pki.ca_file)]
    named = run_host(*base, "--sni", "ftp.example.com", "--json").json()
    assert named["status"] == "OK", named
    assert named["listeners"][0]["names"]["matched"] == ["ftp.example.com"]
    other = run_host(*base, "--sni", "other.example.net")
    assert other.status == 1, other.out
    text, _ = plugin_result(other)
    assert text.endswith("certificate SANs name none of: other.example.net"), text


def test_host_mode_needs_neither_the_config_nor_the_keys(tmp_path: Path, serve: Any) -> None:
    """The monitoring user: a process that cannot read the config (password hashes) or the
    server's private key still gets the full verdict of a listener with -H; with --config
    it gets UNKNOWN, never a partial OK."""
    site = serve(make_site(tmp_path, "127.0.0.2", ("explicit", "implicit"), days=10))
    # readable only by another owner; root without CAP_DAC_* is bound by the modes like anyone
    for path in (site.config, site.cert.key):
        os.chown(path, 65534, 65534)
        os.chmod(path, 0o600)
    no_dac = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop the file-reading capabilities")
    port = site.ports["implicit"]
    args = ["-H", "127.0.0.2", "-p", str(port), "--kind", "implicit"]
    args += ["--ca-file", str(site.pki.ca_file), "-w", "14", "-c", "12"]
    result = run_host(*args, wrap=no_dac)
    assert result.status == 2, result.out + result.err
    text, perf = plugin_result(result)
    assert re.search(r"certificate expires in (9|10) days \(.*; critical at 12\)$", text), text
    assert int(perf["days_left"]["value"]) in (9, 10) and perf["days_left"]["crit"] == "12"
    assert run_host(*args[:-4], "-c", "5", wrap=no_dac).status == 1  # WARNING at 14 (default)
    assert run_host(*args[:-4], "-w", "7", wrap=no_dac).status == 0
    full = run_host("--config", str(site.config), wrap=no_dac)
    assert full.status == 3, full.out
    assert "cannot use the configuration" in full.first_line
    assert "Permission denied" in full.first_line


def test_critical_threshold_with_the_config_and_the_time_perfdata(
    tmp_path: Path, serve: Any
) -> None:
    site = serve(make_site(tmp_path, "127.0.0.2", ("explicit", "implicit"), days=10))
    result = run_check(site.config, "-w", "20", "-c", "12")
    assert result.status == 2, result.out
    text, perf = plugin_result(result)
    assert text.startswith("FTPS CRITICAL - 2 listeners (2 critical), nearest expiry")
    assert (perf["days_left"]["warn"], perf["days_left"]["crit"]) == ("20", "12")
    assert 0 < float(perf["time"]["value"]) < result.elapsed
    assert run_check(site.config, "-w", "20", "-c", "5").status == 1


def test_usage_errors_are_unknown_for_monitoring(good_site: Site) -> None:
    for args in (["-w", "x"], ["--bogus"], ["-p", "21"], ["-H", "127.0.0.2", "--address", "a"]):
        result = run_host(*args)
        assert result.status == 3, (args, result.out, result.err)
        text, perf = plugin_result(result)
        assert text.startswith("FTPS UNKNOWN - usage") and not perf


def test_down_listener_in_host_mode_is_critical_with_time(tmp_path: Path) -> None:
    closed = support.free_port("127.0.0.3")
    result = run_host("-H", "127.0.0.3", "-p", str(closed), "--kind", "implicit", timeout=3)
    assert result.status == 2
    text, perf = plugin_result(result)
    assert text.endswith("cannot connect: Connection refused") and set(perf) == {"time"}


# --- in a real Icinga 2 (issue 14.5) --------------------------------------------------------


def icinga_results(state_file: Path) -> dict[str, dict[str, Any]]:
    """Last check result per service from Icinga's retention file (netstrings of JSON)."""
    data, pos, out = state_file.read_text(), 0, {}
    while pos < len(data):
        size, _, rest = data[pos:].partition(":")
        obj = json.loads(rest[: int(size)])
        pos += len(size) + 1 + int(size) + 1
        if obj["type"] == "Service":
            out[obj["name"].split("!")[-1]] = obj["update"]["last_check_result"]
    return out


@pytest.mark.skipif(shutil.which("icinga2") is None, reason="needs icinga2 (Debian icinga2-bin)")
def test_readme_icinga_command_runs_in_icinga(good_site: Site, tmp_path: Path) -> None:
    """The README's CheckCommand and apply rule, run by a real Icinga 2 daemon against the
    real server: Icinga's own state and perfdata parsing of the plugin's output."""
    readme = (support.ROOT / "README.md").read_text()
    section = readme[readme.index("## Monitoring") : readme.index("## Package, service")]
    documented = re.search(r"Icinga 2:\n\n```\n(.*?)```", section, re.S)
    assert documented
    python = f'[ "{sys.executable}", "-m", "ftps_server", "check" ]'
    env = f'env = {{ PYTHONPATH = "{support.ROOT}" }}\n  command = '
    commands = documented[1].replace('command = [ "/usr/bin/ftps-server", "check" ]', env + python)
    commands = commands.replace(
        "vars.ftps_port = 990", f"vars.ftps_port = {good_site.ports['implicit']}"
    )
    # checked at once rather than somewhere in the first 5 minutes
    commands = commands.replace(
        'check_command = "ftps"\n', 'check_command = "ftps"\n  check_interval = 1s\n'
    )
    assert commands.count(str(support.ROOT)) == 1 and str(sys.executable) in commands
    run = tmp_path / "icinga"
    for sub in ("data", "log", "cache", "spool", "run"):
        (run / sub).mkdir(parents=True)
    expiring = good_site.ports["explicit"]
    config = run / "icinga2.conf"
    config.write_text(
        f"""
include <itl>
object CheckerComponent "checker" {{ }}
object FileLogger "debug" {{ path = "{run}/log/debug.log"; severity = "notice" }}
object Host "ftp1" {{
  address = "127.0.0.2"
  check_command = "dummy"
  vars.ftps = true
  vars.ftps_ca_file = "{good_site.pki.ca_file}"
}}
{commands}
apply Service "ftps-explicit-critical-at-60" {{
  check_command = "ftps"
  check_interval = 1s
  vars.ftps_port = {expiring}
  vars.ftps_warning = 90
  vars.ftps_critical = 60
  assign where host.vars.ftps
}}
"""
    )
    dirs = [
        f"-D{name}={run}/{sub}"
        for name, sub in (
            ("DataDir", "data"),
            ("StateDir", "data"),
            ("LogDir", "log"),
            ("CacheDir", "cache"),
            ("SpoolDir", "spool"),
            ("InitRunDir", "run"),
        )
    ]
    cmd = ["icinga2", "daemon", "-c", str(config), "-DRunAsUser=root", "-DRunAsGroup=root", *dirs]
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "log" / "debug.log"
    try:
        deadline = time.monotonic() + 60
        ports = {good_site.ports["implicit"], expiring}
        while time.monotonic() < deadline:  # each service's check has run to its end once
            text = log.read_text() if log.exists() else ""
            done = [x for x in text.splitlines() if "terminated with exit code" in x]
            if all(any(f"'-p' '{port}'" in x for x in done) for port in ports):
                break
            assert daemon.poll() is None, text[-3000:]
            time.sleep(0.1)
    finally:
        pid = int((run / "run" / "icinga2.pid").read_text())  # the daemon proper
        os.kill(pid, 15)
        daemon.wait(timeout=30)
    results = icinga_results(run / "data" / "icinga2.state")
    ok, crit = results["ftps-implicit"], results["ftps-explicit-critical-at-60"]
    assert (ok["exit_status"], ok["state"]) == (0, 0), ok
    first, _, long_output = ok["output"].partition("\n")  # the table and block: long output
    assert re.fullmatch(r"FTPS OK - 1 listener, nearest expiry (40|41) days ?", first), first
    assert f"127.0.0.2:{good_site.ports['implicit']} implicit (bind 127.0.0.2): OK" in long_output
    assert re.fullmatch(r"days_left=(40|41);14;3", ok["performance_data"][0])
    assert re.fullmatch(r"time=\d+\.\d+s", ok["performance_data"][1])
    assert len(ok["performance_data"]) == 2
    assert (crit["exit_status"], crit["state"]) == (2, 2), crit
    assert "certificate expires in" in crit["output"] and "critical at 60" in crit["output"]
    assert re.fullmatch(r"days_left=(40|41);90;60", crit["performance_data"][0])


def test_listener_text_cannot_inject_perfdata() -> None:
    """Nagios/Icinga read `| ...` on any output line as perfdata (Nagios 3 long output)."""
    evil = b"534 no | days_left=9999;1;1 injected=1\r\n"
    with scripted_listener("127.0.0.3", b"220 hi | injected=2\r\n", auth_reply=evil) as port:
        result = run_host("-H", "127.0.0.3", "-p", str(port), "--kind", "explicit", timeout=5)
    assert result.status == 2, result.out
    assert result.out.count("|") == 1, result.out  # the plugin line's own separator only
    _, perf = plugin_result(result)
    assert set(perf) == {"time"}
    assert "AUTH TLS refused: 534 no / days_left=9999;1;1 injected=1" in result.out
