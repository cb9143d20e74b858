"""Tests of the fake OpenAI upstream itself, driven with aiohttp, raw sockets and the official openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.openai import (
    ARGUMENT_FRAGMENTS,
    INBAND_ERROR,
    NORMAL_PIECES,
    NORMAL_TEXT,
    PROMPT_TOKENS,
    TOOL_CALLS,
    UNICODE_TEXT,
    FakeOpenAI,
    Scenario,
    select_scenario,
)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    # Retries off: every test counts the attempts the fake saw.
    with openai.OpenAI(base_url=fake.url, api_key="test-key", max_retries=0, timeout=5) as sdk:
        yield sdk


def _body(content: str, *, stream: bool = True, usage: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "up-model", "messages": [{"role": "user", "content": content}], **extra}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    return body


def _sse_data(raw: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (enough SSE for these tests: one data line per event)."""
    events = raw.replace("\r\n", "\n").split("\n\n")
    return [line[len("data: ") :] for event in events for line in event.split("\n") if line.startswith("data: ")]


async def _post(session: aiohttp.ClientSession, fake: FakeOpenAI, body: dict[str, Any], **kw: Any) -> tuple[int, str]:
    async with session.post(f"{fake.url}/chat/completions", json=body, **kw) as response:
        return response.status, await response.text()


# ---------------------------------------------------------------------------------------------------------------
# The normal answer


def test_non_stream_normal(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="up-model", messages=[{"role": "user", "content": "hi"}])

    assert completion.object == "chat.completion"
    assert completion.model == "up-model"
    assert completion.choices[0].message.content == NORMAL_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, len(NORMAL_PIECES))
    assert completion.usage.total_tokens == PROMPT_TOKENS + len(NORMAL_PIECES)
    [record] = fake.requests
    assert (record.method, record.path, record.scenario, record.status) == (
        "POST",
        "/v1/chat/completions",
        "normal",
        200,
    )
    assert record.headers["authorization"] == "Bearer test-key"
    assert record.body["model"] == "up-model"
    # The fake marks the outcome just after its last write, which the client may see first.
    fake.wait_for(lambda _: record.outcome == "complete", timeout=2)
    assert record.client_closed_at is None


async def test_stream_normal_wire_format(fake: FakeOpenAI) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/chat/completions", json=_body("hi")) as response,
    ):
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        raw = await response.text()

    data = _sse_data(raw)
    assert raw.endswith("data: [DONE]\n\n")
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "up-model", "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert contents == list(NORMAL_PIECES)
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(NORMAL_PIECES)
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        _, raw = await _post(session, fake, _body("hi", usage=False))
    chunks = [json.loads(item) for item in _sse_data(raw)[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_tool_calls_with_sdk_stream_helper(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "weather? scenario:tool_calls"}]
    with client.chat.completions.stream(model="up-model", messages=messages) as stream:
        events = list(stream)
        final = stream.get_final_completion()

    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == list(TOOL_CALLS)
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.content is None
    deltas = [e.chunk.choices[0].delta for e in events if e.type == "chunk" and e.chunk.choices]
    tool_deltas = [d.tool_calls for d in deltas if d.tool_calls]
    assert len(tool_deltas) == len(TOOL_CALLS) * (1 + ARGUMENT_FRAGMENTS)
    assert all(len(items) == 1 for items in tool_deltas)  # one tool call per chunk, as OpenAI sends


def test_tool_calls_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="up-model", messages=[{"role": "user", "content": "scenario:tool_calls"}]
    )
    message = completion.choices[0].message
    assert message.content is None
    calls = [c for c in message.tool_calls or [] if c.type == "function"]
    assert [json.loads(c.function.arguments) for c in calls] == [json.loads(args) for _, _, args in TOOL_CALLS]


def test_echo_returns_the_forwarded_body(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="up-model",
        messages=[{"role": "user", "content": "scenario:echo"}],
        extra_body={"unknown_field": {"kept": True}},
    )
    echoed = json.loads(completion.choices[0].message.content or "")
    assert echoed["model"] == "up-model"
    assert echoed["unknown_field"] == {"kept": True}


