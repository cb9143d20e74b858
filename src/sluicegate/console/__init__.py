"""The admin web console at ``/ui``: server-rendered pages over the admin and analytics services.

This module stays small and imports nothing heavy: the console (Jinja2, templates, static files) is loaded on
its first request, so a gateway whose console is never opened does not pay for it. See docs/console.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotFound
from .deps import ConsoleDeps
from .web import PREFIX

if TYPE_CHECKING:
    from ..asgi import Request
    from .app import Console

__all__ = ["PREFIX", "ConsoleDeps", "ConsoleEntry"]


class ConsoleEntry:
    """The console's front door: builds the console on its first request."""

    def __init__(self, deps: ConsoleDeps) -> None:
        self._deps = deps
        self._console: Console | None = None

    async def __call__(self, request: Request) -> None:
        path = request.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            raise NotFound(f"Unknown path {path}")
        if not self._deps.config.console.enabled:
            raise NotFound("The console is turned off (console.enabled: false)")
        if self._console is None:
            from .app import Console

            self._console = Console(self._deps)
        await self._console(request)
