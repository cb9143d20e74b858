"""Anthropic and Gemini adapters end to end: official clients → real gateway process → faithful fakes.

The fakes pick their behaviour from the last user message (``scenario:...``, see their docstrings);
everything the client sees must be the SPEC §5 stream or a SPEC §6 error, whichever provider answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from tests.conftest import TEST_TIMEOUTS
from tests.e2e.test_node_sdk import run_node
from tests.e2e.test_stream_contract import assert_success_shape, chunks_of, frames, post_stream, text_of
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.support.gateway import GatewayProcess

CLAUDE, GEMINI = "claude-test", "gemini-test"
ANTHROPIC_KEY, GEMINI_KEY = "sk-ant-upstream-5c1e", "AIza-upstream-9d2f"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


class Upstreams:
    def __init__(self, anthropic: FakeAnthropic, gemini: FakeGemini) -> None:
        self.anthropic = anthropic
        self.gemini = gemini


def native_config(anthropic_url: str, gemini_url: str) -> dict[str, Any]:
    def anthropic(**extra: Any) -> dict[str, Any]:
        base = {"provider": "anthropic", "model": "claude-upstream", "api_base": anthropic_url}
        return {**base, "api_key": ANTHROPIC_KEY, "timeouts": TEST_TIMEOUTS, **extra}

    gemini = {
        "provider": "gemini",
        "model": "gemini-upstream",
        "api_base": gemini_url,
        "api_key": GEMINI_KEY,
        "timeouts": TEST_TIMEOUTS,
    }
    return {
        "models": [
            {"id": CLAUDE, "deployments": [anthropic()]},
            {"id": GEMINI, "deployments": [gemini]},
            {"id": "claude-badkey", "deployments": [anthropic(api_key="bad-key")]},
            # A failed Anthropic attempt before the first byte must fail over to Gemini.
            {"id": "claude-or-gemini", "deployments": [anthropic()], "fallbacks": [GEMINI]},
        ],
        "server": {"max_body_bytes": 1024 * 1024, "tail_grace": 0.5},
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    anthropic, gemini = FakeAnthropic(), FakeGemini()
    with anthropic, gemini:
        yield Upstreams(anthropic, gemini)


@pytest.fixture(scope="module")
def native_gw(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("native-gateway")
    with GatewayProcess(native_config(upstreams.anthropic.url, upstreams.gemini.url), workdir) as gw:
        yield gw


@pytest.fixture
def fakes(upstreams: Upstreams) -> Upstreams:
    upstreams.anthropic.requests.clear()
    upstreams.gemini.requests.clear()
    return upstreams


@pytest.fixture
def client(native_gw: GatewayProcess, fakes: Upstreams) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=native_gw.base_url, api_key=native_gw.key, max_retries=0, timeout=20) as c:
        yield c


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def post(gw: GatewayProcess, model: str, content: str, *, stream: bool, **extra: Any) -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": user(content), **extra}
    with httpx.Client(timeout=30) as c:
        return c.post(gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {gw.key}"})


def finish_of(chunks: list[dict[str, Any]]) -> str:
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(reasons) == 1, reasons
    return str(reasons[0])


# -- text streams: the exact SPEC §5 shape ------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize(
    ("model", "content", "text"),
    [
        (CLAUDE, "hello there friend", "You said: hello there friend"),
        (CLAUDE, "scenario:doc_hello", "Hello!"),
        (CLAUDE, "scenario:unknown_event", "still fine"),
        (GEMINI, "hello there friend", "You said: hello there friend"),
        (GEMINI, "scenario:doc_hello", "AI works by learning patterns from data."),
    ],
)
def test_text_stream_exact_shape(
    native_gw: GatewayProcess, fakes: Upstreams, model: str, content: str, text: str, include_usage: bool
) -> None:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    r = post_stream(native_gw, content, model=model, **extra)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = assert_success_shape(r.content, include_usage=include_usage, model=model)
    assert text_of(chunks) == text
    assert finish_of(chunks) == "stop"


def test_anthropic_request_on_the_wire(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    r = post_stream(native_gw, "hi", model=CLAUDE)
    assert r.status_code == 200
    [req] = fakes.anthropic.requests
    assert req["path"] == "/v1/messages"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-request-id"] == r.headers["x-request-id"]
    assert "authorization" not in headers
    assert req["body"]["model"] == "claude-upstream" and req["body"]["stream"] is True
    assert req["body"]["max_tokens"] == 4096  # the deployment default: Anthropic requires one


def test_gemini_request_on_the_wire(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    r = post_stream(native_gw, "hi", model=GEMINI)
    assert r.status_code == 200
    [req] = fakes.gemini.requests
    assert req["path"] == "/v1beta/models/gemini-upstream:streamGenerateContent"
    assert req["query"] == {"alt": "sse"}
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-goog-api-key"] == GEMINI_KEY
    assert headers["x-request-id"] == r.headers["x-request-id"]
    assert req["body"]["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_sdk_stream_and_non_stream(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=user("ping pong"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: ping pong"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 9
    completion = client.chat.completions.create(model=model, messages=user("ping pong"))
    assert completion.model == model
    assert completion.choices[0].message.content == "You said: ping pong"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 6


# -- tool calls -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_two_parallel_tool_calls_via_stream_helper(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.stream(model=model, messages=user("scenario:tool_calls"), tools=TOOLS) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking both."
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    args = [json.loads(c.function.arguments) for c in calls]
    assert args == [{"city": "Paris", "unit": "celsius"}, {}]
    ids = [c.id for c in calls]
    assert len(set(ids)) == 2 and all(ids)
    if model == CLAUDE:
        assert ids == ["toolu_01A", "toolu_01B"]  # Anthropic's ids pass through, so results can be matched


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_two_parallel_tool_calls_non_stream(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(model=model, messages=user("scenario:tool_calls"), tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [c for c in choice.message.tool_calls or [] if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    ids = [c.id for c in calls]
    assert len(set(ids)) == 2 and all(ids)
    if model == CLAUDE:
        assert ids == ["toolu_01A", "toolu_01B"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris", "unit": "celsius"}, {}]


def test_anthropic_tool_without_fragments_gets_valid_json(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    r = post_stream(native_gw, "scenario:tool_noargs", model=CLAUDE, tools=TOOLS)
    chunks = assert_success_shape(r.content, include_usage=False, model=CLAUDE)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    arguments = "".join(d["tool_calls"][0]["function"].get("arguments", "") for d in deltas)
    assert json.loads(arguments) == {}
    assert finish_of(chunks) == "tool_calls"


@pytest.mark.node
def test_node_sdk_parallel_tools_through_anthropic(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    result = run_node(
        native_gw, "helper_tools", model=CLAUDE, messages=user("scenario:tool_calls"), tools=TOOLS, includeUsage=True
    )
    assert result["ok"] and result["error"] is None, result["error"]
    assert result["finishReasons"] == ["tool_calls"]
    calls = result["toolCalls"]
    assert [c["id"] for c in calls] == ["toolu_01A", "toolu_01B"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris", "unit": "celsius"}, {}]
    assert result["usage"]["prompt_tokens"] == 40 and result["usage"]["completion_tokens"] == 30


# -- usage ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "prompt", "cached", "completion"),
    # Anthropic: input 10 + cache read 100 + cache creation 50; Gemini's promptTokenCount already includes its cache.
    [(CLAUDE, 160, 100, 5), (GEMINI, 100, 60, 4)],
)
@pytest.mark.parametrize("stream", [True, False])
def test_usage_with_cache_tokens(
    client: openai.OpenAI, model: str, prompt: int, cached: int, completion: int, stream: bool
) -> None:
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=model, messages=user("scenario:cache_usage"), stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(model=model, messages=user("scenario:cache_usage")).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == cached


def test_anthropic_reasoning_opt_in(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    r = post_stream(native_gw, "scenario:thinking", model=CLAUDE, reasoning_effort="low", max_completion_tokens=4096)
    chunks = assert_success_shape(r.content, include_usage=False, model=CLAUDE)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    assert reasoning == "Let me think about it."
    assert text_of(chunks) == "The answer is 4."
    assert fakes.anthropic.requests[-1]["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# -- stop reasons --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("model", "content", "finish"),
    [
        (CLAUDE, "scenario:stop_reason end_turn", "stop"),
        (CLAUDE, "scenario:stop_sequence", "stop"),
        (CLAUDE, "scenario:max_tokens", "length"),
        (CLAUDE, "scenario:stop_reason tool_use", "tool_calls"),
        (CLAUDE, "scenario:pause_turn", "length"),
        (CLAUDE, "scenario:refusal", "content_filter"),
        (CLAUDE, "scenario:stop_reason model_context_window_exceeded", "length"),
        (GEMINI, "scenario:doc_hello", "stop"),
        (GEMINI, "scenario:max_tokens", "length"),
        (GEMINI, "scenario:safety", "content_filter"),
        (GEMINI, "scenario:recitation", "content_filter"),
        (GEMINI, "scenario:blocked", "content_filter"),
        (GEMINI, "scenario:doc_function", "tool_calls"),
    ],
)
def test_stop_reason_mapping(
    native_gw: GatewayProcess, fakes: Upstreams, model: str, content: str, finish: str, stream: bool
) -> None:
    r = post(native_gw, model, content, stream=stream, tools=TOOLS)
    assert r.status_code == 200, r.text
    if stream:
        chunks = assert_success_shape(r.content, include_usage=False, model=model)
        assert finish_of(chunks) == finish
    else:
        assert r.json()["choices"][0]["finish_reason"] == finish


def test_gemini_blocked_prompt_stream_has_no_content(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=GEMINI, messages=user("scenario:blocked"), stream=True))
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["content_filter"]
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)


# -- errors before the first byte ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("model", "scenario", "status", "code"),
    [
        (CLAUDE, "overloaded", 503, "upstream_unavailable"),
        (CLAUDE, "rate_limited", 429, "rate_limit_exceeded"),
        (CLAUDE, "prompt_too_long", 400, "context_length_exceeded"),
        (CLAUDE, "invalid_request", 400, None),
        (CLAUDE, "server_error", 502, "upstream_error"),
        (CLAUDE, "not_found", 502, "upstream_error"),
        (CLAUDE, "error_first", 503, "upstream_unavailable"),  # an error event before any content
        (GEMINI, "rate_limited", 429, "rate_limit_exceeded"),
        (GEMINI, "prompt_too_long", 400, "context_length_exceeded"),
        (GEMINI, "invalid_argument", 400, None),
        (GEMINI, "unavailable", 503, "upstream_unavailable"),
        (GEMINI, "internal", 502, "upstream_error"),
        (GEMINI, "not_found", 502, "upstream_error"),
    ],
)
def test_error_before_first_byte(
    native_gw: GatewayProcess, fakes: Upstreams, model: str, scenario: str, status: int, code: str | None, stream: bool
) -> None:
    r = post(native_gw, model, f"scenario:{scenario}", stream=stream)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    if status == 502:
        # Our deployment's problem: the provider's text (which may name the upstream model) stays out.
        assert "claude-nonexistent" not in err["message"] and "gemini-nonexistent" not in err["message"]


def test_bad_upstream_key_is_a_502(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    r = post(native_gw, "claude-badkey", "hi", stream=True)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "x-api-key" not in r.text


@pytest.mark.parametrize(("model", "seconds"), [(CLAUDE, "7"), (GEMINI, "37")])
def test_rate_limit_passes_retry_after(native_gw: GatewayProcess, fakes: Upstreams, model: str, seconds: str) -> None:
    r = post(native_gw, model, "scenario:rate_limited", stream=True)
    assert r.status_code == 429
    assert r.headers.get("retry-after") == seconds


@pytest.mark.parametrize(
    ("model", "exc", "status"),
    [
        (CLAUDE, openai.RateLimitError, 429),
        (CLAUDE, openai.InternalServerError, 503),
        (CLAUDE, openai.BadRequestError, 400),
        (GEMINI, openai.RateLimitError, 429),
        (GEMINI, openai.BadRequestError, 400),
    ],
)
def test_pre_stream_errors_as_sdk_exceptions(
    client: openai.OpenAI, model: str, exc: type[openai.APIStatusError], status: int
) -> None:
    scenario = {429: "rate_limited", 503: "overloaded", 400: "prompt_too_long"}[status]
    with pytest.raises(exc) as info:
        list(client.chat.completions.create(model=model, messages=user(f"scenario:{scenario}"), stream=True))
    assert info.value.status_code == status


@pytest.mark.parametrize("scenario", ["overloaded", "error_first", "server_error"])
def test_failover_to_gemini_before_first_byte(native_gw: GatewayProcess, fakes: Upstreams, scenario: str) -> None:
    r = post_stream(native_gw, f"scenario:{scenario}", model="claude-or-gemini")
    assert r.status_code == 200, r.text
    assert r.headers["x-sluicegate-fallbacks"] == "1" and r.headers["x-sluicegate-attempts"] == "2"
    chunks = assert_success_shape(r.content, include_usage=False, model=GEMINI)  # attributed to who answered
    assert text_of(chunks) == f"You said: scenario:{scenario}"
    assert len(fakes.anthropic.requests) == 1 and len(fakes.gemini.requests) == 1


def test_unmappable_request_is_400_without_upstream_call(native_gw: GatewayProcess, fakes: Upstreams) -> None:
    for model in (CLAUDE, GEMINI):
        r = post(native_gw, model, "hi", stream=True, n=2)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "n"
    assert fakes.anthropic.requests == [] and fakes.gemini.requests == []


# -- failures after the first byte ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "scenario", "text"),
    [
        (CLAUDE, "error_mid_stream", "Half an ans"),
        (CLAUDE, "truncated", "Cut "),
        (GEMINI, "error_mid_stream", "Half an ans"),
        (GEMINI, "no_finish", "Cut off"),
    ],
)
def test_failure_mid_stream_is_stream_error(
    native_gw: GatewayProcess, client: openai.OpenAI, model: str, scenario: str, text: str
) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model=model, messages=user(f"scenario:{scenario}"), stream=True):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert info.value.code == "stream_error"
    assert "".join(received) == text
    raw = post_stream(native_gw, f"scenario:{scenario}", model=model).content
    assert frames(raw)[-2].startswith(b"event: error\ndata: ") and frames(raw)[-1] == b"data: [DONE]"
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks_of_data(raw))


def chunks_of_data(raw: bytes) -> list[dict[str, Any]]:
    """The data chunks of a stream that ended with the error frame (which ``chunks_of`` would reject)."""
    body = b"\n\n".join(f for f in frames(raw) if f.startswith(b"data: {")) + b"\n\n"
    return chunks_of(body)
