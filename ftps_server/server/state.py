"""One configuration generation (`ServerState`) and what a session reads of its listener.

Below both `listeners` and `ftp`: the listeners build the state and create the handlers, the
handlers only read it, so neither module imports the other for these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..config.model import Config
from .proxy_protocol import ProxyHeader
from .tls import TlsContexts

__all__ = ["AcceptingListener", "ServerState"]


@dataclass(frozen=True)
class ServerState:
    """One configuration generation shared by the listeners and the sessions it started."""

    config: Config
    tls: TlsContexts
    auth: Any  # auth.Authenticator


class AcceptingListener(Protocol):
    """What an `FtpsHandler` reads of the listener that accepted it (`ListenerServer`)."""

    kind: str
    name: str
    state: ServerState
    proxy_header: ProxyHeader | None  # the PROXY header of the connection being accepted