# ---------------------------------------------------------------------------------------------------------------
# Byte-level faults


async def _raw_exchange(fake: FakeOpenAI, body: dict[str, Any]) -> tuple[bytes, list[bytes]]:
    """POST over a bare socket; return the response head and the chunked body's chunks as sent."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    raw = await reader.read(-1)  # the fake closes after the response because of "Connection: close"
    writer.close()
    await writer.wait_closed()
    response_head, _, rest = raw.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return response_head, chunks
        chunks.append(rest[:size])
        rest = rest[size + 2 :]


async def test_chunked_request_body_is_accepted(fake: FakeOpenAI) -> None:
    payload = json.dumps(_body("scenario:text:2", stream=False)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    writer.write(head + b"%x\r\n%s\r\n" % (len(payload[:9]), payload[:9]))
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload[9:]), payload[9:]))
    raw = await reader.read(-1)
    writer.close()
    await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["choices"][0]["message"]["content"] == "w0 w1 "


async def test_split_1_writes_every_byte_as_its_own_chunk(fake: FakeOpenAI) -> None:
    head, chunks = await _raw_exchange(fake, _body("scenario:split:1"))

    assert b"transfer-encoding: chunked" in head
    assert {len(c) for c in chunks} == {1}
    data = _sse_data(b"".join(chunks).decode())
    text = "".join(choice["delta"].get("content", "") for item in data[:-1] for choice in json.loads(item)["choices"])
    assert text == UNICODE_TEXT


def test_split_1_reassembles_in_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="up-model", messages=[{"role": "user", "content": "scenario:split:1"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == UNICODE_TEXT


async def test_crlf_events(fake: FakeOpenAI) -> None:
    _, chunks = await _raw_exchange(fake, _body("scenario:crlf"))
    assert all(c.endswith(b"\r\n\r\n") for c in chunks)


async def test_reset_after_gives_connection_error(fake: FakeOpenAI) -> None:
    received = b""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"{fake.url}/chat/completions", json=_body("scenario:reset_after:2")) as response:
                assert response.status == 200
                async for data in response.content.iter_any():
                    received += data
    assert len(_sse_data(received.decode())) == 2
    [record] = fake.requests
    await fake.wait_for_async(lambda _: record.outcome == "reset", timeout=2)
    assert record.client_closed_at is None


async def test_reset_before_headers(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await _post(session, fake, _body("scenario:reset_before_headers"))
    assert fake.requests[0].status is None


async def test_silent_records_client_close(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await _post(session, fake, _body("scenario:silent"), timeout=aiohttp.ClientTimeout(total=0.2))
        [record] = await fake.wait_for_async(lambda rs: [r for r in rs if r.client_closed_at is not None])
    assert record.client_closed_at is not None
    assert 0.15 < record.client_closed_at - record.received_at < 2
    assert record.outcome == "client_closed"


async def test_fail_times_counts_per_scenario_and_reset_clears(fake: FakeOpenAI) -> None:
    body = _body("scenario:fail_times:2", stream=False)
    async with aiohttp.ClientSession() as session:
        statuses = [(await _post(session, fake, body))[0] for _ in range(3)]
        assert statuses == [500, 500, 200]
        assert [r.scenario for r in fake.requests] == ["fail_times:2"] * 3
        fake.reset()
        assert fake.requests == []
        assert (await _post(session, fake, body))[0] == 500


async def test_keep_alive_serves_many_requests_per_connection(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(3):
            assert (await _post(session, fake, _body("hi")))[0] == 200
        async with session.get(f"{fake.url}/models") as response:
            models = await response.json()
    assert models["data"][0]["id"] == "fake-model"
    assert len({r.connection_id for r in fake.requests}) == 1


async def test_error_envelopes_and_headers(fake: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/chat/completions", json=_body("scenario:status:429")) as response:
            assert response.status == 429
            assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("1", "1000")
            assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
        status, text = await _post(session, fake, _body("scenario:context_length"))
        assert status == 400
        assert json.loads(text)["error"]["code"] == "context_length_exceeded"
        assert json.loads(text)["error"]["message"].startswith("This model's maximum context length is")
        status, text = await _post(session, fake, _body("scenario:status_noenvelope:502"))
        assert (status, text.startswith("<html>")) == (502, True)
        status, text = await _post(session, fake, _body("hi"), headers={"x-fake-scenario": "inband_error_first"})
        assert (status, _sse_data(text)) == (200, [json.dumps(INBAND_ERROR, separators=(",", ":")), "[DONE]"])


async def test_unknown_scenario_is_reported() -> None:
    with FakeOpenAI() as fake:
        async with aiohttp.ClientSession() as session:
            status, text = await _post(session, fake, _body("scenario:no_such_thing"))
        assert status == 400
        assert json.loads(text)["error"]["code"] == "fake_bad_scenario"
        assert "no_such_thing" in fake.errors[0]


async def test_stop_closes_a_hanging_connection() -> None:
    fake = FakeOpenAI().start()
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(_post(session, fake, _body("scenario:silent")))
        await fake.wait_for_async(lambda rs: rs)
        fake.stop()
        with pytest.raises(aiohttp.ClientError):
            await pending
    assert fake.requests[0].outcome == "server_stopped"


# ---------------------------------------------------------------------------------------------------------------
# Scenario selection and a smoke run of every scenario


def test_scenario_selection_precedence() -> None:
    def body(user: str, model: str = "m") -> dict[str, Any]:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": "scenario:silent"}]
        return {"model": model, "messages": messages}

    assert select_scenario(body("hello"), {}) == Scenario("normal")
    assert select_scenario(body("go scenario:text:3."), {}) == Scenario("text", "3")
    assert select_scenario(body("scenario:text:3", "m scenario:status:503"), {}) == Scenario("status", "503")
    assert select_scenario(body("scenario:text:3"), {}, forced="no_done") == Scenario("no_done")
    assert select_scenario(body("scenario:text:3"), {"x-fake-scenario": "crlf"}, forced="no_done") == Scenario("crlf")
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "scenario:echo"}]}]}
    assert select_scenario(parts, {}) == Scenario("echo")


_STREAM_OUTCOMES = {
    "complete": [
        "normal", "text:3", "tool_calls", "split:7", "crlf", "finish:length", "echo", "finish_with_content",
        "role_every_chunk", "no_usage", "no_finish", "inband_error_first", "inband_error_after:2", "malformed_first",
        "malformed_after:2", "slow_first:50", "slow_chunks:10", "empty_body", "no_done_close", "eof_no_finish",
        "status:503", "status_noenvelope:502", "context_length", "content_filter", "rate_limited", "retry_after:0.5",
        "fail_times:1", "reject_prefill",
    ],
    "timeout": ["no_done", "silent", "headers_then_silence", "stall_after:2"],
    "error": ["reset_before_headers", "reset_after:2"],
}  # fmt: skip
_NON_STREAM_CHANGES = {"no_done": "complete", "eof_no_finish": "error"}


async def _outcome(session: aiohttp.ClientSession, fake: FakeOpenAI, body: dict[str, Any]) -> str:
    try:
        # Generous: every scenario runs at once, and a loaded CI machine must not turn "complete" into "timeout".
        async with asyncio.timeout(2.0):
            await _post(session, fake, body)
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError:
        return "error"
    return "complete"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non_stream"])
async def test_every_scenario_runs(fake: FakeOpenAI, stream: bool) -> None:
    expected = {scenario: kind for kind, names in _STREAM_OUTCOMES.items() for scenario in names}
    if not stream:
        expected.update(_NON_STREAM_CHANGES)
    async with aiohttp.ClientSession() as session:
        bodies = [_body(f"scenario:{scenario}", stream=stream) for scenario in expected]
        outcomes = await asyncio.gather(*(_outcome(session, fake, body) for body in bodies))
    assert dict(zip(expected, outcomes, strict=True)) == expected
    assert sorted(str(r.scenario) for r in fake.requests) == sorted(expected)
