"""The admin web console at ``/ui``: server-rendered pages over the admin and analytics services.

This module stays small and imports nothing heavy: the console (Jinja2, templates, static files) is loaded on
its first request, so a gateway whose console is never opened does not pay for it. See docs/console.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotFound

if TYPE_CHECKING:
    from ..app import Gateway
    from ..http.asgi import Request

PREFIX = "/ui"


async def dispatch(gw: Gateway, request: Request) -> None:
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        raise NotFound(f"Unknown path {path}")
    if not gw.config.console.enabled:
        raise NotFound("The console is turned off (console.enabled: false)")
    if gw.console is None:
        from .app import Console

        gw.console = Console(gw)
    await gw.console(request)
