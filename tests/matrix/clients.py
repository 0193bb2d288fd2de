"""One runner per client: list, upload, download against a live server; what each one needs.

A runner gets a `Cell` (client, mode, TLS version, where to connect, which files) and returns
the steps that worked and any error text. Byte-exactness and the negotiated TLS are checked by
the harness (`run.py`) from the files and the server's transfer log, not trusted from a client.
"""

from __future__ import annotations

import ftplib
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import support

HERE = Path(__file__).resolve().parent
COMMONS_NET = Path("/usr/share/java/commons-net.jar")
NODE_MODULES = Path(
    os.environ.get("FTPS_MATRIX_NODE_MODULES", "/var/cache/ftps-server-matrix/node")
)
STEPS = ("list", "upload", "download")


@dataclass
class Cell:
    client: str
    mode: str  # explicit | implicit
    tls: str  # "1.2" | "1.3"
    host: str
    port: int
    ca: Path
    user: str
    password: str
    local: Path
    remote: str
    out: Path
    workdir: Path
    pin_client: bool  # the server cannot cap the version: the client pins TLS 1.2


@dataclass
class Outcome:
    steps: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    client_tls: str = ""  # what the client reports, when it can
    skipped: str = ""  # why the client could not be run here


@dataclass(frozen=True)
class Client:
    name: str  # row label
    version: Callable[[], str]
    run: Callable[[Cell], Outcome]
    settings: str  # what a user must set (markdown)
    hint: str  # when it fails: why, and which server setting helps


def _cmd(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str]:
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr).strip()


def _first_line(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    code, text = _cmd(cmd, timeout=20)
    return text.splitlines()[0].strip() if text else f"exit {code}"


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-2:])[:300]


def _steps_from_lines(text: str, outcome: Outcome) -> None:
    """STEP name ok|fail detail / TLS ... lines of the Java and Node probes."""
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if parts[0] == "STEP" and len(parts) >= 3:
            outcome.steps[parts[1]] = parts[2] == "ok"
            if parts[2] != "ok":
                outcome.errors.append(f"{parts[1]}: {parts[3] if len(parts) > 3 else ''}")
        elif line.startswith("TLS "):
            outcome.client_tls = line[4:].strip()


# --- curl (OpenSSL) ---------------------------------------------------------------------------


def run_curl(cell: Cell) -> Outcome:
    netrc = cell.workdir / "netrc"
    netrc.write_text(f"machine {cell.host} login {cell.user} password {cell.password}\n")
    netrc.chmod(0o600)
    scheme = "ftp" if cell.mode == "explicit" else "ftps"
    base = f"{scheme}://{cell.host}:{cell.port}/"
    args = ["curl", "-sS", "--max-time", "30", "--cacert", str(cell.ca), "--netrc-file", str(netrc)]
    if cell.mode == "explicit":
        args.append("--ssl-reqd")
    if cell.pin_client and cell.tls == "1.2":
        args += ["--tls-max", "1.2"]
    outcome = Outcome()
    try:
        for step, extra in (
            ("list", [base]),
            ("upload", ["-T", str(cell.local), base + cell.remote]),
            ("download", ["-o", str(cell.out), base + cell.remote]),
        ):
            code, text = _cmd([*args, *extra])
            outcome.steps[step] = code == 0
            if code:
                outcome.errors.append(f"{step}: curl exit {code}: {_tail(text)}")
    finally:
        netrc.unlink()  # no password left behind in the work directory
    return outcome


# --- lftp (GnuTLS) ----------------------------------------------------------------------------


def run_lftp(cell: Cell) -> Outcome:
    scheme = "ftp" if cell.mode == "explicit" else "ftps"
    settings = [
        f"set ssl:ca-file {cell.ca}",
        "set ftp:ssl-force true",
        "set ftp:ssl-protect-data true",
        "set net:max-retries 1",
        "set net:timeout 15",
        "set cmd:fail-exit true",
    ]
    if cell.pin_client and cell.tls == "1.2":
        settings.append('set ssl:priority "NORMAL:-VERS-TLS1.3"')
    opening = f"open --env-password -u {cell.user} {scheme}://{cell.host}:{cell.port}"
    env = {"LFTP_PASSWORD": cell.password}
    outcome = Outcome()
    for step, action in (
        ("list", "cls -1"),
        ("upload", f"put {cell.local} -o {cell.remote}"),
        ("download", f"get {cell.remote} -o {cell.out}"),
    ):
        script = "; ".join([*settings, opening, action, "bye"])
        code, text = _cmd(["lftp", "-c", script], env=env)
        outcome.steps[step] = code == 0
        if code:
            outcome.errors.append(f"{step}: lftp exit {code}: {_tail(text)}")
    return outcome


