"""The client matrix: every client x explicit/implicit x TLS 1.2/1.3 against a real server.

Two servers run on loopback with `require_session_reuse = yes` (the default): one with
`min_version = TLSv1.3` for the TLS 1.3 cells, one capped at TLS 1.2 for the others (with
`[tls] max_version` when the configuration model has it, else each client pins 1.2 itself).
A cell passes when the listing, the upload and the download worked, the uploaded file on the
server and the downloaded copy are byte-identical to the source, and the server's transfer log
shows the expected TLS version. The negotiated version and cipher come from that log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import support

from ftps_server import __version__
from ftps_server.config.model import TlsConfig
from ftps_server.pki.passwords import HashParams, hash_password

from .clients import CLIENTS, DOCUMENTED, STEPS, Cell, Client, Outcome

USER, PASSWORD = "matrix", "Matrix-Password-42"
HOST = "127.0.0.1"
MODES = ("explicit", "implicit")
VERSIONS = ("1.2", "1.3")
PAYLOAD = 1024 * 1024 + 7  # not a multiple of any buffer size


@dataclass
class Result:
    client: Client
    mode: str
    tls: str
    outcome: Outcome
    upload_exact: bool = False
    download_exact: bool = False
    negotiated: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        steps = self.outcome.steps
        return (
            not self.outcome.skipped
            and all(steps.get(step) for step in STEPS)
            and self.upload_exact
            and self.download_exact
            and self.negotiated.startswith(f"TLSv{self.tls} ")
        )


def _has_max_version() -> bool:
    return any(f.name == "max_version" for f in dataclasses.fields(TlsConfig))


def _server(pki: support.Pki, root: Path, tls: str) -> tuple[support.ServerProcess, dict[str, int]]:
    workdir = root / f"server-{tls}"
    home = workdir / "home" / USER
    home.mkdir(parents=True)
    cert = pki.server("matrix", HOST)
    ports = {"explicit": support.free_port(), "implicit": support.free_port()}
    tls_lines = "min_version = TLSv1.3" if tls == "1.3" else "min_version = TLSv1.2"
    if tls == "1.2" and _has_max_version():
        tls_lines += "\nmax_version = TLSv1.2"
    hashed = hash_password(PASSWORD, HashParams(ln=10, r=8, p=1))
    config = support.write_config(
        workdir / "matrix.ini",
        f"""
        [server]
        addresses = {HOST}
        state_dir = {workdir}/state
        root = {workdir}/home
        [ports]
        explicit = {ports["explicit"]}
        implicit = {ports["implicit"]}
        [tls]
        {tls_lines}
        require_session_reuse = yes
        [certificate:main]
        cert = {cert.cert}
        key = {cert.key}
        default = yes
        [user:{USER}]
        home = {home}
        permissions = elradfmwT
        password = {hashed}
        """,
    )
    return support.ServerProcess(config, workdir), ports


def _negotiated(log: str, remote: str) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' from the server's transfer entries for `remote`."""
    found = set()
    for line in log.splitlines():
        if f"'/{remote}' by " in line and " RESULT=ok " in line:  # transfer entries (events.py)
            version = re.search(r"TLS_VERSION=(\S+)", line)
            cipher = re.search(r"TLS_CIPHER=(\S+)", line)
            if version and cipher:
                found.add(f"{version.group(1)} {cipher.group(1)}")
    return " / ".join(sorted(found))


def _aborted(log: str, remote: str) -> str:
    """What the server logged for transfers of `remote` that it did not count complete."""
    notes = []
    for line in log.splitlines():
        match = re.search(rf"'/{re.escape(remote)}' by .*?: (aborted|failed), (\d+) bytes", line)
        if match:
            command = re.search(r" COMMAND=(\w+)", line)
            name = command.group(1) if command else "transfer"
            notes.append(f"server: {name} {match.group(1)} after {match.group(2)} bytes")
    return "; ".join(notes)


