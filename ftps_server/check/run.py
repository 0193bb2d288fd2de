"""`ftps-server check`: connect to every listener like a client and judge what it serves.

It tells what clients actually see, not what is on disk: for each enabled listener it does the
real FTPS exchange (`AUTH TLS` on explicit ports, a handshake at once on implicit ones), then
compares the served certificate with the configured one, verifies its chain, checks dates, names
and, on client-certificate ports, that a client without a certificate is refused. It reads only
certificate files, never private keys, so it runs as any user.

Verdicts follow the monitoring-plugin convention (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN);
the output formats, including the `--json` structure, are documented in `report` and
docs/check.md.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.model import DEFAULT_CONFIG_PATH, Config, load, normalize_address
from ..errors import CertificateError, CheckError, ConfigError
from ..pki.certs import cert_info, fingerprint, load_chain, utcnow
from . import report as check_report
from .probe import Attempt, Target, run_attempt
from .verdict import Configured, Observation, RunReport, Status, judge, worst

__all__ = ["check", "observe", "register", "run", "targets"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
_PARALLEL = 8  # listeners probed at once; stays well under max_connections_per_ip
_JOIN_GRACE = 0.5  # seconds past the deadline before a stuck probe is abandoned


# --- which listeners ------------------------------------------------------------------------


def _wildcard_addresses(config: Config) -> list[str]:
    # a `*` bind serves whatever address a client reaches; check the ones certificates name,
    # and loopback as a stand-in for "any other address" (the default certificate)
    out = config.resolver.named_addresses()
    if config.resolver.default is not None or not out:
        out.append("127.0.0.1")
    return list(dict.fromkeys(out))


def _sni_names(config: Config, address: str) -> list[str]:
    # one name per section other than the address's own: a client naming it gets that section
    own = config.resolver.for_address(address)
    return [e.server_names[0] for e in config.certificates if e.server_names and e is not own]


def targets(config: Config, only: str | None = None) -> list[Target]:
    """Every (address, kind, port) to probe, then its SNI probes; `only` keeps one address."""
    out: list[Target] = []
    for bind, kind, port in config.listeners():
        addresses = _wildcard_addresses(config) if bind == "*" else [bind]
        if only is not None and bind == "*" and only not in addresses:
            addresses.append(only)
        for address in addresses:
            if only in (None, address):
                out.append(Target(address, bind, kind, port))
                names = _sni_names(config, address)
                out += [Target(address, bind, kind, port, name) for name in names]
    return list(dict.fromkeys(out))


def _configured(config: Config, target: Target) -> Configured:
    if target.server_name:
        entry = config.resolver.for_name(target.server_name)
    else:
        entry = config.resolver.for_address(target.address)
    if entry is None:
        return Configured(None)
    try:
        leaf = load_chain(entry.cert)[0]  # the certificate only: never the key
    except CertificateError as exc:
        return Configured(entry, error=str(exc))
    return Configured(entry, fingerprint(leaf), info=cert_info(leaf))


# --- probing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Contexts:
    """Client contexts: verifying or not, with or without the [check] probe certificate."""

    verifying: dict[bool, ssl.SSLContext]
    plain: dict[bool, ssl.SSLContext]
    has_probe: bool


def _client_context(
    verify: bool, ca_file: Path | None, probe: tuple[Path, Path] | None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # names are judged against the config, not the socket address
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    try:
        if verify and ca_file:
            ctx.load_verify_locations(cafile=str(ca_file))
        elif verify:
            ctx.load_default_certs()
        if probe:
            ctx.load_cert_chain(str(probe[0]), str(probe[1]))
    except (OSError, ssl.SSLError) as exc:
        what = f"[check] ca_file {ca_file}" if verify and ca_file else "[check] client_cert/key"
        raise CheckError(f"cannot load {what}: {getattr(exc, 'strerror', None) or exc}") from None
    return ctx


def _contexts(config: Config) -> _Contexts:
    check = config.check
    probe = (
        (check.client_cert, check.client_key) if check.client_cert and check.client_key else None
    )
    verifying, plain = {}, {}
    for with_cert in (False, True) if probe else (False,):
        chosen = probe if with_cert else None
        verifying[with_cert] = _client_context(True, check.ca_file, chosen)
        plain[with_cert] = _client_context(False, None, chosen)
    return _Contexts(verifying, plain, probe is not None)


def observe(target: Target, kit: _Contexts, configured: Configured, deadline: float) -> Observation:
    """Probe one listener: facts and chain first, then the certificate-less refusal."""
    use_probe = target.client_cert and kit.has_probe
    main = run_attempt(target, kit.verifying[use_probe], deadline, cert=use_probe)
    chain_checked, chain_error = main.handshake_done, None
    if main.verify_error is not None:
        # the verifying handshake stops at the bad chain; look again without verifying to see it
        chain_checked, chain_error = True, main.verify_error
        main = run_attempt(target, kit.plain[use_probe], deadline, cert=use_probe)
    anonymous = None
    if target.client_cert:
        anonymous = (
            run_attempt(target, kit.plain[False], deadline, cert=False) if use_probe else main
        )
    return Observation(target, main, configured, chain_checked, chain_error, anonymous, use_probe)


def _probe_all(
    config: Config, kit: _Contexts, wanted: list[Target], deadline: float
) -> list[Observation]:
    configured = {t: _configured(config, t) for t in wanted}
    results: list[Observation | None] = [None] * len(wanted)
    gate = threading.BoundedSemaphore(_PARALLEL)

    def work(index: int, target: Target) -> None:
        conf = configured[target]
        with gate:
            try:
                results[index] = observe(target, kit, conf, deadline)
            except Exception as exc:  # a bug in one probe must not hide the other listeners
                log.debug("probe of %s failed", target.label, exc_info=True)
                results[index] = _abandoned(target, conf, f"the probe failed: {exc!r}")

    # daemon threads: a probe stuck past the deadline must not keep the process alive
    threads = [
        threading.Thread(target=work, args=(i, t), daemon=True, name=f"check {t.label}")
        for i, t in enumerate(wanted)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline + _JOIN_GRACE - time.monotonic()))
    snapshot = list(results)
    return [
        obs or _abandoned(target, configured[target])
        for obs, target in zip(snapshot, wanted, strict=True)
    ]


def _abandoned(
    target: Target, configured: Configured, why: str = "no result within the overall timeout"
) -> Observation:
    return Observation(target, Attempt(with_certificate=False, error=why), configured)


# --- command --------------------------------------------------------------------------------


def check(config: Config, *, warn_days: int, timeout: float, only: str | None) -> RunReport:
    """Probe and judge every listener of `config` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    kit = _contexts(config)
    ca_source = str(config.check.ca_file) if config.check.ca_file else "the system store"
    wanted = targets(config, only)
    base: dict[str, Any] = {
        "config_path": str(config.path),
        "checked_at": utcnow(),
        "warn_days": warn_days,
        "timeout": timeout,
        "ca_source": ca_source,
    }
    if not wanted:
        why = f"no enabled listener on {only}" if only else "no listener is enabled in [ports]"
        return RunReport(Status.UNKNOWN, error=why, **base)
    observations = _probe_all(config, kit, wanted, deadline)
    now = utcnow()  # judge dates at one instant, after the probes
    reports = tuple(judge(o, now, warn_days, ca_source) for o in observations)
    return RunReport(worst([r.status for r in reports]), listeners=reports, **base)


