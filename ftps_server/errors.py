"""One root error and the narrow errors a user may see; `cli` maps each to an exit status."""

from __future__ import annotations

__all__ = [
    "CertificateError",
    "CheckError",
    "ConfigError",
    "DeliveryError",
    "FtpsServerError",
]


class FtpsServerError(Exception):
    """Root of every error meant for an operator's eyes (one clear line, no traceback)."""

    exit_status = 1


class ConfigError(FtpsServerError):
    """The configuration is invalid; the message names file, section and key."""

    exit_status = 78  # EX_CONFIG: systemd's RestartPreventExitStatus uses it

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        section: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file, self.section, self.key, self.line = file, section, key, line
        where = []
        if file:
            where.append(f"{file}:{line}" if line else file)
        if section:
            where.append(f"[{section}]")
        if key:
            where.append(key)
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class CertificateError(FtpsServerError):
    """A certificate or key file is missing, unreadable, malformed or does not match."""

    def __init__(self, message: str, *, kind: str = "missing") -> None:
        # kind is the reminder condition this problem maps to: "missing" or "invalid"
        self.kind = kind
        super().__init__(message)


class DeliveryError(FtpsServerError):
    """An email could not be handed to the SMTP server."""


class CheckError(FtpsServerError):
    """The check utility could not run at all (UNKNOWN)."""

    exit_status = 3
