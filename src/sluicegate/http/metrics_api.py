"""``GET /metrics``: the Prometheus text exposition of this process (of every worker with ``--workers``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..asgi import Request, send_bytes
from ..auth.credentials import extract_credential
from ..errors import AuthenticationFailed, NotFound
from ..observability.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .deps import Services


async def metrics(gw: Services, request: Request) -> None:
    registry = gw.observability.metrics if gw.observability is not None else None
    if registry is None:
        raise NotFound("Unknown path /metrics")  # metrics are off in the config
    if gw.metrics_auth:
        credential = extract_credential(request.header(b"authorization"), request.header(b"x-api-key"))
        principal = await gw.authenticator.authenticate(credential)
        if not principal.is_admin:
            raise AuthenticationFailed("The metrics require the master key")
    # In a thread: with several workers, rendering reads every worker's files, which must not stall streams.
    body = await asyncio.to_thread(registry.render)
    await send_bytes(request.send, 200, body, CONTENT_TYPE.encode())