def _unknown(args: argparse.Namespace, why: str) -> int:
    report = RunReport(
        Status.UNKNOWN,
        config_path=str(args.config),
        checked_at=utcnow(),
        warn_days=args.warn_days if args.warn_days is not None else -1,
        timeout=args.timeout,
        ca_source="",
        error=why,
    )
    check_report.emit(report, as_json=args.json)
    return int(Status.UNKNOWN)


def run(args: argparse.Namespace) -> int:
    """Run the check; returns the monitoring-plugin exit status."""
    try:
        config = load(args.config)
        only = normalize_address(args.address) if args.address else None
        warn_days = args.warn_days if args.warn_days is not None else config.alerts.warn_days[-1]
        report = check(config, warn_days=warn_days, timeout=args.timeout, only=only)
    except ConfigError as exc:
        return _unknown(args, f"cannot use the configuration: {exc}")
    except (CheckError, ValueError) as exc:
        return _unknown(args, str(exc))
    check_report.emit(report, as_json=args.json)
    return int(report.status)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _days(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def register(subparsers: Any) -> None:
    """Add the `check` subcommand."""
    parser = subparsers.add_parser(
        "check",
        help="connect to every listener over FTPS and judge the certificates served",
        description="Connect to every enabled listener over real FTPS and report the certificate "
        "each one serves, whether it is the configured one, its chain, dates and names, and on "
        "client-certificate ports that a client without a certificate is refused.",
        epilog="Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (monitoring-plugin "
        "convention). See docs/check.md.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="FILE",
        help=f"the server's configuration (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report instead")
    parser.add_argument(
        "--warn-days",
        type=_days,
        help="WARNING when a certificate expires within N days "
        "(default: the smallest [alerts] warn_days)",
        metavar="N",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"overall deadline in seconds; every connection gets what is left "
        f"(default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--address", metavar="A", help="check only the listeners on address A")
    parser.set_defaults(func=run)
