"""Helpers shared by the resilience end-to-end tests (``test_resilience*.py``); not a test module."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.fakes.openai import FakeOpenAI, RecordedRequest
from tests.support.gateway import GatewayProcess

# Short per-deployment timeouts so every failure mode resolves in about a second.
TIMEOUTS: dict[str, float] = {"connect": 1, "headers": 1.5, "first_token": 1, "idle": 1, "total": 8}
# A weight this lopsided makes the weighted shuffle put the heavy deployment first in practice
# (u ** 1e-6 vs u ** 1e6), so "A fails, B answers" tests see A tried first every time.
FIRST = 1e6
SECOND = 1e-6


def deployment(fake: FakeOpenAI, model: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI-compatible deployment on ``fake``; ``model`` is the upstream model name (logged by the fake)."""
    return {
        "provider": "openai",
        "name": model.split()[0],
        "model": model,
        "api_base": fake.url,
        "api_key": "sk-upstream-resilience",
        "timeouts": TIMEOUTS,
        **extra,
    }


def chat(model: str, content: str = "hello", *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}], **extra}


def post(
    gw: GatewayProcess, body: dict[str, Any], *, request_id: str | None = None, timeout: float = 30
) -> tuple[httpx.Response, float]:
    """POST a chat request and read the whole response; returns it with the elapsed seconds."""
    headers = {"Authorization": f"Bearer {gw.key}"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    started = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        response = client.post(gw.base_url + "/chat/completions", json=body, headers=headers)
    return response, time.monotonic() - started


def chats(fake: FakeOpenAI, upstream_model: str | None = None) -> list[RecordedRequest]:
    """The chat requests ``fake`` received, optionally only those for one upstream model name (deployment)."""
    out = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    if upstream_model is not None:
        out = [r for r in out if isinstance(r.body, dict) and str(r.body.get("model", "")).split()[0] == upstream_model]
    return out


def frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-120:]
    return raw[:-2].split(b"\n\n")


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a stream body (keep-alive comments, the error event and [DONE] skipped)."""
    out = []
    for frame in frames(raw):
        if frame.startswith((b":", b"event: error")) or frame == b"data: [DONE]":
            continue
        assert frame.startswith(b"data: "), frame
        out.append(json.loads(frame[6:]))
    return out


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def error_frame(message: str) -> bytes:
    """The exact terminal frame of a stream that failed after its first byte, with the [DONE] that follows."""
    payload = json.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": "stream_error"}},
        separators=(",", ":"),
    )
    return b"event: error\ndata: " + payload.encode() + b"\n\ndata: [DONE]\n\n"


def assert_complete_stream(raw: bytes, model: str, text: str) -> list[dict[str, Any]]:
    """A whole, successful stream: one finish chunk, [DONE], no error event, every chunk naming ``model``."""
    assert b"event: error" not in raw, raw[-300:]
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-300:]
    chunks = chunks_of(raw)
    assert {c["model"] for c in chunks} == {model}
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1
    assert text_of(chunks) == text
    return chunks


def assert_envelope(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def counters(response: httpx.Response) -> tuple[int, int]:
    """``(x-sluicegate-attempts, x-sluicegate-fallbacks)``."""
    return int(response.headers["x-sluicegate-attempts"]), int(response.headers["x-sluicegate-fallbacks"])


def abandon(
    gw: GatewayProcess,
    body: dict[str, Any],
    leave_when: Callable[[], object],
    after: float = 0.0,
    request_id: str = "",
) -> float:
    """Send a chat request on a raw socket; once ``leave_when()`` is truthy (e.g. the fake upstream has answered the
    first attempt) and ``after`` seconds more, close the socket. Returns when it closed."""
    data = json.dumps(body).encode()
    rid = f"x-request-id: {request_id}\r\n" if request_id else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAuthorization: Bearer {gw.key}\r\n"
        f"{rid}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head + data)
        deadline = time.monotonic() + 10
        while not leave_when():
            assert time.monotonic() < deadline, "the request never reached the state the client leaves in"
            time.sleep(0.005)
        if after:
            time.sleep(after)
        closed_at = time.monotonic()
    return closed_at
