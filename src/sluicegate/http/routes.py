"""Path → handler. This file stays a table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import console
from . import admin_api, analytics_api, health, metrics_api, openai_api
from .asgi import Request

if TYPE_CHECKING:
    from ..app import Gateway

Handler = Callable[["Gateway", Request], Awaitable[None]]

ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): openai_api.chat_completions,
    ("POST", "/chat/completions"): openai_api.chat_completions,
    ("GET", "/v1/models"): openai_api.list_models,
    ("GET", "/models"): openai_api.list_models,
    ("GET", "/healthz"): health.healthz,
    ("GET", "/readyz"): health.readyz,
    ("GET", "/metrics"): metrics_api.metrics,
}

PATHS = frozenset(path for _, path in ROUTES)

# Path prefixes whose handler routes the rest itself (paths with parameters).
PREFIX_ROUTES: tuple[tuple[str, Handler], ...] = (
    (analytics_api.PREFIX, analytics_api.dispatch),  # before admin_api's, whose prefix contains it
    (admin_api.PREFIX, admin_api.dispatch),
    (console.PREFIX, console.dispatch),
)
