"""OpenAI ⇄ Anthropic translation: every mapping row of PROTOCOL §4.1, both directions."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes.anthropic_upstream import error_body, message_body, stream_events
from tests.fakes.sse_parse import SseParser, encode_events

from sluicegate.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sluicegate.providers.anthropic_translate import (
    StreamTranslator,
    build_request,
    parse_response,
    translate_error,
    wants_reasoning,
)
from sluicegate.types import ChatChunk, ChatRequest, ChoiceDelta, Usage

MODEL = "claude-upstream-1"


def req(messages: list[dict[str, Any]] | None = None, **body: Any) -> ChatRequest:
    messages = messages if messages is not None else [{"role": "user", "content": "hi"}]
    return ChatRequest(model="public", messages=messages, params=dict(body), n=body.get("n", 1), user=body.get("user"))


def build(messages: list[dict[str, Any]] | None = None, **body: Any) -> dict[str, Any]:
    return build_request(req(messages, **body), MODEL, 1024, stream=False)


def run(text: str, include_reasoning: bool = False) -> tuple[list[ChatChunk], StreamTranslator]:
    translator = StreamTranslator(include_reasoning)
    chunks: list[ChatChunk] = []
    for name, data in stream_events(text, MODEL):
        chunks += translator.feed(name, data)
    return chunks, translator


def deltas(chunks: list[ChatChunk]) -> list[dict[str, Any]]:
    return [c.choices[0].delta for c in chunks if c.choices]


# --- request mapping ---------------------------------------------------------------------------


def test_minimal_request() -> None:
    assert build() == {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    assert build_request(req(), MODEL, 1024, stream=True)["stream"] is True


def test_system_and_developer_hoisted() -> None:
    out = build(
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Use metric.", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": "hi"},
        ]
    )
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use metric.", "cache_control": {"type": "ephemeral"}},
    ]
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_tool_round_trip_turns() -> None:
    calls = [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    out = build(
        [
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "thanks"},
        ]
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ],
    }
    # Consecutive tool results, and the user turn after them, become one user message, results first.
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
            {"type": "text", "text": "thanks"},
        ],
    }
    assert len(out["messages"]) == 3


def test_assistant_null_content_with_tool_calls_only() -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    out = build([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]}])
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '{"a":' + "[" * 300 + "]" * 300 + "}"])
def test_invalid_tool_arguments_rejected(arguments: str) -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequest) as info:
        build([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}])
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_images() -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    blocks = build([{"role": "user", "content": content}])["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


@pytest.mark.parametrize("url", ["data:image/bmp;base64,AAAA", "data:image/png,rawbytes", "ftp://example.com/a.png"])
def test_bad_images_rejected(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert info.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(
    ("body", "expected"),
    [({}, 1024), ({"max_tokens": 50}, 50), ({"max_completion_tokens": 70, "max_tokens": 50}, 70)],
)
def test_max_tokens(body: dict[str, Any], expected: int) -> None:
    assert build(**body)["max_tokens"] == expected


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ({"stop": "END"}, "stop_sequences", ["END"]),
        ({"stop": ["a", "b"]}, "stop_sequences", ["a", "b"]),
        ({"temperature": 0.3}, "temperature", 0.3),
        ({"temperature": 1.7}, "temperature", 1.0),  # clamped into Anthropic's 0..1
        ({"top_p": 0.9}, "top_p", 0.9),
        ({"user": "u-42"}, "metadata", {"user_id": "u-42"}),
    ],
)
def test_scalar_fields(body: dict[str, Any], key: str, expected: Any) -> None:
    assert build(**body)[key] == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"stop": 5}, "stop"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": "low", "max_tokens": 500}, "max_completion_tokens"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ],
)
def test_invalid_requests(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build(**body)
    assert info.value.param == param and info.value.status == 400


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "d",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools() -> None:
    bare = {"type": "function", "function": {"name": "get_time"}}
    out = build(tools=[TOOL, bare])
    assert out["tools"] == [
        {"name": "get_weather", "description": "d", "input_schema": TOOL["function"]["parameters"]},  # type: ignore[index]
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"tools": [TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert build(**body).get("tool_choice") == expected


def test_reasoning_opt_in() -> None:
    out = build(reasoning_effort="medium", temperature=0.2, top_p=0.5, max_completion_tokens=8000)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert "temperature" not in out and "top_p" not in out  # not allowed with extended thinking
    capped = build(reasoning_effort="high", max_completion_tokens=5000)
    assert capped["thinking"]["budget_tokens"] == 4999
    passthrough = build(thinking={"type": "enabled", "budget_tokens": 2000}, max_tokens=3000)
    assert passthrough["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert "thinking" not in build(reasoning_effort="minimal")
    assert wants_reasoning(req(reasoning_effort="low")) and not wants_reasoning(req())


# --- non-streaming response --------------------------------------------------------------------


def test_parse_text_response() -> None:
    completion = parse_response(message_body(stream_events("hello world", MODEL)))
    assert completion.choices == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "You said: hello world", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert completion.usage == Usage(prompt_tokens=9, completion_tokens=6)


def test_parse_tool_response() -> None:
    message = parse_response(message_body(stream_events("scenario:tool_calls", MODEL))).choices[0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] == "Checking both."
    calls = message["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_01A", "function", "get_weather"),
        ("toolu_01B", "function", "get_time"),
    ]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert calls[1]["function"]["arguments"] == "{}"
    only_tools = parse_response(message_body(stream_events("scenario:tool_noargs", MODEL))).choices[0]
    assert only_tools["message"]["content"] is None


def test_parse_thinking_and_cache_usage() -> None:
    body = message_body(stream_events("scenario:thinking", MODEL))
    assert "reasoning_content" not in parse_response(body).choices[0]["message"]
    with_reasoning = parse_response(body, include_reasoning=True)
    assert with_reasoning.choices[0]["message"]["reasoning_content"] == "Let me think about it."
    assert with_reasoning.usage is not None and with_reasoning.usage.reasoning_tokens == 30
    usage = parse_response(message_body(stream_events("scenario:cache_usage", MODEL))).usage
    assert usage == Usage(prompt_tokens=160, completion_tokens=5, cached_tokens=100, cache_write_tokens=50)
    assert usage.to_openai()["prompt_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 50}


STOP_REASONS = [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
    ("model_context_window_exceeded", "length"),
    ("pause_turn", "length"),
]


@pytest.mark.parametrize(("stop_reason", "finish"), STOP_REASONS)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    text = f"scenario:stop_reason {stop_reason}"
    assert parse_response(message_body(stream_events(text, MODEL))).choices[0]["finish_reason"] == finish
    chunks, _ = run(text)
    assert chunks[-2].choices[0].finish_reason == finish


# --- streaming ---------------------------------------------------------------------------------


def test_stream_documented_hello() -> None:
    chunks, translator = run("scenario:doc_hello")
    assert chunks == [
        ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})]),
        ChatChunk([ChoiceDelta(0, {"content": "Hello"})]),
        ChatChunk([ChoiceDelta(0, {"content": "!"})]),
        ChatChunk([ChoiceDelta(0, {}, finish_reason="stop")]),
        ChatChunk([], usage=Usage(prompt_tokens=25, completion_tokens=15)),
    ]
    assert translator.done and translator.message_id and translator.model == MODEL


def test_stream_tool_calls_index_from_zero_after_text_block() -> None:
    chunks, _ = run("scenario:tool_calls")
    tool_deltas = [d["tool_calls"] for d in deltas(chunks) if "tool_calls" in d]
    assert all(len(t) == 1 for t in tool_deltas)  # one tool-call delta per chunk
    calls = [t[0] for t in tool_deltas]
    assert calls == [
        {"index": 0, "id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": "Pa'}},
        {"index": 0, "function": {"arguments": 'ris", "unit": '}},
        {"index": 0, "function": {"arguments": '"celsius"}'}},
        {"index": 1, "id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        {"index": 1, "function": {"arguments": "{}"}},  # no fragments at all
    ]
    assert deltas(chunks)[1:3] == [{"content": "Checking "}, {"content": "both."}]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


def test_stream_documented_tool_fragments_not_batched() -> None:
    chunks, _ = run("scenario:doc_tool")
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas(chunks) if "tool_calls" in d]
    assert fragments[0] == "" and "" not in fragments[1:] and len(fragments) == 9  # opening + 8 fragments
    assert json.loads("".join(fragments)) == {"location": "San Francisco, CA", "unit": "fahrenheit"}


def test_stream_empty_fragment_only_gives_empty_object() -> None:
    chunks, _ = run("scenario:tool_noargs")
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert calls[1] == {"index": 0, "function": {"arguments": "{}"}} and len(calls) == 2


@pytest.mark.parametrize("include", [True, False])
def test_stream_thinking(include: bool) -> None:
    chunks, translator = run("scenario:thinking", include_reasoning=include)
    reasoning = [d["reasoning_content"] for d in deltas(chunks) if "reasoning_content" in d]
    assert reasoning == (["Let me think", " about it."] if include else [])
    assert [d["content"] for d in deltas(chunks) if d.get("content")] == ["The answer", " is 4."]
    assert not any("signature" in json.dumps(d) for d in deltas(chunks))
    assert translator.usage.reasoning_tokens == 30


def test_stream_redacted_thinking_dropped() -> None:
    chunks, _ = run("scenario:redacted", include_reasoning=True)
    assert deltas(chunks)[1:] == [{"content": "Done."}, {}]


def test_stream_cache_usage_replaced_not_added() -> None:
    chunks, translator = run("scenario:cache_usage")
    expected = Usage(prompt_tokens=160, completion_tokens=5, cached_tokens=100, cache_write_tokens=50)
    assert chunks[-1] == ChatChunk([], usage=expected) and translator.usage == expected


def test_stream_ping_and_unknown_events_ignored() -> None:
    chunks, translator = run("scenario:unknown_event")
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "still "}, {"content": "fine"}, {}]
    assert translator.feed("ping", {"type": "ping"}) == []
    assert translator.feed("message_stop", {"type": "message_stop"}) == []  # nothing after the end


@pytest.mark.parametrize(("scenario", "sent"), [("scenario:error_mid_stream", True), ("scenario:error_first", False)])
def test_stream_error_event(scenario: str, sent: bool) -> None:
    translator = StreamTranslator(False)
    with pytest.raises(UpstreamUnavailable, match="Overloaded"):
        for name, data in stream_events(scenario, MODEL):
            translator.feed(name, data)
    assert translator.content_sent is sent and not translator.done


@pytest.mark.parametrize(
    ("etype", "cls"),
    [("overloaded_error", UpstreamUnavailable), ("api_error", UpstreamError), ("invalid_request_error", UpstreamError)],
)
def test_stream_error_classes(etype: str, cls: type[GatewayError]) -> None:
    with pytest.raises(cls) as info:
        StreamTranslator(False).feed("error", error_body(etype, "boom"))
    assert type(info.value) is cls and "boom" in info.value.message


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "etype", "message", "headers", "cls", "out_status", "code"),
    [
        (529, "overloaded_error", "Overloaded", {}, UpstreamUnavailable, 503, "upstream_unavailable"),
        (429, "rate_limit_error", "slow down", {"retry-after": "7"}, UpstreamStatus, 429, "rate_limit_exceeded"),
        (400, "invalid_request_error", "messages: roles must alternate", {}, UpstreamStatus, 400, "upstream_error"),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            {},
            UpstreamStatus,
            400,
            "context_length_exceeded",
        ),
        (413, "request_too_large", "Request exceeds the maximum size", {}, UpstreamStatus, 413, "request_too_large"),
        (401, "authentication_error", "invalid x-api-key", {}, UpstreamError, 502, "upstream_error"),
        (403, "permission_error", "no access", {}, UpstreamError, 502, "upstream_error"),
        (404, "not_found_error", "model: claude-secret-name", {}, UpstreamError, 502, "upstream_error"),
        (500, "api_error", "Internal server error", {}, UpstreamError, 502, "upstream_error"),
        (504, "timeout_error", "timeout", {}, UpstreamTimeout, 504, "upstream_timeout"),
    ],
)
def test_translate_error(
    status: int, etype: str, message: str, headers: dict[str, str], cls: type[GatewayError], out_status: int, code: str
) -> None:
    err = translate_error(status, json.dumps(error_body(etype, message)).encode(), headers)
    assert type(err) is cls and err.status == out_status and err.code == code
    envelope = err.envelope()["error"]
    assert set(envelope) == {"message", "type", "param", "code"}
    if status in (401, 403, 404):
        assert message not in err.message and "misconfigured" in err.message
    else:
        assert message in envelope["message"]
    if cls is UpstreamStatus:
        assert envelope["code"] == (None if code == "upstream_error" else code)
    assert isinstance(err, UpstreamError) and err.retryable is (status not in (400, 413))


def test_translate_error_retry_after_and_garbage() -> None:
    err = translate_error(429, error_body("rate_limit_error", "x"), {"Retry-After": "7"})
    assert isinstance(err, UpstreamError) and err.retry_after == 7.0
    garbage = translate_error(502, b"<html>bad gateway</html>", {})
    assert type(garbage) is UpstreamError and garbage.retryable and "HTTP 502" in garbage.message
    assert type(translate_error(529, None, {})) is UpstreamUnavailable


# --- property: any split of the upstream bytes gives the same chunks ---------------------------

SCENARIOS = [
    "hi there you",
    "scenario:doc_hello",
    "scenario:doc_tool",
    "scenario:tool_calls",
    "scenario:thinking",
    "scenario:cache_usage",
]


def _feed_bytes(body: bytes, cuts: list[int]) -> list[ChatChunk]:
    parser, translator = SseParser(), StreamTranslator(True)
    chunks: list[ChatChunk] = []
    bounds = [0, *sorted(set(cuts)), len(body)]
    for start, end in itertools.pairwise(bounds):
        for name, data in parser.feed(body[start:end]):
            chunks += translator.feed(name or "message", json.loads(data))
    return chunks


@settings(max_examples=60, deadline=None)
@given(
    scenario=st.sampled_from(SCENARIOS),
    crlf=st.booleans(),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=40),
)
def test_any_split_gives_same_chunks(scenario: str, crlf: bool, cuts: list[float]) -> None:
    body = encode_events(list(stream_events(scenario, MODEL)))
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    expected = _feed_bytes(body, [])
    assert expected[-2].choices[0].finish_reason is not None
    assert _feed_bytes(body, [int(c * len(body)) for c in cuts]) == expected
