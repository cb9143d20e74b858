"""OpenAI ⇄ Gemini translation: every mapping row of PROTOCOL §4.2, both directions."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes.gemini_upstream import HTTP_ERRORS, error_body, response_body, stream_events
from tests.fakes.sse_parse import SseParser, encode_events

from sluicegate.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sluicegate.providers.gemini_stream import usage_from_gemini
from sluicegate.providers.gemini_translate import (
    StreamTranslator,
    build_request,
    parse_response,
    translate_error,
    wants_reasoning,
)
from sluicegate.types import ChatChunk, ChatRequest, ChoiceDelta, Usage

MODEL = "gemini-upstream-1"


def req(messages: list[dict[str, Any]] | None = None, **body: Any) -> ChatRequest:
    messages = messages if messages is not None else [{"role": "user", "content": "hi"}]
    return ChatRequest(model="public", messages=messages, params=dict(body), n=body.get("n", 1))


def build(messages: list[dict[str, Any]] | None = None, **body: Any) -> dict[str, Any]:
    return build_request(req(messages, **body), 1024)


def run(text: str, include_reasoning: bool = False) -> tuple[list[ChatChunk], StreamTranslator]:
    translator = StreamTranslator(include_reasoning, id_seed="s")
    chunks: list[ChatChunk] = []
    for data in stream_events(text, MODEL):
        chunks += translator.feed(data)
    return chunks + translator.finish(), translator


def deltas(chunks: list[ChatChunk]) -> list[dict[str, Any]]:
    return [c.choices[0].delta for c in chunks if c.choices]


def finish_of(chunks: list[ChatChunk]) -> str | None:
    return next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)


# --- request mapping ---------------------------------------------------------------------------


def test_minimal_request() -> None:
    assert build() == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 1024},
    }


def test_roles_system_and_tool_results() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    out = build(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 18}'},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        ]
    )
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "weather and time?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
            ],
        },
    ]


def test_thought_signature_round_trips_through_the_call_id() -> None:
    chunk = {
        "candidates": [
            {
                "content": {"parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "SIG=="}]},
                "finishReason": "STOP",
            }
        ]
    }
    call = StreamTranslator(False, id_seed="s").feed(chunk)[1].choices[0].delta["tool_calls"][0]
    assert call["id"] == "call_s_0__thought__SIG=="
    assistant = {
        "role": "assistant",
        "tool_calls": [{"id": call["id"], "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    out = build(
        [{"role": "user", "content": "x"}, assistant, {"role": "tool", "tool_call_id": call["id"], "content": "ok"}]
    )
    assert out["contents"][1]["parts"][0] == {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "SIG=="}


def test_images() -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    parts = build([{"role": "user", "content": content}])["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert parts[2] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 50}, {"maxOutputTokens": 50}),
        ({"max_completion_tokens": 70, "max_tokens": 50}, {"maxOutputTokens": 70}),
        ({"temperature": 1.5, "top_p": 0.9}, {"maxOutputTokens": 1024, "temperature": 1.5, "topP": 0.9}),
        ({"stop": "END"}, {"maxOutputTokens": 1024, "stopSequences": ["END"]}),
        ({"seed": 7, "presence_penalty": 0.5}, {"maxOutputTokens": 1024, "seed": 7, "presencePenalty": 0.5}),
        (
            {"response_format": {"type": "json_object"}},
            {"maxOutputTokens": 1024, "responseMimeType": "application/json"},
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
            {"maxOutputTokens": 1024, "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
        ),
        (
            {"reasoning_effort": "low"},
            {"maxOutputTokens": 1024, "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
        ),
        ({"reasoning_effort": "none"}, {"maxOutputTokens": 1024, "thinkingConfig": {"thinkingBudget": 0}}),
    ],
)
def test_generation_config(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert build(**body)["generationConfig"] == expected


def test_wants_reasoning() -> None:
    assert wants_reasoning(req(reasoning_effort="high"))
    assert not wants_reasoning(req(reasoning_effort="none")) and not wants_reasoning(req())


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "d",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": False},
    },
}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        ),
    ],
)
def test_tools_and_tool_choice(choice: Any, expected: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"tools": [TOOL, {"type": "function", "function": {"name": "get_time"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    out = build(**body)
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "d", "parametersJsonSchema": TOOL["function"]["parameters"]},  # type: ignore[index]
                {"name": "get_time"},
            ]
        }
    ]
    assert out.get("toolConfig") == expected


@pytest.mark.parametrize(
    ("messages", "body", "param"),
    [
        (None, {"n": 2}, "n"),
        (None, {"tool_choice": "sometimes", "tools": [TOOL]}, "tool_choice"),
        (None, {"reasoning_effort": "extreme"}, "reasoning_effort"),
        (
            [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}],
            {},
            "messages[1].tool_call_id",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}],
                },
            ],
            {},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], {}, "messages[0].content[0]"),
        (  # JSON in a string nests under the body's limit too: the translated body must stay writable
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "[" * 300 + "]" * 300},
            ],
            {},
            "messages[2].content",
        ),
    ],
)
def test_invalid_requests(messages: list[dict[str, Any]] | None, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build(messages, **body)
    assert info.value.param == param


# --- non-streaming response --------------------------------------------------------------------


def test_parse_text_response() -> None:
    completion = parse_response(response_body(stream_events("hello", MODEL)))
    assert completion.choices == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "You said: hello", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert completion.usage == Usage(prompt_tokens=9, completion_tokens=6)


def test_parse_function_calls() -> None:
    choice = parse_response(response_body(stream_events("scenario:tool_calls", MODEL))).choices[0]
    assert choice["finish_reason"] == "tool_calls"  # Gemini says STOP
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert calls[1]["function"]["arguments"] == "{}"
    assert (
        all(c["id"].startswith("call_") and c["type"] == "function" for c in calls) and calls[0]["id"] != calls[1]["id"]
    )
    doc = parse_response(response_body(stream_events("scenario:doc_function", MODEL))).choices[0]
    assert doc["message"]["content"] is None
    assert json.loads(doc["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "brightness": 25,
        "color_temp": "warm",
    }


def test_parse_thinking_cache_and_blocked() -> None:
    body = response_body(stream_events("scenario:thinking", MODEL))
    plain = parse_response(body)
    assert (
        plain.choices[0]["message"]["content"] == "The answer is 4."
        and "reasoning_content" not in plain.choices[0]["message"]
    )
    assert (
        parse_response(body, include_reasoning=True).choices[0]["message"]["reasoning_content"]
        == "Let me think about it."
    )
    assert plain.usage == Usage(prompt_tokens=20, completion_tokens=36, reasoning_tokens=30)
    cached = parse_response(response_body(stream_events("scenario:cache_usage", MODEL))).usage
    assert cached == Usage(prompt_tokens=100, completion_tokens=4, cached_tokens=60)
    blocked = parse_response(response_body(stream_events("scenario:blocked", MODEL)))
    assert blocked.choices[0]["finish_reason"] == "content_filter" and blocked.choices[0]["message"]["content"] == ""


def test_usage_when_candidates_include_thoughts() -> None:
    inclusive = {"promptTokenCount": 10, "candidatesTokenCount": 40, "thoughtsTokenCount": 30, "totalTokenCount": 50}
    assert usage_from_gemini(inclusive) == Usage(prompt_tokens=10, completion_tokens=40, reasoning_tokens=30)


FINISH_REASONS = [("STOP", "stop"), ("MAX_TOKENS", "length"), ("MALFORMED_FUNCTION_CALL", "stop")]
FINISH_REASONS += [("FINISH_REASON_UNSPECIFIED", "stop"), ("SOMETHING_NEW", "stop")]
SAFETY = ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE", "OTHER"]
FINISH_REASONS += [(reason, "content_filter") for reason in SAFETY]


@pytest.mark.parametrize(("reason", "finish"), FINISH_REASONS)
def test_finish_reasons(reason: str, finish: str) -> None:
    body = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason}]}
    assert parse_response(body).choices[0]["finish_reason"] == finish
    chunks = StreamTranslator(False).feed(body)
    assert chunks[-1].choices[0].finish_reason == finish


@pytest.mark.parametrize(
    ("scenario", "finish"),
    [
        ("max_tokens", "length"),
        ("safety", "content_filter"),
        ("recitation", "content_filter"),
        ("blocked", "content_filter"),
    ],
)
def test_stream_finish_scenarios(scenario: str, finish: str) -> None:
    chunks, _ = run(f"scenario:{scenario}")
    assert finish_of(chunks) == finish and chunks[-1].choices == [] and chunks[-1].usage is not None


# --- streaming ---------------------------------------------------------------------------------


def test_stream_documented_text() -> None:
    chunks, translator = run("scenario:doc_hello")
    assert chunks == [
        ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})]),
        ChatChunk([ChoiceDelta(0, {"content": "AI"})]),
        ChatChunk([ChoiceDelta(0, {"content": " works by learning patterns"})]),
        ChatChunk([ChoiceDelta(0, {"content": " from data."})]),
        ChatChunk([ChoiceDelta(0, {}, finish_reason="stop")]),
        ChatChunk([], usage=Usage(prompt_tokens=8, completion_tokens=12)),
    ]
    assert translator.model_version == MODEL and translator.done
    assert translator.finish() == [] and translator.feed(stream_events("scenario:doc_hello", MODEL)[-1]) == []


def test_stream_whole_function_calls() -> None:
    chunks, _ = run("scenario:tool_calls")
    calls = [d["tool_calls"] for d in deltas(chunks) if "tool_calls" in d]
    assert calls == [
        [
            {
                "index": 0,
                "id": "call_s_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
            }
        ],
        [{"index": 1, "id": "call_s_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
    ]
    assert deltas(chunks)[1] == {"content": "Checking both."} and finish_of(chunks) == "tool_calls"


def test_stream_uses_gemini_call_id() -> None:
    part = {"functionCall": {"id": "fc_1", "name": "f", "args": {"a": 1}}}
    chunk = {"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]}
    assert StreamTranslator(False).feed(chunk)[1].choices[0].delta["tool_calls"][0]["id"] == "fc_1"


@pytest.mark.parametrize("include", [True, False])
def test_stream_thoughts(include: bool) -> None:
    chunks, translator = run("scenario:thinking", include_reasoning=include)
    assert [d.get("reasoning_content") for d in deltas(chunks) if "reasoning_content" in d] == (
        ["Let me think about it."] if include else []
    )
    assert translator.usage == Usage(prompt_tokens=20, completion_tokens=36, reasoning_tokens=30)


def test_stream_cache_usage() -> None:
    chunks, _ = run("scenario:cache_usage")
    assert chunks[-1].usage == Usage(prompt_tokens=100, completion_tokens=4, cached_tokens=60)


def test_stream_blocked_prompt() -> None:
    chunks, translator = run("scenario:blocked")
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}] and finish_of(chunks) == "content_filter"
    assert not translator.content_sent and chunks[-1].usage == Usage(prompt_tokens=9)


def test_stream_without_finish_reason_is_an_error() -> None:
    translator = StreamTranslator(False)
    for data in stream_events("scenario:no_finish", MODEL):
        translator.feed(data)
    with pytest.raises(UpstreamError, match="without a finish reason"):
        translator.finish()
    assert translator.content_sent


def test_stream_error_event() -> None:
    translator = StreamTranslator(False)
    with pytest.raises(UpstreamError, match="UNAVAILABLE"):
        for data in stream_events("scenario:error_mid_stream", MODEL):
            translator.feed(data)
    assert translator.content_sent


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "cls", "out_status", "code"),
    [
        ("rate_limited", UpstreamStatus, 429, "rate_limit_exceeded"),
        ("prompt_too_long", UpstreamStatus, 400, "context_length_exceeded"),
        ("invalid_argument", UpstreamStatus, 400, "upstream_error"),
        ("unavailable", UpstreamUnavailable, 503, "upstream_unavailable"),
        ("internal", UpstreamError, 502, "upstream_error"),
        ("not_found", UpstreamError, 502, "upstream_error"),
    ],
)
def test_translate_error(scenario: str, cls: type[GatewayError], out_status: int, code: str) -> None:
    status, gstatus, message, details = HTTP_ERRORS[scenario]
    err = translate_error(status, json.dumps(error_body(status, gstatus, message, details)).encode(), {})
    assert type(err) is cls and err.status == out_status and err.code == code
    assert set(err.envelope()["error"]) == {"message", "type", "param", "code"}
    if scenario != "not_found":
        assert message in err.message
    if scenario == "rate_limited":
        assert isinstance(err, UpstreamError) and err.retryable and err.retry_after == 37.0


@pytest.mark.parametrize(
    ("status", "gstatus", "message", "details", "cls", "out_status"),
    [
        (
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            [{"reason": "API_KEY_INVALID"}],
            UpstreamError,
            502,
        ),
        (401, "UNAUTHENTICATED", "bad credentials", [], UpstreamError, 502),
        (403, "PERMISSION_DENIED", "denied", [], UpstreamError, 502),
        (400, "FAILED_PRECONDITION", "User location is not supported for the API use.", [], UpstreamError, 502),
        (504, "DEADLINE_EXCEEDED", "deadline", [], UpstreamTimeout, 504),
    ],
)
def test_translate_error_deployment_faults(
    status: int, gstatus: str, message: str, details: list[Any], cls: type[GatewayError], out_status: int
) -> None:
    err = translate_error(status, error_body(status, gstatus, message, details), {"retry-after": "3"})
    assert type(err) is cls and err.status == out_status
    assert isinstance(err, UpstreamError) and err.retryable


def test_translate_error_array_body_and_garbage() -> None:
    as_array = translate_error(
        429, json.dumps([error_body(429, "RESOURCE_EXHAUSTED", "quota")]).encode(), {"retry-after": "5"}
    )
    assert isinstance(as_array, UpstreamStatus) and as_array.status == 429 and as_array.retry_after == 5.0
    garbage = translate_error(500, b"not json", {})
    assert type(garbage) is UpstreamError and garbage.retryable


# --- property: any split of the upstream bytes gives the same chunks ---------------------------

SCENARIOS = [
    "hello there",
    "scenario:doc_hello",
    "scenario:tool_calls",
    "scenario:thinking",
    "scenario:cache_usage",
    "scenario:blocked",
]


def _feed_bytes(body: bytes, cuts: list[int]) -> list[ChatChunk]:
    parser, translator = SseParser(), StreamTranslator(True, id_seed="p")
    chunks: list[ChatChunk] = []
    bounds = [0, *sorted(set(cuts)), len(body)]
    for start, end in itertools.pairwise(bounds):
        for _, data in parser.feed(body[start:end]):
            chunks += translator.feed(json.loads(data))
    return chunks + translator.finish()


@settings(max_examples=60, deadline=None)
@given(
    scenario=st.sampled_from(SCENARIOS),
    crlf=st.booleans(),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=40),
)
def test_any_split_gives_same_chunks(scenario: str, crlf: bool, cuts: list[float]) -> None:
    body = encode_events([(None, e) for e in stream_events(scenario, MODEL)])
    if crlf:  # what the real API sends
        body = body.replace(b"\n", b"\r\n")
    expected = _feed_bytes(body, [])
    assert expected[-1].usage is not None
    assert _feed_bytes(body, [int(c * len(body)) for c in cuts]) == expected
