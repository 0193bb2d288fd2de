"""Pure logic of `ftps-server check`: targets, verdicts, the plugin line, text and JSON output.

No network here: observations are built by hand from certificates made with trustme, and the
clock is a fixed instant passed to `judge`. The real listeners are in tests/integration.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import ftps_server.check.report as check_report
import ftps_server.check.run as check
from ftps_server.check.probe import Attempt, Target
from ftps_server.check.verdict import (
    Configured,
    ListenerReport,
    Observation,
    RunReport,
    Status,
    judge,
    worst,
)
from ftps_server.config.loader import load
from ftps_server.config.model import CertificateEntry
from ftps_server.pki.certs import cert_info, fingerprint

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "check.schema.json").read_text())
CA = trustme.CA()
ENTRY = CertificateEntry(
    "main",
    Path("/etc/ftps/main.pem"),
    Path("/etc/ftps/main.key"),
    ("127.0.0.2",),
    server_names=("ftp.example.com",),
)


def make_cert(*names: str, days: float = 41, valid_since: float = 30) -> x509.Certificate:
    """A leaf from the test CA valid from `valid_since` days before NOW to `days` after it."""
    leaf = CA.issue_cert(
        *(names or ("127.0.0.2", "ftp.example.com")),
        not_before=NOW - dt.timedelta(days=valid_since),
        not_after=NOW + dt.timedelta(days=days),
    )
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


def attempt(cert: x509.Certificate | None, **kw: object) -> Attempt:
    """An attempt that got as far as `cert` says (all the way, by default)."""
    a = Attempt(with_certificate=False)
    if cert is not None:
        a.leaf_der = cert.public_bytes(Encoding.DER)
        a.chain_der = (a.leaf_der,)
        a.stage, a.tls_version, a.cipher, a.cipher_bits = "session", "TLSv1.3", "TLS_X", 256
        a.admitted, a.reply = True, "200 ok"
    for key, value in kw.items():
        setattr(a, key, value)
    return a


def observe(
    cert: x509.Certificate | None,
    *,
    kind: str = "explicit",
    bind: str = "127.0.0.2",
    port: int = 2121,
    server_name: str | None = None,
    configured: Configured | None = None,
    **kw: object,
) -> Observation:
    """An observation of one listener; configured defaults to `cert` being the configured one."""
    if configured is None:
        configured = Configured(ENTRY, fingerprint(cert) if cert else None)
    target = Target("127.0.0.2", bind, kind, port, server_name)
    main = kw.pop("main", None) or attempt(cert)
    fields = {"chain_checked": main.handshake_done, **kw}
    return Observation(target, main, configured, **fields)  # type: ignore[arg-type]


def verdict(obs: Observation, warn_days: int = 14, crit_days: int | None = None) -> ListenerReport:
    return judge(obs, NOW, warn_days, "/ca.pem", crit_days)


def texts(report: ListenerReport) -> str:
    return " / ".join(f.text for f in report.findings)


# --- status ordering ------------------------------------------------------------------------


def test_worst_orders_critical_over_unknown_over_warning() -> None:
    assert worst([]) is Status.OK
    assert worst([Status.OK, Status.WARNING]) is Status.WARNING
    assert worst([Status.WARNING, Status.UNKNOWN]) is Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.CRITICAL, Status.OK]) is Status.CRITICAL
    assert [int(s) for s in Status] == [0, 1, 2, 3]


# --- verdicts -------------------------------------------------------------------------------


def test_good_listener_is_ok_with_names_matched() -> None:
    report = verdict(observe(make_cert()))
    assert report.status is Status.OK, texts(report)
    assert report.findings == ()
    assert report.days_left == 41
    assert report.names_checked == ("127.0.0.2", "ftp.example.com")
    assert report.names_matched == report.names_checked


def test_expiring_within_warn_days_is_warning() -> None:
    report = verdict(observe(make_cert(days=10)))
    assert report.status is Status.WARNING
    assert "expires in 10 days" in texts(report)
    assert verdict(observe(make_cert(days=10)), warn_days=7).status is Status.OK


def test_critical_days_make_an_unexpired_certificate_critical() -> None:
    report = verdict(observe(make_cert(days=10)), warn_days=14, crit_days=10)
    assert report.status is Status.CRITICAL
    assert texts(report).startswith("certificate expires in 10 days (")
    assert texts(report).endswith("; critical at 10)")
    assert verdict(observe(make_cert(days=10)), crit_days=9).status is Status.WARNING
    assert verdict(observe(make_cert(days=10)), warn_days=9, crit_days=9).status is Status.OK
    # the dates of a configured certificate the server does not serve obey -c too
    on_disk = cert_info(make_cert(days=5))
    unserved = observe(make_cert(), configured=Configured(ENTRY, on_disk.fingerprint, info=on_disk))
    assert "(not served): certificate expires in 5 days" in texts(verdict(unserved, crit_days=5))
    assert "critical at 5" in texts(verdict(unserved, crit_days=5))


def test_expired_and_not_yet_valid_are_critical() -> None:
    expired = verdict(observe(make_cert(days=-3)))
    assert expired.status is Status.CRITICAL
    assert "expired 3 days ago" in texts(expired)
    future = verdict(observe(make_cert(days=90, valid_since=-2)))
    assert future.status is Status.CRITICAL
    assert "not valid before" in texts(future)


def test_served_certificate_other_than_configured_is_critical() -> None:
    served, on_disk = make_cert(), make_cert()
    report = verdict(observe(served, configured=Configured(ENTRY, fingerprint(on_disk))))
    assert report.status is Status.CRITICAL
    assert "served certificate differs from configured" in texts(report)
    assert fingerprint(served) in texts(report) and fingerprint(on_disk) in texts(report)


def test_no_or_unreadable_configured_certificate_is_critical() -> None:
    none = verdict(observe(make_cert(), configured=Configured(None)))
    assert none.status is Status.CRITICAL
    assert "no certificate is configured for 127.0.0.2" in texts(none)
    broken = verdict(observe(make_cert(), configured=Configured(ENTRY, error="gone")))
    assert broken.status is Status.CRITICAL
    assert "cannot be read: gone" in texts(broken)


def test_unserved_configured_certificate_dates_explain_why() -> None:
    # the server refuses to serve an expired certificate: say so from the file on disk
    on_disk = cert_info(make_cert(days=-2))
    conf = Configured(ENTRY, on_disk.fingerprint, info=on_disk)
    main = attempt(None, stage="auth", error="AUTH TLS refused: 431 no valid certificate")
    report = verdict(observe(None, main=main, configured=conf))
    assert report.status is Status.CRITICAL
    assert "configured certificate [certificate:main] (not served): certificate expired 2 days" in (
        texts(report)
    )


def test_broken_chain_is_critical() -> None:
    obs = observe(make_cert(), chain_error="unable to get local issuer certificate")
    report = verdict(obs)
    assert report.status is Status.CRITICAL
    assert "chain does not verify against /ca.pem" in texts(report)


def test_address_missing_from_sans_is_warning() -> None:
    report = verdict(observe(make_cert("other.example.com")))
    assert report.status is Status.WARNING
    assert report.names_matched == ()
    assert "SANs name none of: 127.0.0.2, ftp.example.com" in texts(report)


def test_server_name_alone_satisfies_names_and_wildcards_match() -> None:
    assert verdict(observe(make_cert("ftp.example.com"))).status is Status.OK
    report = verdict(observe(make_cert("*.example.com")))
    assert report.names_matched == ("ftp.example.com",)


def test_wildcard_bind_stand_in_address_is_not_a_name_to_check() -> None:
    cert = make_cert("ftp.example.com")
    entry = CertificateEntry("d", Path("/d.pem"), Path("/d.key"), default=True)
    obs = observe(cert, bind="*", configured=Configured(entry, fingerprint(cert)))
    report = verdict(obs)
    assert report.names_checked == ()
    assert report.status is Status.OK


def test_connection_error_is_critical_without_certificate() -> None:
    obs = observe(None, main=attempt(None, error="cannot connect: Connection refused"))
    report = verdict(obs)
    assert report.status is Status.CRITICAL
    assert report.cert is None and report.days_left is None
    assert "Connection refused" in texts(report)


def test_auth_refused_is_critical_with_server_reply() -> None:
    reply = "431 no valid certificate for this address"
    obs = observe(None, main=attempt(None, stage="auth", error=f"AUTH TLS refused: {reply}"))
    assert verdict(obs).status is Status.CRITICAL
    assert reply in texts(verdict(obs))


def test_client_cert_port_refusing_anonymous_after_handshake_is_ok() -> None:
    # TLS 1.3: the handshake completes, the refusal is the first read
    cert = make_cert()
    main = attempt(cert, admitted=False, refusal="alert certificate required", error="ended")
    report = verdict(observe(cert, kind="client_cert_implicit", main=main, anonymous=main))
    assert report.status is Status.OK, texts(report)
    doc = check_report.to_json(run_report([report]))["listeners"][0]["client_certificate"]
    assert doc["anonymous"] == {"refused": True, "detail": "alert certificate required"}


def test_client_cert_port_letting_anonymous_in_is_critical() -> None:
    cert = make_cert()
    main = attempt(cert)
    report = verdict(observe(cert, kind="client_cert_explicit", main=main, anonymous=main))
    assert report.status is Status.CRITICAL
    assert "lets a client without a certificate in" in texts(report)


def test_client_cert_port_tls12_refusal_without_probe_is_unknown() -> None:
    main = attempt(None, stage="handshake", admitted=False, refusal="r", error="handshake failed")
    report = verdict(observe(None, kind="client_cert_implicit", main=main, anonymous=main))
    assert report.status is Status.UNKNOWN
    assert "set [check] client_cert" in texts(report)


def test_client_cert_probe_refused_is_critical_and_anonymous_unproven_too() -> None:
    cert = make_cert()
    probe = attempt(cert, admitted=False, error="server ended the session", with_certificate=True)
    anon = attempt(None, error="no reply within the timeout", stage="session")
    obs = observe(cert, kind="client_cert_explicit", main=probe, anonymous=anon, probe_used=True)
    report = verdict(obs)
    assert report.status is Status.CRITICAL
    assert "with the [check] client certificate: server ended the session" in texts(report)
    assert "could not prove a client without a certificate is refused" in texts(report)


def test_probe_refused_in_handshake_takes_facts_from_certificate_less_attempt() -> None:
    cert = make_cert()
    probe = attempt(None, stage="handshake", error="TLS handshake failed: alert unknown ca")
    anon = attempt(cert, admitted=False, refusal="after the handshake: alert", error="ended")
    obs = observe(cert, kind="client_cert_implicit", main=probe, anonymous=anon, probe_used=True)
    report = verdict(obs)
    assert report.cert is not None and report.cert.fingerprint == fingerprint(cert)
    assert report.status is Status.CRITICAL
    assert texts(report) == (
        "with the [check] client certificate: TLS handshake failed: alert unknown ca"
    )


# --- targets --------------------------------------------------------------------------------


def write_ini(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.ini"
    path.write_text(textwrap.dedent(body))
    return path


def test_targets_expand_wildcard_bind_to_certificate_addresses_and_loopback(
    tmp_path: Path,
) -> None:
    config = load(
        write_ini(
            tmp_path,
            """
            [server]
            addresses = *, 127.0.0.3
            [ports]
            explicit = 2121
            implicit = 0
            [certificate:a]
            cert = /a.pem
            key = /a.key
            addresses = 127.0.0.2, 127.0.0.3
            [certificate:d]
            cert = /d.pem
            key = /d.key
            default = yes
            """,
        )
    )
    got = [(t.address, t.bind) for t in check.targets(config)]
    assert got == [
        ("127.0.0.2", "*"),
        ("127.0.0.3", "*"),
        ("127.0.0.1", "*"),
        ("127.0.0.3", "127.0.0.3"),
    ]
    assert [t.address for t in check.targets(config, "127.0.0.9")] == ["127.0.0.9"]
    assert [t.bind for t in check.targets(config, "127.0.0.3")] == ["*", "127.0.0.3"]


def test_targets_add_one_sni_probe_per_section_chosen_by_name(tmp_path: Path) -> None:
    config = load(
        write_ini(
            tmp_path,
            """
            [server]
            addresses = 127.0.0.2
            [ports]
            explicit = 2121
            implicit = 0
            [certificate:a]
            cert = /a.pem
            key = /a.key
            addresses = 127.0.0.2
            server_names = a.example.com
            [certificate:b]
            cert = /b.pem
            key = /b.key
            server_names = b.example.com, b2.example.com
            """,
        )
    )
    got = [t.label for t in check.targets(config)]
    assert got == ["127.0.0.2:2121 explicit", "127.0.0.2:2121 explicit SNI b.example.com"]


def test_sni_probe_checks_its_name_and_its_section() -> None:
    cert = make_cert("b.example.com")
    entry = CertificateEntry("b", Path("/b.pem"), Path("/b.key"), server_names=("b.example.com",))
    obs = observe(cert, server_name="b.example.com", configured=Configured(entry, "AA:BB"))
    report = verdict(obs)
    assert report.names_checked == ("b.example.com",) == report.names_matched
    assert report.status is Status.CRITICAL
    assert "served certificate differs from configured [certificate:b]" in texts(report)
    line = check_report.summary_line(run_report([verdict(observe(make_cert())), report]))
    # listeners and SNI probes are counted apart, each with its own non-OK counts
    assert line.startswith("FTPS CRITICAL - 1 listener, 1 SNI probe (1 critical), ")


def test_other_certificate_served_because_configured_one_expired_says_why() -> None:
    served, on_disk = make_cert(), cert_info(make_cert(days=-1))
    report = verdict(
        observe(served, configured=Configured(ENTRY, on_disk.fingerprint, info=on_disk))
    )
    assert "served certificate differs from configured" in texts(report)
    assert "configured certificate [certificate:main] (not served): certificate expired" in (
        texts(report)
    )


# --- output ---------------------------------------------------------------------------------


def run_report(reports: list[ListenerReport], warn_days: int = 14) -> RunReport:
    return RunReport(
        worst([r.status for r in reports]),
        config_path="/etc/ftps-server/ftps-server.ini",
        checked_at=NOW,
        warn_days=warn_days,
        timeout=10.0,
        ca_source="/ca.pem",
        listeners=tuple(reports),
    )


def test_summary_line_is_monitoring_plugin_form() -> None:
    reports = [verdict(observe(make_cert(days=41 + i), port=21 + i)) for i in range(4)]
    line = check_report.summary_line(run_report(reports))
    assert line == "FTPS OK - 4 listeners, nearest expiry 41 days | days_left=41;14;0"


def test_summary_line_names_counts_and_first_critical_reason() -> None:
    bad = verdict(observe(make_cert(days=-2)))
    warn = verdict(observe(make_cert(days=5), port=990))
    line = check_report.summary_line(run_report([warn, bad]))
    assert line.startswith("FTPS CRITICAL - 2 listeners (1 critical, 1 warning), ")
    assert "nearest expiry 2 days ago: 127.0.0.2:2121 explicit: certificate expired" in line
    assert line.endswith(" | days_left=-2;14;0")
    assert line.count("|") == 1


def test_summary_line_names_the_worst_rows_own_most_severe_finding() -> None:
    warn = verdict(observe(make_cert(days=5), port=21))
    sni_bad = verdict(observe(make_cert(days=-1), port=21, server_name="ftp.example.com"))
    bad = verdict(observe(make_cert(days=-2), port=990))
    line = check_report.summary_line(run_report([warn, sni_bad, bad]))
    # the first CRITICAL plain listener wins over an earlier CRITICAL SNI probe and the WARNING
    assert line.startswith(
        "FTPS CRITICAL - 2 listeners (1 critical, 1 warning), 1 SNI probe (1 critical), "
        "nearest expiry 2 days ago: 127.0.0.2:990 explicit: certificate expired 2 days ago"
    )


def test_summary_line_perfdata_has_critical_threshold_and_time() -> None:
    report = dataclasses.replace(
        run_report([verdict(observe(make_cert()))]), crit_days=3, elapsed=0.0314
    )
    line = check_report.summary_line(report)
    assert line.endswith(" | days_left=41;14;3 time=0.031s")


def test_summary_line_without_any_certificate_has_no_perfdata() -> None:
    down = verdict(observe(None, main=attempt(None, error="cannot connect: refused | x")))
    line = check_report.summary_line(run_report([down]))
    assert line == (
        "FTPS CRITICAL - 1 listener (1 critical), no certificate seen: "
        "127.0.0.2:2121 explicit: cannot connect: refused / x"
    )


def test_text_report_has_table_and_a_block_per_listener() -> None:
    reports = [verdict(observe(make_cert())), verdict(observe(make_cert(days=3), port=990))]
    text = check_report.render_text(run_report(reports))
    lines = text.splitlines()
    assert lines[0].startswith("FTPS WARNING - 2 listeners (1 warning)")
    assert lines[2].split() == [
        "LISTENER",
        "BIND",
        "STATUS",
        "DAYS",
        "TLS",
        "FINGERPRINT",
        "(SHA-256)",
    ]
    assert lines[3].split()[:5] == ["127.0.0.2:2121", "explicit", "127.0.0.2", "OK", "41"]
    assert "127.0.0.2:990 explicit (bind 127.0.0.2): WARNING" in lines
    assert "  WARNING: certificate expires in 3 days" in text
    assert reports[0].cert is not None and reports[0].cert.fingerprint in text


def test_json_report_validates_against_schema() -> None:
    cert = make_cert()
    anon = attempt(cert, admitted=False, refusal="refused after the handshake: x", error="e")
    reports = [
        verdict(observe(cert)),
        verdict(observe(make_cert(days=-1), chain_error="certificate has expired")),
        verdict(observe(None, main=attempt(None, error="cannot connect: refused"))),
        verdict(observe(cert, kind="client_cert_implicit", main=anon, anonymous=anon)),
    ]
    out = io.StringIO()
    check_report.emit(run_report(reports), as_json=True, out=out)
    doc = json.loads(out.getvalue())
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["status"] == "CRITICAL" and doc["exit_status"] == 2
    assert [x["status"] for x in doc["listeners"]] == ["OK", "CRITICAL", "CRITICAL", "OK"]
    first = doc["listeners"][0]
    assert first["certificate"]["fingerprint_sha256"] == fingerprint(cert)
    assert first["configured"]["matches"] is True
    assert first["chain"] == {
        "checked": True,
        "verified": True,
        "against": "/ca.pem",
        "error": None,
    }
    assert doc["listeners"][2]["reachable"] is False and doc["listeners"][2]["tls"] is None


# --- command --------------------------------------------------------------------------------


def check_parser() -> argparse.ArgumentParser:
    """Only the check subcommand, so these tests do not depend on the other commands."""
    parser = argparse.ArgumentParser()
    check.register(parser.add_subparsers())
    return parser


def test_unreadable_config_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = check_parser()
    args = parser.parse_args(["check", "--config", str(tmp_path / "missing.ini")])
    assert args.func(args) == 3
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FTPS UNKNOWN - cannot use the configuration: ")
    args = parser.parse_args(["check", "--json", "--config", str(tmp_path / "missing.ini")])
    assert args.func(args) == 3
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["status"] == "UNKNOWN" and doc["listeners"] == [] and "missing.ini" in doc["error"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        check_parser().parse_args(["check", "--timeout", "0"])
    with pytest.raises(SystemExit):
        check_parser().parse_args(["check", "--warn-days", "-1"])


def test_served_certificate_names_are_escaped_in_text_and_json() -> None:
    """Whoever runs the listener chose the served certificate's names (issue 19.6)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate(CA.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(CA.private_key_pem.bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    hostile = "\x1b]0;pwned\x07\r\nFTPS OK - fake"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostile)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=40))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("ftp.example.com\x1b[2J")]), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    report = verdict(observe(cert))
    out = io.StringIO()
    run = run_report([report])
    text = check_report.render_text(run)
    out.write(json.dumps(check_report.to_json(run), ensure_ascii=False))
    for rendered in (text, out.getvalue()):
        assert not any(c in rendered for c in "\x1b\x07\r"), rendered
    assert "pwned\\x07\\x0d\\x0aFTPS OK - fake" in text
    assert not any(line.startswith("FTPS OK") for line in text.splitlines())


