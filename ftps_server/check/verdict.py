"""The verdicts of `ftps-server check`: what the probes saw -> OK / WARNING / CRITICAL / UNKNOWN.

Pure functions over frozen dataclasses, no I/O, so every rule is unit-tested without a network:
an `Observation` (what the probes of one listener saw) goes through `judge` and comes out a
`ListenerReport` with its findings; a `RunReport` collects them.

Rules (issue 5): CRITICAL for a connection error, an AUTH refusal,
no certificate, expired or not yet valid, a served certificate other than the configured one, a
chain that does not verify, and a client-cert port that lets a certificate-less client in;
WARNING for expiry within warn_days and for an address / server_names entry missing from the
SANs; UNKNOWN when the served certificate could not be seen at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509

from ..config.ini import normalize_address
from ..config.model import CertificateEntry
from ..pki.certs import CertInfo, cert_info, expiry_phrase
from ..safe_text import escape_controls
from .probe import Attempt, Target

__all__ = [
    "Configured",
    "Finding",
    "Limits",
    "ListenerReport",
    "Observation",
    "RunReport",
    "Status",
    "days_left",
    "judge",
    "worst",
]


class Status(enum.IntEnum):
    """Monitoring-plugin states; the value is the exit status."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Severity for "worst of": OK < WARNING < UNKNOWN < CRITICAL."""
        return {0: 0, 1: 1, 3: 2, 2: 3}[self.value]


def worst(statuses: list[Status]) -> Status:
    """The most severe of `statuses` (OK for none)."""
    return max(statuses, key=lambda s: s.rank, default=Status.OK)


@dataclass(frozen=True)
class Finding:
    """One reason a listener is not OK."""

    status: Status
    text: str


@dataclass(frozen=True)
class Configured:
    """The certificate section configured for an address, as read from disk (cert file only).

    info: the on-disk certificate's facts, so that when the server serves nothing (it refuses to
    serve an expired certificate, say) the report can still say why.
    """

    entry: CertificateEntry | None
    fingerprint: str | None = None
    error: str | None = None
    info: CertInfo | None = None
    compared: bool = True  # False with `check -H`: no config, nothing to compare with


@dataclass(frozen=True)
class Observation:
    """Everything the probes saw on one listener; `judge` turns it into a verdict.

    main: the attempt meant to get in and give the certificate facts. On client-cert ports it
    used the [check] probe certificate when one is configured, else it is the certificate-less
    attempt.
    chain_error: why the served chain did not verify, None when it did or was never checked.
    anonymous: the certificate-less attempt on client-cert ports (may be `main` itself).
    """

    target: Target
    main: Attempt
    configured: Configured
    chain_checked: bool = False
    chain_error: str | None = None
    anonymous: Attempt | None = None
    probe_used: bool = False

    @property
    def seen(self) -> Attempt:
        """The attempt the certificate facts come from: `main`, or else a handshake that worked.

        A probe certificate the server rejects in the handshake hides the server's certificate,
        while the certificate-less attempt (TLS 1.3) may still have seen it.
        """
        anon = self.anonymous
        if not self.main.handshake_done and anon is not None and anon.handshake_done:
            return anon
        return self.main


@dataclass(frozen=True)
class ListenerReport:
    """The verdict on one listener with the facts behind it."""

    observation: Observation
    status: Status
    findings: tuple[Finding, ...]
    cert: CertInfo | None
    days_left: int | None
    names_checked: tuple[str, ...]
    names_matched: tuple[str, ...]
    chain_subjects: tuple[str, ...]

    @property
    def target(self) -> Target:
        """The listener judged."""
        return self.observation.target


@dataclass(frozen=True)
class RunReport:
    """The whole run: overall status, settings and one report per listener."""

    status: Status
    config_path: str | None  # None with `check -H` (no configuration read)
    checked_at: dt.datetime
    warn_days: int
    timeout: float
    ca_source: str
    listeners: tuple[ListenerReport, ...] = ()
    error: str | None = None  # why the run is UNKNOWN before any listener was probed
    crit_days: int | None = None  # CRITICAL from this many days left on (None: once expired)
    elapsed: float | None = None  # seconds the probes took (the `time=` perfdata)

    @property
    def nearest_expiry(self) -> int | None:
        """The smallest days_left among served certificates, None if none was seen."""
        days = [r.days_left for r in self.listeners if r.days_left is not None]
        return min(days, default=None)


# --- rules ----------------------------------------------------------------------------------