# --- Python ftplib ----------------------------------------------------------------------------


def run_ftplib(cell: Cell) -> Outcome:
    ctx = ssl.create_default_context(cafile=str(cell.ca))
    if cell.pin_client and cell.tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp: support.ReusingFTP_TLS
    outcome = Outcome()
    try:
        if cell.mode == "explicit":
            ftp = support.ReusingFTP_TLS(context=ctx, timeout=20)
            ftp.connect(cell.host, cell.port)
            ftp.auth()
        else:
            ftp = support.ImplicitFTP_TLS(context=ctx, timeout=20)
            ftp.connect(cell.host, cell.port)
        ftp.prot_p()
        ftp.login(cell.user, cell.password)
    except (ftplib.Error, OSError) as err:
        outcome.errors.append(f"login: {err}")
        return outcome
    sock = ftp.sock
    if isinstance(sock, ssl.SSLSocket):
        outcome.client_tls = f"{sock.version()} {(sock.cipher() or ('?',))[0]}"
    actions: dict[str, Callable[[], object]] = {
        "list": lambda: ftp.retrlines("LIST", lambda _: None),
        "upload": lambda: ftp.storbinary(f"STOR {cell.remote}", cell.local.open("rb")),
        "download": lambda: ftp.retrbinary(f"RETR {cell.remote}", cell.out.open("wb").write),
    }
    for step, action in actions.items():
        try:
            action()
            outcome.steps[step] = True
        except (ftplib.Error, OSError) as err:
            outcome.steps[step] = False
            outcome.errors.append(f"{step}: {err}")
    try:
        ftp.quit()
    except (ftplib.Error, OSError):
        ftp.close()
    return outcome


# --- rclone (Go crypto/tls) -------------------------------------------------------------------


def run_rclone(cell: Cell) -> Outcome:
    if not shutil.which("rclone"):
        return Outcome(skipped="rclone not installed (Debian package rclone)")
    proc = subprocess.run(
        ["rclone", "obscure", "-"], input=cell.password, capture_output=True, text=True, timeout=20
    )
    obscured = proc.stdout.strip()
    env = {
        "RCLONE_CONFIG_M_TYPE": "ftp",
        "RCLONE_CONFIG_M_HOST": cell.host,
        "RCLONE_CONFIG_M_PORT": str(cell.port),
        "RCLONE_CONFIG_M_USER": cell.user,
        "RCLONE_CONFIG_M_PASS": obscured,
        "RCLONE_CONFIG": str(cell.workdir / "rclone.conf"),  # none: everything from env
        "SSL_CERT_FILE": str(cell.ca),  # the FTP backend ignores --ca-cert; Go reads this
    }
    env["RCLONE_CONFIG_M_EXPLICIT_TLS" if cell.mode == "explicit" else "RCLONE_CONFIG_M_TLS"] = (
        "true"
    )
    if cell.pin_client and cell.tls == "1.2":
        env["RCLONE_CONFIG_M_DISABLE_TLS13"] = "true"
    base = ["rclone", "--retries", "1", "--low-level-retries", "1"]
    base += ["--contimeout", "15s", "--timeout", "30s"]
    outcome = Outcome()
    for step, args in (
        ("list", ["lsf", "m:"]),
        ("upload", ["copyto", str(cell.local), f"m:{cell.remote}"]),
        ("download", ["copyto", f"m:{cell.remote}", str(cell.out)]),
    ):
        code, text = _cmd([*base, *args], env=env)
        outcome.steps[step] = code == 0
        if code:
            outcome.errors.append(f"{step}: rclone exit {code}: {_tail(text)}")
    return outcome


# --- Java: JSSE, Apache Commons Net -----------------------------------------------------------


