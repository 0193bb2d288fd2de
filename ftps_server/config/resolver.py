"""Which certificate section serves a connection: one table per configuration.

The rule lives here only: a local address a section names gets that section; any other
address (and a `*` bind) gets the default section (`default = yes` or `addresses = *`);
a TLS server name (SNI) a section lists gets that section. The server builds one table per
reload (with the reasons its unusable sections cannot be served), `check` and the reminders
ask `Config.resolver`; no one else scans the sections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

__all__ = ["CertificateResolver", "Section", "is_default"]


class Section(Protocol):
    """What the rule reads of a [certificate:NAME] section (config.model.CertificateEntry)."""

    @property
    def name(self) -> str: ...
    @property
    def addresses(self) -> tuple[str, ...]: ...
    @property
    def default(self) -> bool: ...
    @property
    def server_names(self) -> tuple[str, ...]: ...


# the model builds the resolver, so the resolver names the section by its shape only
E = TypeVar("E", bound=Section)


def is_default(entry: Section) -> bool:
    """True when `entry` serves every address no section names (`default = yes` or `*`)."""
    return entry.default or "*" in entry.addresses


class CertificateResolver(Generic[E]):
    """Address or server name -> certificate section, and why it cannot be served."""

    def __init__(self, entries: Iterable[E], problems: Mapping[str, str] | None = None) -> None:
        self.entries = tuple(entries)
        # the config refuses an address claimed twice and a second default; were one to slip
        # through, the first section wins, as a linear scan would have chosen
        self.by_address: dict[str, E] = {}
        self.by_name: dict[str, E] = {}
        self.default: E | None = None
        for entry in self.entries:
            for address in entry.addresses:
                if address != "*":
                    self.by_address.setdefault(address, entry)
            for name in entry.server_names:
                self.by_name.setdefault(name, entry)
            if is_default(entry):
                self.default = entry  # the config allows one
        self.problems = dict(problems or {})  # section name -> why it cannot be served

    def for_address(self, address: str) -> E | None:
        """The section serving local `address` (`*`: any address no section names)."""
        return self.by_address.get(address, self.default)

    def for_name(self, server_name: str) -> E | None:
        """The section whose server_names include `server_name` (SNI), or None."""
        return self.by_name.get(server_name.lower().rstrip("."))

    def names(self, address: str) -> bool:
        """True when a section names `address` itself (not through the default)."""
        return address in self.by_address

    def named_addresses(self) -> list[str]:
        """Every address a section names, in the order the sections name them."""
        return list(self.by_address)

    def problem_for(self, address: str) -> str | None:
        """Why a connection to local `address` gets no certificate, or None when it does."""
        entry = self.for_address(address)
        if entry is None:
            return f"no certificate is assigned to {address} and none is the default"
        problem = self.problems.get(entry.name)
        return f"certificate [{entry.name}]: {problem}" if problem else None
