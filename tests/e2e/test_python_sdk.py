"""The official openai Python SDK as a client of the real gateway process (SPEC §4-§7, PROTOCOL §1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.fakes.openai import NORMAL_TEXT, PROMPT_TOKENS, TOOL_CALLS, UNICODE_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"fake tool {name}",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": True},
        },
    }
    for _, name, _ in TOOL_CALLS
]


@pytest.fixture
def client(gateway: GatewayProcess, fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0, timeout=20) as c:
        yield c


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def collect(chunks: list[ChatCompletionChunk]) -> tuple[str, list[str], list[ChatCompletionChunk]]:
    """Reassembled text, the finish reasons seen, and the usage chunks."""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason is not None]
    usage_chunks = [c for c in chunks if c.usage is not None]
    return text, finishes, usage_chunks


def test_sync_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-test", messages=user("hi"))
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-test"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == NORMAL_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == PROMPT_TOKENS + 5


@pytest.mark.parametrize("include_usage", [False, True])
def test_sync_stream(client: openai.OpenAI, include_usage: bool) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(client.chat.completions.create(model="gpt-test", messages=user("hi"), stream=True, **extra))
    text, finishes, usage_chunks = collect(chunks)
    assert text == NORMAL_TEXT
    assert finishes == ["stop"]
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"gpt-test"}
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
        usage = usage_chunks[0].usage
        assert usage is not None and usage.prompt_tokens == PROMPT_TOKENS and usage.completion_tokens == 5
    else:
        assert usage_chunks == []


async def test_async_stream(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0, timeout=20) as c:
        stream = await c.chat.completions.create(
            model="gpt-test", messages=user("hi"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text, finishes, usage_chunks = collect(chunks)
        assert text == NORMAL_TEXT
        assert finishes == ["stop"]
        assert len(usage_chunks) == 1
        completion = await c.chat.completions.create(model="gpt-test", messages=user("hi"))
        assert completion.choices[0].message.content == NORMAL_TEXT


def test_stream_helper_assembles_parallel_tool_calls(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-test", messages=user("weather and time scenario:tool_calls"), tools=TOOLS
    ) as s:
        final = s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert not choice.message.content
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 2
    for call, (call_id, name, arguments) in zip(calls, TOOL_CALLS, strict=True):
        assert call.type == "function"
        assert call.id == call_id
        assert call.function.name == name  # not "get_weatherget_weather": name only in the opening delta
        assert json.loads(call.function.arguments) == json.loads(arguments)
    assert final.id.startswith("chatcmpl-") and final.model == "gpt-test"


@pytest.mark.parametrize("stream", [True, False])
def test_forced_tool_choice_object(client: openai.OpenAI, stream: bool) -> None:
    """``tool_choice`` as an object (force one function) is standard OpenAI usage and must be accepted."""
    tool_choice: Any = {"type": "function", "function": {"name": "get_weather"}}
    if stream:
        with client.chat.completions.stream(
            model="gpt-test", messages=user("scenario:tool_calls"), tools=TOOLS, tool_choice=tool_choice
        ) as s:
            final = s.get_final_completion()
    else:
        final = client.chat.completions.create(
            model="gpt-test", messages=user("scenario:tool_calls"), tools=TOOLS, tool_choice=tool_choice
        )
    assert final.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in final.choices[0].message.tool_calls or []] == [n for _, n, _ in TOOL_CALLS]


def test_stream_helper_text_and_events(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="gpt-test", messages=user("hi")) as s:
        deltas = [e.delta for e in s if e.type == "content.delta"]
        final = s.get_final_completion()
    assert "".join(deltas) == NORMAL_TEXT
    assert final.choices[0].message.content == NORMAL_TEXT
    assert final.choices[0].message.role == "assistant"  # not "assistantassistant..."


@pytest.mark.parametrize("scenario", ["reset_after:3", "inband_error_after:3", "stall_after:3"])
def test_mid_stream_failure_raises_api_error(client: openai.OpenAI, scenario: str) -> None:
    received: list[ChatCompletionChunk] = []
    stream = client.chat.completions.create(model="gpt-test", messages=user(f"scenario:{scenario}"), stream=True)
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    err = info.value
    assert not isinstance(err, openai.APIStatusError)  # a frame inside a 200, not an HTTP status
    assert err.code == "stream_error"
    assert err.type == "server_error"
    assert err.message
    text, finishes, _ = collect(received)
    assert received and text  # some content arrived before the failure
    assert finishes == []  # a truncated answer never looks complete


def test_mid_stream_failure_raises_from_the_helper(client: openai.OpenAI) -> None:
    with (
        pytest.raises(openai.APIError) as info,
        client.chat.completions.stream(model="gpt-test", messages=user("scenario:reset_after:3")) as s,
    ):
        s.get_final_completion()
    assert info.value.code == "stream_error"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "content", "exc_type", "status", "code"),
    [
        ("gpt-test", "scenario:status:429", openai.RateLimitError, 429, None),
        ("gpt-test", "scenario:context_length", openai.BadRequestError, 400, "context_length_exceeded"),
        ("no-such-model", "hi", openai.NotFoundError, 404, "model_not_found"),
        ("gpt-test", "scenario:status:500", openai.InternalServerError, 502, "upstream_error"),
    ],
)
def test_pre_stream_errors_map_to_sdk_exceptions(
    client: openai.OpenAI,
    model: str,
    content: str,
    exc_type: type[openai.APIStatusError],
    status: int,
    code: str | None,
    stream: bool,
) -> None:
    with pytest.raises(exc_type) as info:
        result = client.chat.completions.create(model=model, messages=user(content), stream=stream)
        if stream:
            list(result)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == status
    if code is not None:
        assert err.code == code
    assert err.response.headers["content-type"].startswith("application/json")


def test_bad_key_is_authentication_error(gateway: GatewayProcess) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model="gpt-test", messages=user("hi"))
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"gpt-test", "demo"} <= ids


def test_demo_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="demo", messages=user("ping demo"))
    assert completion.model == "demo"
    assert "ping demo" in (completion.choices[0].message.content or "")
    chunks = list(
        client.chat.completions.create(
            model="demo", messages=user("ping demo"), stream=True, stream_options={"include_usage": True}
        )
    )
    text, finishes, usage_chunks = collect(chunks)
    assert text == completion.choices[0].message.content
    assert finishes == ["stop"]
    assert len(usage_chunks) == 1 and usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [True, False])
def test_non_ascii_split_inside_characters(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-test", messages=user("scenario:split:1"), stream=True))
        text, finishes, _ = collect(chunks)
        assert finishes == ["stop"]
    else:
        text = client.chat.completions.create(model="gpt-test", messages=user("scenario:split:1")).choices[0].message
        text = text.content or ""
    assert text == UNICODE_TEXT