def _java_classes(workdir: Path) -> Path | str:
    """Compile MatrixFtp.java once per run; a path, or why it cannot be run."""
    classes = workdir / "java-classes"
    if (classes / "MatrixFtp.class").exists():
        return classes
    if not shutil.which("javac"):
        return "javac not installed (Debian package default-jdk-headless)"
    if not COMMONS_NET.exists():
        return f"{COMMONS_NET} missing (Debian package libcommons-net-java)"
    failed = workdir / "javac-failed.txt"
    if failed.exists():  # compile once per run, also when it fails
        return failed.read_text()
    classes.mkdir(parents=True, exist_ok=True)
    code, text = _cmd(
        ["javac", "-cp", str(COMMONS_NET), "-d", str(classes), str(HERE / "MatrixFtp.java")],
        timeout=120,
    )
    if code == 0:
        return classes
    failed.write_text(f"javac failed: {_tail(text)}")
    return failed.read_text()


def _run_java(kind: str) -> Callable[[Cell], Outcome]:
    def run(cell: Cell) -> Outcome:
        classes = _java_classes(cell.workdir.parent)
        if isinstance(classes, str):
            return Outcome(skipped=classes)
        args = ["java", "-cp", f"{classes}:{COMMONS_NET}"]
        if kind == "commons-reuse":
            args += [f"--add-opens=java.base/sun.security.{p}=ALL-UNNAMED" for p in ("ssl", "util")]
        if cell.pin_client and cell.tls == "1.2":
            args.append("-Djdk.tls.client.protocols=TLSv1.2")
        args += ["MatrixFtp", kind, cell.host, str(cell.port), cell.mode, str(cell.ca)]
        args += [cell.user, str(cell.local), cell.remote, str(cell.out)]
        code, text = _cmd(args, env={"FTP_PASSWORD": cell.password})
        outcome = Outcome()
        _steps_from_lines(text, outcome)
        if not outcome.steps:
            outcome.errors.append(f"java exit {code}: {_tail(text)}")
        return outcome

    return run


# --- Node basic-ftp ---------------------------------------------------------------------------


def run_basic_ftp(cell: Cell) -> Outcome:
    if not shutil.which("node"):
        return Outcome(skipped="node not installed (Debian package nodejs)")
    modules = NODE_MODULES / "node_modules"
    if not (modules / "basic-ftp").is_dir():
        return Outcome(
            skipped=f"basic-ftp not installed: npm install basic-ftp --prefix {NODE_MODULES}"
        )
    args = ["node", str(HERE / "basic_ftp_client.js"), cell.host, str(cell.port), cell.mode]
    args += [str(cell.ca), cell.user, str(cell.local), cell.remote, str(cell.out)]
    if cell.pin_client and cell.tls == "1.2":
        args.append("TLSv1.2")
    code, text = _cmd(args, env={"FTP_PASSWORD": cell.password, "NODE_PATH": str(modules)})
    outcome = Outcome()
    _steps_from_lines(text, outcome)
    if not outcome.steps:
        outcome.errors.append(f"node exit {code}: {_tail(text)}")
    return outcome


def _basic_ftp_version() -> str:
    package = NODE_MODULES / "node_modules" / "basic-ftp" / "package.json"
    if not package.exists():
        return "not installed"
    import json

    node = _first_line(["node", "--version"])
    return f"basic-ftp {json.loads(package.read_text())['version']} (Node {node})"


def _java_version() -> str:
    if not shutil.which("java"):
        return "not installed"
    code, text = _cmd(["java", "-version"], timeout=20)
    return text.splitlines()[0].replace('"', "") if text else f"exit {code}"


def _commons_version() -> str:
    target = COMMONS_NET.resolve() if COMMONS_NET.exists() else None
    name = target.name.removesuffix(".jar") if target else "commons-net not installed"
    return f"{name}, {_java_version()}"