def _parse_der(der: bytes | None) -> x509.Certificate | None:
    if der is None:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _names(obs: Observation, info: CertInfo) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names that should be in the SANs, those that are)."""
    entry, target = obs.configured.entry, obs.target
    checked: list[str] = []
    # the loopback stand-in of a `*` bind is no name a client uses unless a section assigns it
    stand_in = target.bind == "*" and not (entry and target.address in entry.addresses)
    if target.server_name:
        checked.append(target.server_name)  # a client naming the server checks that name only
    else:
        checked += [] if stand_in else [target.address]
        checked += list(entry.server_names) if entry else []
    ips = {s[3:] for s in info.sans if s.startswith("IP:")}
    dns = [s[4:] for s in info.sans if s.startswith("DNS:")]
    matched = []
    for name in checked:
        try:
            hit = normalize_address(name) in ips
        except ValueError:
            hit = any(_name_matches(p, name) for p in dns)
        if hit:
            matched.append(name)
    return tuple(checked), tuple(matched)


def _session_findings(obs: Observation) -> list[Finding]:
    main, anon, crit = obs.main, obs.anonymous, Status.CRITICAL
    out: list[Finding] = []
    # a certificate-less attempt on a client-cert port is meant to be refused: not an error
    expected_refusal = anon is main and main.admitted is False
    if main.error and not expected_refusal:
        prefix = "with the [check] client certificate: " if obs.probe_used else ""
        out.append(Finding(crit, prefix + main.error))
    if anon is not None and anon.admitted is True:
        how = f"{anon.tls_version}, server replied {anon.reply!r}"
        out.append(
            Finding(crit, f"client-cert port lets a client without a certificate in ({how})")
        )
    elif anon is not None and anon is not main and anon.admitted is None:
        why = anon.error or "no answer"
        out.append(
            Finding(crit, f"could not prove a client without a certificate is refused: {why}")
        )
    if expected_refusal and not obs.seen.handshake_done:
        out.append(
            Finding(
                Status.UNKNOWN,
                "served certificate not seen: the server refuses certificate-less clients in the "
                "handshake (TLS 1.2); set [check] client_cert and client_key to inspect it",
            )
        )
    return out


def _configured_findings(obs: Observation, info: CertInfo | None) -> list[Finding]:
    conf, crit = obs.configured, Status.CRITICAL
    if not conf.compared:
        return []
    if conf.entry is None:
        what = obs.target.server_name or obs.target.address
        return [Finding(crit, f"no certificate is configured for {what}")]
    where = f"[certificate:{conf.entry.name}] {conf.entry.cert}"
    if conf.error:
        return [Finding(crit, f"configured certificate {where} cannot be read: {conf.error}")]
    if info is not None and info.fingerprint != conf.fingerprint:
        return [
            Finding(
                crit,
                f"served certificate differs from configured {where} (served {info.fingerprint}, "
                f"on disk {conf.fingerprint}); reload the server if the file was replaced",
            )
        ]
    return []


def _unserved_findings(conf: Configured, now: dt.datetime, limits: Limits) -> list[Finding]:
    """Why the configured certificate may not be served: its dates, judged like a served one."""
    if conf.entry is None or conf.info is None:
        return []
    where = f"configured certificate [certificate:{conf.entry.name}] (not served): "
    return [Finding(f.status, where + f.text) for f in _date_findings(conf.info, now, limits)]


def days_left(info: CertInfo, now: dt.datetime) -> int:
    """`certs.days_left` of the certificate: one meaning of "days left" everywhere."""
    return info.days_left(now)


@dataclass(frozen=True)
class Limits:
    """Days-left thresholds: WARNING at `days_left <= warn`, CRITICAL at `<= crit` (when set)
    and always once expired."""

    warn: int
    crit: int | None = None


def _date_findings(info: CertInfo, now: dt.datetime, limits: Limits) -> list[Finding]:
    days = days_left(info, now)
    if now < info.not_before:
        return [Finding(Status.CRITICAL, f"certificate not valid before {_day(info.not_before)}")]
    phrase = expiry_phrase(info.not_after, now)
    if now >= info.not_after:
        return [Finding(Status.CRITICAL, f"certificate {phrase} ({_day(info.not_after)})")]
    if limits.crit is not None and days <= limits.crit:
        text = f"certificate {phrase} ({_day(info.not_after)}; critical at {limits.crit})"
        return [Finding(Status.CRITICAL, text)]
    if days <= limits.warn:
        text = f"certificate {phrase} ({_day(info.not_after)}; warning at {limits.warn})"
        return [Finding(Status.WARNING, text)]
    return []


def _day(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _shown(info: CertInfo) -> CertInfo:
    """The served certificate's names with control characters escaped: whoever runs the
    listener chose them, and they end up on a terminal and in JSON for other tools."""
    return dataclasses.replace(
        info,
        subject=escape_controls(info.subject),
        issuer=escape_controls(info.issuer),
        common_name=escape_controls(info.common_name) if info.common_name else None,
        sans=tuple(escape_controls(s) for s in info.sans),
    )


def judge(
    obs: Observation,
    now: dt.datetime,
    warn_days: int,
    ca_source: str,
    crit_days: int | None = None,
) -> ListenerReport:
    """The verdict on one listener from what its probes saw (pure: no I/O)."""
    limits = Limits(warn_days, crit_days)
    leaf = _parse_der(obs.seen.leaf_der)
    info = _shown(cert_info(leaf)) if leaf is not None else None
    findings = _session_findings(obs) + _configured_findings(obs, info)
    checked: tuple[str, ...] = ()
    matched: tuple[str, ...] = ()
    if info is None or info.fingerprint != obs.configured.fingerprint:
        findings += _unserved_findings(obs.configured, now, limits)
    if info is not None:
        findings += _date_findings(info, now, limits)
        if obs.chain_error:
            text = f"chain does not verify against {ca_source}: {obs.chain_error}"
            findings.append(Finding(Status.CRITICAL, text))
        checked, matched = _names(obs, info)
        if checked and not matched:
            text = f"certificate SANs name none of: {', '.join(checked)}"
            findings.append(Finding(Status.WARNING, text))
    chain = tuple(
        escape_controls(c.subject.rfc4514_string())
        for c in map(_parse_der, obs.seen.chain_der)
        if c
    )
    return ListenerReport(
        observation=obs,
        status=worst([f.status for f in findings]),
        findings=tuple(sorted(findings, key=lambda f: -f.status.rank)),
        cert=info,
        days_left=days_left(info, now) if info else None,
        names_checked=checked,
        names_matched=matched,
        chain_subjects=chain,
    )