# --- monitoring-plugin usage (issue 14.5) ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "-w", "soon"],  # argparse: bad value
        ["check", "--no-such-option"],  # argparse: unknown option (the top parser's error)
        ["check", "--kind", "sideways", "-H", "127.0.0.1"],  # argparse: not a choice
        ["check", "-t", "0"],
        ["check", "-p", "21"],  # -H options without -H
        ["check", "-H", "127.0.0.1", "--address", "127.0.0.1"],
        ["check", "-H", "127.0.0.1", "--kind", "client_cert_implicit"],  # no standard port
        ["check", "-H", "127.0.0.1", "-w", "3", "-c", "7"],  # WARNING could never show
        ["check", "-H", "127.0.0.1", "--client-cert", "/c.pem"],  # without its key
    ],
)
def test_usage_errors_exit_3_unknown_not_2_critical(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ftps_server import cli

    assert cli.main(argv) == 3
    assert capsys.readouterr().out.startswith("FTPS UNKNOWN - usage")


def test_other_commands_keep_argparse_exit_2() -> None:
    from ftps_server import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["remind", "--no-such-option"])
    assert exc.value.code == 2


def test_remote_target_sends_a_host_name_as_sni_never_an_address() -> None:
    assert Target("ftp.example.com", "ftp.example.com", "implicit", 990, remote=True).sni == (
        "ftp.example.com"
    )
    assert Target("192.0.2.1", "192.0.2.1", "implicit", 990, remote=True).sni is None
    assert Target("::1", "::1", "implicit", 990, remote=True).sni is None
    assert Target("192.0.2.1", "192.0.2.1", "implicit", 990, "a.example", remote=True).sni == (
        "a.example"
    )
    # from a configuration only the SNI probes send a name
    assert Target("ftp.example.com", "*", "implicit", 990).sni is None


