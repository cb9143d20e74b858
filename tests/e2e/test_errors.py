"""Errors before the first byte (SPEC §6) and authentication (SPEC §2), through the real gateway."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess


def call(
    gw: GatewayProcess,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    path: str = "/chat/completions",
) -> httpx.Response:
    hdrs = {"Authorization": f"Bearer {gw.key}"} if headers is None else headers
    with httpx.Client(timeout=30) as client:
        if content is not None:
            return client.post(gw.base_url + path, content=content, headers=hdrs)
        return client.post(gw.base_url + path, json=body, headers=hdrs)


def chat(content: str, *, stream: bool = True, model: str = "gpt-test") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


def envelope(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("scenario", "status", "code"),
    [
        ("status:500", 502, "upstream_error"),
        ("status:503", 502, "upstream_error"),
        ("status_noenvelope:502", 502, "upstream_error"),
        ("reset_before_headers", 502, "upstream_error"),
        ("inband_error_first", 502, "upstream_error"),
        ("malformed_first", 502, "upstream_error"),
        ("empty_body", 502, "upstream_empty_body"),
        ("context_length", 400, "context_length_exceeded"),
        ("status:429", 429, None),
        ("status:404", 404, None),
    ],
)
def test_upstream_failure_before_content_is_an_http_error(
    gateway: GatewayProcess, fake: FakeOpenAI, scenario: str, status: int, code: str | None, stream: bool
) -> None:
    r = call(gateway, chat(f"scenario:{scenario}", stream=stream))
    assert r.status_code == status, r.text
    err = envelope(r)
    if code is not None:
        assert err["code"] == code
    assert "sk-upstream-secret" not in r.text
    assert r.headers["x-request-id"]


def test_upstream_envelope_is_passed_on_verbatim(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = call(gateway, chat("scenario:context_length"))
    err = envelope(r)
    assert err["type"] == "invalid_request_error"
    assert "maximum context length" in err["message"]


def test_silent_upstream_times_out_on_first_token(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    started = time.monotonic()
    r = call(gateway, chat("scenario:silent"))
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and envelope(r)["code"] == "upstream_timeout"
    assert 1.4 < elapsed < 4  # first_token timeout is 1.5 s in the test config
    record = fake.wait_for(lambda reqs: [q for q in reqs if q.client_closed_at is not None], timeout=2)[-1]
    assert record.scenario == "silent"


def test_slow_first_token_within_the_timeout_succeeds(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = call(gateway, chat("scenario:slow_first:500"))
    assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "gpt-test"}, "messages"),
        ({"model": "gpt-test", "messages": []}, "messages"),
        ({"model": "gpt-test", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-test", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "gpt-test", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        (
            {"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream_options": {}},
            "stream_options",
        ),
        ({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools[0].function"),
    ],
)
def test_invalid_bodies_get_400_naming_the_field(
    gateway: GatewayProcess, fake: FakeOpenAI, body: dict[str, Any], param: str
) -> None:
    r = call(gateway, body)
    assert r.status_code == 400
    err = envelope(r)
    assert err["code"] == "invalid_body" and err["param"] == param
    assert fake.requests == []


def test_non_json_body(gateway: GatewayProcess) -> None:
    r = call(gateway, content=b"{not json")
    assert r.status_code == 400 and envelope(r)["code"] == "invalid_body"


def test_unknown_model_is_404(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = call(gateway, chat("x", model="no-such-model"))
    assert r.status_code == 404 and envelope(r)["code"] == "model_not_found"
    assert fake.requests == []


def test_body_over_the_limit_is_413(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = call(gateway, content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413 and envelope(r)["code"] == "request_too_large"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"x-api-key": "wrong-key"},
        {"Authorization": "Basic abc", "x-api-key": "MASTER"},  # malformed Authorization is not skipped
        {"Authorization": "Bearer", "x-api-key": "MASTER"},
        {"Authorization": "Bearer wrong", "x-api-key": "MASTER"},  # Bearer wins
    ],
)
def test_authentication_failures_are_401_with_one_message(
    gateway: GatewayProcess, fake: FakeOpenAI, headers: dict[str, str]
) -> None:
    headers = {k: (gateway.key if v == "MASTER" else v) for k, v in headers.items()}
    r = call(gateway, chat("x"), headers=headers)
    assert r.status_code == 401
    err = envelope(r)
    assert err["code"] == "invalid_api_key"
    # One message for every cause, then the request id a caller can quote to the operator.
    request_id = r.headers["x-request-id"]
    assert err["message"] == (
        f"Incorrect or missing API key. Pass a valid key as 'Authorization: Bearer <key>'. (request id: {request_id})"
    )
    assert fake.requests == []


def test_x_api_key_alone_and_bearer_over_bad_x_api_key(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    assert call(gateway, chat("x", stream=False), headers={"x-api-key": gateway.key}).status_code == 200
    both = {"Authorization": f"Bearer {gateway.key}", "x-api-key": "wrong"}
    assert call(gateway, chat("x", stream=False), headers=both).status_code == 200


def test_models_lists_configured_models(gateway: GatewayProcess) -> None:
    with httpx.Client() as client:
        r = client.get(gateway.base_url + "/models", headers={"Authorization": f"Bearer {gateway.key}"})
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "list"
        assert {m["id"] for m in body["data"]} == {"gpt-test", "gpt-strict", "demo"}
        assert all(set(m) == {"id", "object", "created", "owned_by"} for m in body["data"])
        assert client.get(gateway.base_url + "/models").status_code == 401


def test_health_and_readiness(gateway: GatewayProcess) -> None:
    with httpx.Client() as client:
        assert client.get(gateway.url + "/healthz").json() == {"status": "ok"}
        assert client.get(gateway.url + "/readyz").json() == {"status": "ready"}
        r = client.get(gateway.url + "/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_request_id_is_accepted_and_echoed(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {gateway.key}", "x-request-id": "my-trace-123"}
    r = call(gateway, chat("x", stream=False), headers=headers)
    assert r.headers["x-request-id"] == "my-trace-123"
    assert fake.requests[-1].headers["x-request-id"] == "my-trace-123"
    bad = call(gateway, chat("x", stream=False), headers={**headers, "x-request-id": "bad id with spaces"})
    assert bad.headers["x-request-id"] != "bad id with spaces"
