"""``parse_chat_request``: SPEC §3 validation, each error naming its field, pass-through and stripping."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluicegate.errors import InvalidRequest
from sluicegate.types import ChatRequest
from sluicegate.wire.limits import MAX_DEPTH, nesting_over
from sluicegate.wire.openai_chat.decode import parse_chat_request

USER = {"role": "user", "content": "hi"}


def parse(**body: Any) -> ChatRequest:
    return parse_chat_request(orjson.dumps({"model": "m", "messages": [USER], **body}))


def rejected(raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    err = info.value
    assert (err.status, err.type, err.code) == (400, "invalid_request_error", "invalid_body")
    assert err.envelope()["error"]["param"] == err.param
    return err


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"model": "m", "messages": [}', "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
    ],
)
def test_body_not_a_json_object(raw: bytes, needle: str) -> None:
    err = rejected(raw)
    assert err.param is None and needle in err.message


def body_with(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    for key, value in fields.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


INVALID: list[tuple[dict[str, Any], str]] = [
    # model and messages
    (body_with(model=_DROP), "model"),
    (body_with(model=""), "model"),
    (body_with(model=5), "model"),
    (body_with(model=None), "model"),
    (body_with(messages=_DROP), "messages"),
    (body_with(messages=[]), "messages"),
    (body_with(messages={"role": "user", "content": "x"}), "messages"),
    (body_with(messages=["hi"]), "messages[0]"),
    (body_with(messages=[USER, {"content": "x"}]), "messages[1].role"),
    (body_with(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (body_with(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role"),
    (body_with(messages=[{"role": {"name": "user"}, "content": "x"}]), "messages[0].role"),
    (body_with(messages=[{"role": "user"}]), "messages[0].content"),
    (body_with(messages=[{"role": "user", "content": None}]), "messages[0].content"),
    (body_with(messages=[{"role": "user", "content": 7}]), "messages[0].content"),
    (body_with(messages=[{"role": "user", "content": {"type": "text"}}]), "messages[0].content"),
    (body_with(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content[0]"),
    (body_with(messages=[{"role": "user", "content": ["bare"]}]), "messages[0].content[0]"),
    (body_with(messages=[{"role": "assistant", "content": None}]), "messages[0].content"),
    (body_with(messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id"),
    (body_with(messages=[{"role": "tool", "content": "42", "tool_call_id": 1}]), "messages[0].tool_call_id"),
    (
        body_with(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
        "messages[0]",
    ),
    (
        body_with(messages=[{"role": "assistant", "content": None, "tool_calls": {"id": "c"}}]),
        "messages[0]",
    ),
    (
        body_with(messages=[{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}]),
        "messages[0].tool_calls[0]",
    ),
    (
        body_with(messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {}}]}]),
        "messages[0].tool_calls[0]",
    ),
    # stream and stream_options
    (body_with(stream="yes"), "stream"),
    (body_with(stream=1), "stream"),
    (body_with(stream_options={"include_usage": True}), "stream_options"),
    (body_with(stream=False, stream_options={"include_usage": True}), "stream_options"),
    (body_with(stream=True, stream_options=[]), "stream_options"),
    (body_with(stream=True, stream_options={"include_usage": "true"}), "stream_options.include_usage"),
    (body_with(stream=True, stream_options={"include_obfuscation": 0}), "stream_options.include_obfuscation"),
    # sampling parameters
    (body_with(temperature=2.01), "temperature"),
    (body_with(temperature=-0.1), "temperature"),
    (body_with(temperature="1"), "temperature"),
    (body_with(temperature=True), "temperature"),
    (body_with(top_p=1.5), "top_p"),
    (body_with(top_p=-1), "top_p"),
    (body_with(presence_penalty=2.5), "presence_penalty"),
    (body_with(frequency_penalty=-2.5), "frequency_penalty"),
    (body_with(max_tokens=0), "max_tokens"),
    (body_with(max_tokens=1.5), "max_tokens"),
    (body_with(max_tokens=True), "max_tokens"),
    (body_with(max_completion_tokens=0), "max_completion_tokens"),
    (body_with(max_completion_tokens="10"), "max_completion_tokens"),
    (body_with(n=0), "n"),
    (body_with(n=129), "n"),
    (body_with(n=2.0), "n"),
    (body_with(seed="1"), "seed"),
    (body_with(seed=1.5), "seed"),
    (body_with(top_logprobs=21), "top_logprobs"),
    (body_with(top_logprobs=-1), "top_logprobs"),
    (body_with(logprobs="true"), "logprobs"),
    (body_with(parallel_tool_calls=1), "parallel_tool_calls"),
    (body_with(stop=3), "stop"),
    (body_with(stop=["a", "b", "c", "d", "e"]), "stop"),
    (body_with(stop=["a", 1]), "stop"),
    (body_with(stop={"a": 1}), "stop"),
    # tools
    (body_with(tools={"type": "function"}), "tools"),
    (body_with(tools=[TOOL, {"type": "function"}]), "tools[1].function"),
    (body_with(tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function"),
    (body_with(tools=["f"]), "tools[0].function"),
    (body_with(tools=[TOOL], tool_choice="sometimes"), "tool_choice"),
    (body_with(tools=[TOOL], tool_choice={"function": {"name": "f"}}), "tool_choice"),
    (body_with(tools=[TOOL], tool_choice=1), "tool_choice"),
    (body_with(tools=[TOOL], tool_choice=["auto"]), "tool_choice"),
    # others
    (body_with(response_format="json"), "response_format"),
    (body_with(response_format={}), "response_format"),
    (body_with(response_format={"type": 1}), "response_format"),
    (body_with(user=5), "user"),
    # user and metadata are stored: no NUL (PostgreSQL cannot store it) nor other control characters, user short
    (body_with(user="alice\u0000"), "user"),
    (body_with(user="alice\nbob"), "user"),
    (body_with(user="u" * 257), "user"),
    (body_with(metadata={"team\u0000": "search"}), "metadata"),
    (body_with(metadata={"team\t": "search"}), "metadata"),
    (body_with(metadata={"team": "sea\u0000rch"}), "metadata"),
    (body_with(metadata={"team": "bell\u0007"}), "metadata"),
    (body_with(metadata={"team": "del\u007f"}), "metadata"),
    # metadata, OpenAI's rules (it goes to the audit log, so its size is bounded)
    (body_with(metadata="x"), "metadata"),
    (body_with(metadata=["team", "search"]), "metadata"),
    (body_with(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    (body_with(metadata={"k" * 65: "v"}), "metadata"),
    (body_with(metadata={"team": "v" * 513}), "metadata"),
    (body_with(metadata={"team": 5}), "metadata"),
    (body_with(metadata={"team": {"nested": "x"}}), "metadata"),
]


@pytest.mark.parametrize(("body", "param"), INVALID, ids=[f"{i}-{param}" for i, (_, param) in enumerate(INVALID)])
def test_invalid_field_is_named(body: dict[str, Any], param: str) -> None:
    err = rejected(orjson.dumps(body))
    assert err.param == param, err.message
    assert param.split(".")[0].split("[")[0] in err.message


VALID: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 2},
    {"temperature": 0.7, "top_p": 1, "presence_penalty": -2, "frequency_penalty": 2},
    {"seed": -5},
    {"top_logprobs": 0, "logprobs": True},
    {"stop": "END"},
    {"stop": ["a", "b", "c", "d"]},
    {"stop": None},
    {"tools": [TOOL], "tool_choice": "auto", "parallel_tool_calls": False},
    {"tools": [TOOL], "tool_choice": "required"},
    {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    {"user": "u-1"},
    {"user": "u" * 256},
    {"user": "名前 🚀 o'brien"},
    {"stream": False, "stream_options": None},
    {"n": 128},
]


@pytest.mark.parametrize("fields", VALID, ids=["-".join(f) or "none" for f in VALID])
def test_valid_fields_are_forwarded_unchanged(fields: dict[str, Any]) -> None:
    request = parse(**fields)
    for key, value in fields.items():
        assert request.params[key] == value


def test_messages_of_every_role() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": [{"type": "text", "text": "d"}]},
        {"role": "user", "content": [{"type": "text", "text": "u"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": ""},
    ]
    request = parse_chat_request(orjson.dumps({"model": "m", "messages": messages}))
    assert request.messages == messages
    assert "messages" not in request.params  # one copy of the conversation


def test_typed_fields() -> None:
    request = parse(stream=True, stream_options={"include_usage": True}, n=3, user="alice", max_tokens=50)
    assert (request.model, request.stream, request.include_usage, request.n, request.user) == (
        "m",
        True,
        True,
        3,
        "alice",
    )
    assert request.max_tokens == 50
    assert parse(max_tokens=50, max_completion_tokens=20).max_tokens == 20
    defaults = parse()
    assert (defaults.stream, defaults.include_usage, defaults.n, defaults.max_tokens, defaults.user) == (
        False,
        False,
        1,
        None,
        None,
    )
    assert parse(stream=True).include_usage is False
    assert parse(stream=True, stream_options={"include_usage": False}).include_usage is False
    assert parse(stream=True, stream_options={}).include_usage is False


def test_unknown_fields_pass_through() -> None:
    future = {
        "reasoning_effort": "low",
        "some_future_field": {"nested": [1, 2]},
        "store": False,
        "modalities": ["text"],
    }
    request = parse(**future)
    for key, value in future.items():
        assert request.params[key] == value
    assert "model" not in request.params and request.messages == [USER]


def test_governance_fields_are_stripped() -> None:
    request = parse(
        metadata={"team": "search", "ticket": "T-1"},
        sluicegate_budget=99,
        sluicegate={"key": "spoofed"},
        SluiceGate_Group="admins",
        sluicegatex=1,
        keep_me=True,
    )
    assert request.metadata == {"team": "search", "ticket": "T-1"}
    assert set(request.params) == {"keep_me"}


def test_metadata_at_openais_limits_is_kept_and_never_forwarded() -> None:
    largest = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    request = parse(metadata=largest)
    assert request.metadata == largest and "metadata" not in request.params
    texts = {"note": "two\nlines\tand a tab\r\n", "名前": "值 🚀"}
    assert parse(metadata=texts).metadata == texts
    assert parse(metadata=None).metadata is None and parse(metadata={}).metadata is None


def test_stream_options_forwarded_with_stream() -> None:
    request = parse(stream=True, stream_options={"include_usage": True, "include_obfuscation": False})
    assert request.params["stream_options"] == {"include_usage": True, "include_obfuscation": False}


def deep(levels: int, leaf: Any = 0) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("field", "levels"),
    [("tools", 300), ("some_future_field", 1000), ("response_format", 65), ("messages", 255)],
)
def test_nesting_deeper_than_the_limit_is_refused_naming_the_field(field: str, levels: int) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    # The field's value is level 2 (the body is level 1): `levels` more containers inside it.
    if field == "messages":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "hi", "x": deep(levels)}]}]
    else:
        body[field] = deep(levels)
    err = rejected(orjson.dumps(body) if levels < 250 else _dumps_deep(body))
    assert err.param == field and f"{MAX_DEPTH} levels" in err.message


def _dumps_deep(value: Any) -> bytes:
    """orjson refuses to write what is nested 255 levels or more; json does not."""
    import json
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return json.dumps(value).encode()
    finally:
        sys.setrecursionlimit(limit)


def test_nesting_at_the_limit_is_accepted_and_forwarded() -> None:
    # body (1) > some_future_field (2) > ... : MAX_DEPTH levels in all.
    request = parse(some_future_field=deep(MAX_DEPTH - 2))
    assert request.params["some_future_field"] == deep(MAX_DEPTH - 2)
    orjson.dumps(request.params)  # the gateway can write it upstream


def test_nesting_check_visits_wide_bodies_without_recursion() -> None:
    wide = {"model": "m", "messages": [USER], "x": [[i, {"a": [i]}] for i in range(10_000)]}
    assert parse_chat_request(orjson.dumps(wide)).params["x"][-1] == [9_999, {"a": [9_999]}]
    assert nesting_over(wide, 4) == "x"  # body > x > [i, {...}] > {"a": ...} > [i]: 5 levels
    assert nesting_over(wide, 5) is None