CLIENTS: tuple[Client, ...] = (
    Client(
        "curl",
        lambda: " ".join(_first_line(["curl", "--version"]).split()[:5]),
        run_curl,
        "explicit: `ftp://` + `--ssl-reqd`; implicit: `ftps://`; `--cacert` for a private CA. "
        "Resumes the control session on data connections by itself. TLS 1.2 only: `--tls-max 1.2`.",
        "",
    ),
    Client(
        "lftp",
        lambda: _first_line(["lftp", "--version"]).replace("| ", "").split(" Copyright")[0],
        run_lftp,
        "`set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file CA`; implicit: "
        "`ftps://`. Resumes sessions by itself. TLS 1.2 only: "
        '`set ssl:priority "NORMAL:-VERS-TLS1.3"`.',
        "lftp/GnuTLS ends TLS 1.3 uploads early when post-handshake tickets on the data "
        'connection are left unread; `set ssl:priority "NORMAL:-VERS-TLS1.3"` on the client '
        "(or `[tls] max_version = TLSv1.2` on the server) avoids it.",
    ),
    Client(
        "Python ftplib",
        lambda: f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}",
        run_ftplib,
        "Stock `FTP_TLS` does **not** resume sessions: override `ntransfercmd` to wrap the data "
        "socket with `session=self.sock.session` (see `tests/support.py: ReusingFTP_TLS`); "
        "implicit needs a `connect` that wraps at once (`ImplicitFTP_TLS`).",
        "Without the `session=` override every data connection gets `522`; "
        "`[tls] require_session_reuse = no` would allow it, at the cost of the data-theft "
        "protection.",
    ),
    Client(
        "rclone",
        lambda: _first_line(["rclone", "version"]),
        run_rclone,
        "`type = ftp`, `explicit_tls = true` (explicit) or `tls = true` (implicit). A private CA: "
        "`SSL_CERT_FILE=ca.pem` (the FTP backend ignores `--ca-cert`). Resumes sessions. "
        "TLS 1.2 only: `disable_tls13 = true`. It sets modification times after an upload "
        "(`MFMT`): the user needs permission `T`, or the upload is reported failed.",
        "Go's crypto/tls fails TLS 1.3 resumption after a HelloRetryRequest (`binder does not "
        "verify`): the server must offer X25519 (fixed by the curve change of issue 18.4); "
        "until then `disable_tls13 = true` on the client, or `[tls] max_version = TLSv1.2`.",
    ),
    Client(
        "Java Commons Net FTPSClient",
        _commons_version,
        _run_java("commons"),
        '`new FTPSClient(implicit, sslContext)`, `execPBSZ(0)`, `execPROT("P")`. Does not '
        "resume the control session on data connections.",
        "Fails by design with `require_session_reuse = yes` (`522`): use the session-cache "
        "workaround (next row) or, weaker, `[tls] require_session_reuse = no`.",
    ),
    Client(
        "Java Commons Net + session workaround",
        _commons_version,
        _run_java("commons-reuse"),
        "Subclass `FTPSClient`, override `_prepareDataSocket_` to put the control session into "
        "JSSE's `sessionHostPortCache` under the data host:port (reflection; needs "
        "`--add-opens java.base/sun.security.ssl=ALL-UNNAMED` and the same for "
        "`sun.security.util`). This probe copies the cache entry of the control host:port "
        "(with TLS 1.3, the ticket) rather than `getSession()` (`tests/matrix/MatrixFtp.java`).",
        "On TLS 1.3 the classic `getSession()` copy never resumes; copying the control "
        "host:port cache entry (the ticket) resumes while tickets last: JSSE spends one ticket "
        "per data connection and the server sends two at login, so the third transfer gets "
        "`522` (server side: more tickets, issue 18.3). Until then TLS 1.2 for this client "
        "(`-Djdk.tls.client.protocols=TLSv1.2`).",
    ),
    Client(
        "Node basic-ftp",
        _basic_ftp_version,
        run_basic_ftp,
        '`client.access({secure: true})` (explicit) or `secure: "implicit"`, '
        "`secureOptions: {ca}`. Resumes sessions by itself. TLS 1.2 only: "
        '`secureOptions.maxVersion = "TLSv1.2"`.',
        "",
    ),
)

# Clients that need a GUI: rows from their vendors' documentation, not measured here.
DOCUMENTED: tuple[tuple[str, str], ...] = (
    (
        "FileZilla (not tested here)",
        "Site Manager: Encryption *Require explicit FTP over TLS* or *Require implicit FTP over "
        "TLS*. FileZilla resumes the control session on data connections (its documentation "
        "recommends servers to require it), and supports TLS 1.2 and 1.3 (GnuTLS).",
    ),
    (
        "WinSCP (not tested here)",
        "Session: File protocol *FTP*, Encryption *TLS/SSL Explicit encryption* or *TLS/SSL "
        "Implicit encryption*. WinSCP reuses the TLS session for data connections (OpenSSL); "
        "minimum/maximum TLS version under Advanced > Connection > TLS/SSL.",
    ),
)
