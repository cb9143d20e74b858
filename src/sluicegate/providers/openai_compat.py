"""Adapter for any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, Groq, ...).

The request body passes through with unknown fields intact; only the model name is rewritten and
usage is always requested (``stream_options.include_usage``), so metering never depends on the
client asking. Upstream errors are translated here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from ..config import Deployment
from ..errors import GatewayError, StreamInterrupted, UpstreamEmptyBody, UpstreamError, UpstreamStatus
from ..types import ChatChunk, ChatRequest, ChoiceDelta, Completion, Usage
from ._headers import retry_after_seconds
from ._http import end_response, malformed_event, open_post, read_json, read_some
from .base import StreamStats
from .sse import SseDecoder

log = logging.getLogger("sluicegate.providers.openai")

_RETRYABLE_STATUS = frozenset({408, 409, 429})


class OpenAICompatProvider:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def aclose(self) -> None:
        return None

    def _headers(self, deployment: Deployment, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "x-request-id": request_id}
        if deployment.api_key:
            headers["Authorization"] = f"Bearer {deployment.api_key}"
        return headers

    def _url(self, deployment: Deployment) -> str:
        assert deployment.api_base
        return deployment.api_base.rstrip("/") + "/chat/completions"

    async def _open(
        self, body: dict[str, Any], deployment: Deployment, request_id: str, *, whole_body: bool = False
    ) -> aiohttp.ClientResponse:
        headers = self._headers(deployment, request_id)
        return await open_post(
            self._session, self._url(deployment), body, headers, deployment, translate_error, whole_body=whole_body
        )

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        body = {**request.params, "model": deployment.model, "messages": request.messages}
        body.pop("stream", None)
        resp = await self._open(body, deployment, request_id, whole_body=True)
        obj = await read_json(resp)
        if not isinstance(obj, dict):
            raise UpstreamEmptyBody("the upstream sent an unusable body")
        if isinstance(obj.get("error"), dict):
            raise _inband_error(obj)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UpstreamEmptyBody("the upstream answer has no choices")
        usage = obj.get("usage")
        extra = {k: obj[k] for k in ("system_fingerprint", "service_tier") if obj.get(k) is not None}
        return Completion(
            choices=choices,
            usage=Usage.from_openai(usage) if isinstance(usage, dict) else None,
            extra=extra,
        )

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        body = {**request.params, "model": deployment.model, "messages": request.messages, "stream": True}
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
        resp = await self._open(body, deployment, request_id)
        decoder = SseDecoder()
        finished = False
        # Until the first real content is out, hand it over as soon as it is parsed, even when the same
        # read holds the rest of the answer: time to first token is what clients feel.
        eager = True
        try:
            while True:
                data = await read_some(resp)
                if not data:
                    break
                batch: list[ChatChunk] = []
                failure: Exception | None = None
                for event in decoder.feed(data):
                    payload = event.data
                    if payload == b"[DONE]":
                        finished = True
                        break
                    try:
                        chunk = _parse_chunk(payload, deployment, stats)
                    except (UpstreamError, StreamInterrupted) as exc:
                        # Deliver what came before the failure, whatever the read boundaries were.
                        failure = exc
                        break
                    if chunk is not None:
                        batch.append(chunk)
                        if eager and _has_content(chunk):
                            eager = False
                            yield batch
                            batch = []
                if batch:
                    yield batch
                if failure is not None:
                    raise failure
                if finished:
                    return
        finally:
            end_response(resp, finished=finished)


def _has_content(chunk: ChatChunk) -> bool:
    return any(c.finish_reason is not None or any(k != "role" and v for k, v in c.delta.items()) for c in chunk.choices)


def _parse_chunk(payload: bytes, deployment: Deployment, stats: StreamStats) -> ChatChunk | None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        raise _inband_error(obj)
    choices_raw = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices_raw, list):
        malformed_event(stats, deployment, started=stats.valid_events > 0, size=len(payload), log=log)
        return None
    assert isinstance(obj, dict)
    stats.valid_events += 1
    choices: list[ChoiceDelta] = []
    for c in choices_raw:
        if not isinstance(c, dict):
            continue
        delta = c.get("delta")
        index = c.get("index")
        choices.append(
            ChoiceDelta(
                index=index if isinstance(index, int) else 0,
                delta=delta if isinstance(delta, dict) else {},
                finish_reason=c.get("finish_reason"),
                logprobs=c.get("logprobs"),
            )
        )
    usage = obj.get("usage")
    return ChatChunk(choices, Usage.from_openai(usage) if isinstance(usage, dict) else None)


def _inband_error(obj: dict[str, Any]) -> UpstreamError:
    """An ``{"error": ...}`` object inside a 200 body, as vLLM and others send."""
    err = obj["error"]
    message = str(err.get("message") or "the upstream reported an error")
    return UpstreamError(f"upstream error: {message}", retryable=True)


def translate_error(status: int, raw: bytes, headers: Mapping[str, str]) -> GatewayError:
    """Map an upstream HTTP error to the gateway's error tree (SPEC §6)."""
    retry_after = retry_after_seconds(headers)
    if status in (401, 403):
        # Our provider key was refused: the gateway's misconfiguration, not the caller's fault.
        return UpstreamError(f"the upstream refused the gateway's credentials (HTTP {status})", retryable=True)
    if status >= 500:
        return UpstreamError(f"the upstream failed (HTTP {status})", retryable=True, retry_after=retry_after)
    body: Any = None
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]):
        text = raw.decode("utf-8", "replace").strip()[:500] or f"upstream returned HTTP {status}"
        body = {
            "error": {
                "message": text,
                "type": "invalid_request_error" if status != 429 else "rate_limit_error",
                "param": None,
                "code": None,
            }
        }
    else:
        err = body["error"]
        body = {"error": {"param": None, "code": None, "type": "invalid_request_error", **err}}
    return UpstreamStatus(status, body, retryable=status in _RETRYABLE_STATUS, retry_after=retry_after)
