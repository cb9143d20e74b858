"""The OpenAI-compatible endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

from ..asgi import Request, send_error, send_json
from ..errors import GatewayError
from ..policies.access import may_use
from ..wire.openai_chat import OPENAI_CHAT
from .deps import Services
from .inference import authenticate, handle, request_id_of


async def chat_completions(gw: Services, request: Request) -> None:
    await handle(gw, request, OPENAI_CHAT)


async def list_models(gw: Services, request: Request) -> None:
    ids = {"x-request-id": request_id_of(request)}
    try:
        principal = await authenticate(gw, request)
    except GatewayError as exc:
        await send_error(request.send, exc, ids)
        return
    data = [
        {"id": m.id, "object": "model", "created": gw.started_at, "owned_by": m.owned_by}
        for m in gw.service.models
        if may_use(principal, m.id)
    ]
    await send_json(request.send, 200, {"object": "list", "data": data}, ids)
