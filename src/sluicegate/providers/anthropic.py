"""Adapter for Anthropic's Messages API (``POST /v1/messages``), streaming and not.

The translation itself lives in ``anthropic_translate``/``anthropic_stream`` (pure, no I/O); this
module only does the call and decides what a failure means for the client:

* Chunks are held back until the first real content (text, reasoning, a tool call) or the finish:
  Anthropic sends ``message_start`` at once, before the model has produced anything, and an
  ``overloaded_error`` event often follows it. Holding the role chunk keeps such a failure *before*
  the first byte, where the service can fail over or answer with a real HTTP status.
* After content, an ``error`` event or a body that ends without ``message_stop`` ends the stream
  with the ``stream_error`` frame (``StreamInterrupted``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ..config import Deployment
from ..errors import GatewayError, StreamInterrupted, UpstreamEmptyBody, UpstreamError
from ..types import ChatChunk, ChatRequest, Completion
from ._http import end_response, malformed_event, open_post, read_json, read_some
from .anthropic_stream import stream_error
from .anthropic_translate import (
    ANTHROPIC_VERSION,
    StreamTranslator,
    build_request,
    parse_response,
    translate_error,
    wants_reasoning,
)
from .base import StreamStats
from .sse import SseDecoder

log = logging.getLogger("sluicegate.providers.anthropic")

DEFAULT_API_BASE = "https://api.anthropic.com"


class AnthropicProvider:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def aclose(self) -> None:
        return None  # the session belongs to the gateway

    @staticmethod
    def _url(deployment: Deployment) -> str:
        return (deployment.api_base or DEFAULT_API_BASE).rstrip("/") + "/v1/messages"

    @staticmethod
    def _headers(deployment: Deployment, request_id: str) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            "x-request-id": request_id,
        }
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        return headers

    async def _open(
        self, body: dict[str, Any], deployment: Deployment, request_id: str, *, whole_body: bool = False
    ) -> aiohttp.ClientResponse:
        headers = self._headers(deployment, request_id)
        return await open_post(
            self._session, self._url(deployment), body, headers, deployment, translate_error, whole_body=whole_body
        )

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        body = build_request(request, deployment.model, deployment.default_max_tokens, stream=False)
        resp = await self._open(body, deployment, request_id, whole_body=True)
        obj = await read_json(resp)
        if not isinstance(obj, dict):
            raise UpstreamEmptyBody("the upstream sent an unusable body")
        if obj.get("type") == "error":
            raise stream_error(obj)  # an error object inside a 200: same meaning as the stream's event
        if not isinstance(obj.get("content"), list):
            raise UpstreamEmptyBody("the upstream answer has no content")
        return parse_response(obj, include_reasoning=wants_reasoning(request))

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        # Built before the call: a request that cannot be mapped is the client's 400, not an attempt.
        body = build_request(request, deployment.model, deployment.default_max_tokens, stream=True)
        translator = StreamTranslator(include_reasoning=wants_reasoning(request))
        resp = await self._open(body, deployment, request_id)
        decoder = SseDecoder()
        held: list[ChatChunk] = []  # chunks not yet released: nothing but the role chunk so far
        released = False
        try:
            while True:
                data = await read_some(resp)
                if not data:
                    break
                batch = held
                held = []
                failure: BaseException | None = None
                for event in decoder.feed(data):
                    try:
                        obj = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        obj = None
                    try:
                        if not isinstance(obj, dict):
                            malformed_event(stats, deployment, started=released, size=len(event.data), log=log)
                            continue
                        stats.valid_events += 1
                        batch.extend(translator.feed(event.event or "", obj))
                    except (GatewayError, StreamInterrupted) as exc:
                        failure = exc
                        break
                    if translator.done:
                        break
                if translator.content_sent or translator.done:
                    released = True
                if released:
                    if batch:
                        yield batch
                else:
                    held = batch
                if failure is not None:
                    # Before any content the attempt failed (fail over, or the client gets the HTTP
                    # status); after it, the client's stream ends with the error frame.
                    if released and not isinstance(failure, StreamInterrupted):
                        raise StreamInterrupted(_message(failure)) from failure
                    raise failure
                if translator.done:
                    return
            if released:
                raise StreamInterrupted("upstream stream ended early")
            if not stats.valid_events:
                raise UpstreamEmptyBody("the upstream ended the stream before sending anything")
            raise UpstreamError("the upstream ended the stream before any content")
        finally:
            end_response(resp, finished=translator.done)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, GatewayError | StreamInterrupted) else "upstream stream interrupted"
