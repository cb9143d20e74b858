"""The request path every inference API shares: authenticate, shed, read, decode, then answer or stream.

A route supplies only its ``WireFormat`` (decoder, encoders, error envelope); everything else is here, once:
the refusal of a bad key before the body is read, load shedding, the size cap, the model's context (404
before 403), cancelling the upstream when the client disconnects, keep-alive comments while a slow first
token is awaited, and the rule that nothing but the format's error event follows the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from ..asgi import ClientGone, Request, Send, send_bytes, send_error, watch_disconnect
from ..auth.credentials import extract_credential
from ..errors import GatewayError
from ..hooks import RequestContext
from ..service import OpenStream
from ..types import ChatRequest, Principal
from ..wire.base import StreamEncoder, WireFormat
from .deps import Services
from .errors import internal_error

log = logging.getLogger("sluicegate.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
JSON = b"application/json"


def request_id_of(request: Request) -> str:
    given = request.header(b"x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return "req_" + secrets.token_hex(12)


async def authenticate(gw: Services, request: Request) -> Principal:
    credential = extract_credential(request.header(b"authorization"), request.header(b"x-api-key"))
    return await gw.authenticator.authenticate(credential)


async def handle(gw: Services, request: Request, fmt: WireFormat) -> None:
    request_id = request_id_of(request)
    arrived = time.time()
    principal: Principal | None = None
    try:
        principal = await authenticate(gw, request)
        # Shed before the body is read: an overload must not cost the gateway a 50 MiB read per refusal.
        gw.shedder.admit(principal.key_id)
    except GatewayError as exc:
        _refused(gw, request_id, principal, None, exc, arrived, fmt.api)
        await send_error(request.send, exc, {"x-request-id": request_id}, fmt.error_body)
        return
    try:
        await _admitted(gw, request, fmt, principal, request_id, arrived)
    finally:
        gw.shedder.release(principal.key_id)


def _refused(
    gw: Services,
    request_id: str,
    principal: Principal | None,
    chat: ChatRequest | None,
    exc: GatewayError,
    arrived: float,
    api: str,
) -> None:
    if gw.observability is not None:  # refused before any policy: no record from the service
        gw.observability.refused_at_edge(request_id, principal, chat, exc, arrived, api)


async def _admitted(
    gw: Services, request: Request, fmt: WireFormat, principal: Principal, request_id: str, arrived: float
) -> None:
    chat: ChatRequest | None = None
    try:
        body = await request.body(gw.server.max_body_bytes)
        chat = fmt.decode(body)
        ctx = gw.service.context(request_id, principal, chat, api=fmt.api)
    except ClientGone:
        return
    except GatewayError as exc:
        _refused(gw, request_id, principal, chat, exc, arrived, fmt.api)
        await send_error(request.send, exc, {"x-request-id": request_id}, fmt.error_body)
        return

    task = asyncio.current_task()
    assert task is not None
    gone: list[bool] = []
    watcher = asyncio.get_running_loop().create_task(watch_disconnect(request.receive, task, gone))
    try:
        if chat.stream:
            await _stream(gw, request, ctx, fmt)
        else:
            await _complete(gw, request, ctx, fmt)
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        watcher.cancel()


async def _complete(gw: Services, request: Request, ctx: RequestContext, fmt: WireFormat) -> None:
    try:
        completion, usage = await gw.service.complete(ctx)
    except GatewayError as exc:
        await send_error(request.send, exc, ctx.response_headers(), fmt.error_body)
        return
    except Exception:
        log.exception("completion failed (request %s)", ctx.request_id)
        await send_error(request.send, internal_error(), ctx.response_headers(), fmt.error_body)
        return
    served = ctx.served_by
    assert served is not None
    body = fmt.completion(completion, usage, model=served.model.id, created=ctx.created)
    await send_bytes(request.send, 200, body, JSON, ctx.response_headers())


async def _stream(gw: Services, request: Request, ctx: RequestContext, fmt: WireFormat) -> None:
    send = request.send
    server = gw.server
    # Before a target answers, its encoder cannot exist (the answering model names the stream); a keep-alive
    # comment is the same bytes in every SSE format, and a failure after it is the format's error event.
    probe = fmt.stream_encoder(ctx.request, model=ctx.model.id, created=ctx.created)
    committed = False  # the 200 and SSE headers are out (keep-alive comments commit the status early)

    async def start_response() -> None:
        nonlocal committed
        headers = [(b"content-type", probe.content_type), *_SSE_HEADERS]
        headers.extend((k.encode(), v.encode()) for k, v in ctx.response_headers().items())
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        committed = True

    try:
        if server.keepalive_after is None:
            stream = await gw.service.open_stream(ctx)
        else:
            stream = await _open_with_keepalive(gw, ctx, send, start_response, lambda: committed, probe.keepalive)
    except GatewayError as exc:
        if committed:
            await send({"type": "http.response.body", "body": probe.fail(exc.message), "more_body": False})
        else:
            await send_error(send, exc, ctx.response_headers(), fmt.error_body)
        return
    except Exception:
        log.exception("opening the stream failed (request %s)", ctx.request_id)
        if committed:
            await send({"type": "http.response.body", "body": probe.fail("internal error")})
        else:
            await send_error(send, internal_error(), ctx.response_headers(), fmt.error_body)
        return
    served = ctx.served_by
    assert served is not None
    try:
        encoder = fmt.stream_encoder(ctx.request, model=served.model.id, created=ctx.created)
        first = encoder.encode(stream.first)  # before the status: a failure here is still an HTTP error
        if not committed:
            await start_response()
        await send({"type": "http.response.body", "body": first, "more_body": True})
        stream.relayed = True
    except Exception:
        log.exception("starting the stream failed (request %s)", ctx.request_id)
        await stream.close(internal_error=True)
        if committed or stream.relayed:
            raise
        await send_error(send, internal_error(), ctx.response_headers(), fmt.error_body)
        return
    except BaseException:
        await stream.close()  # the relay never began: record the request and let go of what it holds
        raise
    await _relay(gw, send, ctx, stream, encoder)


async def _open_with_keepalive(
    gw: Services,
    ctx: RequestContext,
    send: Send,
    start_response: Callable[[], Awaitable[None]],
    committed: Callable[[], bool],
    keepalive: bytes,
) -> OpenStream:
    server = gw.server
    opening = asyncio.get_running_loop().create_task(gw.service.open_stream(ctx))
    try:
        done, _ = await asyncio.wait({opening}, timeout=server.keepalive_after)
        while not done:
            if not committed():
                await start_response()
            await send({"type": "http.response.body", "body": keepalive, "more_body": True})
            done, _ = await asyncio.wait({opening}, timeout=server.keepalive_interval)
    except asyncio.CancelledError:
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await opening
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            await opening.result().close()  # it opened as the client left: settle it unrelayed
        raise
    return opening.result()


async def _relay(gw: Services, send: Send, ctx: RequestContext, stream: OpenStream, encoder: StreamEncoder) -> None:
    gw.streams.opened(stream)
    metrics = gw.observability.metrics if gw.observability is not None else None
    if metrics is not None:
        metrics.stream_opened()
    rest = stream.rest()
    try:
        async for deltas in rest:
            await send({"type": "http.response.body", "body": encoder.encode(deltas), "more_body": True})
        end = stream.end
        assert end is not None
        tail = encoder.encode(end.tail) if end.tail else b""
        last = encoder.fail(end.failure) if end.failure is not None else encoder.done(end.usage)
        await send({"type": "http.response.body", "body": tail + last, "more_body": True})
    except Exception:
        log.exception("stream failed after the first byte (request %s)", ctx.request_id)
        await stream.close(internal_error=True)
        await send({"type": "http.response.body", "body": encoder.fail("internal error"), "more_body": True})
    finally:
        gw.streams.closed(stream)
        if metrics is not None:
            metrics.stream_closed()
        await rest.aclose()
        await stream.close()  # a no-op once rest() recorded it
    await send({"type": "http.response.body", "body": b""})
