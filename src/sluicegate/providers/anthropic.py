"""Adapter for Anthropic's Messages API (``POST /v1/messages``), streaming and not.

The translation itself lives in ``anthropic_translate``/``anthropic_stream`` (pure, no I/O), the stream
loop in ``translated_stream`` (chunks held back until the first content, so that an ``overloaded_error``
right after ``message_start`` is still a failure before the first byte); this module only does the call.
After content, an ``error`` event or a body that ends without ``message_stop`` ends the stream with the
``stream_error`` frame (``StreamInterrupted``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..config import Deployment
from ..errors import UpstreamEmptyBody
from ..types import ChatChunk, ChatRequest, Completion
from ._http import open_post, read_json
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
from .options import default_max_tokens
from .translated_stream import translated_stream

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
        body = build_request(request, deployment.model, default_max_tokens(deployment), stream=False)
        resp = await self._open(body, deployment, request_id, whole_body=True)
        obj = await read_json(resp)
        if not isinstance(obj, dict):
            raise UpstreamEmptyBody("the upstream sent an unusable body")
        if obj.get("type") == "error":
            raise stream_error(obj)  # an error object inside a 200: same meaning as the stream's event
        if not isinstance(obj.get("content"), list):
            raise UpstreamEmptyBody("the upstream answer has no content")
        return parse_response(obj, include_reasoning=wants_reasoning(request))

    def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        # Built before the call: a request that cannot be mapped is the client's 400, not an attempt.
        body = build_request(request, deployment.model, default_max_tokens(deployment), stream=True)
        translator = StreamTranslator(include_reasoning=wants_reasoning(request))
        # Anthropic ends its stream with message_stop (the translator's ``done``); a body ending first is a failure.
        return translated_stream(
            lambda: self._open(body, deployment, request_id), deployment, stats, log, translator, translator.feed
        )
