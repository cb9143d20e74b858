"""The Anthropic and Gemini adapters against a stub upstream: read boundaries, pre/post first byte, bad events.

The end-to-end tests see whatever reads the kernel happens to deliver; here the same bytes the fakes
send are cut at every byte, so a split inside an event, a CRLF pair or a UTF-8 character is covered.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

import aiohttp
import pytest
from tests.fakes import anthropic_upstream, gemini_upstream
from tests.support.encoding import ClientStream

from sluicegate.config import Deployment
from sluicegate.errors import StreamInterrupted, UpstreamEmptyBody, UpstreamError, UpstreamUnavailable
from sluicegate.providers.anthropic import AnthropicProvider
from sluicegate.providers.base import StreamStats
from sluicegate.providers.gemini import GeminiProvider
from sluicegate.types import ChatRequest


class _Content:
    def __init__(self, parts: list[bytes]) -> None:
        self._parts = list(parts)

    async def readany(self) -> bytes:
        return self._parts.pop(0) if self._parts else b""


class _Response:
    status = 200
    headers: dict[str, str] = {}

    def __init__(self, parts: list[bytes]) -> None:
        self.content = _Content(parts)
        self.closed = False

    def release(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class _Session:
    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def post(self, url: str, **_: Any) -> _Response:
        return _Response(self.parts)


def anthropic_bytes(text: str) -> bytes:
    events = anthropic_upstream.stream_events(text, "claude-x")
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def gemini_bytes(text: str) -> bytes:
    events = gemini_upstream.stream_events(text, "gemini-x")
    return b"".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n".encode() for e in events)


def request(content: str, **body: Any) -> ChatRequest:
    messages = [{"role": "user", "content": content}]
    return ChatRequest(model="m", messages=messages, params=dict(body), stream=True)


async def run(provider: str, parts: list[bytes], req: ChatRequest, *, strict: bool = False) -> tuple[bytes, int, Any]:
    """(client bytes, batches yielded, the exception the iterator raised or None)."""
    session = cast(aiohttp.ClientSession, _Session(parts))
    adapter = AnthropicProvider(session) if provider == "anthropic" else GeminiProvider(session)
    deployment = Deployment.model_validate({"provider": provider, "model": "x", "strict": strict})
    encoder = ClientStream("chatcmpl-1", 1, "m", include_usage=True)
    out: list[bytes] = []
    batches = 0
    try:
        async for batch in adapter.stream(req, deployment, "req-1", StreamStats()):
            batches += 1
            out.append(encoder.encode(batch))
    except (UpstreamError, StreamInterrupted) as exc:
        return b"".join(out), batches, exc
    if encoder.usage is not None:
        out.append(encoder.usage_frame(encoder.usage))
    return b"".join(out), batches, None


def normalise(raw: bytes) -> bytes:
    return re.sub(rb"call_[0-9a-f]{12}_", b"call_X_", raw)


def outcome(result: tuple[bytes, int, Any]) -> tuple[bytes, Any]:
    raw, _, exc = result
    return normalise(raw), (type(exc).__name__, getattr(exc, "message", None)) if exc else None


CASES = [
    ("anthropic", "scenario:tool_calls"),
    ("anthropic", "scenario:doc_tool"),
    ("anthropic", "scenario:thinking"),
    ("anthropic", "scenario:cache_usage"),
    ("anthropic", "scenario:error_mid_stream"),
    ("anthropic", "scenario:truncated"),
    ("anthropic", "héllo wörld ✓"),
    ("gemini", "scenario:tool_calls"),
    ("gemini", "scenario:blocked"),
    ("gemini", "scenario:thinking"),
    ("gemini", "scenario:error_mid_stream"),
    ("gemini", "scenario:no_finish"),
    ("gemini", "héllo wörld ✓"),
]


@pytest.mark.parametrize(("provider", "text"), CASES)
def test_same_output_whatever_the_read_boundaries(provider: str, text: str) -> None:
    raw = anthropic_bytes(text) if provider == "anthropic" else gemini_bytes(text)
    req = request(text, reasoning_effort="low", max_completion_tokens=4096)
    whole = outcome(asyncio.run(run(provider, [raw], req)))
    bytewise = outcome(asyncio.run(run(provider, [raw[i : i + 1] for i in range(len(raw))], req)))
    assert bytewise == whole
    assert whole[0].count(b'"role":"assistant"') == 1


@pytest.mark.parametrize(
    ("provider", "text", "exc_type"),
    [
        ("anthropic", "scenario:error_first", UpstreamUnavailable),
        ("anthropic", "scenario:error_mid_stream", StreamInterrupted),
        ("anthropic", "scenario:truncated", StreamInterrupted),
        ("gemini", "scenario:error_mid_stream", StreamInterrupted),
        ("gemini", "scenario:no_finish", StreamInterrupted),
    ],
)
def test_failures_before_content_yield_nothing(provider: str, text: str, exc_type: type[Exception]) -> None:
    raw = anthropic_bytes(text) if provider == "anthropic" else gemini_bytes(text)
    # One event per read: the role chunk arrives in a read of its own, before the error.
    parts = [p + b"\n\n" for p in raw.replace(b"\r\n", b"\n").split(b"\n\n") if p]
    _, batches, exc = asyncio.run(run(provider, parts, request(text)))
    assert isinstance(exc, exc_type)
    if exc_type is StreamInterrupted:
        assert batches > 0
    else:
        assert batches == 0  # the role chunk was held back: the service can still fail over


def test_message_start_only_is_a_failed_attempt() -> None:
    name, data = anthropic_upstream.stream_events("x", "c")[0]
    raw = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    _, batches, exc = asyncio.run(run("anthropic", [raw], request("x")))
    assert batches == 0 and type(exc) is UpstreamError


def test_empty_body_is_empty_body() -> None:
    for provider in ("anthropic", "gemini"):
        _, batches, exc = asyncio.run(run(provider, [], request("x")))
        assert batches == 0 and isinstance(exc, UpstreamEmptyBody), provider


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
@pytest.mark.parametrize(
    ("first", "strict", "expected"),
    [(True, False, UpstreamError), (False, False, None), (False, True, StreamInterrupted)],
)
def test_malformed_event(provider: str, first: bool, strict: bool, expected: type[Exception] | None) -> None:
    raw = anthropic_bytes("hello there friend") if provider == "anthropic" else gemini_bytes("hello there friend")
    events = [p + b"\n\n" for p in raw.replace(b"\r\n", b"\n").split(b"\n\n") if p]
    # First: nothing reached the client, a failed attempt. Else just before the last event, after content.
    events.insert(0 if first else len(events) - 1, b"data: {not json\n\n")
    client, _, exc = asyncio.run(run(provider, events, request("hello there friend"), strict=strict))
    if expected is None:
        assert exc is None and b'"finish_reason":"stop"' in client
    else:
        assert type(exc) is expected
