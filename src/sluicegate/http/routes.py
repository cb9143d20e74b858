"""Path → handler. This file stays a table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..asgi import Request
from ..console import PREFIX as CONSOLE_PREFIX
from . import admin_api, analytics_api, health, metrics_api, openai_api

if TYPE_CHECKING:
    from .deps import Services

Handler = Callable[["Services", Request], Awaitable[None]]

ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): openai_api.chat_completions,
    ("POST", "/chat/completions"): openai_api.chat_completions,
    ("GET", "/v1/models"): openai_api.list_models,
    ("GET", "/models"): openai_api.list_models,
    ("GET", "/healthz"): health.healthz,
    ("GET", "/readyz"): health.readyz,
    ("GET", "/metrics"): metrics_api.metrics,
}


# Path prefixes whose handler routes the rest itself (paths with parameters), and the methods it may accept.
async def console(gw: Services, request: Request) -> None:
    await gw.console(request)


PREFIX_ROUTES: tuple[tuple[str, Handler], ...] = (
    (analytics_api.PREFIX, analytics_api.dispatch),  # before admin_api's, whose prefix contains it
    (admin_api.PREFIX, admin_api.dispatch),
    (CONSOLE_PREFIX, console),
)
PREFIX_METHODS = {
    analytics_api.PREFIX: ("GET",),
    admin_api.PREFIX: ("DELETE", "GET", "PATCH", "POST", "PUT"),
    CONSOLE_PREFIX: ("GET", "POST"),
}

# Handlers that put the request id on their responses themselves (the hot path: no send wrapper).
OWN_REQUEST_ID = frozenset({openai_api.chat_completions, openai_api.list_models})


def methods_for(path: str) -> tuple[str, ...]:
    """The methods served on ``path`` (for ``Allow`` and CORS preflight); empty for an unknown path."""
    exact = tuple(sorted(method for method, route in ROUTES if route == path))
    if exact:
        return exact
    return next((methods for prefix, methods in PREFIX_METHODS.items() if path.startswith(prefix)), ())
