"""What the HTTP handlers may use: a narrow, typed view of the serving process (built by ``app.Gateway``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..admin import Admin
from ..analytics import Analytics
from ..asgi import Request
from ..auth.authenticator import KeyAuthenticator, MasterKeyAuthenticator
from ..config import ServerConfig
from ..observability import Observability
from ..service import ChatService, StreamRegistry
from .shedding import LoadShedder


@dataclass(frozen=True, slots=True)
class Services:
    server: ServerConfig
    metrics_auth: bool  # /metrics requires the master key
    started_at: int  # epoch seconds: the ``created`` of every listed model
    authenticator: KeyAuthenticator
    master: MasterKeyAuthenticator
    shedder: LoadShedder
    service: ChatService
    admin: Admin
    observability: Observability | None
    streams: StreamRegistry
    readiness: Callable[[], Awaitable[list[str]]]
    analytics: Analytics
    console: Callable[[Request], Awaitable[None]]  # the web console's front door (console.ConsoleEntry)
