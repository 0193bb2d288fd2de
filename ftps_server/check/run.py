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

from ..config.ini import normalize_address
from ..config.loader import DEFAULT_CONFIG_PATH, load
from ..config.model import PORT_KINDS, Config
from ..errors import CertificateError, CheckError, ConfigError
from ..pki.certs import cert_info, fingerprint, load_chain, utcnow
from . import report as check_report
from .probe import Attempt, Target, run_attempt
from .verdict import Configured, Observation, RunReport, Status, judge, worst

__all__ = [
    "Remote",
    "check",
    "check_remote",
    "observe",
    "register",
    "run",
    "targets",
    "usage_error",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_WARN_DAYS = 14  # with -H there is no [alerts] warn_days to default to
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
        what = f"CA file {ca_file}" if verify and ca_file else "the probe client_cert/client_key"
        raise CheckError(f"cannot load {what}: {getattr(exc, 'strerror', None) or exc}") from None
    return ctx


def _contexts(ca_file: Path | None, probe: tuple[Path, Path] | None) -> _Contexts:
    verifying, plain = {}, {}
    for with_cert in (False, True) if probe else (False,):
        chosen = probe if with_cert else None
        verifying[with_cert] = _client_context(True, ca_file, chosen)
        plain[with_cert] = _client_context(False, None, chosen)
    return _Contexts(verifying, plain, probe is not None)


def _config_contexts(config: Config) -> _Contexts:
    check = config.check
    probe = (
        (check.client_cert, check.client_key) if check.client_cert and check.client_key else None
    )
    return _contexts(check.ca_file, probe)


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
    kit: _Contexts, wanted: list[Target], configured: dict[Target, Configured], deadline: float
) -> list[Observation]:
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


def check(
    config: Config,
    *,
    warn_days: int,
    timeout: float,
    only: str | None,
    crit_days: int | None = None,
) -> RunReport:
    """Probe and judge every listener of `config` within `timeout` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    kit = _config_contexts(config)
    ca_source = str(config.check.ca_file) if config.check.ca_file else "the system store"
    wanted = targets(config, only)
    base: dict[str, Any] = {
        "config_path": str(config.path),
        "checked_at": utcnow(),
        "warn_days": warn_days,
        "crit_days": crit_days,
        "timeout": timeout,
        "ca_source": ca_source,
    }
    if not wanted:
        why = f"no enabled listener on {only}" if only else "no listener is enabled in [ports]"
        return RunReport(Status.UNKNOWN, error=why, **base)
    configured = {t: _configured(config, t) for t in wanted}
    return _judged(_probe_all(kit, wanted, configured, deadline), started, base)


@dataclass(frozen=True)
class Remote:
    """One listener of a server whose configuration is not read (`check -H`)."""

    host: str
    port: int
    kind: str
    server_name: str | None = None
    ca_file: Path | None = None
    probe: tuple[Path, Path] | None = None  # the monitoring's own client certificate and key


def check_remote(
    remote: Remote, *, warn_days: int, timeout: float, crit_days: int | None = None
) -> RunReport:
    """Probe one listener given by host, port and kind: dates, chain, names, client-cert
    refusal; nothing is compared with a configuration, and no file but `remote`'s is read."""
    started = time.monotonic()
    kit = _contexts(remote.ca_file, remote.probe)
    target = Target(
        remote.host, remote.host, remote.kind, remote.port, remote.server_name, remote=True
    )
    base: dict[str, Any] = {
        "config_path": None,
        "checked_at": utcnow(),
        "warn_days": warn_days,
        "crit_days": crit_days,
        "timeout": timeout,
        "ca_source": str(remote.ca_file) if remote.ca_file else "the system store",
    }
    unread = Configured(None, compared=False)
    observations = _probe_all(kit, [target], {target: unread}, started + timeout)
    return _judged(observations, started, base)


def _judged(observations: list[Observation], started: float, base: dict[str, Any]) -> RunReport:
    elapsed = time.monotonic() - started
    now = utcnow()  # judge dates at one instant, after the probes
    reports = tuple(
        judge(o, now, base["warn_days"], base["ca_source"], base["crit_days"]) for o in observations
    )
    status = worst([r.status for r in reports])
    return RunReport(status, listeners=reports, elapsed=elapsed, **base)


class UsageError(ValueError):
    """Options that do not go together; exit 3 (UNKNOWN) like any usage error of `check`."""


def _unknown(args: argparse.Namespace, why: str) -> int:
    report = RunReport(
        Status.UNKNOWN,
        config_path=None if args.host else str(args.config or DEFAULT_CONFIG_PATH),
        checked_at=utcnow(),
        warn_days=args.warn_days if args.warn_days is not None else -1,
        crit_days=args.crit_days,
        timeout=args.timeout,
        ca_source="",
        error=why,
    )
    check_report.emit(report, as_json=args.json)
    return int(Status.UNKNOWN)


