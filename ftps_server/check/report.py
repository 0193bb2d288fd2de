"""Output of `ftps-server check`: the monitoring-plugin line, the readable table, and JSON.

Text output: the first line is in monitoring-plugin form, e.g.

    FTPS OK - 4 listeners, nearest expiry 41 days | days_left=41;14;0 time=0.031s
    FTPS CRITICAL - 2 listeners (1 critical), 2 SNI probes (2 critical), nearest expiry ...:
        LISTENER: its most severe finding | days_left=...  (one line in reality)

(perfdata `days_left=VALUE;WARN;CRIT`, present whenever a certificate was seen, and `time=`, the
seconds the probes took), then a table with one row per listener, then one block per listener
with every fact and every finding.

JSON output (`--json`) is one object, schema in docs/check.schema.json (`format_version` 1):

    status            "OK" | "WARNING" | "CRITICAL" | "UNKNOWN" (exit_status 0 | 1 | 2 | 3)
    summary           the monitoring-plugin line
    config (null with -H), mode ("config" | "host"), checked_at (ISO 8601 UTC),
    warn_days, crit_days (null: CRITICAL only once expired), timeout, elapsed_seconds, ca_source
    nearest_expiry_days   int or null
    error             why the run is UNKNOWN before probing (null otherwise)
    listeners[]       address, bind (the configured address, maybe "*"), kind, port,
                      server_name (SNI sent, or null), status,
                      findings[] {status, text}, reachable (TCP accepted),
                      tls {version, cipher, bits} | null,
                      certificate {subject, issuer, common_name, sans[], fingerprint_sha256,
                        serial, not_before, not_after, days_left, key_type, key_bits,
                        chain[]} | null,
                      configured {section, path, fingerprint_sha256, matches, error} | null,
                      chain {checked, verified, against, error},
                      names {checked[], matched[]},
                      client_certificate null on other ports, else
                        {anonymous {refused, detail}, probe {used, admitted, detail}},
                      elapsed_seconds
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .probe import Attempt
    from .verdict import ListenerReport, RunReport

__all__ = ["FORMAT_VERSION", "emit", "render_text", "summary_line", "to_json"]

FORMAT_VERSION = 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _expiry(days: int) -> str:
    if days < 0:
        return f"nearest expiry {_plural(-days, 'day')} ago"
    return f"nearest expiry {_plural(days, 'day')}"


def _counts(reports: list[ListenerReport], what: str, count: int) -> str:
    bad = [
        f"{n} {status.lower()}"
        for status in ("CRITICAL", "WARNING", "UNKNOWN")
        if (n := sum(1 for r in reports if r.status.name == status))
    ]
    return _plural(count, what) + (f" ({', '.join(bad)})" if bad else "")


def _perfdata(report: RunReport) -> str:
    """`days_left=D;WARN;CRIT time=0.031s` (days_left only when a certificate was seen)."""
    out = []
    nearest = report.nearest_expiry
    if nearest is not None:
        crit = report.crit_days if report.crit_days is not None else 0
        out.append(f"days_left={nearest};{report.warn_days};{crit}")
    if report.elapsed is not None:
        out.append(f"time={report.elapsed:.3f}s")
    return " ".join(out)


def summary_line(report: RunReport) -> str:
    """The monitoring-plugin first line: `FTPS STATUS - text | perfdata`.

    Listeners and SNI probes are counted apart, each with its own non-OK counts; the text
    ends with the worst row's label and its own most severe finding.
    """
    head = f"FTPS {report.status.name} - "
    if report.error:
        return head + report.error.replace("|", "/")
    plain = [r for r in report.listeners if not r.target.server_name]
    named = [r for r in report.listeners if r.target.server_name]
    listeners = {(r.target.address, r.target.kind, r.target.port) for r in report.listeners}
    parts = [_counts(plain, "listener", len(listeners))]
    if named:
        parts.append(_counts(named, "SNI probe", len(named)))
    nearest = report.nearest_expiry
    parts.append(_expiry(nearest) if nearest is not None else "no certificate seen")
    text = ", ".join(parts)
    flagged = [r for r in report.listeners if r.findings and r.status.name != "OK"]
    if flagged:
        # max() keeps the first of equals (config order); a listener before an SNI probe
        worst = max(flagged, key=lambda r: (r.status.rank, not r.target.server_name))
        text += f": {worst.target.label}: {worst.findings[0].text}"
    text = text.replace("|", "/")  # `|` starts the perfdata
    perfdata = _perfdata(report)
    return head + text + (f" | {perfdata}" if perfdata else "")


# --- text -----------------------------------------------------------------------------------

_COLUMNS = ("LISTENER", "BIND", "STATUS", "DAYS", "TLS", "FINGERPRINT (SHA-256)")


def _row(r: ListenerReport) -> tuple[str, ...]:
    obs = r.observation
    return (
        r.target.label,
        obs.target.bind,
        r.status.name,
        "-" if r.days_left is None else str(r.days_left),
        obs.seen.tls_version or "-",
        r.cert.fingerprint[:23] + "..." if r.cert else "-",  # in full in the block below
    )


def _table(reports: tuple[ListenerReport, ...]) -> list[str]:
    rows = [_COLUMNS, *(_row(r) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _client_cert_text(r: ListenerReport) -> list[str]:
    obs = r.observation
    anon = obs.anonymous
    if anon is None:
        return []
    if anon.admitted is False:
        lines = [f"no certificate: refused {anon.refusal}"]
    elif anon.admitted is True:
        lines = [f"no certificate: LET IN (server replied {anon.reply!r})"]
    else:
        lines = [f"no certificate: not proven refused ({anon.error})"]
    if obs.probe_used:
        got_in = "let in" if obs.main.admitted else f"NOT let in ({obs.main.error})"
        lines.append(f"[check] client_cert: {got_in}")
    else:
        lines.append("[check] client_cert: not configured")
    return lines


def _cert_lines(r: ListenerReport) -> list[tuple[str, str]]:
    c, obs = r.cert, r.observation
    if c is None:
        return [("certificate", "not seen")]
    when = f"{c.not_before:%Y-%m-%d %H:%M} .. {c.not_after:%Y-%m-%d %H:%M} UTC"
    out = [
        ("subject", c.subject),
        ("issuer", c.issuer),
        ("SANs", ", ".join(c.sans) or "(none)"),
        ("fingerprint", c.fingerprint),
        ("valid", f"{when} ({r.days_left} days left)"),
        ("key", f"{c.key_type} {c.key_bits} bits"),
    ]
    if r.chain_subjects:
        out.append(("served chain", " <- ".join(r.chain_subjects)))
    if obs.chain_error:
        out.append(("chain", f"does NOT verify: {obs.chain_error}"))
    elif obs.chain_checked:
        out.append(("chain", "verifies"))
    if r.names_checked:
        missing = [n for n in r.names_checked if n not in r.names_matched]
        out.append(("names", "in SANs: " + (", ".join(missing) + " MISSING" if missing else "all")))
    return out


def _configured_text(r: ListenerReport) -> str:
    conf = r.observation.configured
    if not conf.compared:
        return "not compared (check -H: no configuration read)"
    if conf.entry is None:
        return "none for this address"
    where = f"[certificate:{conf.entry.name}] {conf.entry.cert}"
    if conf.error:
        return f"{where}: {conf.error}"
    if r.cert is None:
        return where
    same = "the served certificate" if r.cert.fingerprint == conf.fingerprint else "DIFFERENT"
    return f"{where}: {same}"


def _block(r: ListenerReport) -> list[str]:
    main, seen = r.observation.main, r.observation.seen
    if seen.handshake_done:
        reach = f"yes, {seen.tls_version} {seen.cipher} ({seen.cipher_bits} bits)"
    else:
        reach = f"no: {main.error}" if main.stage == "tcp" else "TCP yes, no TLS session"
    pairs = [("reachable", reach), *_cert_lines(r), ("configured", _configured_text(r))]
    pairs += [("client cert", text) for text in _client_cert_text(r)]
    lines = [f"{r.target.label} (bind {r.target.bind}): {r.status.name}"]
    lines += [f"  {k:<13}{v}" for k, v in pairs]
    lines += [f"  {f.status.name}: {f.text}" for f in r.findings]
    return lines


def render_text(report: RunReport) -> str:
    """The whole readable report: plugin line, table, one block per listener.

    Nagios and Icinga read the lines after the first as "long output", and text after a `|` on
    any of them as more perfdata: a `|` in a reply or a certificate name the listener chose
    would inject figures, so past the plugin line every `|` becomes `/` as well.
    """
    lines: list[str] = []
    if report.listeners:
        lines += ["", *_table(report.listeners)]
        for r in report.listeners:
            lines += ["", *_block(r)]
    return "\n".join([summary_line(report), *(x.replace("|", "/") for x in lines)]) + "\n"


# --- JSON -----------------------------------------------------------------------------------


def _attempt_detail(a: Attempt) -> str | None:
    return a.refusal or a.error or (f"server replied {a.reply!r}" if a.reply else None)


def _client_cert_json(r: ListenerReport) -> dict[str, Any] | None:
    obs = r.observation
    anon = obs.anonymous
    if anon is None:
        return None
    return {
        "anonymous": {
            "refused": None if anon.admitted is None else not anon.admitted,
            "detail": _attempt_detail(anon),
        },
        "probe": {
            "used": obs.probe_used,
            "admitted": obs.main.admitted if obs.probe_used else None,
            "detail": _attempt_detail(obs.main) if obs.probe_used else None,
        },
    }


def _certificate_json(r: ListenerReport) -> dict[str, Any] | None:
    c = r.cert
    if c is None:
        return None
    return {
        "subject": c.subject,
        "issuer": c.issuer,
        "common_name": c.common_name,
        "sans": list(c.sans),
        "fingerprint_sha256": c.fingerprint,
        "serial": format(c.serial, "X"),
        "not_before": c.not_before.isoformat(),
        "not_after": c.not_after.isoformat(),
        "days_left": r.days_left,
        "key_type": c.key_type,
        "key_bits": c.key_bits,
        "chain": list(r.chain_subjects),
    }


def _listener_json(r: ListenerReport, ca_source: str) -> dict[str, Any]:
    obs, main, seen = r.observation, r.observation.main, r.observation.seen
    conf = obs.configured
    return {
        "address": r.target.address,
        "bind": r.target.bind,
        "kind": r.target.kind,
        "port": r.target.port,
        "server_name": r.target.server_name,
        "status": r.status.name,
        "findings": [{"status": f.status.name, "text": f.text} for f in r.findings],
        "reachable": main.stage != "tcp",
        "tls": {"version": seen.tls_version, "cipher": seen.cipher, "bits": seen.cipher_bits}
        if seen.handshake_done
        else None,
        "certificate": _certificate_json(r),
        "configured": None
        if conf.entry is None or not conf.compared
        else {
            "section": conf.entry.name,
            "path": str(conf.entry.cert),
            "fingerprint_sha256": conf.fingerprint,
            "matches": (r.cert.fingerprint == conf.fingerprint)
            if r.cert and not conf.error
            else None,
            "error": conf.error,
        },
        "chain": {
            "checked": obs.chain_checked,
            "verified": (obs.chain_error is None) if obs.chain_checked else None,
            "against": ca_source,
            "error": obs.chain_error,
        },
        "names": {"checked": list(r.names_checked), "matched": list(r.names_matched)},
        "client_certificate": _client_cert_json(r),
        "elapsed_seconds": round(main.elapsed, 3),
    }


def to_json(report: RunReport) -> dict[str, Any]:
    """The documented JSON structure (see the module docstring and docs/check.schema.json)."""
    return {
        "format_version": FORMAT_VERSION,
        "status": report.status.name,
        "exit_status": int(report.status),
        "summary": summary_line(report),
        "config": report.config_path,
        "mode": "config" if report.config_path is not None else "host",
        "checked_at": report.checked_at.isoformat(),
        "warn_days": report.warn_days,
        "crit_days": report.crit_days,
        "timeout": report.timeout,
        "elapsed_seconds": None if report.elapsed is None else round(report.elapsed, 3),
        "ca_source": report.ca_source,
        "nearest_expiry_days": report.nearest_expiry,
        "error": report.error,
        "listeners": [_listener_json(r, report.ca_source) for r in report.listeners],
    }


def emit(report: RunReport, *, as_json: bool, out: TextIO | None = None) -> None:
    """Print the report to `out` (stdout): text, or JSON with `as_json`."""
    stream = out or sys.stdout
    if as_json:
        stream.write(json.dumps(to_json(report), indent=2) + "\n")
    else:
        stream.write(render_text(report))
