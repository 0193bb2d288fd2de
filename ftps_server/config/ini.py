"""Reading INI files into sections whose every key is typed or reported.

The generic half of the configuration: configparser errors become `ConfigError`s naming file,
line and section; `Section` ticks off each key it reads so leftovers are "unknown key"
errors; the value parsers raise ValueError with a message the section turns into an error
naming the key. `model` holds what the keys mean.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError

__all__ = [
    "Section",
    "abs_path",
    "addresses",
    "boolean",
    "choice",
    "comma_list",
    "int_range",
    "is_secret",
    "normalize_address",
    "port_range",
    "read_sections",
]


@lru_cache(maxsize=4096)  # several times per connection, for a few thousand peers at most
def normalize_address(text: str) -> str:
    """Canonical text form of an IP address (IPv4-mapped IPv6 becomes IPv4)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def is_secret(key: str) -> bool:
    """Keys whose values no error message may echo."""
    return key == "password" or key.startswith("smtp_password")


T = TypeVar("T")
D = TypeVar("D")


class Section:
    """One INI section being read: every read key is ticked off, leftovers are errors."""

    def __init__(self, file: str, name: str, items: dict[str, str]) -> None:
        self.file, self.name, self.items = file, name, items
        self.seen: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, section=self.name, key=key)

    def raw(self, key: str) -> str | None:
        self.seen.add(key)
        value = self.items.get(key)
        return None if value is None else value.strip()

    def get(self, key: str, parse: Callable[[str], T], default: D) -> T | D:
        value = self.raw(key)
        if value is None or value == "":
            return default
        return self._parse(key, value, parse)

    def require(self, key: str, parse: Callable[[str], T]) -> T:
        value = self.raw(key)
        if not value:
            raise self.error(key, "is required")
        return self._parse(key, value, parse)

    def _parse(self, key: str, value: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            if is_secret(key):
                # a plain password typed where a hash belongs must not reach a journal
                raise self.error(key, f"{exc} (value not shown: it may be a secret)") from None
            raise self.error(key, f"{exc} (got {value!r})") from None

    def finish(self) -> None:
        unknown = sorted(set(self.items) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown key (allowed here: {allowed})")


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")
        return value

    return parse


def boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def abs_path(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for option in options:
            if text.lower() == option.lower():
                return option
        raise ValueError(f"must be one of: {', '.join(options)}")

    return parse


def addresses(text: str) -> tuple[str, ...]:
    items = comma_list(text)
    if not items:
        raise ValueError("needs at least one address")
    out = []
    for item in items:
        if item == "*":
            out.append("*")
            continue
        try:
            out.append(normalize_address(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or *") from None
    if len(set(out)) != len(out):
        raise ValueError("lists an address twice")
    return tuple(out)


def port_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not match:
        raise ValueError("must be FIRST-LAST, e.g. 60000-60099")
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low <= high <= 65535:
        raise ValueError("must be within 1024-65535 with FIRST <= LAST")
    return low, high


# --- file level ----------------------------------------------------------------------------


def _read(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), strict=True, interpolation=None
    )
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle, source=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text: {exc.reason}", file=str(path)) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            "section appears twice", file=str(path), section=exc.section, line=exc.lineno
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            "key appears twice",
            file=str(path),
            section=exc.section,
            key=exc.option,
            line=exc.lineno,
        ) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            "text before the first [section] header", file=str(path), line=exc.lineno
        ) from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0] if exc.errors else None
        raise ConfigError(
            "cannot parse this line (expected key = value)", file=str(path), line=line
        ) from None
    return parser


def read_sections(path: Path) -> list[Section]:
    parser = _read(path)
    return [Section(str(path), name, dict(parser.items(name))) for name in parser.sections()]