def test_remote_observation_is_not_compared_with_a_configuration() -> None:
    cert = make_cert("ftp.example.com")
    target = Target("ftp.example.com", "ftp.example.com", "implicit", 990, remote=True)
    obs = Observation(target, attempt(cert), Configured(None, compared=False), True)
    report = judge(obs, NOW, 14, "/ca.pem")
    assert report.status is Status.OK, texts(report)
    assert report.names_checked == ("ftp.example.com",) == report.names_matched
    wrong = Target("other.example", "other.example", "implicit", 990, remote=True)
    obs = Observation(wrong, attempt(cert), Configured(None, compared=False), True)
    assert texts(judge(obs, NOW, 14, "/ca.pem")) == "certificate SANs name none of: other.example"


def test_readme_monitoring_commands_parse_as_documented() -> None:
    """The Nagios and Icinga 2 definitions in the README are what `check` accepts."""
    from ftps_server import cli

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Monitoring") : readme.index("## Package, service")]
    (line,) = [x for x in section.splitlines() if "command_line" in x]
    macros = {"$HOSTADDRESS$": "192.0.2.10", "$ARG1$": "990", "$ARG2$": "implicit"}
    macros |= {"$ARG3$": "14", "$ARG4$": "3"}
    argv = [macros.get(w, w) for w in line.split()[2:]]  # after command_line and the program
    args = cli.build_parser().parse_args(argv)
    got = (args.host, args.port, args.kind, args.warn_days, args.crit_days)
    assert got == ("192.0.2.10", 990, "implicit", 14, 3)
    icinga = section[section.index('object CheckCommand "ftps"') :]
    documented = set(re.findall(r'^\s+"(-[-\w]+)" = ', icinga, re.M))
    subparsers = argparse.ArgumentParser().add_subparsers()
    check.register(subparsers)
    known = {o for a in subparsers.choices["check"]._actions for o in a.option_strings}
    assert len(documented) == 9 and documented <= known, documented - known


def test_text_output_has_one_perfdata_separator_whatever_the_listener_said() -> None:
    down = verdict(observe(None, main=attempt(None, stage="auth", error="534 a | b=1")))
    named = dataclasses.replace(verdict(observe(make_cert())), chain_subjects=("CN=x | evil=2",))
    text = check_report.render_text(dataclasses.replace(run_report([down, named]), elapsed=0.5))
    assert text.count("|") == 1 and " | days_left=41;14;0 time=0.500s\n" in text
    assert "534 a / b=1" in text and "CN=x / evil=2" in text
