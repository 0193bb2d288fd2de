"""Prometheus metrics of the server: `[metrics] listen = 127.0.0.1:9101` (empty = off).

Every metric is defined here; the rest of the server calls the small functions below, one line
per event (the hooks: `auth` for logins and bans, `ftp` for transfers and TLS handshake
failures, `listeners` after every (re)load). Listener, certificate and session figures are
not counted by hooks: they are read from the server when Prometheus scrapes, so they can never
drift from the truth.

The endpoint is prometheus_client's own HTTP handler on a thread of its own, off the IOLoop.
What it reads of the server's state is a snapshot made on the loop (`listeners_applied`) plus
two counts (open sessions, bans) read from structures the loop swaps or copies atomically.
prometheus_client is optional (the `metrics` extra, Debian python3-prometheus-client): without
it every function here does nothing, and a configured `listen` is reported at `crit`.
"""

from __future__ import annotations

import http.server
import logging
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config.model import Config, host_port, listener_name

try:
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import MetricsHandler
    from prometheus_client.process_collector import ProcessCollector
except ImportError:  # pragma: no cover - the extra is installed wherever metrics are tested
    CollectorRegistry = None  # type: ignore[assignment,misc]

__all__ = [
    "available",
    "ban",
    "handshake_failed",
    "listeners_applied",
    "login",
    "transferred",
]

log = logging.getLogger(__name__)

RESULTS = ("ok", "failed")
METHODS = ("password", "certificate", "certificate+password")
_MAX_REASONS = 32  # distinct handshake-failure reasons kept as labels; the rest are "other"


def available() -> bool:
    """True when prometheus_client is installed."""
    return CollectorRegistry is not None


# --- the metrics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    """What the scrape reads of the server, made on the IOLoop after each (re)load."""

    listeners: tuple[tuple[str, str, bool], ...] = ()  # (name, kind, TLS available)
    certificates: tuple[tuple[str, str, float | None, bool], ...] = ()
    # ^ (section, listener, notAfter as Unix seconds or None if unreadable, served)
    ioloop: Any = None
    sessions: tuple[type, ...] = ()  # the listeners' handler classes: a session's channel
    auth: Any = None  # auth.Authenticator: its tracker knows the bans in force


class _Collector:
    """The figures read at scrape time rather than counted."""

    def __init__(self) -> None:
        self.snapshot = _Snapshot()

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot  # one read: a reload swaps in a whole new snapshot
        up = GaugeMetricFamily(
            "ftps_server_listener_up",
            "1 when the listener is open and can offer TLS, 0 when it failed to bind or has "
            "no valid certificate",
            labels=["listener", "kind"],
        )
        for name, kind, ok in snap.listeners:
            up.add_metric([name, kind], 1.0 if ok else 0.0)
        yield up
        not_after = GaugeMetricFamily(
            "ftps_server_certificate_not_after_seconds",
            "notAfter of the certificate of a section, per listener it is meant for (Unix time)",
            labels=["section", "listener"],
        )
        served = GaugeMetricFamily(
            "ftps_server_certificate_served",
            "1 when the listener serves the section's certificate, 0 when it cannot (missing, "
            "unreadable, expired, not yet valid, broken chain)",
            labels=["section", "listener"],
        )
        for section, listener, when, is_served in snap.certificates:
            if when is not None:
                not_after.add_metric([section, listener], when)
            served.add_metric([section, listener], 1.0 if is_served else 0.0)
        yield not_after
        yield served
        yield GaugeMetricFamily(
            "ftps_server_sessions_open",
            "Control connections open",
            value=_sessions(snap.ioloop, snap.sessions),
        )
        yield GaugeMetricFamily(
            "ftps_server_banned_addresses",
            "Addresses under a ban for repeated failed logins",
            value=_banned(snap.auth),
        )


def _sessions(ioloop: Any, kinds: tuple[type, ...]) -> float:
    if ioloop is None or not kinds:
        return 0.0
    # list() of a dict's values runs in C without yielding the GIL: a consistent copy even
    # while the loop opens and closes channels
    channels = list(ioloop.socket_map.values())
    return float(sum(1 for c in channels if isinstance(c, kinds)))


def _banned(authenticator: Any) -> float:
    if authenticator is None:
        return 0.0
    for _ in range(3):  # the loop may add a record mid-count: count again
        try:
            return float(len(authenticator.tracker.banned()))
        except RuntimeError:
            continue
    return float("nan")


