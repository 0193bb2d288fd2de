"""The INI file -> one validated `Config`. Every error names the file, section and key.

Which sections may appear, `[server] include` files, and the rules across sections (one
certificate per address, one user per fingerprint, no home inside another) are checked here,
before a server or a reminder ever runs. Each section's own keys are `sections`'.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError
from . import ini, sections
from .model import TLS_VERSIONS, Config, UserConfig
from .resolver import is_default

__all__ = ["DEFAULT_CONFIG_PATH", "load"]

T = TypeVar("T")
DEFAULT_CONFIG_PATH = Path("/etc/ftps-server/ftps-server.ini")

_SINGLE = {"server", "ports", "tls", "alerts", "check", "log", "metrics"}


def load(path: str | Path) -> Config:
    """Read and validate the INI file at `path`; raise ConfigError naming what is wrong."""
    path = Path(path)
    found = ini.read_sections(path)
    by_name = {s.name: s for s in found}
    for s in found:
        kind = s.name.split(":", 1)[0]
        if s.name not in _SINGLE and kind not in ("certificate", "user"):
            raise s.error(
                None,
                "unknown section (allowed: server, ports, tls, certificate:NAME, user:NAME, "
                "alerts, check, log, metrics)",
            )
        if kind in ("certificate", "user") and not s.name.partition(":")[2].strip():
            raise s.error(None, f"needs a name, e.g. [{kind}:main]")

    def single(name: str, build: Callable[[ini.Section], T]) -> T:
        section = by_name.get(name) or ini.Section(str(path), name, {})
        value = build(section)
        section.finish()
        return value

    server = single("server", sections.server_config)
    found += _included(path, server.include)
    certificates, users = [], []
    for s in found:
        kind, _, name = s.name.partition(":")
        if kind == "certificate":
            certificates.append(sections.certificate_entry(s, name.strip()))
        elif kind == "user":
            users.append(sections.user_config(s, name.strip(), server.root))
        else:
            continue
        s.finish()
    config = Config(
        path=path,
        server=server,
        ports=single("ports", sections.ports_config),
        tls=single("tls", sections.tls_config),
        certificates=tuple(certificates),
        users=tuple(users),
        alerts=single("alerts", sections.alerts_config),
        check=single("check", sections.check_config),
        metrics=single("metrics", sections.metrics_config),
        log=single("log", sections.log_config),
    )
    _cross_checks(config, {s.name: s for s in found})
    _nested_homes(config, {s.name: s for s in found})
    _shared_state_dir(config)
    return config


def _shared_state_dir(config: Config) -> None:
    """The fleet's reminder state must be the service's alone: an FTP user who can write
    there could plant or delete what suppresses every node's reminders."""
    shared = config.alerts.shared_state_dir
    if shared is None:
        return

    def error(message: str) -> ConfigError:
        return ConfigError(message, file=str(config.path), section="alerts", key="shared_state_dir")

    if shared.resolve() == config.server.state_dir.resolve():
        raise error(f"{shared} is [server] state_dir; name a directory on the shared storage")
    for user in config.users:
        home = user.home.resolve()
        if shared.resolve() == home or home in shared.resolve().parents:
            raise error(
                f"{shared} is inside the home of [user:{user.name}] ({user.home}); "
                "put it outside every FTP home (e.g. /srv/ftp/.ftps-server-fleet)"
            )


def _included(main: Path, patterns: tuple[str, ...]) -> list[ini.Section]:
    """Sections from `[server] include` files: only [user:NAME] sections are allowed there."""
    out: list[ini.Section] = []
    for pattern in patterns:
        if not Path(pattern).is_absolute():
            raise ConfigError(
                "must be absolute paths or globs", file=str(main), section="server", key="include"
            )
        for name in sorted(glob.glob(pattern)):
            for s in ini.read_sections(Path(name)):
                if not s.name.startswith("user:"):
                    raise s.error(None, "included files may hold only [user:NAME] sections")
                out.append(s)
    return out


def _nested_homes(config: Config, by_name: dict[str, ini.Section]) -> None:
    """Homes are the only separation between users (one service account owns every file):
    a home equal to or inside another user's home is refused unless both share on purpose."""
    owners: dict[Path, UserConfig] = {}
    for user in config.users:
        # resolve: a symbolic link that already leads into another home counts as inside it
        home = user.home.resolve()
        other = owners.get(home)
        if other is not None and not (user.shared_home and other.shared_home):
            raise by_name[f"user:{user.name}"].error(
                "home",
                f"{user.home} is the home of [user:{other.name}] too; give each user its own "
                "directory, or set shared_home = yes in both sections",
            )
        owners.setdefault(home, user)
    for user in config.users:
        home = user.home.resolve()
        for parent in home.parents:
            other = owners.get(parent)
            if other is not None and not (user.shared_home and other.shared_home):
                raise by_name[f"user:{user.name}"].error(
                    "home",
                    f"{user.home} is inside the home of [user:{other.name}] ({other.home}), who "
                    "could read, plant and delete its files; move it out, or set "
                    "shared_home = yes in both sections",
                )


def _cross_checks(config: Config, by_name: dict[str, ini.Section]) -> None:
    claimed: dict[str, str] = {}
    defaults = []
    for entry in config.certificates:
        sec = by_name[f"certificate:{entry.name}"]
        if is_default(entry):
            defaults.append(entry.name)
        for address in entry.addresses:
            if address == "*":
                continue
            if address in claimed:
                other = claimed[address]
                raise sec.error(
                    "addresses", f"{address} is already assigned to [certificate:{other}]"
                )
            claimed[address] = entry.name
        if not entry.addresses and not entry.default and not entry.server_names:
            raise sec.error("addresses", "set addresses, default = yes, or server_names")
    if len(defaults) > 1:
        sec = by_name[f"certificate:{defaults[1]}"]
        raise sec.error("default", f"only one default certificate allowed (also: {defaults[0]})")
    names: dict[str, str] = {}
    for entry in config.certificates:
        for server_name in entry.server_names:
            if server_name in names:
                other = names[server_name]
                raise by_name[f"certificate:{entry.name}"].error(
                    "server_names", f"{server_name} is already used by [certificate:{other}]"
                )
            names[server_name] = entry.name
    pinned: dict[str, str] = {}
    for user in config.users:
        for fp in user.certificates:
            if fp in pinned:
                raise by_name[f"user:{user.name}"].error(
                    "certificates", f"fingerprint {fp} is already pinned by [user:{pinned[fp]}]"
                )
            pinned[fp] = user.name
        if "certificate" in user.auth and not config.tls.client_ca:
            # clients are asked for certificates only where there is a CA to verify them
            key = "certificates" if user.certificates else "certificate_cn"
            raise by_name[f"user:{user.name}"].error(
                key, f"auth = {user.auth} needs [tls] client_ca to verify certificates against"
            )
    if (config.ports.client_cert_explicit or config.ports.client_cert_implicit) and not (
        config.tls.client_ca
    ):
        raise ConfigError(
            "client-certificate ports need [tls] client_ca",
            file=str(config.path),
            section="tls",
            key="client_ca",
        )
    if config.tls.crl and not config.tls.client_ca:
        raise ConfigError("crl needs client_ca", file=str(config.path), section="tls", key="crl")
    tls_range = (config.tls.min_version, config.tls.max_version)
    if config.tls.max_version and TLS_VERSIONS.index(tls_range[1]) < TLS_VERSIONS.index(
        tls_range[0]
    ):
        raise ConfigError(
            f"max_version {tls_range[1]} is below min_version {tls_range[0]}",
            file=str(config.path),
            section="tls",
            key="max_version",
        )