_REMOTE_ONLY = ("port", "kind", "sni", "ca_file", "client_cert", "client_key")
_DEFAULT_PORTS = {"explicit": 21, "implicit": 990}


def _remote(args: argparse.Namespace) -> Remote:
    if args.config is not None or args.address is not None:
        raise UsageError(
            "-H/--host checks one listener without a configuration: drop --config and --address"
        )
    kind = args.kind or "explicit"
    port = args.port or _DEFAULT_PORTS.get(kind)
    if port is None:
        raise UsageError(f"--kind {kind} has no standard port: give -p/--port")
    if bool(args.client_cert) != bool(args.client_key):
        raise UsageError("--client-cert and --client-key go together")
    probe = (args.client_cert, args.client_key) if args.client_cert else None
    return Remote(args.host, port, kind, args.sni, args.ca_file, probe)


def _thresholds(args: argparse.Namespace, default_warn: int) -> int:
    warn_days: int = args.warn_days if args.warn_days is not None else default_warn
    if args.crit_days is not None and args.crit_days > warn_days:
        raise UsageError(
            f"-c/--critical {args.crit_days} is more than -w/--warning {warn_days}: "
            "WARNING would never show"
        )
    return warn_days


def run(args: argparse.Namespace) -> int:
    """Run the check; returns the monitoring-plugin exit status."""
    try:
        if args.host:
            remote = _remote(args)
            warn_days = _thresholds(args, DEFAULT_WARN_DAYS)
            report = check_remote(
                remote, warn_days=warn_days, timeout=args.timeout, crit_days=args.crit_days
            )
        else:
            given = [f"--{k.replace('_', '-')}" for k in _REMOTE_ONLY if getattr(args, k)]
            if given:
                raise UsageError(f"{', '.join(given)} only go with -H/--host")
            config = load(args.config or DEFAULT_CONFIG_PATH)
            only = normalize_address(args.address) if args.address else None
            warn_days = _thresholds(args, config.alerts.warn_days[-1])
            report = check(
                config,
                warn_days=warn_days,
                timeout=args.timeout,
                only=only,
                crit_days=args.crit_days,
            )
    except UsageError as exc:
        return _unknown(args, f"usage: {exc}")
    except ConfigError as exc:
        return _unknown(args, f"cannot use the configuration: {exc}")
    except (CheckError, ValueError) as exc:
        return _unknown(args, str(exc))
    check_report.emit(report, as_json=args.json)
    return int(report.status)


def usage_error() -> int:
    """What an argparse error of `check` becomes: the plugin line on stdout (argparse wrote
    the usage to stderr) and exit 3, since monitoring reads argparse's 2 as CRITICAL."""
    print("FTPS UNKNOWN - usage error (see stderr)")
    return int(Status.UNKNOWN)


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


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 1..65535")
    return value


def register(subparsers: Any) -> None:
    """Add the `check` subcommand."""
    parser = subparsers.add_parser(
        "check",
        help="connect to every listener over FTPS and judge the certificates served",
        description="Connect to every enabled listener over real FTPS and report the certificate "
        "each one serves, whether it is the configured one, its chain, dates and names, and on "
        "client-certificate ports that a client without a certificate is refused. With -H, "
        "check one listener of any server without reading a configuration.",
        epilog="Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, also for a usage error "
        "(monitoring-plugin convention). See docs/check.md.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the server's configuration (default {DEFAULT_CONFIG_PATH}; not with -H)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report instead")
    parser.add_argument(
        "-w",
        "--warning",
        "--warn-days",
        dest="warn_days",
        type=_days,
        metavar="DAYS",
        help="WARNING when a certificate has DAYS days left or fewer "
        f"(default: the smallest [alerts] warn_days; with -H {DEFAULT_WARN_DAYS})",
    )
    parser.add_argument(
        "-c",
        "--critical",
        dest="crit_days",
        type=_days,
        metavar="DAYS",
        help="CRITICAL when a certificate has DAYS days left or fewer "
        "(default: CRITICAL only once expired)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"overall deadline in seconds; every connection gets what is left "
        f"(default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--address", metavar="A", help="check only the listeners on address A")
    remote = parser.add_argument_group("one listener without a configuration (-H)")
    remote.add_argument("-H", "--host", metavar="HOST", help="address or name to connect to")
    remote.add_argument(
        "-p", "--port", type=_port, metavar="PORT", help="default 21 explicit, 990 implicit"
    )
    remote.add_argument("--kind", choices=PORT_KINDS, help="the listener's kind (default explicit)")
    remote.add_argument(
        "--sni", metavar="NAME", help="server name to send (default: HOST when it is a name)"
    )
    remote.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="verify the chain against FILE (default: the system store)",
    )
    remote.add_argument(
        "--client-cert", type=Path, metavar="FILE", help="probe certificate for client-cert ports"
    )
    remote.add_argument("--client-key", type=Path, metavar="FILE", help="its key")
    parser.set_defaults(func=run)
