"""Liveness and readiness (SPEC §1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..asgi import Request, send_json

if TYPE_CHECKING:
    from .deps import Services


async def healthz(gw: Services, request: Request) -> None:
    await send_json(request.send, 200, {"status": "ok"})


async def readyz(gw: Services, request: Request) -> None:
    problems = await gw.readiness()
    if problems:
        await send_json(request.send, 503, {"status": "not ready", "problems": problems})
    else:
        await send_json(request.send, 200, {"status": "ready"})
