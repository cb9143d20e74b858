"""The OpenAI-compatible endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING

from ..chat_request import parse_chat_request
from ..errors import GatewayError
from ..policies.access import may_use
from ..service import RequestContext
from ..types import ChatRequest, Principal
from .asgi import ClientGone, Request, send_error, send_json, watch_disconnect
from .auth import extract_credential
from .errors import internal_error
from .sse import KEEPALIVE, stream_error_frame

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger("sluicegate.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def request_id_of(request: Request) -> str:
    given = request.header(b"x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return "req_" + secrets.token_hex(12)


async def authenticate(gw: Gateway, request: Request) -> Principal:
    credential = extract_credential(request.header(b"authorization"), request.header(b"x-api-key"))
    return await gw.authenticator.authenticate(credential)


async def chat_completions(gw: Gateway, request: Request) -> None:
    request_id = request_id_of(request)
    ids = {"x-request-id": request_id}
    arrived = time.time()
    principal: Principal | None = None
    chat: ChatRequest | None = None
    try:
        principal = await authenticate(gw, request)
        # Shed before the body is read: an overload must not cost the gateway a whole body read per refusal.
        gw.shedder.admit(principal.key_id)
    except GatewayError as exc:
        if gw.observability is not None:  # refused before any policy: no record from the service
            gw.observability.refused_at_edge(request_id, principal, chat, exc, arrived)
        await send_error(request.send, exc, ids)
        return
    try:
        await _admitted(gw, request, principal, request_id, arrived)
    finally:
        gw.shedder.release(principal.key_id)


async def _admitted(gw: Gateway, request: Request, principal: Principal, request_id: str, arrived: float) -> None:
    chat: ChatRequest | None = None
    try:
        body = await request.body(gw.config.server.max_body_bytes)
        chat = parse_chat_request(body)
        ctx = RequestContext(request_id, principal, chat)
        gw.service.resolve(ctx)
    except ClientGone:
        return
    except GatewayError as exc:
        if gw.observability is not None:
            gw.observability.refused_at_edge(request_id, principal, chat, exc, arrived)
        await send_error(request.send, exc, {"x-request-id": request_id})
        return

    task = asyncio.current_task()
    assert task is not None
    gone: list[bool] = []
    watcher = asyncio.get_running_loop().create_task(watch_disconnect(request.receive, task, gone))
    try:
        if chat.stream:
            await _stream(gw, request, ctx)
        else:
            await _complete(gw, request, ctx)
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        watcher.cancel()


async def _complete(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    try:
        response = await gw.service.complete(ctx)
    except GatewayError as exc:
        await send_error(request.send, exc, ctx.response_headers())
        return
    except Exception:
        log.exception("chat completion failed (request %s)", ctx.request_id)
        await send_error(request.send, internal_error(), ctx.response_headers())
        return
    await send_json(request.send, 200, response, ctx.response_headers())


async def _stream(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    send = request.send
    server = gw.config.server
    committed = False  # the 200 and SSE headers are out (keep-alive comments commit the status early)

    async def start_response() -> None:
        nonlocal committed
        headers = list(_SSE_HEADERS)
        headers.extend((k.encode(), v.encode()) for k, v in ctx.response_headers().items())
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        committed = True

    try:
        if server.keepalive_after is None:
            stream = await gw.service.open_stream(ctx)
        else:
            opening = asyncio.get_running_loop().create_task(gw.service.open_stream(ctx))
            try:
                done, _ = await asyncio.wait({opening}, timeout=server.keepalive_after)
                while not done:
                    if not committed:
                        await start_response()
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                    done, _ = await asyncio.wait({opening}, timeout=server.keepalive_interval)
            except asyncio.CancelledError:
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await opening
                if opening.done() and not opening.cancelled() and opening.exception() is None:
                    await opening.result().close()  # it opened as the client left: settle it unrelayed
                raise
            stream = opening.result()
    except GatewayError as exc:
        if committed:
            await send({"type": "http.response.body", "body": stream_error_frame(exc.message), "more_body": False})
        else:
            await send_error(send, exc, ctx.response_headers())
        return
    except Exception:
        log.exception("opening the stream failed (request %s)", ctx.request_id)
        if committed:
            await send({"type": "http.response.body", "body": stream_error_frame("internal error")})
        else:
            await send_error(send, internal_error(), ctx.response_headers())
        return
    try:
        if not committed:
            await start_response()
        await send({"type": "http.response.body", "body": stream.first, "more_body": True})
    except BaseException:
        await stream.close()  # the relay never began: record the request and let go of what it holds
        raise
    gw.streams.add(stream)
    if gw.drain_expired:
        stream.abort("gateway shutting down")
    metrics = gw.observability.metrics if gw.observability is not None else None
    if metrics is not None:
        metrics.stream_opened()
    rest = stream.rest()
    try:
        async for data in rest:
            await send({"type": "http.response.body", "body": data, "more_body": True})
    except Exception:
        log.exception("stream failed after the first byte (request %s)", ctx.request_id)
        await send({"type": "http.response.body", "body": stream_error_frame("internal error"), "more_body": True})
    finally:
        gw.streams.discard(stream)
        if metrics is not None:
            metrics.stream_closed()
        await rest.aclose()
        await stream.close()  # a no-op once rest() recorded it
    await send({"type": "http.response.body", "body": b""})


async def list_models(gw: Gateway, request: Request) -> None:
    ids = {"x-request-id": request_id_of(request)}
    try:
        principal = await authenticate(gw, request)
    except GatewayError as exc:
        await send_error(request.send, exc, ids)
        return
    data = [
        {"id": m.id, "object": "model", "created": gw.started_at, "owned_by": m.owned_by}
        for m in gw.router.models
        if may_use(principal, m.id)
    ]
    await send_json(request.send, 200, {"object": "list", "data": data}, ids)