if CollectorRegistry is not None:
    REGISTRY = CollectorRegistry()
    ProcessCollector(registry=REGISTRY)  # CPU, memory, open files of the server process
    _COLLECTOR = _Collector()
    REGISTRY.register(_COLLECTOR)
    _LOGINS = Counter(
        "ftps_server_logins",
        "Login attempts by result (ok, failed) and method (the user's auth policy tried)",
        ["result", "method"],
        registry=REGISTRY,
    )
    _BYTES = Counter(
        "ftps_server_transfer_bytes",
        "File data bytes moved over data connections, by direction (upload, download)",
        ["direction"],
        registry=REGISTRY,
    )
    _HANDSHAKE_FAILURES = Counter(
        "ftps_server_tls_handshake_failures",
        "TLS handshakes that failed, by reason and connection (control, data)",
        ["reason", "connection"],
        registry=REGISTRY,
    )
    _BANS = Counter(
        "ftps_server_bans",
        "Addresses banned after repeated failed logins",
        registry=REGISTRY,
    )
    # every series exists from the start: a rate() over a series born at its first event
    # misses that event. The children are kept: labels() validates, locks and looks up on
    # every call, which cost as much per login as a journal record
    _LOGIN_SERIES = {(r, m): _LOGINS.labels(r, m) for r in RESULTS for m in METHODS}
    _BYTES_SERIES = {d: _BYTES.labels(d) for d in ("upload", "download")}

_reasons: set[str] = set()
_reasons_lock = threading.Lock()


# --- the hooks ------------------------------------------------------------------------------


def login(result: str, method: str) -> None:
    """A login ended: result "ok" or "failed"; method password | certificate | both."""
    if CollectorRegistry is not None:
        series = _LOGIN_SERIES.get((result, method))
        (series if series is not None else _LOGINS.labels(result, method)).inc()


def ban() -> None:
    """An address was banned."""
    if CollectorRegistry is not None:
        _BANS.inc()


def transferred(upload: bool, nbytes: int) -> None:
    """A file transfer ended (complete or not) after moving `nbytes`."""
    if CollectorRegistry is not None and nbytes > 0:
        _BYTES_SERIES["upload" if upload else "download"].inc(nbytes)


def reason_label(reason: str) -> str:
    """A bounded label for a handshake-failure reason: the words before any detail
    ("certificate verify failed: unable to get local issuer" -> "certificate verify failed"),
    other punctuation dropped; after _MAX_REASONS distinct ones, "other"."""
    head = reason.split(":", 1)[0].strip().lower()
    label = re.sub(r"[^a-z0-9 ]+", "", head).strip()[:64] or "unknown"
    with _reasons_lock:
        if label not in _reasons and len(_reasons) >= _MAX_REASONS:
            return "other"
        _reasons.add(label)
    return label


def handshake_failed(reason: str, connection: str) -> None:
    """A TLS handshake failed on a "control" or "data" connection."""
    if CollectorRegistry is not None:
        _HANDSHAKE_FAILURES.labels(reason_label(reason), connection).inc()


def listeners_applied(listeners: Any, state: Any) -> None:
    """After every (re)load, on the IOLoop: refresh the snapshot; open, move or close the
    endpoint as `[metrics] listen` says."""
    config: Config = state.config
    if CollectorRegistry is None:
        if config.metrics.listen:
            log.critical(
                "[metrics] listen is set but prometheus_client is not installed "
                "(Debian python3-prometheus-client, pip extra ftps-server[metrics]): "
                "no metrics are served"
            )
        return
    _COLLECTOR.snapshot = _snapshot(listeners, state)
    _endpoint.apply(config.metrics.listen)


def _snapshot(listeners: Any, state: Any) -> _Snapshot:
    config: Config = state.config
    rows: list[tuple[str, str, bool]] = []
    certs: list[tuple[str, str, float | None, bool]] = []
    named = [e for e in config.certificates if e.server_names]
    for address, kind, port in sorted(listeners.servers):
        name = listener_name(address, port, kind)
        # the resolver's rule: `*` is served by the default section
        rows.append((name, kind, state.tls.problem_for(address) is None))
        own = state.tls.entry_for(address)
        for entry in [own, *(e for e in named if e is not own)]:
            if entry is None:
                continue
            status = state.tls.statuses[entry.name]
            when = status.info.not_after.timestamp() if status.info is not None else None
            certs.append((entry.name, name, when, bool(status.usable)))
    for address, kind, port in sorted(listeners.failed):
        rows.append((listener_name(address, port, kind), kind, False))
    kinds = tuple({server.handler for server in listeners.servers.values()})
    return _Snapshot(tuple(rows), tuple(certs), listeners.ioloop, kinds, state.auth)


# --- the endpoint ---------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Endpoint:
    """The HTTP server of `[metrics] listen`; moved when a reload changes the address."""

    def __init__(self) -> None:
        self.listen: tuple[str, int] | None = None
        self.server: _Server | None = None

    def apply(self, listen: tuple[str, int] | None) -> None:
        if listen == self.listen and (self.server is not None or listen is None):
            return
        self.close()
        self.listen = listen
        if listen is None:
            return
        address, port = listen
        where = host_port(address, port)
        server_class = type(
            "_MetricsServer",
            (_Server,),
            {"address_family": socket.AF_INET6 if ":" in address else socket.AF_INET},
        )
        try:
            server = server_class((address, port), MetricsHandler.factory(REGISTRY))
        except OSError as exc:
            # the FTPS service matters more than its metrics: stay up, say why at crit
            log.critical("cannot serve metrics on %s: %s", where, exc.strerror or exc)
            return
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        self.server = server
        log.info("serving Prometheus metrics on http://%s/metrics", where)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


_endpoint = _Endpoint()