def run_matrix(
    clients: tuple[Client, ...] = CLIENTS, workdir: Path | None = None, verbose: bool = True
) -> list[Result]:
    """Run every cell; the results in table order."""
    root = Path(workdir or tempfile.mkdtemp(prefix="ftps-matrix-"))
    pki = support.Pki(root / "pki")
    servers: dict[str, tuple[support.ServerProcess, dict[str, int]]] = {}
    results: list[Result] = []
    pin = not _has_max_version()
    try:
        for tls in VERSIONS:
            servers[tls] = _server(pki, root, tls)
        for client in clients:
            for mode in MODES:
                for tls in VERSIONS:
                    server, ports = servers[tls]
                    slug = re.sub(r"[^a-z0-9]+", "-", client.name.lower()).strip("-")
                    cell_dir = root / "cells" / f"{slug}-{mode}-{tls}"
                    cell_dir.mkdir(parents=True)
                    local = cell_dir / "source.bin"
                    local.write_bytes(os.urandom(PAYLOAD))
                    cell = Cell(
                        client=client.name,
                        mode=mode,
                        tls=tls,
                        host=HOST,
                        port=ports[mode],
                        ca=pki.ca_file,
                        user=USER,
                        password=PASSWORD,
                        local=local,
                        remote=f"{slug}-{mode}-{tls}.bin",
                        out=cell_dir / "download.bin",
                        workdir=cell_dir,
                        pin_client=pin and tls == "1.2",
                    )
                    start = time.monotonic()
                    outcome = client.run(cell)
                    result = Result(client, mode, tls, outcome, seconds=time.monotonic() - start)
                    stored = server.workdir / "home" / USER / cell.remote
                    source = local.read_bytes()
                    result.upload_exact = stored.exists() and stored.read_bytes() == source
                    result.download_exact = cell.out.exists() and cell.out.read_bytes() == source
                    time.sleep(0.05)  # the transfer entry may trail the client's last reply
                    log = server.log()
                    result.negotiated = _negotiated(log, cell.remote)
                    aborted = _aborted(log, cell.remote)
                    if aborted and not result.passed:
                        outcome.errors.append(aborted)
                    # the report names no temporary paths
                    outcome.errors = [e.replace(str(cell_dir), "CELL") for e in outcome.errors]
                    results.append(result)
                    if verbose:
                        state = "skip" if outcome.skipped else ("ok" if result.passed else "FAIL")
                        print(
                            f"{client.name:40} {mode:8} TLS {tls}  {state:4} "
                            f"{result.seconds:5.1f}s {result.negotiated} "
                            f"{outcome.skipped or '; '.join(outcome.errors)[:200]}",
                            flush=True,
                        )
    finally:
        for server, _ in servers.values():
            server.stop()
    return results


# --- the document ---------------------------------------------------------------------------


def _cell_text(result: Result) -> str:
    if result.outcome.skipped:
        return "not run"
    marks = []
    steps = result.outcome.steps
    for step in STEPS:
        good = bool(steps.get(step))
        if step == "upload":
            good = good and result.upload_exact
        if step == "download":
            good = good and result.download_exact
        marks.append(f"{step} {'✔' if good else '✘'}")
    return ", ".join(marks)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[Result], seconds: float) -> str:
    """docs/clients.md from a run."""
    passed = sum(r.passed for r in results)
    ran = sum(not r.outcome.skipped for r in results)
    pin = not _has_max_version()
    lines = [
        "# Tested FTPS clients",
        "",
        "<!-- Generated by `python3 -m tests.matrix` -- do not edit by hand; rerun it. -->",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from a run against "
        f"ftps-server {__version__} on loopback ({passed} of {ran} cells passed, "
        f"{len(results) - ran} not run, {seconds:.0f} s).",
        "Every cell: directory listing, upload and download of a 1 MiB file (byte-exact on the "
        "server and back), with `require_session_reuse = yes` (the default); the negotiated TLS "
        "version and cipher are those of the data connections, from the server's transfer log. "
        + (
            "TLS 1.2 cells: the client pins TLS 1.2 (this tree has no `[tls] max_version`)."
            if pin
            else "TLS 1.2 cells: server with `[tls] max_version = TLSv1.2`; TLS 1.3 cells: "
            "`min_version = TLSv1.3`."
        ),
        "",
        "Regenerate: `python3 -m tests.matrix` (writes this file; `--help` for options).",
        "",
        "| Client | Mode | TLS | Result | list / upload / download | Negotiated (data) "
        "| Why it fails |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.outcome.skipped:
            verdict, why = "not run", r.outcome.skipped
        elif r.passed:
            verdict, why = "**works**", ""
        else:
            verdict = "fails"
            why = "; ".join(r.outcome.errors)[:240] or "wrong TLS version or content"
            if r.client.hint:
                why = f"{why}. {r.client.hint}"
        lines.append(
            f"| {r.client.name} | {r.mode} | {r.tls} | {verdict} | {_cell_text(r)} | "
            f"{r.negotiated or '-'} | {_escape(why)} |"
        )
    for name, text in DOCUMENTED:
        lines.append(f"| {name} | explicit, implicit | 1.2, 1.3 | vendor docs | - | - | {text} |")
    lines += ["", "## Client versions and the settings each one needs", ""]
    for client in {r.client.name: r.client for r in results}.values():
        lines.append(f"- **{client.name}** ({_escape(client.version())}): {client.settings}")
    lines.append("")
    return "\n".join(lines)
