"""Adapter for the Gemini API (``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``).

The translation lives in ``gemini_translate``/``gemini_stream`` (pure, no I/O), the stream loop in
``translated_stream`` (as for Anthropic, the role chunk is held until content, a tool call or a finish, so an
error in the first event keeps the attempt failing before the first byte); this module does the call. Gemini
frames its stream as bare ``data:`` events with no terminator: the end of the body is the end of the stream,
so ``finish()`` runs there (it yields the usage chunk, or raises if no finish reason came).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from ..config import Deployment
from ..errors import UpstreamEmptyBody
from ..types import ChatChunk, ChatRequest, Completion
from ._http import open_post, read_json
from .base import StreamStats
from .gemini_stream import stream_error
from .gemini_translate import StreamTranslator, build_request, parse_response, translate_error, wants_reasoning
from .options import default_max_tokens
from .translated_stream import translated_stream

log = logging.getLogger("sluicegate.providers.gemini")

DEFAULT_API_BASE = "https://generativelanguage.googleapis.com"


class GeminiProvider:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def aclose(self) -> None:
        return None  # the session belongs to the gateway

    @staticmethod
    def _url(deployment: Deployment, method: str) -> str:
        # Accept "models/gemini-x" too: that is how Google's own model list names them.
        model = quote(deployment.model.removeprefix("models/"), safe="-._~")
        return f"{(deployment.api_base or DEFAULT_API_BASE).rstrip('/')}/v1beta/models/{model}:{method}"

    @staticmethod
    def _headers(deployment: Deployment, request_id: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-request-id": request_id}
        if deployment.api_key:
            headers["x-goog-api-key"] = deployment.api_key
        return headers

    async def _open(
        self, url: str, body: dict[str, Any], deployment: Deployment, request_id: str, *, whole_body: bool = False
    ) -> aiohttp.ClientResponse:
        headers = self._headers(deployment, request_id)
        return await open_post(self._session, url, body, headers, deployment, translate_error, whole_body=whole_body)

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        body = build_request(request, default_max_tokens(deployment))
        resp = await self._open(self._url(deployment, "generateContent"), body, deployment, request_id, whole_body=True)
        obj = await read_json(resp)
        if not isinstance(obj, dict):
            raise UpstreamEmptyBody("the upstream sent an unusable body")
        if isinstance(obj.get("error"), dict):
            raise stream_error(obj)
        feedback = obj.get("promptFeedback")
        blocked = isinstance(feedback, dict) and bool(feedback.get("blockReason"))
        if not obj.get("candidates") and not blocked:
            raise UpstreamEmptyBody("the upstream answer has no candidates")
        return parse_response(obj, include_reasoning=wants_reasoning(request))

    def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        # Built before the call: a request that cannot be mapped is the client's 400, not an attempt.
        body = build_request(request, default_max_tokens(deployment))
        translator = StreamTranslator(include_reasoning=wants_reasoning(request))
        url = self._url(deployment, "streamGenerateContent") + "?alt=sse"
        # Gemini has no end-of-stream event: the body's end is the end, where ``finish`` checks the answer ended.
        return translated_stream(
            lambda: self._open(url, body, deployment, request_id),
            deployment,
            stats,
            log,
            translator,
            lambda _event, obj: translator.feed(obj),
            at_end=translator.finish,
        )
